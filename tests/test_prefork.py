"""`stagewise executor --processes P` (SPEC §9): P executor processes under one supervisor, each
with its own event loop and registration; SIGTERM reaches all of them; a child that dies is
started again; a configuration mistake found in a child stops the group with exit 78."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO_ROOT, Proc, wait_for


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int | str) -> bool:
    return Path(f"/proc/{pid}").exists()


async def _children(m: Any, supervisor: int, n: int) -> list[dict[str, Any]] | None:
    rows = [e for e in await m.rpc("executors.list") if _ppid(int(e["pid"])) == supervisor]
    return rows if len(rows) == n else None


async def _finish(m: Any, prefix: str, n: int, seconds: float = 0.0) -> None:
    for i in range(n):
        cmd = {"method": "demo.sleep", "params": {"seconds": seconds}} if seconds else {"method": "demo.add"}
        if not seconds:
            cmd["params"] = {"a": i, "b": 1}
        await m.rpc("tasks.create", {"task": {"id": f"{prefix}{i}", "app": "demo", "commands": [cmd]}})

    async def done() -> bool:
        page = await m.rpc("tasks.list", {"app": "demo", "status": "FINISHED", "max_results": 1000})
        return sum(v["id"].startswith(prefix) for v in page["items"]) == n

    await wait_for(done, timeout=60, what=f"{n} {prefix} tasks FINISHED")


async def test_processes_register_each_run_tasks_and_stop_together(daemons: Any) -> None:
    m = await daemons.manager()
    sup = await daemons.executor("examples.app:app", concurrency=4, args=["--processes", "3"])
    rows = await wait_for(lambda: _children(m, sup.pid, 3), timeout=30, what="3 executor processes registered")
    assert len({r["id"] for r in rows}) == 3 and all(r["app"] == "demo" for r in rows)
    await _finish(m, "pf-", 60)

    # a child that dies is started again (a new process, a new registration)
    victim = int(rows[0]["pid"])
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> list[dict[str, Any]] | None:
        got = await _children(m, sup.pid, 3)
        alive = [r for r in got or [] if _alive(r["pid"])]
        return got if len(alive) == 3 and all(int(r["pid"]) != victim for r in alive) else None

    await wait_for(replaced, timeout=30, what="the killed process replaced")
    await _finish(m, "pf2-", 30)

    # one SIGTERM to the supervisor stops every child, and the supervisor exits 0
    pids = [int(r["pid"]) for r in await _children(m, sup.pid, 3) or []]
    sup.terminate()
    assert await sup.wait_exit(timeout=30) == 0, sup.log_tail()
    assert not any(_alive(p) and _ppid(p) == sup.pid for p in pids)
    log = sup.log_path.read_text()
    assert log.count('"executor_stopped"') == 3, sup.log_tail()


async def test_a_config_mistake_in_the_children_stops_the_group_with_78(
    redis_url: str, tmp_path: Path
) -> None:
    """A DB index out of range is found by each child when it connects: one line each, and the
    supervisor exits 78 instead of starting them again and again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEWISE_")}
    env.update(PYTHONPATH=str(REPO_ROOT), STAGEWISE_REDIS_URL=redis_url.rsplit("/", 1)[0] + "/99")
    argv = [sys.executable, "-m", "stagewise", "executor", "examples.app:app", "--processes", "2"]
    proc = Proc("executor", argv, env, tmp_path / "executor.log")
    try:
        assert await proc.wait_exit(timeout=30) == 78, proc.log_tail()
        text = proc.log_path.read_text()
        assert "DB index is out of range" in text and "Traceback" not in text, text
        assert "executor_process_died" not in text, text  # never restarted
    finally:
        if proc.alive:
            proc.kill()
