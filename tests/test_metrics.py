"""GET /metrics: Prometheus text read from Redis at scrape time (manager/metrics.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import stagewise
from stagewise.config import Settings
from stagewise.keys import Keys
from stagewise.manager.metrics import gather, render
from stagewise.manager.store import Store
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(m: Any, token: str | None = None) -> tuple[int, str, str]:
    """(HTTP status, content type, body) of GET /metrics."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with m._session().get(f"{m.url}/metrics", headers=headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def task(tid: str, app: str, method: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"task": {"id": tid, "app": app, "commands": [{"method": method, "params": params}], **extra}}


async def test_gauges_move(daemons: Any) -> None:
    m = await daemons.manager(STAGEWISE_API_TOKENS="metrics-token")
    status, _, _ = await scrape(m)
    assert status == 401  # behind the same bearer auth as every route but /healthz

    status, ctype, body = await scrape(m, m.token)
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    before = parse(body)
    assert val(before, "stagewise_tasks", app="demo", status="FINISHED") is None
    assert val(before, "stagewise_due_entries") == 0
    assert val(before, "stagewise_executors", app="demo") is None

    await daemons.executor("examples.app:app", concurrency=4)
    for i in range(3):
        await m.rpc("tasks.create", task(f"ok-{i}", "demo", "demo.echo", {"value": i}))
    for i in range(2):
        await m.rpc("tasks.create", task(f"ko-{i}", "demo", "demo.fail", {"message": "no"}))
    await m.rpc("tasks.create", task("later", "demo", "demo.echo", {"value": 0}, run_at=time.time() + 3600))
    # "idle" has no executor: its entries stay on the stream, undelivered, and age
    for i in range(2):
        await m.rpc("tasks.create", task(f"idle-{i}", "idle", "idle.x", {}, priority=3))

    async def settled() -> Samples | None:
        status, _, body = await scrape(m, m.token)
        assert status == 200
        s = parse(body)
        done = (
            val(s, "stagewise_tasks", app="demo", status="FINISHED") == 3
            and val(s, "stagewise_tasks", app="demo", status="FAILED") == 2
            and val(s, "stagewise_executors", app="demo") == 1
            and (val(s, "stagewise_queue_oldest_age_seconds", app="idle", priority="3") or 0) > 0.05
        )
        return s if done else None

    s = await wait_for(settled, timeout=20, interval=0.1, what="metrics to reflect the finished tasks")
    for st in ("QUEUED", "RUNNING", "WAITING", "SUSPENDED", "CANCELED"):
        assert val(s, "stagewise_tasks", app="demo", status=st) == 0, st
    assert val(s, "stagewise_tasks", app="demo", status="IDLE") == 1  # "later"
    assert val(s, "stagewise_tasks", app="idle", status="QUEUED") == 2
    assert val(s, "stagewise_queue_lag", app="idle", priority="3") == 2
    assert val(s, "stagewise_queue_pending", app="idle", priority="3") == 0
    assert val(s, "stagewise_queue_lag", app="demo", priority="0") == 0
    assert val(s, "stagewise_queue_pending", app="demo", priority="0") == 0
    assert val(s, "stagewise_queue_oldest_age_seconds", app="demo", priority="0") == 0
    assert val(s, "stagewise_due_entries") == 1  # "later"'s run_at
    assert val(s, "stagewise_due_overdue") == 0
    assert (val(s, "stagewise_due_lag_seconds") or 0) < 5


def _store(redis_url: str, namespace: str, partitions: int = 1) -> tuple[Store, Any]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    return Store(client, Settings(redis_url=redis_url, namespace=namespace, partitions=partitions)), client


async def test_due_lag_and_partitions(redis_url: str, namespace: str, r: Any) -> None:
    """No manager runs here: overdue entries stay, and their age is the scheduler's lag."""
    store, client = _store(redis_url, namespace, partitions=2)
    try:
        sec, _ = await r.time()
        p0, p1 = Keys(namespace, 0), Keys(namespace, 1)
        await r.zadd(p0.due(), {"demo/a": sec - 30, "demo/b": sec + 3600})
        await r.zadd(p1.due(), {"demo/c": sec - 7})
        for k in (p0, p1):  # an executor registers in every partition: counted once
            await r.zadd(k.executors(), {"ex-1": sec, "ex-old": sec - 3600})
            await r.hset(k.executor("ex-1"), mapping={"app": "demo"})
            await r.hset(k.executor("ex-old"), mapping={"app": "demo"})
        await r.sadd(p1.apps(), "demo")
        await r.zadd(p1.idx_app_status("demo", "QUEUED"), {"x": sec, "y": sec})
        s = parse(render(await gather(store)).decode())
    finally:
        await client.aclose()
    assert val(s, "stagewise_due_entries") == 3
    assert val(s, "stagewise_due_overdue") == 2
    assert 29 < (val(s, "stagewise_due_lag_seconds") or 0) < 60
    assert val(s, "stagewise_executors", app="demo") == 1
    assert val(s, "stagewise_tasks", app="demo", status="QUEUED") == 2
    # the stream of the apps member does not exist: its gauges are there, at zero
    assert val(s, "stagewise_queue_lag", app="demo", priority="0") == 0


async def test_reads_the_write_side_structure(redis_url: str, namespace: str, r: Any) -> None:
    """The read side of the write-time aggregates, against the hash layout the scripts are to
    write (module doc of manager/metrics.py), filled in by hand."""
    store, client = _store(redis_url, namespace)
    k = Keys(namespace, 0)
    await r.sadd(k.apps(), "demo", "demo:2")
    await r.hset(
        k.metrics("demo"),
        mapping={
            "d|0.005|ok|demo.echo": 2,
            "d|0.5|ok|demo.echo": 1,
            "d|+Inf|ok|demo.echo": 1,
            "s|ok|demo.echo": "4000.25",
            "d|0.1|error|a|b": 1,  # '|' in a method name
            "s|error|a|b": "0.07",
            "retries": 3,
            "f|STAGE_ERROR": 2,
            "f|EXEC_TIMEOUT": 1,
            "junk": "x",
            "d|bad": 1,
        },
    )
    try:
        s = parse(render(await gather(store)).decode())
    finally:
        await client.aclose()
    h = "stagewise_stage_duration_seconds"
    echo = {"app": "demo", "method": "demo.echo", "outcome": "ok"}
    assert val(s, f"{h}_bucket", le="0.005", **echo) == 2
    assert val(s, f"{h}_bucket", le="0.25", **echo) == 2
    assert val(s, f"{h}_bucket", le="0.5", **echo) == 3
    assert val(s, f"{h}_bucket", le="3600.0", **echo) == 3
    assert val(s, f"{h}_bucket", le="+Inf", **echo) == 4
    assert val(s, f"{h}_count", **echo) == 4
    assert val(s, f"{h}_sum", **echo) == pytest.approx(4000.25)
    assert val(s, f"{h}_count", app="demo", method="a|b", outcome="error") == 1
    assert val(s, "stagewise_retries_total", app="demo") == 3
    assert val(s, "stagewise_failures_total", app="demo", code="STAGE_ERROR") == 2
    assert val(s, "stagewise_failures_total", app="demo", code="EXEC_TIMEOUT") == 1


async def test_counters_and_histograms_move(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=4)
    for i in range(3):
        await m.rpc("tasks.create", task(f"ok-{i}", "demo", "demo.echo", {"value": i}))
    await m.rpc(
        "tasks.create", task("ko", "demo", "demo.fail", {"message": "no"}, max_retries=1, retry_backoff=0)
    )

    async def settled() -> Samples | None:
        status, _, body = await scrape(m)
        s = parse(body)
        ok = val(s, "stagewise_tasks", app="demo", status="FINISHED") == 3
        return s if ok and val(s, "stagewise_tasks", app="demo", status="FAILED") == 1 else None

    s = await wait_for(settled, timeout=20, interval=0.1, what="the tasks to end")
    h = "stagewise_stage_duration_seconds"
    assert val(s, f"{h}_count", app="demo", method="demo.echo", outcome="ok") == 3
    assert val(s, f"{h}_bucket", app="demo", method="demo.echo", outcome="ok", le="+Inf") == 3
    assert (val(s, f"{h}_sum", app="demo", method="demo.echo", outcome="ok") or 0) > 0
    assert val(s, f"{h}_count", app="demo", method="demo.fail", outcome="error") == 2  # tried twice
    assert val(s, "stagewise_retries_total", app="demo") == 1
    assert val(s, "stagewise_failures_total", app="demo", code="STAGE_ERROR") == 1
    assert val(s, "stagewise_tasks_created_total", app="demo") == 4
    assert val(s, "stagewise_tasks_ended_total", app="demo", status="FINISHED") == 3
    assert val(s, "stagewise_tasks_ended_total", app="demo", status="FAILED") == 1
    assert val(s, "stagewise_build_info", version=stagewise.__version__) == 1
