"""Where an executor's memory goes before it serves: RSS and module count after each import, in
the order the executor's own imports need them.

    BIN/python bench/imports.py            (BIN: a venv's bin with stagewise installed)
    BIN/python bench/imports.py --time N   wall time of a fresh interpreter that imports what the
                                           executor imports before it serves, N times: median, min

Each step's figure includes what it imports and nothing imported before it, so the steps add up
to the executor's RSS after its imports (its app module and what it allocates when it starts
are not in it).
"""

from __future__ import annotations

import importlib
import os
import statistics
import subprocess
import sys
import time

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


# what `stagewise executor` imports before it loads the app and connects
EXECUTOR_IMPORTS = "import stagewise.cli, stagewise.config, stagewise.log, stagewise.executor.main, stagewise.executor.worker"


def timed(n: int) -> None:
    took = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", EXECUTOR_IMPORTS], check=True)
        took.append(time.perf_counter() - t)
    print(
        f"{sys.executable}: interpreter + executor imports median {statistics.median(took) * 1000:.0f} ms "
        f"(min {min(took) * 1000:.0f}) over {n}"
    )


def main() -> None:
    if sys.argv[1:2] == ["--time"]:
        timed(int(sys.argv[2]))
        return
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
