"""Issue 4 behaviour against real processes: heartbeats and dead executors, retries,
deadlines, cancellation, graceful shutdown, several managers, bounded streams."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers import TERMINAL, wait_for
from tests.helpers import task_until as until


async def get(m: Any, tid: str) -> dict[str, Any]:
    return await m.rpc("tasks.get", {"id": tid})


def sleeper(tid: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "app": "demo",
        **extra,
        "commands": [
            {"method": "demo.echo", "params": {"value": "a"}},
            {"method": "demo.sleep", "params": {"seconds": seconds}},
            {"method": "demo.echo", "params": {"value": "{{ results.1 }}"}},
        ],
    }


async def test_dead_executor_runs_are_requeued_at_their_stage(daemons: Any) -> None:
    m = await daemons.manager()
    ex = await daemons.executor(concurrency=4)
    await m.rpc("tasks.create", {"task": sleeper("s", 30)})
    running = await until(
        m, "s", lambda v: v["status"] == "RUNNING" and v["stage"] == 1, what="stage 1 running"
    )
    execs = await m.rpc("executors.list")
    assert [(e["app"], e["running"]) for e in execs] == [("demo", 1)]
    assert running["locked"] and running["executor_id"] == execs[0]["id"]
    ex.kill()
    # Once its heartbeat lapses (3 x 0.5 s) the run is re-queued at the same stage, results kept.
    v = await until(m, "s", lambda v: v["status"] in ("QUEUED", "SUSPENDED"), what="re-queued")
    assert v["stage"] == 1 and v["results"] == ["a"] and v["job_id"] == running["job_id"]
    # the executor leaves the registry right after its runs were taken back
    await wait_for(lambda: _no_executors(m), timeout=5, what="the dead executor to leave the registry")
    attempts = await m.rpc("tasks.attempts", {"id": "s"})
    assert attempts[-1]["outcome"] == "lost" and attempts[-1]["stage"] == 1


async def test_long_stage_on_a_live_executor_is_never_taken_away(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc("tasks.create", {"task": sleeper("long", 4)})  # 8 heartbeat periods
    v = await until(m, "long", lambda v: v["status"] in TERMINAL, within=20)
    assert v["status"] == "FINISHED" and v["results"] == ["a", 4, 4]
    assert [a["outcome"] for a in await m.rpc("tasks.attempts", {"id": "long"})] == ["ok", "ok", "ok"]


async def test_stage_crashing_its_process_ends_with_executor_lost(daemons: Any) -> None:
    m = await daemons.manager(STAGEWISE_MAX_INTERRUPTIONS=1)
    ex = await daemons.executor(concurrency=1)
    await m.rpc("tasks.create", {"task": sleeper("poison", 30)})
    for _ in range(2):  # killed twice on stage 1 with max_interruptions 1
        await until(m, "poison", lambda v: v["status"] == "RUNNING" and v["stage"] == 1)
        ex.kill()
        await ex.wait_exit()
        await until(m, "poison", lambda v: v["status"] != "RUNNING", what="reaped")
        ex = await daemons.executor(concurrency=1)
    v = await until(m, "poison", lambda v: v["status"] in TERMINAL)
    assert v["status"] == "FAILED" and v["error"]["code"] == "EXECUTOR_LOST" and v["error"]["stage"] == 1


@pytest.mark.parametrize(("policy", "expected_first_stage_runs"), [("current", 1), ("first", 3)])
async def test_retries_with_restart_policy(
    daemons: Any, r: Any, namespace: str, policy: str, expected_first_stage_runs: int
) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "retry",
                "app": "demo",
                "max_retries": 2,
                "retry_backoff": 0.1,
                "restart_policy": policy,
                "commands": [
                    {"method": "demo.echo", "params": {"value": 1}},
                    {"method": "demo.fail", "params": {"message": "nope"}},
                ],
            }
        },
    )
    v = await until(m, "retry", lambda v: v["status"] in TERMINAL)
    assert v["status"] == "FAILED" and v["retries"] == 2 and v["error"]["code"] == "STAGE_ERROR"
    attempts = await m.rpc("tasks.attempts", {"id": "retry"})
    assert sum(1 for a in attempts if a["stage"] == 1 and a["outcome"] == "error") == 3
    assert sum(1 for a in attempts if a["stage"] == 0) == expected_first_stage_runs
    assert all(a["executor_id"] and a["ended"] >= a["started"] for a in attempts)
    assert v["results"] == [1]


async def test_retry_then_success_keeps_results_aligned(daemons: Any, tmp_path: Any) -> None:
    m = await daemons.manager()
    await daemons.executor("tests.flaky_app:app", concurrency=2, FLAKY_DIR=str(tmp_path))
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "flaky",
                "app": "flaky",
                "max_retries": 3,
                "retry_backoff": 0.05,
                "kws": {"n": 2},
                "commands": [
                    {"method": "flaky.value", "params": {"v": "x"}},
                    {"method": "flaky.fail_n", "params": {"key": "k", "n": "{{ kws.n }}"}},
                    {"method": "flaky.value", "params": {"v": "{{ results.1 }}"}},
                ],
            }
        },
    )
    v = await until(m, "flaky", lambda v: v["status"] in TERMINAL)
    assert v["status"] == "FINISHED" and v["retries"] == 2 and v["results"] == ["x", 3, 3]


async def test_a_call_that_outlives_its_timeout_times_out(daemons: Any, tmp_path: Any) -> None:
    """A handler that keeps running through the timeout's cancel and then returns has still
    exceeded its timeout: the stage fails with STAGE_TIMEOUT; its late result is not kept."""
    m = await daemons.manager()
    await daemons.executor("tests.flaky_app:app", concurrency=2, FLAKY_DIR=str(tmp_path))
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "outlive",
                "app": "flaky",
                "commands": [{"method": "flaky.outlive", "params": {"seconds": 0.6}, "timeout": 0.2}],
            }
        },
    )
    v = await until(m, "outlive", lambda v: v["status"] in TERMINAL)
    assert v["status"] == "FAILED" and v["error"]["code"] == "STAGE_TIMEOUT", v
    assert v["results"] == []
    attempts = await m.rpc("tasks.attempts", {"id": "outlive"})
    assert [a["outcome"] for a in attempts] == ["timeout"]
    assert attempts[0]["ended"] - attempts[0]["started"] >= 0.6  # it did run to its end


async def test_stage_timeout_and_exec_timeout(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "st",
                "app": "demo",
                "commands": [{"method": "demo.sleep", "params": {"seconds": 10}, "timeout": 0.3}],
            }
        },
    )
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "et",
                "app": "demo",
                "max_exec_timeout": 1,
                "max_retries": 3,
                "commands": [{"method": "demo.sleep", "params": {"seconds": 10}}],
            }
        },
    )
    st = await until(m, "st", lambda v: v["status"] in TERMINAL)
    assert st["status"] == "FAILED" and st["error"]["code"] == "STAGE_TIMEOUT"
    et = await until(m, "et", lambda v: v["status"] in TERMINAL)
    # EXEC_TIMEOUT fails the run whatever retries are left: the run's budget is spent.
    assert et["status"] == "FAILED" and et["error"]["code"] == "EXEC_TIMEOUT" and et["retries"] == 0
    assert (await m.rpc("tasks.attempts", {"id": "et"}))[-1]["error"]["code"] == "EXEC_TIMEOUT"


async def test_waiting_time_does_not_count_against_max_exec_timeout(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "w",
                "app": "demo",
                "max_exec_timeout": 1,
                "commands": [
                    {"method": "demo.sleep", "params": {"seconds": 0.4}},
                    {"timer": 1.5},
                    {"method": "demo.sleep", "params": {"seconds": 0.4}},
                ],
            }
        },
    )
    v = await until(m, "w", lambda v: v["status"] in TERMINAL)
    assert v["status"] == "FINISHED", v["error"]


async def test_cancel_running_call_within_two_seconds(daemons: Any, r: Any, namespace: str) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc("tasks.create", {"task": sleeper("c", 60)})
    v = await until(m, "c", lambda v: v["status"] == "RUNNING" and v["stage"] == 1)
    dry = await m.rpc("tasks.cancel", {"ids": ["c", "nope"]})
    assert dry == [
        {"id": "c", "status": "CANCELED", "changed": True, "error": None},
        {"id": "nope", "status": None, "changed": False, "error": "TASK_NOT_FOUND"},
    ]
    assert (await get(m, "c"))["status"] == "RUNNING"  # dry run by default
    t0 = time.monotonic()
    res = await m.rpc("tasks.cancel", {"ids": ["c"], "dry_run": False})
    assert res[0]["changed"] and res[0]["status"] == "CANCELED"
    # the executor lets go of the call: its running count drops to 0 within 2 s
    await wait_for(lambda: _running(m, 0), timeout=2.0, what="the call to be cancelled on its executor")
    assert time.monotonic() - t0 < 2.0
    v = await get(m, "c")
    assert v["status"] == "CANCELED" and v["error"]["code"] == "CANCELED" and v["results"] == ["a"]
    again = await m.rpc("tasks.cancel", {"ids": ["c"], "dry_run": False})
    assert again[0]["changed"] is False and again[0]["error"]


async def _no_executors(m: Any) -> bool:
    return await m.rpc("executors.list") == []


async def _running(m: Any, n: int) -> bool:
    execs = await m.rpc("executors.list")
    return bool(execs) and sum(e["running"] for e in execs) == n


@pytest.mark.parametrize("where", ["IDLE", "QUEUED", "WAITING", "SUSPENDED"])
async def test_cancel_not_running(daemons: Any, where: str) -> None:
    m = await daemons.manager()
    cmds: list[dict[str, Any]] = [{"method": "demo.echo", "params": {"value": 1}}]
    task: dict[str, Any] = {"id": "x", "app": "demo", "commands": cmds}
    if where == "IDLE":
        task["run_at"] = time.time() + 3600
    elif where == "WAITING":
        cmds.insert(0, {"message": {}})
    elif where == "SUSPENDED":
        task.update(max_retries=1, retry_backoff=3600)
        cmds[0] = {"method": "demo.fail"}
    await m.rpc("tasks.create", {"task": task})
    if where == "SUSPENDED":
        await daemons.executor(concurrency=1)
    v = await until(m, "x", lambda v: v["status"] == where, what=where)
    res = await m.rpc("tasks.cancel", {"ids": ["x"], "dry_run": False})
    assert res == [{"id": "x", "status": "CANCELED", "changed": True, "error": None}]
    assert (await get(m, "x"))["status"] == "CANCELED"
    if where == "QUEUED":  # the stale stream entry is dropped by the claim, never run
        await daemons.executor(concurrency=1)
        await m.rpc("tasks.create", {"task": {"id": "probe", "app": "demo", "commands": cmds}})
        await until(m, "probe", lambda v: v["status"] == "FINISHED")
        assert await m.rpc("tasks.attempts", {"id": "x"}) == []
    assert v["job_id"]


async def test_graceful_shutdown_hands_back_and_exits_zero(daemons: Any) -> None:
    m = await daemons.manager()
    ex = await daemons.executor(concurrency=4, STAGEWISE_GRACE="0.5")
    await m.rpc("tasks.create", {"task": sleeper("g", 60)})
    await m.rpc("tasks.create", {"task": sleeper("quick", 0.2)})
    await until(m, "g", lambda v: v["status"] == "RUNNING" and v["stage"] == 1)
    ex.terminate()
    assert await ex.wait_exit(10) == 0
    log = ex.log_path.read_text()
    # every role ended before the Redis client closed: no read of theirs was cut off by it
    assert '"executor_stopped"' in log and "_failed" not in log, log[-2000:]
    v = await get(m, "g")
    assert v["status"] == "QUEUED" and v["stage"] == 1 and v["results"] == ["a"]
    attempts = await m.rpc("tasks.attempts", {"id": "g"})
    assert attempts[-1]["outcome"] == "handed_back"
    assert await m.rpc("executors.list") == []  # it left the registry itself before exiting
    # a new executor takes it from its current stage; the graceful hand-back is no interruption
    await daemons.executor(concurrency=4)
    await until(m, "g", lambda v: v["status"] == "RUNNING" and v["stage"] == 1)


async def test_idle_executor_stops_cleanly(daemons: Any) -> None:
    """SIGTERM on an executor with nothing to do: it exits 0, and its blocking reads (fetch,
    cancel requests) end before its Redis client closes, so none of them logs a failure."""
    await daemons.manager()
    ex = await daemons.executor(concurrency=2)
    await wait_for(lambda: "executor_started" in ex.log_tail(), timeout=10, what="the executor up")
    ex.terminate()
    assert await ex.wait_exit(10) == 0
    log = ex.log_path.read_text()
    assert '"executor_stopped"' in log and "_failed" not in log, log[-2000:]


async def test_second_sigterm_stops_at_once(daemons: Any) -> None:
    m = await daemons.manager()
    ex = await daemons.executor(concurrency=2, STAGEWISE_GRACE="60")
    await m.rpc("tasks.create", {"task": sleeper("t2", 60)})
    await until(m, "t2", lambda v: v["status"] == "RUNNING" and v["stage"] == 1)
    ex.terminate()
    await wait_for(lambda: "executor_stopping" in ex.log_tail(), timeout=5, what="the first SIGTERM seen")
    ex.terminate()
    assert await ex.wait_exit(5) != 0


async def test_two_managers_do_not_double_act(daemons: Any) -> None:
    m1 = await daemons.manager()
    m2 = await daemons.manager()
    await daemons.executor(concurrency=16)
    n = 60
    for i in range(n):
        await (m1 if i % 2 else m2).rpc(
            "tasks.create",
            {
                "task": {
                    "id": f"t{i}",
                    "app": "demo",
                    "run_at": time.time() + 0.3,
                    "commands": [
                        {"method": "demo.echo", "params": {"value": i}},
                        {"timer": 0.2},
                        {"method": "demo.echo", "params": {"value": "{{ results.0 }}"}},
                    ],
                }
            },
        )

    async def done() -> bool:
        page = await m1.rpc("tasks.list", {"status": "FINISHED", "max_results": 1000})
        return len(page["items"]) == n

    await wait_for(done, timeout=30, what="all tasks finished")
    for i in range(n):
        attempts = await m2.rpc("tasks.attempts", {"id": f"t{i}"})
        assert [(a["stage"], a["outcome"]) for a in attempts] == [(0, "ok"), (2, "ok")]
        v = await get(m1, f"t{i}")
        assert v["results"] == [i, None, i] and v["attempt"] == 2  # queued once per need


async def test_streams_are_trimmed(daemons: Any, r: Any, namespace: str) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=16)
    for i in range(300):
        await m.rpc(
            "tasks.create",
            {
                "task": {
                    "id": f"n{i}",
                    "app": "demo",
                    "commands": [{"method": "demo.echo", "params": {"value": i}}],
                }
            },
        )
    stream = "{" + namespace + ":0}:q:demo"

    async def trimmed() -> bool:
        page = await m.rpc("tasks.list", {"status": "FINISHED", "max_results": 1000})
        return len(page["items"]) == 300 and await r.xlen(stream) <= 1

    await wait_for(trimmed, timeout=20, what="the stream to be trimmed")
