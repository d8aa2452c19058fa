"""Every executor start-up mistake about its app is one clear line on stderr and a non-zero
exit, never a traceback: no app named, no such module, a module that fails to import, no such
attribute, an attribute that is not a stagewise.App."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def start(spec: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEWISE_")}
    env["PYTHONPATH"] = str(REPO)
    env["STAGEWISE_REDIS_URL"] = "redis://127.0.0.1:1/0"  # never reached: the app is found first
    return subprocess.run(
        [sys.executable, "-m", "stagewise", "executor", spec],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ("", "stagewise: executor: no app given (''): name it as MODULE:APP"),
        (":app", "stagewise: executor: no app given (':app')"),
        ("nosuchmodule:app", "stagewise: executor: no module 'nosuchmodule'"),
        (
            "badimport:app",
            "stagewise: executor: importing badimport failed: ModuleNotFoundError: No module named 'gone'",
        ),
        ("broken:app", "stagewise: executor: importing broken failed: ZeroDivisionError: division by zero ("),
        ("syntax:app", "stagewise: executor: importing syntax failed: SyntaxError:"),
        ("good:nope", "stagewise: executor: good has no attribute 'nope'"),
        ("good:helper", "stagewise: executor: good:helper is a function, not a stagewise.App"),
    ],
)
def test_app_mistakes_are_one_line(tmp_path: Path, spec: str, line: str) -> None:
    (tmp_path / "badimport.py").write_text("import gone\n")
    (tmp_path / "broken.py").write_text("x = 1\ny = x / 0\n")
    (tmp_path / "syntax.py").write_text("def f(:\n")
    (tmp_path / "good.py").write_text("from stagewise import App\napp = App('good')\ndef helper(): pass\n")
    done = start(spec, tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr
    assert "Traceback" not in done.stderr
