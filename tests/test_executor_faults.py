"""The executor under Redis faults (issue 13: "never stuck, whatever Redis does").

- A refusal in one partition (the manager declared the executor dead there) gives up the runs
  of that partition only: a run in another partition goes on, untouched.
- Redis loses its data (FLUSHALL) under a running executor: the consumer groups and the
  registration are made again, and tasks created afterwards finish.
- Redis runs out of memory (maxmemory, noeviction) for a while: every role of the executor
  lives through it; once memory is free again its heartbeat goes on (it is never declared
  dead later) and new tasks finish.
- Redis stops answering (SIGSTOP) for longer than the dead threshold with tasks running: once
  it answers again, every task ends FINISHED and no stage was committed twice.
- Redis goes back in time (a restart from a snapshot taken while tasks ran, the executor up all
  along): the tasks the executor finished since are RUNNING again in its name, and a QUEUED
  task's entry is gone; the manager's reconciliation (from the executor's reports of the runs
  it holds) has every task FINISHED within 2 x dead_after pings of Redis's return.

Each fault test gets a redis-server of its own (the session's is shared by every test), and
real manager and executor processes (tests.helpers.Daemons) with short ping intervals.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from stagewise.config import Settings
from stagewise.executor.app import App
from stagewise.executor.worker import Executor
from stagewise.keys import GROUP, Keys, partition_of
from stagewise.manager.scheduler import Scheduler
from stagewise.manager.store import Store
from stagewise.models import parse_task
from stagewise.storage import calls
from tests.helpers import (
    TERMINAL,
    Daemons,
    ManagerProc,
    Proc,
    RedisServer,
    RpcError,
    started_for_tests,
    wait_for,
)
from tests.helpers import task_until as until
from tests.redis_faults_table import Standalone


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone: the faults below would hit every other test."""
    with started_for_tests(RedisServer.start) as server:
        yield server


@pytest.fixture
async def probe(own_redis: RedisServer) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def stack(
    own_redis: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Daemons]:
    d = Daemons(own_redis.url, "t" + uuid.uuid4().hex[:10], tmp_path)
    try:
        yield d
    finally:
        failed = getattr(request.node, "rep_call", None)
        try:
            await d.aclose()
        finally:
            if failed is not None and failed.failed:
                print(f"\n----- daemon logs -----\n{d.log_tails(80)}")


def events(proc: Proc) -> list[dict[str, Any]]:
    """The JSON lines a daemon logged so far."""
    return [json.loads(x) for x in proc.log_path.read_text().splitlines() if x.startswith("{")]


def logged(proc: Proc, event: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        e for e in events(proc) if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
    ]


def sleeper(tid: str, seconds: float) -> dict[str, Any]:
    return {
        "id": tid,
        "app": "demo",
        "commands": [
            {"method": "demo.sleep", "params": {"seconds": seconds}},
            {"method": "demo.echo", "params": {"value": tid}},
            {"method": "demo.sleep", "params": {"seconds": seconds}},
        ],
    }


def adder(tid: str) -> dict[str, Any]:
    return {"id": tid, "app": "demo", "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}]}


async def finished_once(m: ManagerProc, tid: str, within: float = 15.0) -> dict[str, Any]:
    """The task ends FINISHED, and each of its stages has exactly one committed attempt."""
    v = await until(m, tid, lambda v: v["status"] in TERMINAL, within=within, what=f"{tid} to end")
    assert v["status"] == "FINISHED", v
    attempts = await m.rpc("tasks.attempts", {"id": tid})
    ok = [a["stage"] for a in attempts if a["outcome"] == "ok"]
    assert sorted(ok) == list(range(v["stages"])), attempts  # once each, never twice
    return v


async def executor_up(m: ManagerProc, n: int = 1) -> list[dict[str, Any]]:
    return await wait_for(lambda: _listed(m, n), timeout=15, what=f"{n} executor(s) registered")


async def _listed(m: ManagerProc, n: int) -> list[dict[str, Any]] | None:
    rows = await m.rpc("executors.list")
    return rows if len(rows) == n else None


# --------------------------------------------------------------------------- refusal per partition


def ids_in(partition: int, partitions: int, prefix: str) -> str:
    while True:
        tid = f"{prefix}-{uuid.uuid4().hex[:8]}"
        if partition_of(tid, partitions) == partition:
            return tid


async def test_a_refusal_in_one_partition_leaves_the_runs_of_another_running(
    r: Any, redis_url: str, namespace: str
) -> None:
    """Declared dead in partition 0 only: the executor gives up (hands back) its run there and
    registers again; its run in partition 1 is never touched and commits once."""
    settings = Settings(redis_url=redis_url, namespace=namespace, partitions=2, ping_interval=0.05)
    release = asyncio.Event()
    app = App("held")
    started: list[str] = []

    @app.method("held.wait")
    async def wait(ctx: Any) -> str:
        started.append(ctx.task_id)
        await release.wait()
        return ctx.task_id

    store = Store(r, settings)
    k0, k1 = Keys(namespace, 0), Keys(namespace, 1)
    t0, t1 = ids_in(0, 2, "p0"), ids_in(1, 2, "p1")
    ex = Executor(app, settings, concurrency=4)
    stop = asyncio.Event()
    serving = asyncio.create_task(ex.serve(stop))
    try:
        for tid in (t0, t1):
            await store.create(parse_task({"id": tid, "app": "held", "commands": [{"method": "held.wait"}]}))
        await wait_for(lambda: {t0, t1} <= ex.runs.keys(), what="both tasks running on the executor")
        first0, run1 = ex.runs[t0], ex.runs[t1]
        lease1 = (await store.raw(t1))["lease"]  # type: ignore[index]
        # the manager declares the executor dead in partition 0 only
        mark = await store.scripts.run(calls.mark_dead(k0, ex.id, 0))
        assert mark.code == "DEAD"

        async def taken_again() -> bool:  # handed back, then claimed again after registering
            run = ex.runs.get(t0)
            return run is not None and run is not first0 and await r.zscore(k0.executors(), ex.id) is not None

        await wait_for(taken_again, what="the run of partition 0 given up and taken again")
        assert first0.aio is not None and first0.aio.done()
        # partition 1: the same run, never cancelled, still holding its lease
        assert ex.runs[t1] is run1 and run1.aio is not None and not run1.aio.done()
        h1 = await store.raw(t1)
        assert h1 is not None and h1["status"] == "RUNNING" and h1["lease"] == lease1
        assert await r.zscore(k1.executors(), ex.id) is not None
        assert await store.attempts(t1) == []
        assert [a["outcome"] for a in await store.attempts(t0)] == ["handed_back"]
        # the manager finishes its reap: the executor registered again, so it stays
        sec, usec = await r.time()
        await Scheduler(store).reap(k0, sec + usec / 1e6)
        assert await r.zscore(k0.executors(), ex.id) is not None
        assert await r.zscore(k0.dead_executors(), ex.id) is None
        release.set()

        async def ended() -> bool:
            hs = [await store.raw(t) for t in (t0, t1)]
            return all(h is not None and h["status"] == "FINISHED" for h in hs)

        await wait_for(ended, what="both tasks finished")
        assert [a["outcome"] for a in await store.attempts(t1)] == ["ok"]
        assert [a["outcome"] for a in await store.attempts(t0)] == ["handed_back", "ok"]
        assert started.count(t1) == 1
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(serving, 15)


# --------------------------------------------------------------------------- delivered entries


async def test_a_read_that_fails_part_way_keeps_what_it_read(r: Any, redis_url: str, namespace: str) -> None:
    """Two priorities in use: the executor reads the priority-9 stream, then the priority-0
    one, whose group is gone (Redis lost it).  The entry the first read returned is claimed and
    run, not dropped; an entry pending on us from a read whose reply we never got is given back;
    the group is made again, and what it holds is delivered."""
    settings = Settings(redis_url=redis_url, namespace=namespace)
    app = App("multi")

    @app.method("multi.echo")
    async def echo(value: str) -> str:
        return value

    def doc(tid: str, priority: int) -> Any:
        return parse_task({"id": tid, "app": "multi", "priority": priority,
                           "commands": [{"method": "multi.echo", "params": {"value": tid}}]})  # fmt: skip

    store = Store(r, settings)
    k = Keys(namespace, 0)
    await store.create(doc("unanswered", 9))
    ex = Executor(app, settings, concurrency=4)
    await ex.start()
    try:
        # a read whose reply never reached the fetcher: the entry is pending on our consumer
        got = await r.xreadgroup(GROUP, ex.id, {k.stream("multi", 9): ">"}, count=1)
        assert got and got[0][1][0][1]["t"] == "unanswered"
        await store.create(doc("high", 9))
        await store.create(doc("low", 0))
        await r.xgroup_destroy(k.stream("multi"), GROUP)  # the priority-0 group is lost
        entries = await ex.fetcher.read(4)
        assert [f["t"] for _, _, _, f, _ in entries] == ["high"]  # kept, though the next read failed
        assert ex.fetcher.lost_group and ex.fetcher.owe_pending
        await ex.fetcher.claim(entries)
        await ex.fetcher._recover()  # what the fetch loop does before its next read
        assert [g["name"] for g in await r.xinfo_groups(k.stream("multi"))] == [GROUP]  # made again
        assert (await r.xpending(k.stream("multi", 9), GROUP))["pending"] == 0  # given back
        entries = await ex.fetcher.read(4)
        assert sorted(f["t"] for _, _, _, f, _ in entries) == ["low", "unanswered"]
        await ex.fetcher.claim(entries)

        async def all_finished() -> bool:
            hs = [await store.raw(t) for t in ("high", "low", "unanswered")]
            return all(h is not None and h["status"] == "FINISHED" for h in hs)

        await wait_for(all_finished, what="every task finished")
        for tid in ("high", "low", "unanswered"):
            assert [a["outcome"] for a in await store.attempts(tid)] == ["ok"]
    finally:
        ex.pool.shutdown(wait=False)
        await ex.r.aclose()


async def test_an_entry_left_pending_on_a_live_executor_is_given_back(
    r: Any, redis_url: str, namespace: str
) -> None:
    """An entry delivered to the executor's consumer that the executor never saw (its reply
    lost, or Redis back from an older file with the delivery in it) is given back by the
    executor's own sweep of its pending entries (every dead_seconds), and runs."""
    settings = Settings(redis_url=redis_url, namespace=namespace, ping_interval=0.1, dead_after=3)
    app = App("swept")

    @app.method("swept.echo")
    async def echo(value: str) -> str:
        return value

    store = Store(r, settings)
    k = Keys(namespace, 0)
    await store.create(
        parse_task(
            {"id": "lost", "app": "swept", "commands": [{"method": "swept.echo", "params": {"value": "x"}}]}
        )
    )
    ex = Executor(app, settings, concurrency=2)
    got = await r.xreadgroup(GROUP, ex.id, {k.stream("swept"): ">"}, count=1)  # delivered to it ...
    assert got and got[0][1][0][1]["t"] == "lost"  # ... but it never got the reply
    stop = asyncio.Event()
    serving = asyncio.create_task(ex.serve(stop))
    try:

        async def finished() -> bool:
            h = await store.raw("lost")
            return h is not None and h["status"] == "FINISHED"

        await wait_for(finished, timeout=5, what="the pending entry given back and run")
        assert [a["outcome"] for a in await store.attempts("lost")] == ["ok"]
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)


async def test_the_heartbeat_reports_the_runs_it_holds(r: Any, redis_url: str, namespace: str) -> None:
    """With each ping the executor reports, per partition, the leases of its runs and the lease
    counter its claims are settled up to (orphan.lua reads them): the lease of a run while it
    runs, no lease once it is over."""
    settings = Settings(redis_url=redis_url, namespace=namespace, ping_interval=0.05)
    release = asyncio.Event()
    app = App("held")

    @app.method("held.wait")
    async def wait(ctx: Any) -> str:
        await release.wait()
        return str(ctx.task_id)

    store = Store(r, settings)
    k = Keys(namespace, 0)
    ex = Executor(app, settings, concurrency=2)
    stop = asyncio.Event()
    serving = asyncio.create_task(ex.serve(stop))

    async def reported(held: list[str], settled: int) -> bool:
        info = await r.hgetall(k.executor(ex.id))
        return (
            info.get("lease_prefix") == ex.fetcher.lease_prefix
            and json.loads(info.get("held", "null")) == held
            and int(info.get("settled", -1)) >= settled
        )

    try:
        await store.create(parse_task({"id": "t", "app": "held", "commands": [{"method": "held.wait"}]}))
        await wait_for(lambda: "t" in ex.runs, what="the task running")
        lease = ex.runs["t"].lease
        assert lease.startswith(ex.fetcher.lease_prefix + ".")
        n = int(lease.rpartition(".")[2])
        await wait_for(lambda: reported([lease], n), what="the run reported as held")
        release.set()
        await wait_for(lambda: reported([], n), what="the run over, no lease reported")
        assert (await store.raw("t") or {}).get("status") == "FINISHED"
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(serving, 15)


# --------------------------------------------------------------------------- Redis faults


async def test_flushed_redis_groups_and_registration_are_made_again(
    stack: Daemons, probe: aredis.Redis
) -> None:
    m = await stack.manager()
    ex = await stack.executor(concurrency=4)
    [before] = await executor_up(m)
    await m.rpc("tasks.create", {"task": adder("before")})
    await finished_once(m, "before")
    await probe.flushall()
    k = Keys(stack.namespace, 0)

    async def made_again() -> bool:  # by the executor alone: nothing has been created yet
        try:
            groups = await probe.xinfo_groups(k.stream("demo"))
        except aredis.ResponseError:  # no such key yet
            return False
        return (
            [g["name"] for g in groups] == [GROUP]
            and await probe.sismember(k.apps(), "demo")
            and await probe.zscore(k.executors(), before["id"]) is not None
        )

    await wait_for(made_again, timeout=5, what="the group, the apps entry and the registration made again")
    assert logged(ex, "groups_lost")
    # tasks created after the loss are delivered through the group made again
    for i in range(5):
        await m.rpc("tasks.create", {"task": adder(f"after-{i}")})
    for i in range(5):
        v = await finished_once(m, f"after-{i}")
        assert v["results"] == [3]
    [after] = await executor_up(m)
    assert after["id"] == before["id"] and ex.alive


async def test_out_of_memory_every_role_lives_through_it(stack: Daemons, probe: aredis.Redis) -> None:
    """maxmemory reached under noeviction: every write is refused (pings, claims, commits),
    reads are not.  Shorter than the dead threshold, so no one may be declared dead for it."""
    env = {"STAGEWISE_PING_INTERVAL": "0.2", "STAGEWISE_DEAD_AFTER": "15"}  # dead after 3 s
    m = await stack.manager(**env)
    ex = await stack.executor(concurrency=4, **env)
    await executor_up(m)
    await m.rpc("tasks.create", {"task": sleeper("during", 0.5)})
    await until(m, "during", lambda v: v["status"] == "RUNNING")
    await probe.config_set("maxmemory-policy", "noeviction")
    await probe.config_set("maxmemory", 1)
    try:
        await wait_for(
            lambda: logged(ex, "ping_failed", kind="OutOfMemoryError"), timeout=5, what="a ping refused (OOM)"
        )
        await wait_for(lambda: logged(ex, "write_failed"), timeout=5, what="a commit refused (OOM)")
    finally:
        await probe.config_set("maxmemory", 0)
    lifted = float((await m.rpc("executors.list"))[0]["last_ping"])
    await wait_for(lambda: logged(ex, "ping_failed_recovered"), timeout=5, what="the heartbeat back")
    await finished_once(m, "during")
    for i in range(3):
        await m.rpc("tasks.create", {"task": adder(f"after-{i}")})
    for i in range(3):
        await finished_once(m, f"after-{i}")

    async def pinged_past_the_threshold() -> bool:  # its heartbeat still runs, well after the lift
        [row] = await m.rpc("executors.list")
        return float(row["last_ping"]) > lifted + 3.5

    await wait_for(pinged_past_the_threshold, timeout=10, what="pings past the dead threshold")
    assert ex.alive and not logged(ex, "declared_dead") and not logged(m, "executor_dead")
    assert not [e for e in events(ex) if e.get("level") in ("error", "critical")]


async def test_redis_stopped_past_the_dead_threshold_every_task_finishes_once(
    stack: Daemons, own_redis: RedisServer
) -> None:
    env = {"STAGEWISE_PING_INTERVAL": "0.2", "STAGEWISE_DEAD_AFTER": "3"}  # dead after 0.6 s
    m = await stack.manager(**env)
    ex = await stack.executor(concurrency=8, **env)
    await executor_up(m)
    ids = [f"s{i}" for i in range(6)]
    for tid in ids:
        await m.rpc("tasks.create", {"task": sleeper(tid, 0.4)})
    await wait_for(lambda: _all_running(m, ids), timeout=10, what="every task running")
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(2.0)  # the length of the fault (> 3 x the 0.6 s threshold), not a wait
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    for tid in ids:
        v = await finished_once(m, tid, within=20)
        assert v["results"] == [0.4, tid, 0.4]
    assert ex.alive
    assert await m.rpc("tasks.list", {"status": "RUNNING"}) == {"items": [], "next_cursor": None}


async def test_redis_restarted_empty_the_executor_resumes_within_5_s(
    stack: Daemons, own_redis: RedisServer
) -> None:
    """Redis goes away for 3 s and comes back on the same port without its data (no
    persistence): the executor's roles wait it out, make the group and the registration again,
    and a task created once Redis answers finishes within 5 s."""
    m = await stack.manager()
    ex = await stack.executor(concurrency=4)
    await executor_up(m)
    await m.rpc("tasks.create", {"task": adder("before")})
    await finished_once(m, "before")
    own_redis.proc.terminate()
    await asyncio.to_thread(own_redis.proc.wait, 10)
    await wait_for(lambda: logged(ex, "ping_failed"), timeout=5, what="the executor to notice")
    await asyncio.sleep(3.0)  # the length of the outage, not a wait for anything
    restart(own_redis)
    back = time.monotonic()
    await wait_for(
        lambda: logged(ex, "ping_failed_recovered") and logged(ex, "fetch_failed_recovered"),
        timeout=5,
        what="the heartbeat and the fetch back at work",
    )
    assert time.monotonic() - back < 5
    await wait_for(lambda: _created(m, "after"), timeout=10, what="the manager to take a create again")
    await finished_once(m, "after", within=5)
    assert ex.alive and [row["id"] for row in await m.rpc("executors.list")] == [
        e["executor_id"] for e in logged(ex, "executor_started")
    ]


async def test_redis_back_from_an_older_file_no_task_is_left_stuck(
    stack: Daemons, own_redis: RedisServer, probe: aredis.Redis
) -> None:
    """Redis restarts from a snapshot (SAVE) taken while four tasks ran, the executor up all
    along: the tasks it finished after the snapshot are RUNNING again in its name, under leases
    it no longer holds; and a task QUEUED behind them whose entry was deleted (XDEL) before the
    snapshot has no entry to be read from.  Within 2 x dead_after pings of Redis's return every
    task ends FINISHED, by the manager's reconciliation: the executor's heartbeat goes on, so it
    is never declared dead, and none of the tasks is left RUNNING or QUEUED."""
    ping, dead_after = 0.2, 20  # dead after 4 s: longer than the snapshot is old at the restart
    env = {"STAGEWISE_PING_INTERVAL": str(ping), "STAGEWISE_DEAD_AFTER": str(dead_after)}
    m = await stack.manager(**env)
    ex = await stack.executor(concurrency=4, **env)
    await executor_up(m)
    ids = [f"s{i}" for i in range(4)]
    for tid in ids:
        await m.rpc("tasks.create", {"task": sleeper(tid, 0.2)})
    await wait_for(lambda: _all_running(m, ids), timeout=10, what="every task running")
    await m.rpc("tasks.create", {"task": adder("q")})  # every slot is taken: it waits on the stream
    k = Keys(stack.namespace, 0)
    entry = await probe.hget(k.task("q"), "entry")
    assert entry and await probe.xdel(k.stream("demo"), entry) == 1
    await probe.save()  # the file Redis comes back from
    for tid in ids:
        await finished_once(m, tid)
    own_redis.proc.terminate()
    await asyncio.to_thread(own_redis.proc.wait, 10)
    restart(own_redis)  # from the snapshot: its dir holds dump.rdb
    back = time.monotonic()
    window = 2 * dead_after * ping
    first = await rpc_again(m, "tasks.get", {"id": ids[0]})
    assert first["status"] == "RUNNING"  # as at the snapshot, in the name of the live executor

    async def ended(tid: str) -> dict[str, Any] | None:
        v = await rpc_again(m, "tasks.get", {"id": tid})
        return v if v["status"] in TERMINAL else None

    for tid in [*ids, "q"]:
        left = window - (time.monotonic() - back)
        v = await wait_for(lambda t=tid: ended(t), timeout=max(left, 0.1), what=f"{tid} to end")
        assert v["status"] == "FINISHED", v
        attempts = await rpc_again(m, "tasks.attempts", {"id": tid})
        assert sorted(a["stage"] for a in attempts if a["outcome"] == "ok") == list(range(v["stages"]))
        if tid != "q":
            assert v["results"] == [0.2, tid, 0.2]
            outcomes = [a["outcome"] for a in attempts]
            assert outcomes.count("lost") == 1, outcomes  # taken back once, then run again
    for status in ("RUNNING", "QUEUED"):
        assert await rpc_again(m, "tasks.list", {"status": status}) == {"items": [], "next_cursor": None}
    assert {e["member"] for e in logged(m, "orphan_requeued", reason="not_held")} == {
        f"demo/{t}" for t in ids
    }
    assert {e["task_id"] for e in logged(m, "lost_delivery")} == {"q"}
    assert not logged(m, "executor_dead") and ex.alive


async def rpc_again(m: ManagerProc, method: str, params: dict[str, Any], within: float = 5.0) -> Any:
    """`m.rpc`, sent again while it fails: after Redis's restart the manager answers an internal
    error until Redis takes commands, and once for each pooled connection Redis closed."""

    async def once() -> tuple[Any] | None:
        try:
            return (await m.rpc(method, params),)
        except RpcError:
            return None

    return (await wait_for(once, timeout=within, what=f"{method} answered"))[0]


def restart(server: RedisServer) -> None:
    """A new redis-server on the port (and dir) of `server`, which has exited: an empty one,
    unless a SAVE left dump.rdb in that dir (it loads it); stopped with the fixture as the
    first would have been."""
    exe = shutil.which("redis-server")
    assert exe is not None
    argv = [exe, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(server.dir), "--daemonize", "no"]
    with open(server.dir / "redis-2.log", "wb") as log:
        server.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert server._wait_ready(10), (server.dir / "redis-2.log").read_text()


async def _created(m: ManagerProc, tid: str) -> bool:
    try:
        await m.rpc("tasks.create", {"task": adder(tid), "on_conflict": "ignore"})
    except RpcError:  # Redis not taking writes yet (answered UNAVAILABLE or internal error)
        return False
    return True


async def _all_running(m: ManagerProc, ids: list[str]) -> bool:
    page = await m.rpc("tasks.list", {"status": "RUNNING", "max_results": 100})
    return {v["id"] for v in page["items"]} == set(ids)


async def test_an_executor_is_not_declared_dead_for_pings_redis_refused(tmp_path: Path) -> None:
    """Redis out of memory (noeviction) for three times the dead threshold while tasks run:
    every ping of the live executor was refused, but so was the manager's reap probe (a write;
    reads went on), and the manager does not count that time.  The executor is not declared
    dead, nothing is taken back from it, and each stage ran and committed exactly once.  The
    other faults (SIGSTOP, SIGKILL and a restart from the AOF, a restart 20 s later, a cluster
    failover) are rows of tests/test_redis_faults_table.py, which asserts for each that no stage
    ran twice, as an executor declared dead would have made them."""
    (tmp_path / "redis").mkdir()
    server = Standalone(tmp_path / "redis")
    server.start()
    d = Daemons(server.url, "t" + uuid.uuid4().hex[:10], tmp_path)
    try:
        env = {"STAGEWISE_PING_INTERVAL": "0.2", "STAGEWISE_DEAD_AFTER": "3"}  # dead after 0.6 s
        m = await d.manager(**env)
        ex = await d.executor(concurrency=8, **env)
        await executor_up(m)
        ids = [f"s{i}" for i in range(4)]
        for tid in ids:
            await m.rpc("tasks.create", {"task": sleeper(tid, 0.5)})
        await wait_for(lambda: _all_running(m, ids), timeout=10, what="every task running")
        admin = server.admin()
        try:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")  # every write refused, the pings too
            await asyncio.sleep(2.0)  # the length of the fault (> 3 x the 0.6 s threshold)
            admin.config_set("maxmemory", "0")
        finally:
            admin.close()
        for tid in ids:
            v = await finished_once(m, tid, within=20)
            assert v["results"] == [0.5, tid, 0.5]
            outcomes = [a["outcome"] for a in await m.rpc("tasks.attempts", {"id": tid})]
            assert outcomes == ["ok"] * 3, (tid, outcomes)  # nothing handed back or taken back
        assert not logged(m, "executor_dead") and not logged(ex, "declared_dead")
        assert logged(ex, "ping_failed")  # the fault was seen
        assert ex.alive
    except BaseException:
        print(f"\n----- daemon logs -----\n{d.log_tails(80)}")
        raise
    finally:
        await d.aclose()
        server.stop()
