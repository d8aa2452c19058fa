"""Every daemon start-up mistake is one clear line on stderr and exit status 78 (EX_CONFIG, which
the units do not restart on), never a traceback: about the app (no app named, no such module, a
module that fails to import, no such attribute, not a stagewise.App) and about Redis (a URL
that cannot be used, a database Redis does not have).  A Redis that does not answer is waited
for, one warning a second, as the manager does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Proc, wait_for

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
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("daemon", ["manager", "executor"])
@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("foo://x", "stagewise: STAGEWISE_REDIS_URL: cannot use 'foo://x': Redis URL must specify"),
        (
            "redis://127.0.0.1:notaport/0",
            "stagewise: STAGEWISE_REDIS_URL: cannot use 'redis://127.0.0.1:notaport/0'",
        ),
        ("redis+sentinel://h:1", "stagewise: configuration error: STAGEWISE_REDIS_URL: bad Sentinel URL"),
        (
            "{redis}/99",
            "stagewise: STAGEWISE_REDIS_URL: Redis refused '{redis}/99': DB index is out of range",
        ),
    ],
)
def test_redis_url_mistakes_are_one_line(redis_url: str, daemon: str, url: str, line: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    url, line = url.replace("{redis}", base), line.replace("{redis}", base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEWISE_")}
    env.update(PYTHONPATH=str(REPO), STAGEWISE_REDIS_URL=url, STAGEWISE_HTTP="127.0.0.1:1")
    argv = [sys.executable, "-m", "stagewise", daemon] + (
        ["examples.app:app"] if daemon == "executor" else []
    )
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 78, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr
    assert "Traceback" not in done.stderr


async def test_the_executor_waits_for_redis(tmp_path: Path) -> None:
    """Redis not answering yet is no mistake: the executor says so once a second and goes on
    waiting; a SIGTERM then stops it cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEWISE_")}
    env.update(PYTHONPATH=str(REPO), STAGEWISE_REDIS_URL="redis://127.0.0.1:1/0")
    argv = [sys.executable, "-m", "stagewise", "executor", "examples.app:app"]
    proc = Proc("executor", argv, env, tmp_path / "executor.log")
    try:
        await wait_for(
            lambda: proc.log_path.read_text().count('"redis_unavailable"') >= 2, timeout=15, what="two warnings"
        )
        assert proc.alive  # still waiting, not dead
        proc.terminate()
        assert await proc.wait_exit(10) == 0
        assert "Traceback" not in proc.log_path.read_text()
    finally:
        if proc.alive:
            proc.kill()
