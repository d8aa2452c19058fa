"""tasks.list over the `updated` indexes: filters, both sorts, cursor pagination across
partitions (each item exactly once, in order)."""

from __future__ import annotations

from typing import Any

import pytest

from stagewise.config import Settings
from stagewise.errors import RpcError
from stagewise.keys import GROUP
from stagewise.manager import metrics
from stagewise.manager.query import Filters
from stagewise.manager.store import Store
from stagewise.models import parse_task
from stagewise.storage import calls


@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("sort", ["asc", "desc"])
async def test_pages_cover_every_task_once_in_order(
    r: Any, redis_url: str, namespace: str, partitions: int, sort: str
) -> None:
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace, partitions=partitions))
    ids = [f"task-{i:02d}" for i in range(37)]
    for i, tid in enumerate(ids):
        app = "a" if i % 3 else "b"
        await store.create(parse_task({"id": tid, "app": app, "run_at": 4e9, "commands": [{"method": "m"}]}))
    for app, want in [(None, ids), ("a", [t for i, t in enumerate(ids) if i % 3])]:
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await store.list_tasks(Filters(status="IDLE", app=app), sort, 5, cursor, False)
            assert len(page["items"]) <= 5
            seen += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(v["id"] for v in seen) == sorted(want)
        assert len({v["id"] for v in seen}) == len(want)
        updated = [v["updated"] for v in seen]
        assert updated == sorted(updated, reverse=sort == "desc")
        assert all("results" not in v for v in seen)
    assert (await store.list_tasks(Filters(status="QUEUED"), "desc", 10, None, False))["items"] == []
    with pytest.raises(RpcError) as e:
        await store.list_tasks(Filters(), "desc", 10, "garbage!", False)
    assert e.value.data["field"] == "cursor"


@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("sort", ["asc", "desc"])
async def test_running_tasks_are_listed_and_counted_without_a_status_index(
    r: Any, redis_url: str, namespace: str, partitions: int, sort: str
) -> None:
    """RUNNING has no status index (stagewise.status.UNINDEXED): tasks.list reads the RUNNING
    tasks from the deadlines zsets, in `updated` order with the other filters and the cursor
    working as for any status; apps.list and /metrics count them from there."""
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace, partitions=partitions))
    ids = [f"run-{i:02d}" for i in range(14)]
    app_of = {tid: "a" if i % 3 else "b" for i, tid in enumerate(ids)}
    for i, tid in enumerate(ids):
        doc = {"id": tid, "app": app_of[tid], "tags": ["x"] if i % 2 else [], "commands": [{"method": "m"}]}
        await store.create(parse_task(doc))
    entries: dict[str, tuple[str, str]] = {}
    for k in store.parts:
        assert await store.scripts.run(calls.ping(k, "ex1", ["app", "a", "host", "h", "pid", 1]))
        for app in ("a", "b"):
            for _, got in await r.xreadgroup(GROUP, "ex1", {k.stream(app): ">"}) or []:
                entries.update({f["t"]: (eid, f["j"]) for eid, f in got})
    running = ids[:10]  # one claim per call, so most get an `updated` of their own
    for tid in reversed(running):
        k = store.keys(tid)
        eid, job = entries[tid]
        res = await store.scripts.run(calls.claim(k, k.stream(app_of[tid]), eid, tid, job, "ex1", f"l-{tid}"))
        assert res.code == "OK", res
    views = {tid: await store.get(tid) for tid in ids}
    assert {t for t, v in views.items() if v["status"] == "RUNNING"} == set(running)

    def order(tids: list[str]) -> list[str]:
        return sorted(tids, key=lambda t: (views[t]["updated"], t), reverse=sort == "desc")

    async def pages(f: Filters) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await store.list_tasks(f, sort, 3, cursor, False)
            assert len(page["items"]) <= 3
            seen += [v["id"] for v in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen

    since = sorted(views[t]["updated"] for t in running)[4]
    cases = [
        (Filters(status="RUNNING"), running),
        (Filters(status="RUNNING", app="a"), [t for t in running if app_of[t] == "a"]),
        (Filters(status="RUNNING", tags=("x",)), [t for t in running if views[t]["tags"]]),
        (Filters(status="RUNNING", since=since), [t for t in running if views[t]["updated"] >= since]),
        (Filters(status="RUNNING", cleaned=False), running),  # the lane, with the fields checked
        (Filters(), ids),  # every status merged: the RUNNING lane among the indexes
        (Filters(app="b"), [t for t in ids if app_of[t] == "b"]),
    ]
    for f, want in cases:
        assert await pages(f) == order(want), f

    [row_a] = [x for x in await store.apps(await store.server_time()) if x["app"] == "a"]
    assert (row_a["running"], row_a["queued"]) == (
        sum(app_of[t] == "a" for t in running),
        sum(app_of[t] == "a" for t in ids[10:]),
    )
    snap = await metrics.gather(store)
    assert snap.tasks[("b", "RUNNING")] == sum(app_of[t] == "b" for t in running)

    # a run that ends leaves the RUNNING list with its deadline
    done = running[0]
    k = store.keys(done)
    res = await store.scripts.run(calls.commit(k, done, entries[done][1], f"l-{done}", 0, "null", "ok"))
    assert res.code == "FINISHED"
    assert await pages(Filters(status="RUNNING")) == order(running[1:])
