"""Issue 5 operations through the real manager: list filters, batch operations with dry runs,
create_many and groups, clean, notifications, cron and next_task chaining."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.helpers import TERMINAL, RpcError, wait_for
from tests.helpers import task_until as until


def echo(tid: str, value: Any = 1, **extra: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "app": "demo",
        **extra,
        "commands": [{"method": "demo.echo", "params": {"value": value}}],
    }


def ids(page: dict[str, Any]) -> set[str]:
    return {v["id"] for v in page["items"]}


async def test_list_filters(daemons: Any) -> None:
    m = await daemons.manager()
    later = time.time() + 3600  # IDLE: nothing runs
    await m.rpc("tasks.create", {"task": echo("a", tags=["x", "y"], run_at=later)})
    await m.rpc("tasks.create", {"task": echo("b", tags=["x"], run_at=later, group="g1")})
    await m.rpc("tasks.create", {"task": echo("c", tags=["y"], group="g1")})  # QUEUED (no executor)
    mid = time.time()
    await m.rpc("tasks.create", {"task": echo("d", run_at=later)})
    assert ids(await m.rpc("tasks.list", {"tags": ["x"]})) == {"a", "b"}
    assert ids(await m.rpc("tasks.list", {"tags": ["x", "y"]})) == {"a"}  # all must match
    assert ids(await m.rpc("tasks.list", {"group": "g1"})) == {"b", "c"}
    assert ids(await m.rpc("tasks.list", {"group": "g1", "status": "QUEUED"})) == {"c"}
    assert ids(await m.rpc("tasks.list", {"tags": ["y"], "status": "IDLE"})) == {"a"}
    assert ids(await m.rpc("tasks.list", {"since": mid})) == {"d"}
    iso = datetime.fromtimestamp(mid, UTC).isoformat()
    assert ids(await m.rpc("tasks.list", {"since": iso})) == {"d"}
    assert ids(await m.rpc("tasks.list", {"cleaned": True})) == set()
    assert ids(await m.rpc("tasks.list", {"cleaned": False, "app": "demo"})) == {"a", "b", "c", "d"}
    page = await m.rpc("tasks.list", {"sort": "asc", "max_results": 2, "include_results": True})
    assert [v["id"] for v in page["items"]] == ["a", "b"] and "results" in page["items"][0]
    rest = await m.rpc("tasks.list", {"sort": "asc", "max_results": 2, "cursor": page["next_cursor"]})
    assert [v["id"] for v in rest["items"]] == ["c", "d"] and rest["next_cursor"] is None
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.list", {"since": "yesterday-ish"})
    assert e.value.data["field"] == "since"


async def test_create_many_and_groups(daemons: Any) -> None:
    m = await daemons.manager()
    res = await m.rpc("tasks.create_many", {"tasks": [echo(f"m{i}", i) for i in range(5)], "group": "batch1"})
    assert res == {"group": "batch1", "ids": [f"m{i}" for i in range(5)]}
    g = await m.rpc("groups.get", {"group": "batch1"})
    assert g == {"group": "batch1", "total": 5, "by_status": {"QUEUED": 5}}
    auto = await m.rpc("tasks.create_many", {"tasks": [echo("n0")]})
    assert len(auto["group"]) == 32 and (await m.rpc("tasks.get", {"id": "n0"}))["group"] == auto["group"]
    with pytest.raises(RpcError) as e:  # one existing id: nothing of the batch is written
        await m.rpc("tasks.create_many", {"tasks": [echo("new1"), echo("m0")], "group": "batch2"})
    assert e.value.code == 1002
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.get", {"id": "new1"})
    assert e.value.code == 1001
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.create_many", {"tasks": [echo("z"), {"app": "demo"}]})
    assert e.value.data["field"] == "tasks[1].commands"
    await daemons.executor(concurrency=4)
    await wait_for(lambda: _group_done(m, "batch1", 5), timeout=15, what="the group to finish")


async def _group_done(m: Any, group: str, n: int) -> bool:
    g = await m.rpc("groups.get", {"group": group})
    return g["by_status"].get("FINISHED") == n


async def test_batch_operations_by_ids_and_filters(daemons: Any) -> None:
    m = await daemons.manager()
    later = time.time() + 3600
    for i in range(4):
        await m.rpc("tasks.create", {"task": echo(f"i{i}", run_at=later, tags=["batch"])})
    dry = await m.rpc("tasks.cancel", {"tags": ["batch"]})
    assert sorted(b["id"] for b in dry) == ["i0", "i1", "i2", "i3"]
    assert all(b == {"id": b["id"], "status": "CANCELED", "changed": True, "error": None} for b in dry)
    assert ids(await m.rpc("tasks.list", {"status": "IDLE"})) == {"i0", "i1", "i2", "i3"}  # dry run
    res = await m.rpc("tasks.cancel", {"ids": ["i0", "missing", "i0"], "dry_run": False})
    assert res == [
        {"id": "i0", "status": "CANCELED", "changed": True, "error": None},
        {"id": "missing", "status": None, "changed": False, "error": "TASK_NOT_FOUND"},
    ]
    # restart a terminal task: a fresh run
    before = await m.rpc("tasks.get", {"id": "i0"})
    res = await m.rpc("tasks.restart", {"ids": ["i0", "i1"], "dry_run": False})
    assert res[0]["status"] == "QUEUED" and res[0]["changed"]
    assert res[1]["changed"] is False and "INVALID_TRANSITION" in res[1]["error"]
    after = await m.rpc("tasks.get", {"id": "i0"})
    assert after["job_id"] != before["job_id"] and after["error"] is None and after["status"] == "QUEUED"
    # delete: terminal only, by filter
    await m.rpc("tasks.cancel", {"ids": ["i1"], "dry_run": False})
    res = await m.rpc("tasks.delete", {"status": "CANCELED", "dry_run": False})
    assert res == [{"id": "i1", "status": "DELETED", "changed": True, "error": None}]
    with pytest.raises(RpcError):
        await m.rpc("tasks.get", {"id": "i1"})
    res = await m.rpc("tasks.delete", {"ids": ["i2"], "dry_run": False})
    assert res[0]["changed"] is False and res[0]["status"] == "IDLE"
    for bad, field in [({}, "ids"), ({"ids": ["i2"], "status": "IDLE"}, "ids")]:
        with pytest.raises(RpcError) as e:
            await m.rpc("tasks.cancel", bad)
        assert e.value.data["field"] == field


async def test_restart_from_current_keeps_earlier_results(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "rc",
                "app": "demo",
                "commands": [
                    {"method": "demo.echo", "params": {"value": "kept"}},
                    {"method": "demo.fail", "params": {"message": "first time"}},
                ],
            }
        },
    )
    v = await until(m, "rc", lambda v: v["status"] in TERMINAL)
    assert v["status"] == "FAILED" and v["results"] == ["kept"]
    await m.rpc("tasks.restart", {"ids": ["rc"], "dry_run": False, "from": "current"})
    v = await until(m, "rc", lambda v: v["status"] in TERMINAL and v["attempt"] > 0)
    attempts = await m.rpc("tasks.attempts", {"id": "rc"})
    assert [a["stage"] for a in attempts] == [0, 1, 1]  # stage 0 did not run again
    await m.rpc("tasks.restart", {"ids": ["rc"], "dry_run": False})  # from first
    await until(m, "rc", lambda v: v["status"] in TERMINAL and len(v["results"]) == 1 and v["attempt"] > 0)
    attempts = await m.rpc("tasks.attempts", {"id": "rc"})
    assert [a["stage"] for a in attempts] == [0, 1, 1, 0, 1]


async def test_unlock_running_task(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "u",
                "app": "demo",
                "commands": [
                    {"method": "demo.sleep", "params": {"seconds": 1.0}},
                    {"method": "demo.echo", "params": {"value": "{{ results.0 }}"}},
                ],
            }
        },
    )
    first = await until(m, "u", lambda v: v["status"] == "RUNNING")
    assert first["locked"]
    dry = await m.rpc("tasks.unlock", {"ids": ["u"]})
    assert dry == [{"id": "u", "status": "QUEUED", "changed": True, "error": None}]
    res = await m.rpc("tasks.unlock", {"ids": ["u"], "dry_run": False})
    assert res[0]["changed"]
    v = await until(m, "u", lambda v: v["status"] in TERMINAL)
    assert v["status"] == "FINISHED" and v["results"] == [1.0, 1.0] and v["job_id"] == first["job_id"]
    outcomes = [(a["stage"], a["outcome"]) for a in await m.rpc("tasks.attempts", {"id": "u"})]
    assert outcomes == [(0, "unlocked"), (0, "ok"), (1, "ok")]  # the old run's result was not committed
    res = await m.rpc("tasks.unlock", {"ids": ["u"], "dry_run": False})
    assert res[0]["changed"] is False and res[0]["error"].startswith("INVALID_TRANSITION")


async def test_clean(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc("tasks.create", {"task": echo("old", "v", kws={"secret": 1})})
    await m.rpc("tasks.create", {"task": echo("sys", "v", system=True)})
    await until(m, "old", lambda v: v["status"] == "FINISHED")
    await until(m, "sys", lambda v: v["status"] == "FINISHED")
    assert await m.rpc("tasks.clean", {"older_than": 3600}) == []  # nothing that old
    dry = await m.rpc("tasks.clean", {"older_than": 0})
    assert dry == [
        {"id": "old", "status": "FINISHED", "changed": True, "error": None},
        {"id": "sys", "status": "FINISHED", "changed": False, "error": None},
    ] or {b["id"] for b in dry if b["changed"]} == {"old"}
    assert (await m.rpc("tasks.get", {"id": "old"}))["cleaned"] is False
    await m.rpc("tasks.clean", {"older_than": 0, "dry_run": False})
    v = await m.rpc("tasks.get", {"id": "old"})
    assert v["cleaned"] is True and v["kws"] == {} and v["results"] is None and v["status"] == "FINISHED"
    s = await m.rpc("tasks.get", {"id": "sys"})
    assert s["cleaned"] is False and s["results"] == ["v"]
    assert ids(await m.rpc("tasks.list", {"cleaned": True})) == {"old"}
    res = await m.rpc("tasks.restart", {"ids": ["old"], "dry_run": False})
    assert res[0]["changed"] is False and "cleaned" in res[0]["error"]


async def test_periodic_clean(daemons: Any) -> None:
    m = await daemons.manager(STAGEWISE_CLEAN_AFTER="0.5")
    await daemons.executor(concurrency=2)
    await m.rpc("tasks.create", {"task": echo("p", "v")})
    v = await until(m, "p", lambda v: v["cleaned"], within=90)
    assert v["results"] is None


async def test_notifications(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc("tasks.create", {"task": echo("n", notify=True)})
    await m.rpc("tasks.create", {"task": echo("quiet")})
    await until(m, "n", lambda v: v["status"] == "FINISHED")
    await until(m, "quiet", lambda v: v["status"] == "FINISHED")
    notes = await m.rpc("notifications.list", {"task_id": "n"})
    assert [x["status"] for x in notes] == ["QUEUED", "RUNNING", "FINISHED"]
    assert all(x["task_id"] == "n" and x["job_id"] and x["created"] for x in notes)
    assert [x["task_id"] for x in await m.rpc("notifications.list", {})] == ["n", "n", "n"]
    assert await m.rpc("notifications.ack", {"ids": [notes[0]["id"], "0-1-bogus"]}) == {"acked": 1}
    assert [x["status"] for x in await m.rpc("notifications.list", {"task_id": "n"})] == [
        "RUNNING",
        "FINISHED",
    ]


async def test_next_task_starts_a_fresh_run_also_when_it_ran_before(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    await m.rpc("tasks.create", {"task": echo("b", "{{ task.job_id }}")})
    first = await until(m, "b", lambda v: v["status"] == "FINISHED")
    await m.rpc("tasks.create", {"task": echo("a", "x", next_task="b")})
    await until(m, "a", lambda v: v["status"] == "FINISHED")
    second = await until(m, "b", lambda v: v["status"] == "FINISHED" and v["job_id"] != first["job_id"])
    assert second["results"] == [second["job_id"]] and second["retries"] == 0 and second["stage"] == 1


async def test_cron_never_runs_at_creation_and_catches_up_once(daemons: Any, r: Any, namespace: str) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    v = await m.rpc("tasks.create", {"task": echo("cron", "tick", cron="*/5 * * * *", tz="Europe/Berlin")})
    assert v["status"] == "IDLE" and v["next_run"] > time.time() and int(v["next_run"]) % 300 == 0
    # Pretend the manager was down for three hours: the fire is long overdue.
    due = "{" + namespace + ":0}:due"
    await r.zadd(due, {"demo/cron": time.time() - 3 * 3600})
    await wait_for(lambda: _ran(m, "cron"), timeout=15, what="the overdue fire to run")
    v = await until(m, "cron", lambda v: v["status"] == "IDLE" and v["next_run"] is not None)
    assert v["next_run"] > time.time() and v["results"] == [] and v["attempt"] == 0
    # the missed fires ran once, not 36 times: the only scheduled wake-up is the next future fire
    assert await r.zrange(due, 0, -1, withscores=True) == [("demo/cron", v["next_run"])]
    assert len(await m.rpc("tasks.attempts", {"id": "cron"})) == 1
    assert int(v["next_run"]) % 300 == 0  # back on the cron grid: no drift


async def _ran(m: Any, tid: str) -> bool:
    return len(await m.rpc("tasks.attempts", {"id": tid})) >= 1
