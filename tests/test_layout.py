"""The rooms of the package keep to their roles: the core (shared/, installed as `stagewise`)
imports neither daemon, and neither daemon imports the other.  The CLI is the one place that
starts a daemon, and `stagewise` itself names App lazily (for type checkers only at import)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Modules a file imports at run time (imports under `if TYPE_CHECKING:` do not count)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def files(folder: str, *, but: tuple[str, ...] = ()) -> list[Path]:
    return [p for p in sorted((ROOT / folder).rglob("*.py")) if not any(b in p.parts for b in but)]


@pytest.mark.parametrize("path", files("shared", but=("cli",)), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_and_the_client_import_no_daemon(path: Path) -> None:
    assert not {m for m in imports(path) if m.startswith(("stagewise.manager", "stagewise.executor"))}


@pytest.mark.parametrize(
    ("folder", "other"), [("manager", "stagewise.executor"), ("executor", "stagewise.manager")]
)
def test_a_daemon_does_not_import_the_other(folder: str, other: str) -> None:
    for path in files(folder):
        assert not {m for m in imports(path) if m.startswith(other)}, path


@pytest.mark.parametrize("folder", ["shared", "manager", "executor"])
def test_nothing_imports_the_source_folders_by_their_own_names(folder: str) -> None:
    """Inside the package every import is `stagewise...`: `shared`, `manager` and `executor`
    are folder names, and a user's packages of those names must never be picked up."""
    for path in files(folder):
        assert not {m for m in imports(path) if m.split(".")[0] in ("shared", "manager", "executor")}, path


# What `stagewise executor` must not load: the manager's and the CLI client's libraries (HTTP
# server, metrics, tables, cron, the timeout regex engine), the manager itself, and structlog
# (the log is shared/log.py).  Each costs the executor memory and start-up it has no use for.
EXECUTOR_NEVER = (
    "aiohttp",
    "prometheus_client",
    "rich",
    "croniter",
    "dateutil",
    "regex",
    "structlog",
    "zoneinfo",
    "jsonschema",
    "stagewise.manager",
    "stagewise.client",
    "stagewise.cli.commands",
)


def test_the_executor_entry_loads_none_of_the_heavy_modules() -> None:
    """The modules `stagewise executor` imports before it serves (the CLI's entry, the executor's
    modules, and the logging configured), in a fresh interpreter: none of EXECUTOR_NEVER or
    their submodules is among them."""
    code = (
        "import sys, json\n"
        "from stagewise import cli, log\n"
        "log.configure('info', role='executor')\n"
        "import stagewise.executor.main, stagewise.executor.worker\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = json.loads(out.stdout)
    assert "stagewise.executor.worker" in loaded  # the probe imported what it says
    heavy = [m for m in loaded if m in EXECUTOR_NEVER or m.startswith(tuple(f"{h}." for h in EXECUTOR_NEVER))]
    assert not heavy, heavy
