"""tasks.list over the `updated` indexes: filters, both sorts, cursor pagination across
partitions (each item exactly once, in order)."""

from __future__ import annotations

from typing import Any

import pytest

from stagewise.config import Settings
from stagewise.errors import RpcError
from stagewise.manager.query import Filters
from stagewise.manager.store import Store
from stagewise.models import parse_task


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
