"""End to end: real manager and executor processes, a real Redis, tasks through JSON-RPC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TERMINAL, RpcError, task_until, wait_for


async def until_status(m: Any, task_id: str, statuses: set[str], within: float = 15.0) -> dict[str, Any]:
    return await task_until(
        m, task_id, lambda v: v["status"] in statuses, within, f"{task_id} to reach {statuses}"
    )


async def test_demo_flow(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=4)
    task = json.loads((Path(__file__).parents[1] / "examples" / "demo_task.json").read_text())
    task["id"] = "demo-1"
    created = await m.rpc("tasks.create", {"task": task})
    # due now: queued in the same step as its creation, or already claimed for the executor if
    # it had offered a free slot by then (push delivery)
    assert created["status"] in ("QUEUED", "RUNNING")
    waiting = await until_status(m, "demo-1", {"WAITING"})
    if waiting["stage"] == 3:  # the timer: then the message stage
        waiting = await wait_for(lambda: _at_stage(m, "demo-1", 4), timeout=10, what="the message stage")
    assert waiting["status"] == "WAITING" and waiting["stage"] == 4
    await m.rpc("tasks.send", {"id": "demo-1", "data": {"name": "world"}})
    done = await until_status(m, "demo-1", TERMINAL)
    assert done["status"] == "FINISHED", done
    assert done["exit_code"] == 0 and done["error"] is None
    res = done["results"]
    assert res[0] == 42
    assert res[1]["amount"] == 42 and res[1]["currency"] == "EUR"
    assert res[2] is None  # the condition was false: skipped
    assert res[3] is None  # timer
    assert res[4] == {"name": "world"}
    assert res[5] == "hi there, world!"
    attempts = await m.rpc("tasks.attempts", {"id": "demo-1"})
    assert [(a["stage"], a["outcome"]) for a in attempts] == [(0, "ok"), (1, "ok"), (2, "skipped"), (5, "ok")]
    status, body = await m.get("/tasks/demo-1/status")
    assert status == 201 and body == {"status": "FINISHED", "stage": 6, "stages": 6}


async def _at_stage(m: Any, task_id: str, stage: int) -> dict[str, Any] | None:
    v = await m.rpc("tasks.get", {"id": task_id})
    return v if v["status"] == "WAITING" and v["stage"] == stage else None


async def test_200_concurrent_tasks(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=32)
    n = 200
    for i in range(n):
        await m.rpc(
            "tasks.create",
            {
                "task": {
                    "id": f"c-{i}",
                    "app": "demo",
                    "kws": {"i": i},
                    "commands": [
                        {"method": "demo.add", "params": {"a": "{{ kws.i }}", "b": 1}},
                        {"method": "demo.add", "params": {"a": "{{ results.0 }}", "b": "{{ results.-1 }}"}},
                        {"method": "demo.echo", "params": {"value": "n={{ results.1 }}"}},
                    ],
                }
            },
        )

    async def all_done() -> list[dict[str, Any]] | None:
        page = await m.rpc(
            "tasks.list", {"app": "demo", "status": "FINISHED", "max_results": 1000, "include_results": True}
        )
        return page["items"] if len(page["items"]) == n else None

    items = await wait_for(all_done, timeout=60, what=f"{n} tasks FINISHED")
    by_id = {v["id"]: v for v in items}
    for i in range(n):
        v = by_id[f"c-{i}"]
        assert v["results"] == [i + 1, 2 * (i + 1), f"n={2 * (i + 1)}"], v
    queued = await m.rpc("tasks.list", {"status": "QUEUED"})
    assert queued["items"] == []


@pytest.mark.parametrize(
    ("command", "code", "type_"),
    [
        ({"method": "demo.fail", "params": {"message": "no money"}}, "STAGE_ERROR", "RuntimeError"),
        ({"method": "demo.nope"}, "METHOD_NOT_FOUND", None),
        ({"method": "demo.add", "params": {"a": "x", "b": 1}}, "INVALID_PARAMS", None),
        ({"method": "demo.add", "params": {"a": 1}}, "INVALID_PARAMS", None),
        ({"method": "demo.add", "params": {"a": 1, "b": 2, "c": 3}}, "INVALID_PARAMS", None),
        ({"method": "demo.add", "params": {"a": "{{ kws.missing }}", "b": 1}}, "TEMPLATE_ERROR", None),
        ({"method": "demo.sleep", "params": {"seconds": 30}, "timeout": 0.2}, "STAGE_TIMEOUT", None),
    ],
)
async def test_stage_errors_fail_the_task(
    daemons: Any, command: dict[str, Any], code: str, type_: str | None
) -> None:
    m = await daemons.manager()
    ex = await daemons.executor("examples.app:app", concurrency=2)
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "f",
                "app": "demo",
                "commands": [{"method": "demo.echo", "params": {"value": 1}}, command],
            }
        },
    )
    v = await until_status(m, "f", TERMINAL)
    assert v["status"] == "FAILED"
    assert v["exit_code"] == 1
    assert v["error"]["code"] == code and v["error"]["stage"] == 1
    assert v["error"]["message"]
    assert v["error"].get("type") == type_
    assert v["results"] == [1]
    status, _ = await m.get("/tasks/f/status")
    assert status == 500
    attempts = await m.rpc("tasks.attempts", {"id": "f"})
    assert attempts[-1]["outcome"] in ("error", "timeout") and attempts[-1]["error"]["code"] == code
    # the handler's traceback (SPEC §7) comes with a STAGE_ERROR only, in the task and its attempt
    tb = v["error"].get("traceback")
    assert (tb is not None) == (code == "STAGE_ERROR")
    if tb is not None:
        assert "examples/app.py" in tb and "in fail" in tb and tb.rstrip().endswith("RuntimeError: no money")
        assert attempts[-1]["error"]["traceback"] == tb
        # and the executor's stage line carries it (JSON lines: one per finished stage)
        lines = [json.loads(x) for x in ex.log_path.read_text().splitlines() if x.startswith("{")]
        assert any(x.get("event") == "stage" and x.get("traceback") == tb for x in lines)


async def test_queued_before_any_executor_is_delivered(daemons: Any) -> None:
    """The consumer group exists from the first create: work queued before the app's first
    executor started is not skipped."""
    m = await daemons.manager()
    for i in range(5):
        await m.rpc(
            "tasks.create",
            {
                "task": {
                    "id": f"early-{i}",
                    "app": "demo",
                    "commands": [{"method": "demo.echo", "params": {"value": i}}],
                }
            },
        )
    await daemons.executor("examples.app:app", concurrency=2)
    for i in range(5):
        v = await until_status(m, f"early-{i}", TERMINAL)
        assert v["status"] == "FINISHED" and v["results"] == [i]


async def test_run_at_and_timer_and_message_timeout(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=2)
    info = await m.rpc("system.info")
    assert info["namespace"] and info["partitions"] == 1 and info["redis_version"]
    import time

    at = time.time() + 0.5
    v = await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "later",
                "app": "demo",
                "run_at": at,
                "commands": [
                    {"method": "demo.echo", "params": {"value": "{{ task.id }}"}},
                    {"timer": 0.3},
                    {"message": {"timeout": 0.3}},
                    {"message": {"timeout": 0.3, "on_timeout": "fail"}},
                ],
            }
        },
    )
    assert v["status"] == "IDLE" and v["next_run"] == pytest.approx(at)
    v = await until_status(m, "later", TERMINAL)
    assert v["queued_at"] >= at - 0.01  # never queued before run_at
    assert v["status"] == "FAILED" and v["error"]["code"] == "MESSAGE_TIMEOUT" and v["error"]["stage"] == 3
    assert v["results"] == ["later", None, None]


async def test_early_message_is_kept_for_the_message_stage(daemons: Any) -> None:
    m = await daemons.manager()
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "inbox",
                "app": "demo",
                "commands": [
                    {"method": "demo.echo", "params": {"value": 1}},
                    {"message": {}},
                    {"method": "demo.echo", "params": {"value": "{{ results.1.v }}"}},
                ],
            }
        },
    )
    await m.rpc("tasks.send", {"id": "inbox", "data": {"v": "early"}})  # still QUEUED: no executor yet
    with pytest.raises(RpcError) as e:  # one message stage ahead, one message kept: no room
        await m.rpc("tasks.send", {"id": "inbox", "data": {"v": "extra"}})
    assert e.value.code == 1004
    await daemons.executor("examples.app:app", concurrency=2)
    v = await until_status(m, "inbox", TERMINAL)
    assert v["status"] == "FINISHED" and v["results"] == [1, {"v": "early"}, "early"]


async def test_higher_priority_is_taken_first(daemons: Any) -> None:
    m = await daemons.manager()
    blocker = {"method": "demo.sleep", "params": {"seconds": 1.0}}
    await daemons.executor("examples.app:app", concurrency=1)
    await m.rpc("tasks.create", {"task": {"id": "busy", "app": "demo", "commands": [blocker]}})
    await until_status(m, "busy", {"RUNNING"})
    for i in range(3):
        await m.rpc(
            "tasks.create",
            {
                "task": {
                    "id": f"low{i}",
                    "app": "demo",
                    "commands": [{"method": "demo.echo", "params": {"value": i}}],
                }
            },
        )
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "high",
                "app": "demo",
                "priority": 7,
                "commands": [{"method": "demo.echo", "params": {"value": "h"}}],
            }
        },
    )
    for tid in ["busy", "high", "low0", "low1", "low2"]:
        await until_status(m, tid, TERMINAL)
    started = {}
    for tid in ["busy", "high", "low0", "low1", "low2"]:
        started[tid] = (await m.rpc("tasks.attempts", {"id": tid}))[0]["started"]
    # one slot, held by `busy`: when it frees, the priority-7 task overtakes the earlier lows
    assert sorted(started, key=started.__getitem__) == ["busy", "high", "low0", "low1", "low2"]


async def test_many_concurrent_requests_all_answered(daemons: Any) -> None:
    """More requests in flight than the manager's Redis pool holds: they wait, none fails."""
    import asyncio

    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=16)
    n = 300
    await asyncio.gather(
        *(
            m.rpc(
                "tasks.create",
                {
                    "task": {
                        "id": f"p{i}",
                        "app": "demo",
                        "commands": [{"method": "demo.echo", "params": {"value": i}}],
                    }
                },
            )
            for i in range(n)
        )
    )

    async def done() -> bool:
        page = await m.rpc("tasks.list", {"status": "FINISHED", "max_results": 1000})
        return len(page["items"]) == n

    await wait_for(done, timeout=30, what="all tasks finished")
