"""Scripts survive an emptied script cache (Redis restart, failover, SCRIPT FLUSH)."""

from __future__ import annotations

from typing import Any

from shared.config import Settings
from shared.models import parse_task
from shared.query import Filters
from shared.store import Store


async def test_pipelined_scripts_after_script_flush(r: Any, redis_url: str, namespace: str) -> None:
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace))
    for i in range(3):
        await store.create(
            parse_task({"id": f"f{i}", "app": "a", "run_at": 4e9, "commands": [{"method": "m"}]})
        )
    await r.script_flush()
    res = await store.batch("cancel", ["f0", "f1", "nope"], dry_run=False)
    assert [b["changed"] for b in res] == [True, True, False]
    await r.script_flush()
    await store.create(parse_task({"id": "g", "app": "a", "commands": [{"method": "m"}]}))  # single call
    page = await store.list_tasks(Filters(status="CANCELED"), "asc", 10, None, False)
    assert [v["id"] for v in page["items"]] == ["f0", "f1"]
