"""The fan-out join (SPEC §3a), one script at a time against the real Redis: the test plays the
manager's spawn and cascade roles by hand (Scheduler.spawn / Scheduler.cascade, one step each),
so the orders that a crash or a race could produce are laid out exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stagewise.config import Settings
from stagewise.keys import Keys
from stagewise.manager.scheduler import CASCADE_BATCH, Scheduler
from stagewise.manager.store import Store
from stagewise.models import parse_task

APP = "demo"
WAIT = {"app": APP, "commands": [{"message": {}}]}


@pytest.fixture
def store(r: Any, redis_url: str, namespace: str) -> Store:
    return Store(r, Settings(redis_url=redis_url, namespace=namespace))


@pytest.fixture
def sched(store: Store) -> Scheduler:
    return Scheduler(store)


@pytest.fixture
def k(namespace: str) -> Keys:
    return Keys(namespace, 0)


async def parent(store: Store, tid: str, children: list[dict[str, Any]], on_failure: str = "fail") -> None:
    doc = {"id": tid, "app": APP, "commands": [{"children": {"tasks": children, "on_failure": on_failure}}]}
    await store.create(parse_task(doc))


async def status(store: Store, tid: str) -> str:
    return (await store.get(tid))["status"]


async def cancel(store: Store, *ids: str) -> None:
    res = await store.batch("cancel", list(ids), dry_run=False)
    assert all(b["changed"] for b in res), res


async def test_a_child_ended_twice_is_counted_once(store: Store, sched: Scheduler, k: Keys, r: Any) -> None:
    await parent(store, "p", [WAIT, WAIT], on_failure="continue")
    assert await sched.spawn(k, 0) == 1
    assert [await status(store, c) for c in ("p.0.0", "p.0.1")] == ["WAITING", "WAITING"]
    await cancel(store, "p.0.0")
    assert (await store.get("p"))["children"]["ended"] == 1
    # restarted by hand while its parent waits, and ended again: its first end stands
    res = await store.batch("restart", ["p.0.0"], dry_run=False)
    assert res[0]["status"] == "WAITING", res
    await store.send("p.0.0", "late")
    assert await status(store, "p.0.0") == "FINISHED"
    assert (await store.get("p"))["children"]["ended"] == 1
    await store.send("p.0.1", {"x": [1, 2.5, "ü", [], {}]})
    v = await store.get("p")
    assert v["status"] == "FINISHED" and v["children"]["ended"] == 2
    first, second = v["results"][0]
    assert first["status"] == "CANCELED" and first["result"] is None and first["error"]["code"] == "CANCELED"
    # the child's JSON reaches the parent unchanged (never decoded and encoded again in Lua)
    assert second == {
        "id": "p.0.1",
        "status": "FINISHED",
        "result": {"x": [1, 2.5, "ü", [], {}]},
        "error": None,
    }


async def test_a_restarted_parent_replaces_children_the_cascade_had_not_reached(
    store: Store, sched: Scheduler, k: Keys, r: Any
) -> None:
    await parent(store, "q", [WAIT])
    await sched.spawn(k, 0)
    old = await store.get("q.0.0")
    await cancel(store, "q")
    assert await r.zscore(k.cascades(), "q") is not None  # handed to the cascade role...
    res = await store.batch("restart", ["q"], dry_run=False)  # ...which has not run yet
    assert res[0]["status"] == "WAITING", res
    assert await status(store, "q.0.0") == "WAITING"  # the old child, still live
    await sched.spawn(k, 0)
    new = await store.get("q.0.0")
    q = await store.get("q")
    assert new["parent"]["job_id"] == q["job_id"] != old["parent"]["job_id"]
    assert new["created"] > old["created"] and new["status"] == "WAITING"
    await sched.cascade(k, 0)  # meets a child its parent waits for: over, nothing cancelled
    assert await r.zscore(k.cascades(), "q") is None
    assert await status(store, "q.0.0") == "WAITING"
    await store.send("q.0.0", 7)
    q = await store.get("q")
    assert q["status"] == "FINISHED" and q["results"][0][0]["result"] == 7


async def test_two_managers_racing_start_the_children_once(
    store: Store, sched: Scheduler, k: Keys, r: Any
) -> None:
    await parent(store, "race", [WAIT, WAIT, WAIT])
    other = Scheduler(store)
    await asyncio.gather(sched.spawn(k, 0), other.spawn(k, 0))
    assert await r.hget(k.task("race"), "spawns") == "1"
    assert await r.zcard(k.spawns()) == 0
    v = await store.get("race")
    assert v["children"]["total"] == 3 and v["children"]["by_status"] == {"WAITING": 3}


async def test_the_cascade_is_bounded_per_script(store: Store, sched: Scheduler, k: Keys, r: Any) -> None:
    n = 2 * CASCADE_BATCH + 50
    doc = {
        "id": "big",
        "app": APP,
        "kws": {"xs": list(range(n))},
        "commands": [{"children": {"map": "{{ kws.xs }}", "task": WAIT}}],
    }
    await store.create(parse_task(doc))
    await sched.spawn(k, 0)
    assert await r.scard(k.live_children("big")) == n
    await cancel(store, "big")
    for left in (n - CASCADE_BATCH, n - 2 * CASCADE_BATCH, 0):
        await sched.cascade(k, 0)
        assert await r.scard(k.live_children("big")) == left
    assert await r.zscore(k.cascades(), "big") is None
    canceled = await r.zcard(k.idx_status("CANCELED"))
    assert canceled == n + 1


async def test_a_nested_family_is_cancelled_level_by_level(store: Store, sched: Scheduler, k: Keys) -> None:
    child = {"app": APP, "commands": [{"children": {"tasks": [WAIT, WAIT]}}]}
    await parent(store, "n", [child, WAIT])
    await sched.spawn(k, 0)  # the children
    await sched.spawn(k, 0)  # the grandchildren
    assert await status(store, "n.0.0.0.1") == "WAITING"
    await cancel(store, "n")
    await sched.cascade(k, 0)
    assert [await status(store, t) for t in ("n.0.0", "n.0.1")] == ["CANCELED", "CANCELED"]
    await sched.cascade(k, 0)
    assert [await status(store, t) for t in ("n.0.0.0.0", "n.0.0.0.1")] == ["CANCELED", "CANCELED"]
    err = (await store.get("n.0.0.0.0"))["error"]
    assert err["code"] == "CANCELED" and "parent" in err["message"]


async def test_a_child_id_held_by_another_task_fails_the_stage(
    store: Store, sched: Scheduler, k: Keys
) -> None:
    await store.create(parse_task({"id": "mine", "app": APP, "commands": [{"message": {}}]}))
    await parent(store, "t", [{**WAIT, "id": "mine"}])
    await sched.spawn(k, 0)
    v = await store.get("t")
    assert (
        v["status"] == "FAILED" and v["error"]["code"] == "INVALID_PARAMS" and "mine" in v["error"]["message"]
    )
    assert await status(store, "mine") == "WAITING"  # untouched
