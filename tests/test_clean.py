"""Retention (Store.clean) goes on past the tasks it has cleaned: cleaned tasks keep their
place in the status index, so each clean starts from where the last one ended (the clean
cursor), and a batch limit never makes it meet the same cleaned tasks forever."""

from __future__ import annotations

import time
from typing import Any

from stagewise.config import Settings
from stagewise.manager.store import Store
from stagewise.models import parse_task


async def test_each_clean_goes_on_where_the_last_one_ended(r: Any, redis_url: str, namespace: str) -> None:
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace))
    ids = [f"c{i:02d}" for i in range(25)]
    for i in ids:
        await store.create(parse_task({"id": i, "app": "a", "run_at": 4e9, "commands": [{"method": "m"}]}))
    await store.create(
        parse_task({"id": "sys", "app": "a", "run_at": 4e9, "system": True, "commands": [{"method": "m"}]})
    )
    await store.batch("cancel", ["sys", *ids[:12]], dry_run=False)  # the system task is oldest
    await store.batch("cancel", ids[12:], dry_run=False)
    now = time.time() + 1

    dry = await store.clean(0, True, now, limit=10)
    assert [b["id"] for b in dry] == ids[:9]  # the system task takes a place and is never cleaned
    assert [b["id"] for b in await store.clean(0, True, now, limit=10)] == ids[:9]  # dry runs move nothing

    cleaned: list[str] = []
    for _ in range(3):
        cleaned += [b["id"] for b in await store.clean(0, False, now, limit=10) if b["changed"]]
    assert cleaned == ids
    views = await store.views(ids, include_results=True)
    assert all(v["cleaned"] and v["results"] is None for v in views)
    assert not (await store.get("sys"))["cleaned"]
    assert await store.clean(0, False, now, limit=10) == []
