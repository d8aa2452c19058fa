"""Where an executor's memory goes before it serves: RSS and module count after each import, in
the order the executor's own imports need them.

    BIN/python bench/imports.py      (BIN: a venv's bin with stagewise installed)

Each step's figure includes what it imports and nothing imported before it, so the steps add up
to the executor's RSS after its imports (its app module and what it allocates when it starts
are not in it).
"""

from __future__ import annotations

import importlib
import os
import sys

STEPS = [
    ("asyncio", "asyncio (and ssl: OpenSSL is loaded by asyncio's import of ssl)"),
    ("importlib.metadata", "importlib.metadata (redis-py imports it)"),
    ("redis.asyncio", "redis-py (all of it: its package imports cluster and sentinel too)"),
    ("msgspec", "msgspec"),
    ("uvloop", "uvloop"),
    ("concurrent.futures", "concurrent.futures, json, argparse"),
    ("stagewise.cli", "stagewise: CLI, config, log"),
    ("stagewise.executor.main", "stagewise: executor and storage modules"),
]


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    print(f"{'interpreter':72s} {rss_mb():5.1f} MB  {len(sys.modules):4d} modules")
    for module, label in STEPS:
        before, n = rss_mb(), len(sys.modules)
        importlib.import_module(module)
        if module == "concurrent.futures":
            import argparse  # noqa: F401
            import json  # noqa: F401
        if module == "stagewise.executor.main":
            import stagewise.executor.worker  # noqa: F401
        now = rss_mb()
        print(f"{label:72s} {now:5.1f} MB  (+{now - before:4.1f})  +{len(sys.modules) - n} modules")


if __name__ == "__main__":
    main()
