"""Issue 13's table of Redis faults, measured row by row.

For each row: a fresh Redis (a Redis Cluster of 3 masters and 3 replicas for the cluster row),
a manager, two executors of the chaos app (tests/chaos_app.py, which counts every stage
execution in a Redis of its own that no fault touches), and three-stage tasks created at a
steady pace before, during and after the fault, counting every create the API acknowledged.
Then every acknowledged task is looked up and the row reports: acknowledged, finished, failed,
stuck (not ended once the drain timed out), lost (acknowledged, then gone: the data Redis did
not keep), double-committed (a stage of a run with more than one committed attempt), the time
from the fault's end until work resumed and until every task had ended, and what the API
answered during the fault.

    python -m tests.redis_faults_table [--tasks 300] [--rows aof-everysec,sigstop,...]

tests/test_redis_faults_table.py runs every row at a small size and asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio as aredis
from redis.exceptions import RedisClusterException

from stagewise.keys import Keys, partition_of
from stagewise.status import ACTIVE, TERMINAL, UNINDEXED
from tests.chaos_app import exec_key
from tests.helpers import (
    Daemons,
    ManagerProc,
    RedisClusterServers,
    RedisServer,
    free_port,
    wait_for,
)

APP = "tests.chaos_app:app"

ROWS: dict[str, str] = {
    "aof-everysec": "Redis SIGKILL, restart from AOF (appendfsync everysec)",
    "aof-always": "Redis SIGKILL, restart from AOF (appendfsync always)",
    "sigstop": "Redis SIGSTOP {fault:g} s",
    "down": "Redis SIGKILL, restart after {fault:g} s",
    "os-crash": "OS-crash-like restart: the last ~1 s of the AOF dropped",
    "empty": "Redis restarted empty",
    "empty-prio5": "Redis restarted empty, then only priority-5 tasks arrive",
    "oom": "maxmemory reached (noeviction) for {fault:g} s, then freed",
    "cluster": "Redis Cluster 3+3, a master SIGKILLed, its replica promoted",
}


@dataclass
class Size:
    """How big a run is: the suite's small one, or the full one (`full()`)."""

    tasks: int = 50
    fault_s: float = 4.0  # SIGSTOP, down and OOM rows: how long the fault lasts
    restart_gap_s: float = 1.0  # the other restart rows: from the kill to the new process
    ping_interval: float = 0.2
    dead_after: int = 5  # pings: an executor is dead after ping_interval x dead_after s
    feed_s: float = 6.0  # creates are spread over this long, plus the fault
    stage_ms: tuple[int, int] = (20, 120)
    concurrency: int = 8
    drain_s: float = 60.0  # after the last create, how long the tasks may take to end

    @classmethod
    def full(cls, tasks: int = 300) -> Size:
        return cls(
            tasks=tasks,
            fault_s=20.0,
            ping_interval=0.5,
            dead_after=3,
            feed_s=max(10.0, tasks / 30),
            stage_ms=(50, 300),
            concurrency=16,
            drain_s=180.0,
        )


@dataclass
class Row:
    row: str
    fault: str
    acknowledged: int = 0
    finished: int = 0
    failed: int = 0
    failed_errors: dict[str, int] = field(default_factory=dict)
    stuck: int = 0
    stuck_statuses: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    double_committed: int = 0
    wrong_results: int = 0
    executions: int = 0  # stage executions counted by the handler, outside the faulty Redis
    repeated: int = 0  # executions beyond the first of a (task, stage)
    fault_s: float = 0.0  # how long the fault lasted (kill to restart, stop to continue, ...)
    resumed_s: float | None = None  # fault end -> the first task ended after it
    caught_s: float | None = None  # fault end -> every task acknowledged before it ended
    recovered_s: float | None = None  # fault end -> every acknowledged task ended (creates go
    # on for a while after the fault: this follows the feed as much as the recovery)
    answers: dict[str, int] = field(default_factory=dict)  # create requests answered so, during the fault
    healthz: dict[str, int] = field(default_factory=dict)  # /healthz answers during the fault
    slowest_answer_s: float = 0.0
    internal_errors: int = 0  # -32603 answers, at any time

    def api(self) -> str:
        parts = [f"{k} x{v}" for k, v in sorted(self.answers.items())]
        parts += [f"/healthz {k} x{v}" for k, v in sorted(self.healthz.items())]
        return "; ".join(parts) or "-"

    def cells(self) -> list[str]:
        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f} s"

        stuck = str(self.stuck) + (f" ({self._fmt(self.stuck_statuses)})" if self.stuck else "")
        failed = str(self.failed) + (f" ({self._fmt(self.failed_errors)})" if self.failed else "")
        return [
            self.fault,
            str(self.acknowledged),
            str(self.finished),
            failed,
            stuck,
            str(self.lost),
            str(self.double_committed),
            f"{self.executions} ({self.repeated} repeated)",
            s(self.resumed_s),
            s(self.caught_s),
            f"{self.api()} (slowest {self.slowest_answer_s:.1f} s)",
        ]

    @staticmethod
    def _fmt(d: dict[str, int]) -> str:
        return ", ".join(f"{v} {k}" for k, v in sorted(d.items()))


HEADER = [
    "fault",
    "acknowledged",
    "finished",
    "failed",
    "stuck",
    "lost",
    "double-committed",
    "stage executions",
    "resumed",
    "caught tasks ended",
    "API answers during the fault",
]


def markdown(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- Redis under test


class Standalone:
    """One redis-server with an append-only file in a dir of its own, killed, stopped and
    started again on the same port by the rows."""

    def __init__(self, dir: Path, appendfsync: str = "everysec") -> None:
        self.dir = dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, empty: bool = False) -> None:
        """Start (again) on the same port; from the AOF in its dir unless `empty`."""
        if empty:
            shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not on PATH: run `make test` (it installs redis-server)"
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync]
        # no rewrite in the middle of a row: the OS-crash row cuts the file it measured
        argv += ["--auto-aof-rewrite-percentage", "0", "--daemonize", "no"]
        self.starts += 1
        with open(self.dir / f"redis-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        c = self.admin()
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    if c.ping():
                        return
                except redis.BusyLoadingError:
                    pass
                except redis.RedisError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.dir / f"redis-{self.starts}.log").read_text()
                    raise RuntimeError(f"redis-server on {self.port} did not start:\n{log_text}")
                time.sleep(0.02)  # poll interval inside a deadline loop
        finally:
            c.close()

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5, decode_responses=True)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()

    def aof_incr(self) -> Path:
        """The file Redis 7 appends to (multi-part AOF: appendonlydir/*.incr.aof)."""
        files = sorted((self.dir / "appendonlydir").glob("*.incr.aof"), key=lambda p: p.stat().st_mtime)
        assert files, f"no incr AOF in {self.dir}"
        return files[-1]

    def cut_aof(self, size: int) -> None:
        """Drop what was appended to the AOF past `size` bytes (the writes an OS crash loses)."""
        with open(self.aof_incr(), "r+b") as f:
            f.truncate(size)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- one row


class Feeder:
    """Creates the row's tasks at a steady pace, retrying (with on_conflict "ignore") what was
    not acknowledged; records every answer, and those given while `fault_on` is set."""

    def __init__(self, m: ManagerProc, tasks: int, size: Size) -> None:
        self.m = m
        self.ids = [f"f{n}" for n in range(tasks)]
        self.pending = list(self.ids)
        self.acked: set[str] = set()
        self.size = size
        self.priority = 0
        self.fault_on = False
        self.answers: Counter[str] = Counter()
        self.slowest = 0.0
        self.internal = 0
        self.done = asyncio.Event()
        self.caught: list[str] = []  # the tasks acknowledged when the fault ended

    def doc(self, tid: str) -> dict[str, Any]:
        n = int(tid[1:])
        lo, hi = self.size.stage_ms
        step = {"method": "chaos.step", "params": {"min_ms": lo, "max_ms": hi}}
        return {
            "id": tid,
            "app": "chaos",
            "priority": self.priority,
            "kws": {"v": n * 10},
            "commands": [
                {**step, "params": {**step["params"], "value": "{{ kws.v }}"}},
                {**step, "params": {**step["params"], "value": "{{ results.0 }}"}},
                {**step, "params": {**step["params"], "value": "{{ results.1 }}"}},
            ],
        }

    async def run(self, pace: float) -> None:
        """Release `pace` tasks a second; every 0.2 s send the released ones not acknowledged
        yet (those refused during the fault again), until every one is acknowledged."""
        t0 = time.monotonic()
        while self.pending:
            released = min(len(self.ids), int(pace * (time.monotonic() - t0)) + 1)
            batch = [t for t in self.ids[:released] if t not in self.acked][:100]
            if batch:
                await self.send(batch)
            await asyncio.sleep(0.2)  # the pace of the creates, not synchronisation
        self.done.set()

    async def send(self, batch: list[str]) -> None:
        reqs = [
            {
                "jsonrpc": "2.0",
                "id": tid,
                "method": "tasks.create",
                "params": {"task": self.doc(tid), "on_conflict": "ignore"},
            }
            for tid in batch
        ]
        t0 = time.monotonic()
        try:
            status, reply = await self.m.raw(json.dumps(reqs))
        except (TimeoutError, aiohttp.ClientError) as e:
            self._answer(f"HTTP {type(e).__name__}", time.monotonic() - t0)
            return
        took = time.monotonic() - t0
        if not isinstance(reply, list):
            self._answer(f"HTTP {status}", took)
            return
        kinds = set()
        for x in reply:
            if "result" in x:
                if x["id"] in self.pending:
                    self.pending.remove(x["id"])
                    self.acked.add(x["id"])
                continue
            err = x["error"]
            reason = (err.get("data") or {}).get("reason") if isinstance(err.get("data"), dict) else None
            kinds.add(f"{err['code']} {reason}" if reason else str(err["code"]))
        for kind in kinds:  # counted once a request (a batch of creates), not once a create
            self._answer(kind, took)

    def _answer(self, what: str, took: float) -> None:
        if what.startswith("-32603"):
            self.internal += 1
        if self.fault_on:
            self.answers[what] += 1
            self.slowest = max(self.slowest, took)


async def probe_health(m: ManagerProc, feeder: Feeder, into: Counter[str]) -> None:
    """GET /healthz every 0.25 s while the fault lasts: its answers, and how long they took."""
    while True:
        if feeder.fault_on:
            t0 = time.monotonic()
            try:
                status, body = await m.get("/healthz")
                what = f"{status}" + (
                    f" {body.get('reason')}" if status != 200 and isinstance(body, dict) else ""
                )
            except (TimeoutError, aiohttp.ClientError) as e:
                what = type(e).__name__
            if feeder.fault_on:
                into[what] += 1
                feeder.slowest = max(feeder.slowest, time.monotonic() - t0)
        await asyncio.sleep(0.25)  # the probe's period


class Tasks:
    """Counts of the namespace's tasks by status, read from each partition's status index."""

    def __init__(self, r: Any, namespace: str, partitions: int) -> None:
        self.r, self.keys = r, [Keys(namespace, p) for p in range(partitions)]

    async def ended(self, ids: list[str]) -> bool:
        """Whether every task of `ids` has ended or is gone (a fault that lost it)."""
        try:
            pipe = self.r.pipeline(transaction=False)
            for tid in ids:
                pipe.hget(self.keys[partition_of(tid, len(self.keys))].task(tid), "status")
            return all(st is None or st in TERMINAL for st in await pipe.execute())
        except (redis.RedisError, RedisClusterException, OSError):
            return False

    async def count(self, statuses: Any) -> int | None:
        try:
            n = 0
            for k in self.keys:
                for s in statuses:
                    # RUNNING has no status index: its tasks are the deadlines zset's members
                    key = k.deadlines() if s in UNINDEXED else k.idx_status(str(s))
                    n += int(await self.r.zcard(key))
            return n
        except (redis.RedisError, RedisClusterException, OSError):
            return None  # not now: the fault


def spread_namespace(cluster: RedisClusterServers, partitions: int) -> str:
    """A namespace whose partitions land on every master of the cluster."""
    masters = set(cluster.masters())
    for _ in range(500):
        ns = "f" + uuid.uuid4().hex[:10]
        if {cluster.port_of(Keys(ns, p).prefix) for p in range(partitions)} == masters:
            return ns
    raise AssertionError("no namespace spreads over every master")


async def run_row(row: str, size: Size, log_dir: Path, echo: bool = False) -> Row:
    """Run one row of the table from a fresh Redis; returns what it measured."""
    assert row in ROWS, row
    out = Row(row=row, fault=ROWS[row].format(fault=size.fault_s))
    work = Path(tempfile.mkdtemp(prefix=f"stagewise-fault-{row}-"))
    counter = RedisServer.start()
    server: Standalone | None = None
    cluster: RedisClusterServers | None = None
    partitions = 3 if row == "cluster" else 1
    try:
        if row == "cluster":
            cluster = RedisClusterServers.start(masters=3, replicas=1, node_timeout=1500)
            url = cluster.url
            namespace = spread_namespace(cluster, partitions)
        else:
            server = Standalone(work, "always" if row == "aof-always" else "everysec")
            server.start()
            url = server.url
            namespace = "f" + uuid.uuid4().hex[:10]
        os.makedirs(log_dir, exist_ok=True)
        d = Daemons(url, namespace, log_dir)
        env: dict[str, Any] = {
            "STAGEWISE_PING_INTERVAL": size.ping_interval,
            "STAGEWISE_DEAD_AFTER": size.dead_after,
            "STAGEWISE_PARTITIONS": partitions,
            "CHAOS_COUNTER_URL": counter.url,
            "STAGEWISE_LOG_LEVEL": "info",
        }
        menv = {**env, "STAGEWISE_MAX_INTERRUPTIONS": 1000}
        async with _clients(url, counter.url, cluster is not None) as (r, cr):
            try:
                m = await d.manager(**menv)
                for _ in range(2):
                    await d.executor(APP, size.concurrency, **env)
                await wait_for(lambda: _executors(m, 2), timeout=30, what="both executors registered")
                await _measure(row, size, out, m, r, cr, namespace, partitions, server, cluster)
            finally:
                await d.aclose()
                if echo:
                    print(f"  logs of {row}: {log_dir}", flush=True)
    finally:
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()
        counter.stop()
        shutil.rmtree(work, ignore_errors=True)
    if echo:
        print(f"{row}: {json.dumps(asdict(out))}", flush=True)
    return out


@contextlib.asynccontextmanager
async def _clients(url: str, counter_url: str, cluster: bool) -> AsyncIterator[tuple[Any, aredis.Redis]]:
    opts: dict[str, Any] = {"decode_responses": True, "socket_timeout": 2, "socket_connect_timeout": 2}
    r: Any = aredis.RedisCluster.from_url(url, **opts) if cluster else aredis.Redis.from_url(url, **opts)
    cr = aredis.Redis.from_url(counter_url, decode_responses=True)
    try:
        yield r, cr
    finally:
        await r.aclose()
        await cr.aclose()


async def _executors(m: ManagerProc, n: int) -> bool:
    return len(await m.rpc("executors.list")) >= n


async def _measure(
    row: str,
    size: Size,
    out: Row,
    m: ManagerProc,
    r: Any,
    cr: aredis.Redis,
    namespace: str,
    partitions: int,
    server: Standalone | None,
    cluster: RedisClusterServers | None,
) -> None:
    feeder = Feeder(m, size.tasks, size)
    health: Counter[str] = Counter()
    counts = Tasks(r, namespace, partitions)
    pace = size.tasks / size.feed_s
    feeding = asyncio.create_task(feeder.run(pace))
    probing = asyncio.create_task(probe_health(m, feeder, health))
    try:
        # The fault lands once a third of the tasks are acknowledged and some run.
        await wait_for(
            lambda: len(feeder.acked) >= size.tasks // 3, timeout=60, what="a third of the tasks created"
        )
        fault_end = await _fault(row, size, feeder, server, cluster, counts)
        out.fault_s = fault_end[1]
        ended_at_end = fault_end[2]
        t_end = fault_end[0]

        # resumed: the first task that ended after the fault
        async def resumed() -> bool:
            n = await counts.count(("FINISHED", "FAILED", "CANCELED"))
            return n is not None and ended_at_end is not None and n > ended_at_end

        async def all_ended() -> bool:
            n = await counts.count(ACTIVE)
            return feeder.done.is_set() and n == 0

        with contextlib.suppress(AssertionError):
            await wait_for(resumed, timeout=size.drain_s + size.feed_s, interval=0.05, what="work to resume")
            out.resumed_s = time.monotonic() - t_end
        with contextlib.suppress(AssertionError):
            await wait_for(
                lambda: counts.ended(feeder.caught), timeout=size.drain_s, interval=0.1, what="caught tasks"
            )
            out.caught_s = time.monotonic() - t_end
        with contextlib.suppress(AssertionError):
            await wait_for(
                all_ended, timeout=size.drain_s + size.feed_s, interval=0.1, what="every task to end"
            )
            out.recovered_s = time.monotonic() - t_end
    finally:
        feeder.fault_on = False
        feeding.cancel()
        probing.cancel()
        await asyncio.gather(feeding, probing, return_exceptions=True)
        if counts.r is not r:
            with contextlib.suppress(Exception):
                await counts.r.aclose()
    out.answers = dict(feeder.answers)
    out.healthz = dict(health)
    out.slowest_answer_s = round(feeder.slowest, 2)
    out.internal_errors = feeder.internal + _internal_logged(m)
    out.acknowledged = len(feeder.acked)
    await _check(m, cr, namespace, sorted(feeder.acked, key=lambda t: int(t[1:])), out)


def _internal_logged(m: ManagerProc) -> int:
    return m.log_path.read_text().count("rpc_internal_error")


async def _fault(
    row: str,
    size: Size,
    feeder: Feeder,
    server: Standalone | None,
    cluster: RedisClusterServers | None,
    counts: Tasks,
) -> tuple[float, float, int | None]:
    """Apply the row's fault and lift it; (when it ended, how long it lasted, tasks ended by
    then as read right after)."""
    t0 = time.monotonic()
    feeder.fault_on = True
    if row in ("aof-everysec", "aof-always", "down", "os-crash", "empty", "empty-prio5"):
        assert server is not None
        if row == "os-crash":
            # The size of the file ~1 s before the kill: what an OS crash (with everysec
            # fsync) would have left on disk; the writes after it are lost.
            feeder.fault_on = False
            cut = server.aof_incr().stat().st_size
            await asyncio.sleep(1.0)  # the window an OS crash loses, not a wait for anything
            feeder.fault_on = True
            t0 = time.monotonic()
            server.kill()
            server.cut_aof(cut)
        else:
            server.kill()
        # the length of the outage: a supervisor takes a moment to start Redis again
        await asyncio.sleep(size.fault_s if row == "down" else size.restart_gap_s)
        if row == "empty-prio5":
            feeder.priority = 5
        await asyncio.to_thread(server.start, row in ("empty", "empty-prio5"))
    elif row == "sigstop":
        assert server is not None and server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(size.fault_s)  # the length of the fault
        finally:
            server.proc.send_signal(signal.SIGCONT)
    elif row == "oom":
        assert server is not None
        c = server.admin()
        try:
            c.config_set("maxmemory-policy", "noeviction")
            c.config_set("maxmemory", "1")  # every write refused from now on
            await asyncio.sleep(size.fault_s)  # the length of the fault
            c.config_set("maxmemory", "0")
        finally:
            c.close()
    elif row == "cluster":
        assert cluster is not None
        masters = cluster.masters()
        victim = max(masters, key=lambda p: len(masters[p]))
        cluster.proc_of(victim).kill()
        cluster.proc_of(victim).wait()

        def promoted() -> bool:
            try:
                now = cluster.masters()
            except AssertionError:
                return False
            return victim not in now and len(now) == len(masters)

        await wait_for(promoted, timeout=30, interval=0.05, what="the replica promoted")
        # the client of the counts may have been pointed at the node that is gone
        await counts.r.aclose()
        alive = [p for p in cluster.ports if cluster.proc_of(p).poll() is None]
        counts.r = aredis.RedisCluster(host="127.0.0.1", port=alive[0], decode_responses=True)
    t_end = time.monotonic()
    feeder.caught = sorted(feeder.acked)
    # answers count as "during the fault" until a create succeeds again
    acked = len(feeder.acked)
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: len(feeder.acked) > acked or feeder.done.is_set(), timeout=30, interval=0.05)
    feeder.fault_on = False
    ended = await counts.count(("FINISHED", "FAILED", "CANCELED"))
    if ended is None:
        ended = 0
    return t_end, t_end - t0, ended


async def _check(m: ManagerProc, cr: aredis.Redis, namespace: str, ids: list[str], out: Row) -> None:
    executions = await cr.hgetall(exec_key(namespace))
    out.executions = sum(int(v) for v in executions.values())
    out.repeated = out.executions - len(executions)
    stuck: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for i in range(0, len(ids), 100):
        chunk = ids[i : i + 100]
        views = await _batch(m, "tasks.get", [{"id": t} for t in chunk])
        attempts = await _batch(m, "tasks.attempts", [{"id": t} for t in chunk])
        for tid, v, atts in zip(chunk, views, attempts, strict=True):
            if "error" in v:
                assert v["error"]["code"] == 1001, v
                out.lost += 1
                continue
            view = v["result"]
            if view["status"] == "FINISHED":
                out.finished += 1
                n = int(tid[1:])
                if view["results"] != [n * 10 + 1, n * 10 + 2, n * 10 + 3]:
                    out.wrong_results += 1
            elif view["status"] == "FAILED":
                out.failed += 1
                failed[(view.get("error") or {}).get("code", "no error recorded")] += 1
            elif view["status"] == "CANCELED":
                out.failed += 1
                failed["CANCELED"] += 1
            else:
                stuck[view["status"]] += 1
            ok: Counter[tuple[str, int]] = Counter()
            for a in atts.get("result", []):
                if a["outcome"] == "ok":
                    ok[(a["job_id"], a["stage"])] += 1
            out.double_committed += sum(1 for c in ok.values() if c > 1)
    out.stuck = sum(stuck.values())
    out.stuck_statuses = dict(stuck)
    out.failed_errors = dict(failed)


async def _batch(m: ManagerProc, method: str, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reqs = [{"jsonrpc": "2.0", "id": n, "method": method, "params": p} for n, p in enumerate(params)]
    status, reply = await m.raw(json.dumps(reqs))
    assert status == 200 and isinstance(reply, list), (status, reply)
    return sorted(reply, key=lambda x: x["id"])


# --------------------------------------------------------------------------- command line


async def run_rows(rows: list[str], size: Size, log_root: Path, echo: bool = True) -> list[Row]:
    out = []
    for row in rows:
        t0 = time.monotonic()
        out.append(await run_row(row, size, log_root / row, echo=echo))
        if echo:
            print(f"  ({row} took {time.monotonic() - t0:.0f} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.redis_faults_table", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--fault-s", type=float, default=None, help="length of the SIGSTOP, down and OOM faults")
    p.add_argument("--small", action="store_true", help="the suite's sizes (fast)")
    p.add_argument("--keep-logs", action="store_true")
    a = p.parse_args(argv)
    size = Size(tasks=a.tasks) if a.small else Size.full(a.tasks)
    if a.fault_s is not None:
        size.fault_s = a.fault_s
    rows = [x.strip() for x in a.rows.split(",") if x.strip()]
    unknown = [x for x in rows if x not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; rows are {list(ROWS)}")
    logs = Path(tempfile.mkdtemp(prefix="stagewise-faults-table-"))
    try:
        got = asyncio.run(run_rows(rows, size, logs))
    finally:
        if not a.keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
    print()
    print(markdown(got))
    bad = [r.row for r in got if r.stuck or r.double_committed or r.internal_errors or r.wrong_results]
    if bad:
        print(f"\nrows with stuck tasks, double commits, wrong results or -32603: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
