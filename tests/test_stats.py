"""The dashboard's last hour (manager/stats.py): samples of the exact counters and of the
queues, one per interval whichever manager takes it, turned into per-minute series."""

from __future__ import annotations

from typing import Any

import pytest

from stagewise.config import Settings
from stagewise.keys import DURATION_BUCKETS
from stagewise.manager.stats import _quantile, history, sample
from stagewise.manager.store import Store
from stagewise.models import parse_task
from tests.helpers import wait_for


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([0] * 17, 0.5, None),  # nothing observed
        ([4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.5, 0.005),
        ([1, 1, 1, 1] + [0] * 13, 0.5, 0.01),  # 2 of 4 at or under 0.01
        ([1, 1, 1, 1] + [0] * 13, 0.95, 0.05),
        ([0] * 16 + [3], 0.5, None),  # all above the last bound: no finite answer
    ],
)
def test_quantile_of_bucket_counts(counts: list[int], q: float, expected: float | None) -> None:
    assert len(counts) == len(DURATION_BUCKETS) + 1
    assert _quantile(counts, q) == expected


async def test_one_sample_per_interval_whichever_manager(r: Any, redis_url: str, namespace: str) -> None:
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace, stats_every=60))
    await store.create(parse_task({"app": "a", "commands": [{"method": "m"}]}))
    assert await sample(store, 1_000_020.0) is True
    assert await sample(store, 1_000_050.0) is False  # the same minute: another manager took it
    assert await sample(store, 1_000_080.0) is True
    got = await history(store)
    assert got["t"] == [1_000_080]  # the first sample only anchors the rates
    assert got["created"] == {"a": [0]} and got["queued"] == {"a": [1]}
    assert await sample(store, 1_000_080.0 + 4000) is True  # an hour later: the old ones go
    assert len(await r.hkeys(store.parts[0].stats())) == 1


async def test_history_follows_real_work(daemons: Any) -> None:
    m = await daemons.manager(STAGEWISE_STATS_EVERY="0.5")
    await daemons.executor("examples.app:app", concurrency=4)

    async def sampled() -> bool:
        return len((await m.rpc("stats.history"))["t"]) >= 1  # two samples: rates from now on

    await wait_for(sampled, timeout=10, what="the first samples")
    for i in range(5):
        await m.rpc(
            "tasks.create",
            {"task": {"app": "demo", "commands": [{"method": "demo.echo", "params": {"value": i}}]}},
        )
    await m.rpc("tasks.create", {"task": {"app": "demo", "commands": [{"method": "demo.fail"}]}})

    async def counted() -> dict[str, Any] | None:
        h = await m.rpc("stats.history")
        done = sum(h["finished"].get("demo", [])) >= 5 and sum(h["failed"].get("demo", [])) >= 1
        return h if done else None

    h = await wait_for(counted, timeout=20, what="the work in the history")
    assert sum(h["created"]["demo"]) >= 6
    assert any(v is not None for v in h["p50"]["demo|demo.echo"])
    assert len(h["t"]) == len(h["queued"]["demo"]) == len(h["lag"]["demo"])
