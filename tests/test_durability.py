"""STAGEWISE_DURABILITY (SPEC §10): what an acknowledged API write survives.

With `replica`, an API write is acknowledged only once WAIT saw STAGEWISE_MIN_REPLICAS replicas
take it: the tests start a real replica (`--replicaof`) and read it right after each answer,
stop it (SIGSTOP) or take it away and expect `1006 UNAVAILABLE` naming the counts within the
bound, follow a Sentinel failover under a steady create load (nothing acknowledged is lost;
`async` alongside, for contrast), and route the wait to the right master of a Redis Cluster
with replicas.  `fsync` needs WAITAOF (Redis 7.2); where the redis-server is older, as the
Debian 12 one is, its refusal at start-up is tested, and its wait's replies are checked on
their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from stagewise.config import ConfigError, Settings, load
from stagewise.faults import DurabilityNotMet, unavailable_reason
from stagewise.keys import Keys, partition_of
from stagewise.manager.store import Store
from stagewise.models import parse_task
from stagewise.storage.durability import WAIT_TIMEOUT, Durability
from tests.helpers import (
    REPO_ROOT,
    Daemons,
    ManagerProc,
    RedisClusterServers,
    RpcError,
    free_port,
    idle_app_task,
    started_for_tests,
    uid,
    wait_for,
)
from tests.test_redis_faults import BOUND, Sentinelled, admin, start_redis_on, stop_proc, timed

NOT_MET = f"durability: 0 of 1 replicas acknowledged within {WAIT_TIMEOUT:g} s"


def redis_version() -> tuple[int, ...]:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    text = next(w for w in out.split() if w.startswith("v="))[2:]
    return tuple(int(p) for p in text.split(".")[:2])


# --------------------------------------------------------------------------- settings


def test_durability_settings_from_the_environment_and_the_file(tmp_path: Path) -> None:
    assert (Settings().durability, Settings().min_replicas) == ("async", 1)
    s = load(env={"STAGEWISE_DURABILITY": "replica", "STAGEWISE_MIN_REPLICAS": "2"})
    assert (s.durability, s.min_replicas) == ("replica", 2)
    s = load(env={"STAGEWISE_DURABILITY": "fsync", "STAGEWISE_MIN_REPLICAS": "0"})  # local disk only
    assert (s.durability, s.min_replicas) == ("fsync", 0)
    toml = tmp_path / "c.toml"
    toml.write_text('durability = "fsync"\nSTAGEWISE_MIN_REPLICAS = 0\n')
    s = load(str(toml), env={})
    assert (s.durability, s.min_replicas) == ("fsync", 0)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"STAGEWISE_DURABILITY": "sync"}, "STAGEWISE_DURABILITY: expected one of async, replica, fsync"),
        ({"STAGEWISE_DURABILITY": "Replica"}, "got 'Replica'"),
        ({"STAGEWISE_DURABILITY": "replica", "STAGEWISE_MIN_REPLICAS": "0"}, "must be >= 1"),
        ({"STAGEWISE_MIN_REPLICAS": "-1"}, "STAGEWISE_MIN_REPLICAS: must be > 0"),
        ({"STAGEWISE_MIN_REPLICAS": "one"}, "STAGEWISE_MIN_REPLICAS: expected int"),
    ],
)
def test_bad_durability_settings_are_named(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(env=env)
    assert problem in str(e.value)


def _manager_exit(env: dict[str, str]) -> tuple[int, str]:
    """Runs a manager that is expected to stop at start-up: (exit status, stderr)."""
    full = dict(os.environ, PYTHONPATH=str(REPO_ROOT), STAGEWISE_HTTP=f"127.0.0.1:{free_port()}", **env)
    done = subprocess.run(
        [sys.executable, "-m", "stagewise", "manager"],
        env=full,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stderr.decode()


def test_a_bad_durability_stops_the_manager_with_one_line() -> None:
    rc, err = _manager_exit({"STAGEWISE_DURABILITY": "sync"})
    assert rc == 78, err
    assert err.strip().count("\n") == 0 and "STAGEWISE_DURABILITY" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- the wait's replies


def test_the_wait_commands_and_their_shortfalls() -> None:
    replica = Durability("replica", 1)
    assert replica.command() == ("WAIT", 1, 1000)
    assert replica.shortfall(1) is None and replica.shortfall(2) is None
    assert replica.shortfall(0) == NOT_MET
    assert Durability("replica", 3).shortfall(1) == "durability: 1 of 3 replicas acknowledged within 1 s"
    fsync = Durability("fsync", 1)
    assert fsync.command() == ("WAITAOF", 1, 1, 1000)
    assert fsync.shortfall([1, 1]) is None
    assert fsync.shortfall([0, 1]) == "durability: the write was not fsynced to the local AOF within 1 s"
    assert fsync.shortfall([1, 0]) == "durability: 0 of 1 replicas fsynced the write within 1 s"
    local = Durability("fsync", 0)
    assert local.command() == ("WAITAOF", 1, 0, 1000)
    assert local.shortfall([1, 0]) is None
    assert local.shortfall(
        ResponseError("ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled.")
    ) == (
        "durability: WAITAOF failed: ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled."
    )
    assert not Durability().waits and replica.waits and fsync.waits
    e = DurabilityNotMet(NOT_MET)
    assert unavailable_reason(e) == NOT_MET


async def test_a_wait_that_fails_is_1006_and_the_write_was_applied(
    redis_url: str, r: Any, namespace: str
) -> None:
    """The session's Redis has no replica and no AOF: a `replica` wait is not met, a `fsync`
    one is refused (WAITAOF is unknown before 7.2, refused without appendonly from 7.2): both
    raise DurabilityNotMet after the script ran; `async` waits for nothing."""
    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for level, expect in [("replica", NOT_MET), ("fsync", "durability: WAITAOF failed: ")]:
            store = Store(client, Settings(redis_url=redis_url, namespace=namespace, durability=level))
            tid = uid(level)
            got, took = await timed(lambda: store.create(parse_task(idle_app_task(tid, "idle"))))  # noqa: B023
            assert isinstance(got, DurabilityNotMet), got
            assert got.reason.startswith(expect), got.reason
            assert took < 2 * WAIT_TIMEOUT + 1
            assert await store.raw(tid) is not None  # applied, only not acknowledged
        store = Store(client, Settings(redis_url=redis_url, namespace=namespace))
        await store.create(parse_task(idle_app_task(uid(), "idle")))
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- fsync at start-up


async def test_fsync_is_refused_at_start_up_where_redis_cannot_give_it(scratch: Path) -> None:
    port = free_port()
    proc = start_redis_on(port, scratch)
    try:
        env = {"STAGEWISE_REDIS_URL": f"redis://127.0.0.1:{port}/0", "STAGEWISE_DURABILITY": "fsync"}
        rc, err = await asyncio.to_thread(_manager_exit, env)
        assert rc == 78, err
        assert err.strip().count("\n") == 0 and "Traceback" not in err, err
        assert "STAGEWISE_DURABILITY=fsync needs" in err and "appendonly yes" in err, err
        old = redis_version() < (7, 2)
        assert ("Redis 7.2 or later" in err) == old, err
        c = admin(port)
        try:
            c.config_set("appendonly", "yes")
        finally:
            c.close()
        if old:  # appendonly on: the version alone is named
            rc, err = await asyncio.to_thread(_manager_exit, env)
            assert rc == 78 and "Redis 7.2 or later for WAITAOF" in err and "appendonly" not in err, err
    finally:
        stop_proc(proc)


# --------------------------------------------------------------------------- a real replica


@dataclass
class Replicated:
    """A master and one replica of it, in `dir`."""

    dir: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        self.procs["master"] = start_redis_on(self.master_port, self.dir)
        self.start_replica()

    def start_replica(self) -> None:
        self.procs["replica"] = start_redis_on(
            self.replica_port, self.dir, "--replicaof", "127.0.0.1", str(self.master_port)
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.master_port}/0"

    def linked(self) -> bool:
        c = admin(self.master_port)
        try:
            rows = c.info("replication")
            return int(rows.get("connected_slaves", 0)) >= 1 and "online" in str(rows.get("slave0", ""))
        finally:
            c.close()

    def on_replica(self, key: str) -> bool:
        c = admin(self.replica_port)
        try:
            return bool(c.exists(key))
        finally:
            c.close()

    def stop(self) -> None:
        for p in self.procs.values():
            stop_proc(p)


@pytest.fixture
def replicated(scratch: Path) -> Iterator[Replicated]:
    rep = Replicated(scratch)
    rep.start()
    try:
        yield rep
    finally:
        rep.stop()


def task_key(namespace: str, tid: str) -> str:
    return Keys(namespace, 0).task(tid)


async def test_replica_mode_acknowledges_only_what_the_replica_holds(
    daemons: Daemons, replicated: Replicated
) -> None:
    rep = replicated
    await wait_for(rep.linked, timeout=15, what="the replica to sync")
    m = await daemons.manager(STAGEWISE_REDIS_URL=rep.url, STAGEWISE_DURABILITY="replica")
    ns = daemons.namespace
    # every answer is read against the replica at once: WAIT said it holds the write
    tid = uid()
    await m.rpc("tasks.create", {"task": idle_app_task(tid, "idle")})
    assert rep.on_replica(task_key(ns, tid))
    many = [uid("g") for _ in range(5)]
    await m.rpc("tasks.create_many", {"tasks": [idle_app_task(t, "idle") for t in many]})
    assert all(rep.on_replica(task_key(ns, t)) for t in many)
    waiting = uid("msg")
    await m.rpc(
        "tasks.create",
        {"task": {"id": waiting, "app": "idle", "commands": [{"message": {}}, {"method": "x.y"}]}},
    )
    await m.rpc("tasks.send", {"id": waiting, "data": {"hello": 1}})
    k = Keys(ns, 0)
    c = admin(rep.replica_port)
    try:  # the message is on the replica: stage 0's result (the task waited at its message stage)
        assert c.hget(k.task(waiting), "r.0") == '{"hello":1}'
        await m.rpc("tasks.cancel", {"ids": [tid], "dry_run": False})
        assert c.hget(k.task(tid), "status") == "CANCELED"
    finally:
        c.close()
    # stop the replica: it takes nothing, and every write answers 1006 with the counts
    os.kill(rep.procs["replica"].pid, signal.SIGSTOP)
    try:
        late = uid("late")
        got, took = await timed(lambda: m.rpc("tasks.create", {"task": idle_app_task(late, "idle")}))
        assert isinstance(got, RpcError) and (got.code, got.data) == (1006, {"reason": NOT_MET}), got
        assert took < BOUND, took
        for call in (
            lambda: m.rpc("tasks.send", {"id": waiting, "data": 2}),
            lambda: m.rpc("tasks.cancel", {"ids": [waiting], "dry_run": False}),
            lambda: m.rpc("tasks.create_many", {"tasks": [idle_app_task(uid(), "idle")]}),
        ):
            got, took = await timed(call)
            assert isinstance(got, RpcError) and got.data == {"reason": NOT_MET}, got
            assert took < BOUND, took
        # a read waits for nothing; a dry run writes nothing
        assert (await m.rpc("tasks.get", {"id": late}))["status"] == "QUEUED"  # applied all the same
        await m.rpc("tasks.cancel", {"ids": [late], "dry_run": True})
        status, body = await m.get("/healthz")
        assert (status, body["reason"]) == (503, NOT_MET), body
        # a batch of writes: the first one's 1006 answers the rest, within the bound
        batch = [
            {
                "jsonrpc": "2.0",
                "id": n,
                "method": "tasks.create",
                "params": {"task": idle_app_task(uid(), "idle")},
            }
            for n in range(5)
        ]
        got, took = await timed(lambda: m.raw(json.dumps(batch)))
        assert not isinstance(got, BaseException), got
        assert [x["error"]["data"] for x in got[1]] == [{"reason": NOT_MET}] * 5, got
        assert took < BOUND, f"a batch of 5 took {took:.2f} s"
    finally:
        os.kill(rep.procs["replica"].pid, signal.SIGCONT)
    await wait_for(lambda: _healthy(m), timeout=BOUND, what="/healthz 200 once the replica is back")
    # the retry of the create answered 1006 is idempotent with on_conflict "ignore"; its answer
    # means the replica holds the task
    v = await m.rpc("tasks.create", {"task": idle_app_task(late, "idle"), "on_conflict": "ignore"})
    assert v["id"] == late and rep.on_replica(task_key(ns, late))
    # no replica at all: the same 1006
    stop_proc(rep.procs["replica"])
    got, took = await timed(lambda: m.rpc("tasks.create", {"task": idle_app_task(uid(), "idle")}))
    assert isinstance(got, RpcError) and got.data == {"reason": NOT_MET}, got
    assert took < BOUND
    assert "rpc_internal_error" not in m.log_path.read_text()


async def _healthy(m: ManagerProc) -> bool:
    status, _ = await m.get("/healthz")
    return status == 200


async def test_min_replicas_counts_replicas(replicated: Replicated, namespace: str) -> None:
    await wait_for(replicated.linked, timeout=15, what="the replica to sync")
    client = aredis.Redis.from_url(replicated.url, decode_responses=True)
    try:
        settings = Settings(
            redis_url=replicated.url, namespace=namespace, durability="replica", min_replicas=2
        )
        store = Store(client, settings)
        with pytest.raises(DurabilityNotMet, match="durability: 1 of 2 replicas acknowledged within 1 s"):
            await store.create(parse_task(idle_app_task(uid(), "idle")))
        one = Store(client, Settings(redis_url=replicated.url, namespace=namespace, durability="replica"))
        await one.create(parse_task(idle_app_task(uid(), "idle")))
        await one.ack(["0-1-1"])  # a write that deletes nothing is acknowledged like any other
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- Sentinel failover


@pytest.fixture
def sentinelled(scratch: Path) -> Iterator[Sentinelled]:
    s = Sentinelled(scratch)
    try:
        yield s
    finally:
        s.stop()


def three_stage(tid: str) -> dict[str, Any]:
    return {
        "id": tid,
        "app": "demo",
        "commands": [{"method": "demo.add", "params": {"a": i, "b": 1}} for i in range(3)],
    }


@dataclass
class Load:
    """Creates tasks one after the other until stopped; what each create was answered."""

    m: ManagerProc
    acked: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)  # 1006 reason -> count
    others: list[str] = field(default_factory=list)  # any other error: a bug

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            tid = uid("c")
            try:
                await self.m.rpc("tasks.create", {"task": three_stage(tid)})
            except RpcError as e:
                if e.code == 1006:
                    reason = str(e.data["reason"]).split(":")[0]
                    self.refused[reason] = self.refused.get(reason, 0) + 1
                    await asyncio.sleep(
                        0.05
                    )  # a client's back-off before its next try, not a wait for a state
                else:
                    self.others.append(repr(e))
                continue
            except Exception as e:  # noqa: BLE001 - a transport error is a bug too
                self.others.append(repr(e))
                continue
            self.acked.append(tid)


async def served(m: ManagerProc, method: str, params: dict[str, Any], within: float = 20.0) -> Any:
    """`m.rpc`, sent again while it answers 1006 (Redis unavailable: the call may be retried).
    After a failover the sentinel can still report no master for a moment, longer on a loaded
    machine (down-after 1 s); any other error is raised."""

    async def once() -> tuple[Any] | None:
        try:
            return (await m.rpc(method, params),)
        except RpcError as e:
            if e.code == 1006:
                return None
            raise

    return (await wait_for(once, timeout=within, what=f"{method} answered"))[0]


async def _ended(m: ManagerProc, tid: str) -> bool:
    v = await served(m, "tasks.get", {"id": tid})
    return v["status"] in ("FINISHED", "FAILED", "CANCELED")


@pytest.mark.parametrize("durability", ["replica", "async"])
async def test_a_sentinel_failover_loses_nothing_acknowledged_with_replica_durability(
    daemons: Daemons, sentinelled: Sentinelled, durability: str
) -> None:
    """Creates go on while the master is SIGKILLed (its replica not waited for) and the
    sentinel promotes the replica; the old master comes back as a replica.  With `replica`
    every acknowledged create is there afterwards; with `async` the acknowledged creates that
    the replica had not received are lost (counted; on loopback there are few or none).
    Either way every task Redis kept finishes, none stuck, no stage committed twice."""
    s = sentinelled
    await wait_for(s.replica_ready, timeout=20, interval=0.1, what="the sentinel to see the synced replica")
    env = {"STAGEWISE_REDIS_URL": s.url, "STAGEWISE_DURABILITY": durability}
    m = await daemons.manager(**env)
    await daemons.executor(concurrency=8, STAGEWISE_GRACE="1", **env)
    load = Load(m)
    stop = asyncio.Event()
    producer = asyncio.create_task(load.run(stop))
    try:
        await wait_for(lambda: len(load.acked) >= 30, timeout=30, what="30 acknowledged creates")
        before = len(load.acked)
        t0 = time.monotonic()
        await s.kill_master(caught_up=False)
        await wait_for(
            lambda: s.master_addr() == ("127.0.0.1", s.replica_port),
            timeout=20,
            interval=0.1,
            what="the promotion",
        )
        promoted = time.monotonic() - t0
        s.rejoin_old_master()
        await wait_for(s.old_master_rejoined, timeout=20, what="the old master to rejoin as a replica")
        at_promotion = len(load.acked)
        await wait_for(
            lambda: len(load.acked) >= at_promotion + 30, timeout=30, what="30 more creates after it"
        )
        resumed = time.monotonic() - t0
    finally:
        stop.set()
        await producer
    assert not load.others, load.others[:5]
    lost: list[str] = []
    stuck: list[str] = []
    double = 0
    for tid in load.acked:
        try:
            await served(m, "tasks.get", {"id": tid, "include_results": False})
        except RpcError as e:
            assert e.code == 1001, e
            lost.append(tid)
    kept = [t for t in load.acked if t not in lost]

    for tid in kept:
        try:
            await wait_for(lambda tid=tid: _ended(m, tid), timeout=60, what=f"task {tid} to end")
        except AssertionError:
            stuck.append(tid)
            continue
        v = await served(m, "tasks.get", {"id": tid})
        if v["status"] != "FINISHED" or v["results"] != [1, 2, 3]:
            stuck.append(tid)
        ok: dict[tuple[str, int], int] = {}
        for a in await served(m, "tasks.attempts", {"id": tid}):
            if a["outcome"] == "ok":
                ok[(a["job_id"], a["stage"])] = ok.get((a["job_id"], a["stage"]), 0) + 1
        double += sum(1 for n in ok.values() if n > 1)
    print(
        f"\n{durability}: acknowledged {len(load.acked)} ({before} before the kill), lost {len(lost)}, "
        f"finished {len(kept) - len(stuck)}, stuck {len(stuck)}, double-committed {double}; "
        f"refused {load.refused}; promoted after {promoted:.1f} s, 30 more acknowledged after {resumed:.1f} s"
    )
    assert stuck == [] and double == 0, (stuck[:5], double)
    if durability == "replica":
        assert lost == [], lost


# --------------------------------------------------------------------------- Redis Cluster


@pytest.fixture
def cluster_with_replicas() -> Iterator[RedisClusterServers]:
    with started_for_tests(lambda: RedisClusterServers.start(masters=3, replicas=1)) as c:
        yield c


def on_cluster_replica(port: int, key: str) -> bool:
    c = admin(port)
    try:
        c.execute_command("READONLY")  # a cluster replica serves reads of its master's slots
        return bool(c.exists(key))
    finally:
        c.close()


async def test_on_a_cluster_each_master_waits_for_its_own_replica(
    daemons: Daemons, cluster_with_replicas: RedisClusterServers
) -> None:
    """The wait goes to the master of each partition written: a create is acknowledged once
    that master's replica holds it; with one master's replica stopped, creates on that master
    answer 1006 and creates on the others are acknowledged as before."""
    c = cluster_with_replicas
    parts = 32  # enough partitions that every master holds some
    m = await daemons.manager(
        STAGEWISE_REDIS_URL=c.url, STAGEWISE_DURABILITY="replica", STAGEWISE_PARTITIONS=str(parts)
    )
    ns = daemons.namespace

    def key(tid: str) -> str:
        return Keys(ns, partition_of(tid, parts)).task(tid)

    by_master: dict[int, list[str]] = {}
    while len(by_master) < 3 or min(len(v) for v in by_master.values()) < 2:
        tid = uid()
        by_master.setdefault(c.port_of(key(tid)), []).append(tid)
    replica_of = {port: c.replicas_of(port)[0] for port in by_master}
    for port, ids in by_master.items():
        await m.rpc("tasks.create", {"task": idle_app_task(ids[0], "idle")})
        assert on_cluster_replica(replica_of[port], key(ids[0]))
    spread = [uid("g") for _ in range(12)]
    await m.rpc("tasks.create_many", {"tasks": [idle_app_task(t, "idle") for t in spread]})
    assert all(on_cluster_replica(replica_of[c.port_of(key(t))], key(t)) for t in spread)
    stopped, *others = sorted(by_master)
    pid = next(p.pid for p, port in zip(c.procs, c.ports, strict=True) if port == replica_of[stopped])
    os.kill(pid, signal.SIGSTOP)
    try:
        got, took = await timed(
            lambda: m.rpc("tasks.create", {"task": idle_app_task(by_master[stopped][1], "idle")})
        )
        assert isinstance(got, RpcError) and got.data == {"reason": NOT_MET}, got
        assert took < BOUND, took
        for port in others:
            tid = by_master[port][1]
            await m.rpc("tasks.create", {"task": idle_app_task(tid, "idle")})
            assert on_cluster_replica(replica_of[port], key(tid))
    finally:
        os.kill(pid, signal.SIGCONT)
    tid = by_master[stopped][1]
    await m.rpc("tasks.create", {"task": idle_app_task(tid, "idle"), "on_conflict": "ignore"})
    assert on_cluster_replica(replica_of[stopped], key(tid))
    assert "rpc_internal_error" not in m.log_path.read_text()
