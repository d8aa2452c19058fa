"""Flow control (SPEC §2a) end to end: real manager and executor processes, a real Redis.

The handlers (tests/limits_app.py) record their own overlap per limit key in Redis (INCR on
entry with a maximum tracker, DECR on exit) and their start times, so what is checked is what
the handlers saw."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.helpers import TERMINAL, RpcError, task_until, wait_for
from tests.limits_app import max_key, pid_key, running_key, runs_key, starts_key

APP = "tests.limits_app:app"
PARTS = {"STAGEWISE_PARTITIONS": 3}


def lim_task(tid: str, key: str, ms: int = 50, priority: int = 0, **limit: Any) -> dict[str, Any]:
    """A lim.work task under one limit key, given through a template over kws."""
    return {
        "id": tid,
        "app": "lim",
        "priority": priority,
        "kws": {"k": key},
        "commands": [{"method": "lim.work", "params": {"key": key, "ms": ms}}],
        "limits": [{"key": "c:{{ kws.k }}", **limit}],
    }


async def all_finished(m: Any, ids: list[str], within: float = 60.0) -> list[dict[str, Any]]:
    views: dict[str, dict[str, Any]] = {}

    async def probe() -> bool:
        for tid in ids:
            if tid not in views:
                v = await m.rpc("tasks.get", {"id": tid})
                if v["status"] in TERMINAL:
                    views[tid] = v
        return len(views) == len(ids)

    await wait_for(probe, timeout=within, what=f"{len(ids)} tasks to end")
    assert all(v["status"] == "FINISHED" for v in views.values()), [
        v for v in views.values() if v["status"] != "FINISHED"
    ]
    return [views[t] for t in ids]


async def test_concurrency_holds_across_executors_and_partitions(daemons: Any, r: Any) -> None:
    m = await daemons.manager(**PARTS)
    for _ in range(3):
        await daemons.executor(APP, concurrency=8, **PARTS)
    ids = [f"cc-{i}" for i in range(40)]
    for tid in ids:
        await m.rpc("tasks.create", {"task": lim_task(tid, "a", ms=80, concurrency=3)})
    held = await task_until(m, ids[-1], lambda v: v["blocked_by"] == "c:a" or v["status"] in TERMINAL)
    await all_finished(m, ids)
    assert int(await r.get(max_key(daemons.namespace, "a"))) == 3  # reached, never passed
    assert held["status"] in TERMINAL or held["status"] == "QUEUED"
    got = await wait_for(lambda: _settled(m, "c:a"), timeout=10, what="the key's slots all given back")
    assert got == {"key": "c:a", "running": 0, "held": 0, "paused_until": None}


async def _settled(m: Any, key: str) -> dict[str, Any] | None:
    v = await m.rpc("limits.get", {"key": key})
    return v if v["running"] == 0 and v["held"] == 0 else None


async def test_held_backlog_of_one_key_blocks_no_other(daemons: Any, r: Any) -> None:
    """20 slow tasks of one key with concurrency 1 queued first; tasks of another key (and
    without limits) queued after them finish long before that backlog does."""
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=4)
    slow = [f"slow-{i}" for i in range(20)]
    for tid in slow:
        await m.rpc("tasks.create", {"task": lim_task(tid, "slow", ms=300, concurrency=1)})
    v = await task_until(m, slow[-1], lambda v: v["blocked_by"] == "c:slow", what="the backlog held back")
    assert v["status"] == "QUEUED"
    fast = [f"fast-{i}" for i in range(10)]
    t0 = time.monotonic()
    for tid in fast:
        await m.rpc("tasks.create", {"task": lim_task(tid, "fast", ms=10, concurrency=2)})
    await all_finished(m, fast, within=5)
    assert time.monotonic() - t0 < 3.0  # the slow backlog needs 6 s
    left = await m.rpc("tasks.list", {"status": "QUEUED", "app": "lim"})
    assert len(left["items"]) >= 5  # the slow key still holds its backlog back
    info = await m.rpc("limits.get", {"key": "c:slow"})
    assert info["running"] == 1 and info["held"] >= 5, info
    await all_finished(m, slow, within=30)
    assert int(await r.get(max_key(daemons.namespace, "slow"))) == 1


async def test_priority_then_fifo_within_a_key(daemons: Any, r: Any) -> None:
    m = await daemons.manager()
    blocker = "order-0"
    await m.rpc("tasks.create", {"task": lim_task(blocker, "o", ms=100, concurrency=1)})
    ids = [f"order-{i}" for i in range(1, 6)]
    for i, tid in enumerate(ids):  # created in order; the last one has a higher priority
        await m.rpc(
            "tasks.create", {"task": lim_task(tid, "o", ms=10, priority=5 if i == 4 else 0, concurrency=1)}
        )
    await daemons.executor(APP, concurrency=4)  # everything is QUEUED before the first claim
    await all_finished(m, [blocker, *ids])
    runs = await r.lrange(f"limtest:{{{daemons.namespace}}}:runs", 0, -1)
    # the first claim may take any entry of the read; after it, the key's held order rules
    rest = [t for t in runs if t != runs[0]]
    expected = [t for t in [ids[4], blocker, *ids[:4]] if t != runs[0]]
    assert rest == expected, runs


async def test_rate_is_respected_over_a_window(daemons: Any, r: Any) -> None:
    m = await daemons.manager(**PARTS)
    await daemons.executor(APP, concurrency=8, **PARTS)
    await daemons.executor(APP, concurrency=8, **PARTS)
    ids = [f"rate-{i}" for i in range(9)]
    t0 = time.time()
    for tid in ids:
        await m.rpc("tasks.create", {"task": lim_task(tid, "r", ms=5, rate=3, per=1.0)})
    await all_finished(m, ids)
    starts = sorted(float(x) for x in await r.lrange(starts_key(daemons.namespace, "r"), 0, -1))
    assert len(starts) == 9
    # at most 3 claims in any 1 s: the 4th start after a start is at least ~1 s later (the
    # handler starts a few ms after its claim, with jitter of its own)
    gaps = [starts[i + 3] - starts[i] for i in range(len(starts) - 3)]
    assert min(gaps) > 0.9, gaps
    assert starts[-1] - t0 < 6.0  # and nothing waited needlessly (9 at 3/s: ~2 s)


async def test_slots_of_a_killed_executor_come_back(daemons: Any, r: Any) -> None:
    """SIGKILL an executor holding both slots of a key: no other task of the key starts while
    the dead runs hold them; after the reap they come back, every task finishes, and the
    handlers never overlapped beyond the limit."""
    ns = daemons.namespace
    m = await daemons.manager(**PARTS)
    victim = await daemons.executor(APP, concurrency=4, **PARTS)
    ids = [f"kill-{i}" for i in range(8)]
    for tid in ids:
        await m.rpc("tasks.create", {"task": lim_task(tid, "k", ms=1500, concurrency=2)})
    await wait_for(
        lambda: _scard_is(r, pid_key(ns, victim.pid), 2), timeout=15, what="the victim to run both slots"
    )
    victim.kill()
    await victim.wait_exit()
    for member in await r.smembers(pid_key(ns, victim.pid)):  # their handlers died with it
        await r.decr(running_key(ns, member.split("|", 1)[0]))
    await daemons.executor(APP, concurrency=4, **PARTS)
    await all_finished(m, ids, within=60)
    assert int(await r.get(max_key(ns, "k"))) == 2
    assert await wait_for(lambda: _settled(m, "c:k"), timeout=10, what="slots given back")


async def _scard_is(r: Any, key: str, n: int) -> bool:
    return bool(await r.scard(key) == n)


async def test_limits_pause_and_resume(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=4)
    far = time.time() + 3600
    got = await m.rpc("limits.pause", {"key": "c:p", "until": far})
    assert got["key"] == "c:p" and abs(got["paused_until"] - far) < 1e-3
    ids = [f"p-{i}" for i in range(3)]
    for tid in ids:
        await m.rpc("tasks.create", {"task": lim_task(tid, "p", ms=5, concurrency=5)})
    for tid in ids:
        v = await task_until(m, tid, lambda v: v["blocked_by"] == "c:p", what="held by the pause")
        assert v["status"] == "QUEUED"
    info = await m.rpc("limits.get", {"key": "c:p"})
    assert info == {"key": "c:p", "running": 0, "held": 3, "paused_until": pytest.approx(far)}
    assert (await m.rpc("limits.resume", {"key": "c:p"}))["paused_until"] is None
    await all_finished(m, ids, within=10)


async def test_apps_pause_and_resume(daemons: Any) -> None:
    m = await daemons.manager(**PARTS)
    await daemons.executor(APP, concurrency=4, **PARTS)
    await wait_for(lambda: m.rpc("executors.list"), timeout=15, what="the executor")
    got = await m.rpc("apps.pause", {"app": "lim"})
    assert got["app"] == "lim" and got["paused_until"] > time.time() + 86400
    ids = [f"ap-{i}" for i in range(4)]
    for tid in ids:
        await m.rpc(
            "tasks.create",
            {"task": {"id": tid, "app": "lim", "commands": [{"method": "lim.work", "params": {"key": "z"}}]}},
        )
    rows = {a["app"]: a for a in await m.rpc("apps.list")}
    assert rows["lim"]["paused_until"] == got["paused_until"]
    with pytest.raises(AssertionError):  # not claimed while paused (executors stay connected)
        await task_until(m, ids[0], lambda v: v["status"] != "QUEUED", within=2.5)
    assert len(await m.rpc("executors.list")) == 1
    assert (await m.rpc("apps.resume", {"app": "lim"})) == {"app": "lim", "paused_until": None}
    await all_finished(m, ids, within=10)
    rows = {a["app"]: a for a in await m.rpc("apps.list")}
    assert rows["lim"]["paused_until"] is None


async def test_retry_later_pauses_its_key_and_is_not_a_retry(daemons: Any, r: Any) -> None:
    ns = daemons.namespace
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=4)
    t = lim_task("later-1", "rl", ms=5, concurrency=5)
    t["commands"][0]["params"].update(later=1.5, pause="c:rl")
    t0 = time.time()
    await m.rpc("tasks.create", {"task": t})
    await task_until(m, "later-1", lambda v: v["status"] == "SUSPENDED", what="suspended by RetryLater")
    await m.rpc("tasks.create", {"task": lim_task("later-2", "rl", ms=5, concurrency=5)})
    v2 = await task_until(m, "later-2", lambda v: v["status"] in TERMINAL, within=10)
    v1 = await task_until(m, "later-1", lambda v: v["status"] in TERMINAL, within=10)
    assert v1["status"] == v2["status"] == "FINISHED"
    assert v1["retries"] == 0 and v1["error"] is None
    starts = sorted(float(x) for x in await r.lrange(starts_key(ns, "rl"), 0, -1))
    assert len(starts) == 2 and starts[0] - t0 >= 1.4, (starts, t0)  # the key was paused meanwhile
    outcomes = [a["outcome"] for a in await m.rpc("tasks.attempts", {"id": "later-1"})]
    assert outcomes == ["retry_later", "ok"]


async def test_backpressure_refuses_with_nothing_written(daemons: Any) -> None:
    m = await daemons.manager(STAGEWISE_MAX_BACKLOG=3)
    for i in range(3):
        await m.rpc(
            "tasks.create", {"task": {"id": f"bp-{i}", "app": "nobody", "commands": [{"method": "x"}]}}
        )
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.create", {"task": {"id": "bp-3", "app": "nobody", "commands": [{"method": "x"}]}})
    assert e.value.code == 1005
    assert e.value.data["field"] == "app" and e.value.data["retry_after"] > 0 and e.value.data["reason"]
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.get", {"id": "bp-3"})
    assert e.value.code == 1001
    # another app is not refused
    await m.rpc("tasks.create", {"task": {"id": "bp-o", "app": "other", "commands": [{"method": "x"}]}})


async def test_limit_keys_are_checked_at_create(daemons: Any) -> None:
    m = await daemons.manager()
    bad = [
        ([{"key": "k"}], "task.limits[0]"),
        ([{"key": "{{ kws.missing }}", "concurrency": 1}], "task.limits[0].key"),
        ([{"key": "a b", "concurrency": 1}], "task.limits[0].key"),
        ([{"key": "k", "concurrency": 0}], "task.limits[0].concurrency"),
        ([{"key": "k", "concurrency": 1}] * 2, "task.limits[1].key"),
        ([{"key": f"k{i}", "concurrency": 1} for i in range(5)], "task.limits"),
    ]
    for limits, field in bad:
        with pytest.raises(RpcError) as e:
            await m.rpc(
                "tasks.create", {"task": {"app": "x", "commands": [{"method": "m"}], "limits": limits}}
            )
        assert e.value.code == -32602 and e.value.data["field"] == field, (limits, e.value.data)


def deb_task(n: int, **debounce: Any) -> dict[str, Any]:
    """A lim.work task debounced by one key; its document names `n` in the key its handler
    records under, so the run tells which document it ran."""
    return {
        "app": "lim",
        "kws": {"n": n, "who": "x"},
        "commands": [{"method": "lim.work", "params": {"key": f"deb{n}", "ms": 5}}],
        "debounce": {"key": "deb:{{ kws.who }}", **debounce},
    }


async def test_debounce_runs_a_burst_once_with_the_last_document(daemons: Any, r: Any) -> None:
    ns = daemons.namespace
    m = await daemons.manager(**PARTS)
    await daemons.executor(APP, concurrency=4, **PARTS)
    views = [await m.rpc("tasks.create", {"task": deb_task(n, period=1.0)}) for n in range(10)]
    last = time.time()
    tid = views[0]["id"]
    assert {v["id"] for v in views} == {tid} and views[-1]["kws"]["n"] == 9
    v = await task_until(m, tid, lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED" and v["results"] == [tid] and v["created"] == views[0]["created"]
    assert await r.lrange(runs_key(ns), 0, -1) == [tid]  # once
    [started] = [float(x) for x in await r.lrange(starts_key(ns, "deb9"), 0, -1)]  # the last document
    assert not any([await r.exists(starts_key(ns, f"deb{n}")) for n in range(9)])
    assert started - last > 0.9  # a period after the last create
    # the key's task started: the next create is a new task
    again = await m.rpc("tasks.create", {"task": deb_task(10, period=0.2)})
    assert again["id"] != tid
    await task_until(m, again["id"], lambda v: v["status"] == "FINISHED", within=15)


async def test_debounce_max_wait_bounds_the_delay(daemons: Any, r: Any) -> None:
    """Creates keep coming every 0.2 s (each pushing the run a period later); the task runs
    max_wait after the first create all the same, once."""
    ns = daemons.namespace
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=4)
    first = await m.rpc("tasks.create", {"task": deb_task(0, period=1.0, max_wait=2.0)})
    t0 = first["created"]
    ids = {first["id"]}
    n = 0
    while not await r.exists(runs_key(ns)) and time.time() - t0 < 10:
        n += 1
        ids.add((await m.rpc("tasks.create", {"task": deb_task(n, period=1.0, max_wait=2.0)}))["id"])
        await asyncio.sleep(0.2)  # the pace of the creates, not a wait for anything
    v = await task_until(m, first["id"], lambda v: v["status"] in TERMINAL, within=10)
    assert v["status"] == "FINISHED"
    [started] = [
        float(x) for key in await r.keys(f"limtest:{{{ns}}}:deb*:starts") for x in await r.lrange(key, 0, -1)
    ]
    assert 1.9 < started - t0 < 3.0, started - t0  # max_wait (2 s) and the manager's tick
    assert await r.lrange(runs_key(ns), 0, -1) == [first["id"]]
    assert n >= 9 and len(ids) <= 2  # a create that came after the start made a new task


async def test_retry_later_with_a_foreign_pause_key_fails_the_attempt(daemons: Any) -> None:
    """A pause_key that is not one of the task's limit keys is a mistake of the handler: the
    attempt fails with a STAGE_ERROR saying so (no retry left: the run fails), nothing is paused."""
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=2)
    t = lim_task("foreign-1", "fk", ms=5, concurrency=5)
    t["commands"][0]["params"].update(later=30, pause="c:someone-else")
    await m.rpc("tasks.create", {"task": t})
    v = await task_until(m, "foreign-1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FAILED" and v["error"]["code"] == "STAGE_ERROR", v
    assert v["error"]["type"] == "RetryLater" and "c:someone-else" in v["error"]["message"]
    assert (await m.rpc("limits.get", {"key": "c:someone-else"}))["paused_until"] is None
    [a] = await m.rpc("tasks.attempts", {"id": "foreign-1"})
    assert a["outcome"] == "error"
