"""stagewise on a real Redis Cluster: three masters on loopback (tests.helpers.RedisClusterServers),
real manager and executor processes with STAGEWISE_PARTITIONS=6 and a namespace whose partitions
land on every master, tasks through JSON-RPC.  The daemons find out by themselves that the URL
names a cluster node (stagewise.storage.connection.connect)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from stagewise.config import Settings
from stagewise.keys import Keys, partition_of
from stagewise.manager.store import Store
from stagewise.models import parse_task
from stagewise.storage.connection import connect, is_cluster
from tests.helpers import (
    TERMINAL,
    Daemons,
    ManagerProc,
    Proc,
    RedisClusterServers,
    add_task,
    started_for_tests,
    task_until,
    wait_for,
)

PARTITIONS = 6
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with started_for_tests(partial(RedisClusterServers.start, masters=3)) as c:
        yield c


@pytest.fixture(scope="module")
def namespace(cluster: RedisClusterServers) -> str:
    """A fresh namespace whose partitions are served by all three masters (the hash slot of a
    partition follows from its tag `{namespace:partition}`, so some namespaces miss a master)."""
    for _ in range(200):
        ns = "t" + uuid.uuid4().hex[:10]
        if {cluster.port_of(Keys(ns, p).prefix) for p in range(PARTITIONS)} == set(cluster.ports):
            return ns
    raise AssertionError("no namespace spreads over every master")


class Stack:
    def __init__(self, d: Daemons, m: ManagerProc, ex: Proc) -> None:
        self.d, self.m, self.ex = d, m, ex


@pytest.fixture(scope="module")
async def stack(
    cluster: RedisClusterServers, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One manager and one demo executor on the cluster, for the whole module."""
    d = Daemons(cluster.url, namespace, Path(tmp_path_factory.mktemp("cluster-logs")))
    failed = True
    try:
        env: dict[str, Any] = {"STAGEWISE_PARTITIONS": PARTITIONS, "STAGEWISE_GRACE": 1}
        m = await d.manager(**env)
        ex = await d.executor("examples.app:app", concurrency=32, **env)
        await wait_for(lambda: m.rpc("executors.list"), timeout=15, what="the demo executor to register")
        yield Stack(d, m, ex)
        failed = False
    finally:
        await d.aclose()
        if failed:
            print(f"\n----- daemon logs (namespace {namespace}) -----\n{d.log_tails()}")


def _keys_by_master(cluster: RedisClusterServers, namespace: str) -> dict[int, list[str]]:
    """Every key of the namespace, by the port of the master that holds it."""
    out: dict[int, list[str]] = {}
    for port in cluster.ports:
        c = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            out[port] = list(c.scan_iter(match=f"{{{namespace}:*", count=1000))
        finally:
            c.close()
    return out


async def running_in_every_partition(m: Any, prefix: str, seconds: float) -> list[str]:
    """One `demo.sleep` task per partition (ids `<prefix>-<n>` picked to cover them all),
    each RUNNING when this returns."""
    candidates = [f"{prefix}-{i}" for i in range(PARTITIONS * 8)]
    ids = list({partition_of(i, PARTITIONS): i for i in candidates}.values())
    assert len(ids) == PARTITIONS, "ids for every partition"
    for tid in ids:
        task = {
            "id": tid,
            "app": "demo",
            "commands": [{"method": "demo.sleep", "params": {"seconds": seconds}}],
        }
        await m.rpc("tasks.create", {"task": task})
    for tid in ids:
        await task_until(m, tid, lambda v: v["status"] == "RUNNING", 10)
    return ids


async def test_connect_detects_the_cluster(cluster: RedisClusterServers, namespace: str) -> None:
    """connect() hands out a cluster client for a cluster node and a plain one otherwise; the
    scripts run on a cluster, each partition's keys on the master that owns its slot."""
    r = await connect(cluster.url, max_connections=8)
    try:
        assert is_cluster(r)
        store = Store(r, Settings(redis_url=cluster.url, namespace=namespace + "x", partitions=PARTITIONS))
        ids = [f"c-{i}" for i in range(24)]
        tasks = [
            parse_task({"id": i, "app": "nobody", "group": "g", "commands": [{"method": "nobody.x"}]})
            for i in ids
        ]
        await store.create_many(tasks, "g")
        views = await store.views(ids, include_results=False)
        assert sorted(v["id"] for v in views) == sorted(ids) and {v["status"] for v in views} == {"QUEUED"}
        assert (await store.group("g"))["by_status"] == {"QUEUED": 24}
        await r.script_flush()  # every primary forgets the scripts: a pipeline replays them
        res = await store.batch("cancel", ids, dry_run=False)
        assert all(b["changed"] for b in res), res
        assert {partition_of(i, PARTITIONS) for i in ids} == set(range(PARTITIONS))
    finally:
        await r.aclose()


async def test_partitions_span_every_master(
    stack: Stack, cluster: RedisClusterServers, namespace: str
) -> None:
    by_master = _keys_by_master(cluster, namespace)
    assert all(by_master.values()), {p: len(k) for p, k in by_master.items()}
    for port, keys in by_master.items():  # each key sits on the master of its partition's slot
        for key in keys:
            assert cluster.port_of(key) == port, key
    info = await stack.m.rpc("system.info")
    assert info["partitions"] == PARTITIONS and info["redis_version"]
    for proc, event in ((stack.m, "manager_started"), (stack.ex, "executor_started")):
        assert [x["cluster"] for x in _log(proc) if x.get("event") == event] == [True], proc.name


async def _at_stage(m: ManagerProc, tid: str, stage: int) -> dict[str, Any] | None:
    v = await m.rpc("tasks.get", {"id": tid})
    return v if v["status"] == "WAITING" and v["stage"] == stage else None


async def test_demo_flow_in_every_partition(stack: Stack) -> None:
    """The demo task (call, skipped condition, timer, message, template) once per partition."""
    m = stack.m
    base = json.loads((ROOT / "examples" / "demo_task.json").read_text())
    ids: dict[int, str] = {}
    n = 0
    while len(ids) < PARTITIONS:
        tid = f"demo-{n}"
        n += 1
        ids.setdefault(partition_of(tid, PARTITIONS), tid)
    for tid in ids.values():
        created = await m.rpc("tasks.create", {"task": {**base, "id": tid}})
        assert created["status"] == "QUEUED"
    for tid in ids.values():  # past the timer (the manager's due set), at the message stage
        await wait_for(partial(_at_stage, m, tid, 4), timeout=15, what=f"{tid} at its message stage")
    for tid in ids.values():
        await m.rpc("tasks.send", {"id": tid, "data": {"name": tid}})
    for tid in ids.values():
        done = await task_until(m, tid, lambda v: v["status"] in TERMINAL, 15)
        assert done["status"] == "FINISHED", done
        res = done["results"]
        assert res[0] == 42 and res[1]["amount"] == 42 and res[2] is None and res[3] is None
        assert res[4] == {"name": tid} and res[5] == f"hi there, {tid}!"
        attempts = await m.rpc("tasks.attempts", {"id": tid})
        assert [(a["stage"], a["outcome"]) for a in attempts] == [
            (0, "ok"),
            (1, "ok"),
            (2, "skipped"),
            (5, "ok"),
        ]
        status, body = await m.get(f"/tasks/{tid}/status")
        assert status == 201 and body == {"status": "FINISHED", "stage": 6, "stages": 6}


async def test_chain_and_notifications_across_partitions(stack: Stack) -> None:
    """next_task restarts a task of another partition; notifications are read from all six."""
    m = stack.m
    a = "chain-a"
    b = next(
        t
        for t in (f"chain-b{i}" for i in range(50))
        if partition_of(t, PARTITIONS) != partition_of(a, PARTITIONS)
    )

    def echo(tid: str, value: Any, **extra: Any) -> dict[str, Any]:
        return {
            "id": tid,
            "app": "demo",
            **extra,
            "commands": [{"method": "demo.echo", "params": {"value": value}}],
        }

    await m.rpc("tasks.create", {"task": echo(b, "{{ task.job_id }}")})
    first = await task_until(m, b, lambda v: v["status"] == "FINISHED")
    await m.rpc("tasks.create", {"task": echo(a, "x", next_task=b, notify=True)})
    await task_until(m, a, lambda v: v["status"] == "FINISHED")
    second = await task_until(m, b, lambda v: v["status"] == "FINISHED" and v["job_id"] != first["job_id"])
    assert second["results"] == [second["job_id"]]
    notes = await m.rpc("notifications.list", {"task_id": a})
    assert [x["status"] for x in notes] == ["QUEUED", "RUNNING", "FINISHED"]
    assert [x["id"] for x in await m.rpc("notifications.list", {})] == [x["id"] for x in notes]
    assert await m.rpc("notifications.ack", {"ids": [notes[0]["id"]]}) == {"acked": 1}
    assert len(await m.rpc("notifications.list", {})) == 2


async def test_cancel_reaches_the_executor(stack: Stack) -> None:
    """A cancel goes to the executor through its control list in the task's partition: on a
    cluster the executor pops each partition's list on its own."""
    m = stack.m
    ids = await running_in_every_partition(m, "sleepy", seconds=60)
    res = await m.rpc("tasks.cancel", {"ids": ids, "dry_run": False})
    assert all(b["changed"] for b in res), res
    for tid in ids:
        assert (await m.rpc("tasks.get", {"id": tid}))["status"] == "CANCELED"

    def cancelled() -> bool:
        return {x.get("task_id") for x in _log(stack.ex) if x.get("event") == "run_cancelled"} >= set(ids)

    await wait_for(cancelled, timeout=5, what="the executor to stop every cancelled run")


async def test_a_thousand_tasks(stack: Stack, cluster: RedisClusterServers, namespace: str) -> None:
    m = stack.m
    n = 1000

    def task(i: int) -> dict[str, Any]:
        return {
            "id": f"k-{i}",
            "app": "demo",
            "tags": ["bulk", f"m{i % 3}"],
            "priority": 3 if i % 10 == 0 else 0,  # a second stream per partition
            "kws": {"i": i},
            "commands": [
                {"method": "demo.add", "params": {"a": "{{ kws.i }}", "b": 1}},
                {"method": "demo.echo", "params": {"value": "n={{ results.0 }}"}},
            ],
        }

    status, body = await _scrape(m)
    assert status == 200
    before = _sample(body, "stagewise_tasks", app="demo", status="FINISHED")  # the other tests' tasks
    single = 100  # tasks.create one at a time (concurrently), the rest with tasks.create_many
    await asyncio.gather(*(m.rpc("tasks.create", {"task": task(i)}) for i in range(single)))
    for start in range(single, n, 300):
        batch = [task(i) for i in range(start, min(start + 300, n))]
        got = await m.rpc("tasks.create_many", {"tasks": batch, "group": "bulk"})
        assert got["ids"] == [t["id"] for t in batch]

    async def all_done() -> bool:
        status, body = await _scrape(m)
        assert status == 200
        return _sample(body, "stagewise_tasks", app="demo", status="FINISHED") == before + n

    await wait_for(all_done, timeout=40, interval=0.2, what=f"{n} tasks FINISHED")

    seen: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:  # tasks.list merges the six partitions' indexes, page by page, each task once
        params: dict[str, Any] = {"tags": ["bulk"], "max_results": 150, "include_results": True}
        if cursor:
            params["cursor"] = cursor
        page = await m.rpc("tasks.list", params)
        for v in page["items"]:
            assert v["id"] not in seen, v["id"]
            seen[v["id"]] = v
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == n
    for i in range(n):
        v = seen[f"k-{i}"]
        assert v["status"] == "FINISHED" and v["results"] == [i + 1, f"n={i + 1}"], v
    updated = [
        v["updated"]
        for v in (await m.rpc("tasks.list", {"status": "FINISHED", "max_results": 1000}))["items"]
    ]
    assert len(updated) == 1000 and updated == sorted(updated, reverse=True)  # newest first

    third = await m.rpc("tasks.list", {"tags": ["m1"], "app": "demo", "max_results": 1000})
    assert sorted(v["id"] for v in third["items"]) == sorted(f"k-{i}" for i in range(n) if i % 3 == 1)
    group = await m.rpc("groups.get", {"group": "bulk"})
    assert group["by_status"] == {"FINISHED": n - single}
    assert await m.rpc("tasks.list", {"status": "QUEUED"}) == {"items": [], "next_cursor": None}

    by_master = _keys_by_master(cluster, namespace)
    for port, keys in by_master.items():  # the tasks are spread over the three masters
        assert sum(1 for k in keys if ":t:k-" in k) > n // 10, port

    status, body = await _scrape(m)
    assert status == 200
    assert _sample(body, "stagewise_tasks", app="demo", status="FINISHED") == before + n
    assert _sample(body, "stagewise_executors", app="demo") == 1
    assert _sample(body, "stagewise_queue_lag", app="demo", priority="0") == 0
    executors = await m.rpc("executors.list")
    assert len(executors) == 1 and executors[0]["running"] == 0


async def test_lost_executor_is_reaped_and_a_stopped_one_leaves(
    stack: Stack, cluster: RedisClusterServers, namespace: str
) -> None:
    """SIGKILL the executor with runs in every partition: the manager takes them back from each
    partition and a new executor finishes them; SIGTERM on that one leaves every registry."""
    m, d = stack.m, stack.d
    ids = await running_in_every_partition(m, "lost", seconds=1)
    stack.ex.kill()
    await stack.ex.wait_exit()
    env: dict[str, Any] = {"STAGEWISE_PARTITIONS": PARTITIONS, "STAGEWISE_GRACE": 1}
    ex2 = await d.executor("examples.app:app", concurrency=8, **env)
    for tid in ids:
        v = await task_until(m, tid, lambda v: v["status"] in TERMINAL, 20)
        assert v["status"] == "FINISHED" and v["results"] == [1], v
    reaped = [x for x in _log(m) if x.get("event") == "executor_dead"]
    assert len(reaped) == PARTITIONS and sum(x["requeued"] for x in reaped) == len(ids), reaped

    ex2.terminate()
    assert await ex2.wait_exit(timeout=15) == 0
    assert await m.rpc("executors.list") == []
    assert not [k for keys in _keys_by_master(cluster, namespace).values() for k in keys if ":ex:" in k]
    for proc in (m, stack.ex, ex2):  # nothing went wrong on the way
        bad = [x for x in _log(proc) if x.get("level") not in ("info", "debug")]
        assert all(x.get("event") in ("executor_dead",) for x in bad), bad


async def test_one_partition_on_a_cluster(cluster: RedisClusterServers, tmp_path: Path) -> None:
    """STAGEWISE_PARTITIONS=1 (the default) on a cluster: the namespace is one slot, so the
    executor reads and pops as on a single server."""
    d = Daemons(cluster.url, "t" + uuid.uuid4().hex[:10], tmp_path)
    try:
        m = await d.manager()
        await d.executor("examples.app:app", concurrency=2)
        await m.rpc("tasks.create", {"task": add_task("one")})
        v = await task_until(m, "one", lambda v: v["status"] in TERMINAL)
        assert v["status"] == "FINISHED" and v["results"] == [3]
    finally:
        await d.aclose()


def _log(proc: Proc) -> list[dict[str, Any]]:
    """The JSON lines a daemon logged so far."""
    return [json.loads(x) for x in proc.log_path.read_text().splitlines() if x.startswith("{")]


async def _scrape(m: ManagerProc) -> tuple[int, str]:
    async with m._session().get(f"{m.url}/metrics") as resp:
        return resp.status, await resp.text()


def _sample(body: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


async def test_a_limit_holds_across_partitions_on_the_cluster(
    stack: Stack, cluster: RedisClusterServers, namespace: str
) -> None:
    """Tasks of one limit key spread over every partition (hence every master), two executors:
    the handlers never overlap beyond the key's concurrency, whose state lives in one slot."""
    from tests.limits_app import max_key

    m, d = stack.m, stack.d
    env: dict[str, Any] = {"STAGEWISE_PARTITIONS": PARTITIONS, "STAGEWISE_GRACE": 1}
    for _ in range(2):
        await d.executor("tests.limits_app:app", concurrency=6, **env)
    ids = [f"cl-lim-{i}" for i in range(36)]
    assert len({partition_of(i, PARTITIONS) for i in ids}) == PARTITIONS
    for tid in ids:
        task = {
            "id": tid,
            "app": "lim",
            "commands": [{"method": "lim.work", "params": {"key": "cl", "ms": 60}}],
            "limits": [{"key": "cluster-key", "concurrency": 3}],
        }
        await m.rpc("tasks.create", {"task": task})
    for tid in ids:
        v = await task_until(m, tid, lambda v: v["status"] in TERMINAL, 60)
        assert v["status"] == "FINISHED", v
    c = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0], decode_responses=True)
    try:
        assert int(c.get(max_key(namespace, "cl"))) == 3
    finally:
        c.close()
    info = await wait_for(
        lambda: _limit_idle(m, "cluster-key"), timeout=10, what="the key's slots given back"
    )
    assert info["running"] == 0 and info["held"] == 0


async def _limit_idle(m: Any, key: str) -> dict[str, Any] | None:
    v = await m.rpc("limits.get", {"key": key})
    return v if v["running"] == 0 and v["held"] == 0 else None


async def test_fan_out_stays_in_the_parents_partition(stack: Stack, cluster: RedisClusterServers) -> None:
    """A parent in every partition, each with a map of 6 children and a nested child: a family
    shares its root's partition (stagewise.keys.partition_of), so every join is one script on
    the master of that partition, and tasks.list finds the children by parent."""
    m = stack.m
    # an executor of its own: the module's may have been stopped by an earlier test
    env: dict[str, Any] = {"STAGEWISE_PARTITIONS": PARTITIONS, "STAGEWISE_GRACE": 1}
    ex = await stack.d.executor("examples.app:app", concurrency=16, **env)
    candidates = [f"fan-{i}" for i in range(PARTITIONS * 8)]
    parents = list({partition_of(i, PARTITIONS): i for i in candidates}.values())
    assert len(parents) == PARTITIONS
    nested = {
        "app": "demo",
        "commands": [
            {
                "children": {
                    "tasks": [
                        {"app": "demo", "commands": [{"method": "demo.add", "params": {"a": 1, "b": 1}}]}
                    ]
                }
            }
        ],
    }
    for pid in parents:
        task = {
            "id": pid,
            "app": "demo",
            "kws": {"xs": [1, 2, 3, 4, 5, 6]},
            "commands": [
                {
                    "children": {
                        "map": "{{ kws.xs }}",
                        "task": {
                            "app": "demo",
                            "commands": [{"method": "demo.add", "params": {"a": "{{ kws.item }}", "b": 10}}],
                        },
                    }
                },
                {"children": {"tasks": [nested]}},
            ],
        }
        await m.rpc("tasks.create", {"task": task})
    for pid in parents:
        v = await task_until(m, pid, lambda v: v["status"] in TERMINAL, 30)
        assert v["status"] == "FINISHED", v
        assert [c["result"] for c in v["results"][0]] == [11, 12, 13, 14, 15, 16]
        assert v["results"][1][0]["result"][0]["result"] == 2  # the grandchild's, through its parent
        assert {partition_of(f"{pid}.0.{i}", PARTITIONS) for i in range(6)} == {partition_of(pid, PARTITIONS)}
        page = await m.rpc("tasks.list", {"parent": pid, "max_results": 100})
        assert sorted(c["id"] for c in page["items"]) == sorted(
            [f"{pid}.0.{i}" for i in range(6)] + [f"{pid}.1.0"]
        )
    ex.terminate()
    assert await ex.wait_exit(timeout=15) == 0
