"""The executor daemon: one process serving one app.

Roles (each an asyncio task):
  heartbeat  pings every ping_interval on the executors zset (never on a work stream)
  fetch      reads the app stream through the consumer group, as many entries as free slots,
             and claims them in one pipelined round trip (the claim acknowledges the entry)
  runner     one per claimed task: runs stages from the current one, committing each result
             with a fenced script; the commit also decides what comes next
Shutdown is two-phase: quiet (stop fetching), then wait up to the grace period for runners,
then hand unfinished runs back (SUSPENDED -> QUEUED at their current stage).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from stagewise import log as slog
from stagewise import sdnotify  # systemd notify protocol: no-ops without $NOTIFY_SOCKET
from stagewise.aio import raise_if_stop_requested
from stagewise.config import Settings
from stagewise.executor.app import App
from stagewise.executor.batcher import Batcher
from stagewise.executor.run import Run, Runner
from stagewise.keys import GROUP, Keys
from stagewise.scripting import Scripts
from stagewise.store import app_streams, connect, is_cluster, redeliver_pending

# (partition keys, stream, entry id, fields {t, j}, priority)
Entry = tuple[Keys, str, str, dict[str, str], int]

CLUSTER_BLOCK_MS = 100  # Redis Cluster: how long an idle read blocks on one partition (read_cluster)
ROLE_STOP_TIMEOUT = 5.0  # s shutdown waits for heartbeat and control to end (shutdown)


class Executor:
    def __init__(self, app: App, settings: Settings, concurrency: int = 8) -> None:
        self.app = app
        self.settings = settings
        self.concurrency = concurrency
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.parts = [Keys(settings.namespace, p) for p in range(settings.partitions)]
        # The Redis client, its scripts and the commit batcher are made by `start` (connect
        # asks the server whether it is a Redis Cluster).
        self.r: Any = None
        self.scripts: Scripts
        self.batcher: Batcher
        self.runner: Runner
        self.cluster = False  # a Redis Cluster: a command names keys of one partition only
        self.split = False  # a cluster and several partitions: read and pop partition by partition
        self._turn = 0  # cluster: the partition read first, and the one a blocking read waits on
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="handler")
        self.runs: dict[str, Run] = {}
        self.slots = asyncio.Semaphore(concurrency)
        self.quiet = asyncio.Event()  # stop fetching
        self.reading = False  # between XREADGROUP and the end of the claims of what it read
        self._streams: list[tuple[int, str, Keys]] = []
        self._where: dict[str, tuple[int, Keys]] = {}  # stream key -> (priority, partition)
        self._streams_at = 0.0
        self.log = slog.get(app=app.name, executor_id=self.id)
        self._leases = itertools.count(1)
        self._lease_prefix = uuid.uuid4().hex[:12]

    def new_lease(self) -> str:
        """A token unique to one claim: this process's random prefix and a counter."""
        return f"{self._lease_prefix}.{next(self._leases)}"

    async def register(self, k: Keys) -> None:
        """Enters (or re-enters) the executors registry of a partition with what
        executors.list shows."""
        info = [
            "app",
            self.app.name,
            "host",
            socket.gethostname(),
            "pid",
            os.getpid(),
            "concurrency",
            self.concurrency,
        ]
        await self.scripts.run("ping", [k.executors(), k.executor(self.id)], [k.prefix, self.id, 1, *info])

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # runs (<= concurrency) + fetch + control (one per partition on a cluster) + heartbeat +
        # shutdown work: never more
        self.r = await connect(
            self.settings.redis_url, max_connections=self.concurrency + 16 + len(self.parts)
        )
        self.cluster = is_cluster(self.r)
        self.split = self.cluster and len(self.parts) > 1
        self.scripts = Scripts(self.r)
        self.batcher = Batcher(self.r, self.scripts)
        self.runner = Runner(
            r=self.r,
            scripts=self.scripts,
            batcher=self.batcher,
            app=self.app,
            pool=self.pool,
            executor_id=self.id,
            runs=self.runs,
            slots=self.slots,
            log=self.log,
        )
        for k in self.parts:
            await self.r.sadd(k.apps(), self.app.name)
            try:  # group at 0 before reading: what was queued before us is delivered too
                await self.r.xgroup_create(k.stream(self.app.name), GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
            await self.register(k)
        self.log.info("executor_started", concurrency=self.concurrency, cluster=self.cluster)

    async def serve(self, stop: asyncio.Event) -> None:
        await self.start()
        roles = [
            asyncio.create_task(self.heartbeat(), name="heartbeat"),
            asyncio.create_task(self.fetch(), name="fetch"),
            asyncio.create_task(self.control(), name="control"),
        ]
        # systemd: READY=1 once registered with the consumer groups set up; WATCHDOG=1 only while
        # the loop turns (the pinger is a task on it) and no role task has died.
        watchdog = asyncio.create_task(
            sdnotify.watchdog(lambda: not any(t.done() for t in roles), self.log), name="watchdog"
        )
        sdnotify.ready(f"app {self.app.name}, concurrency {self.concurrency}, id {self.id}")
        await stop.wait()
        watchdog.cancel()
        await self.shutdown(roles, stop)

    async def shutdown(self, roles: list[asyncio.Task[Any]], stop: asyncio.Event) -> None:
        self.log.info("executor_stopping", running=len(self.runs), grace=self.settings.grace)
        sdnotify.stopping(f"stopping: {len(self.runs)} runs, grace {self.settings.grace:g}s")
        self.quiet.set()
        # fetch notices `quiet` within its 1 s block; it is not cancelled, so no entry is ever
        # cut off between its read and its claim.
        if not self.reading:  # waiting for a free slot: safe to stop right there
            roles[1].cancel()
        await asyncio.wait([roles[1]], timeout=5)
        pending = [r.aio for r in self.runs.values() if r.aio]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.grace)
        for run in list(self.runs.values()):  # past the grace period: hand back, not lose
            if run.aio and not run.aio.done():
                run.aio.cancel()
            res = await self.runner.handback(run)
            self.log.info("run_handed_back", task_id=run.task_id, job_id=run.job_id, result=res[0])
        roles[0].cancel()
        roles[2].cancel()
        # Let them end before the client closes, so that no read of theirs is cut off by the
        # close.  Both loops honour a cancel even when redis-py swallows it (shared/aio.py),
        # control within its 1 s pop; the bound is for what we have not seen: a stop must
        # never hang on a role.
        _, stuck = await asyncio.wait([roles[0], roles[2]], timeout=ROLE_STOP_TIMEOUT)
        if stuck:
            self.log.warning("roles_not_stopped", roles=sorted(t.get_name() for t in stuck))
        for k in self.parts:  # leave the registry: nothing of ours is running any more
            await redeliver_pending(self.r, self.scripts, k, self.app.name, self.id)
            pipe = self.r.pipeline(transaction=False)
            pipe.zrem(k.executors(), self.id)
            pipe.delete(k.executor(self.id), k.running(self.id))
            await pipe.execute()
        await self.r.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.log.info("executor_stopped")

    # ------------------------------------------------------------------ heartbeat
    async def heartbeat(self) -> None:
        while True:
            raise_if_stop_requested()  # a cancel lost in a ping's socket write (shared/aio.py)
            await asyncio.sleep(self.settings.ping_interval)
            try:
                for k in self.parts:
                    ok = await self.scripts.run(
                        "ping", [k.executors(), k.executor(self.id)], [k.prefix, self.id, 0]
                    )
                    if not ok:
                        await self.declared_dead(k)
            except (OSError, aredis.ConnectionError, aredis.TimeoutError) as e:
                raise_if_stop_requested()
                self.log.warning("ping_failed", error=str(e))

    async def declared_dead(self, k: Keys) -> None:
        """The manager gave our runs to others: drop them (their writes would be rejected
        anyway) and register again as a fresh consumer."""
        self.log.warning("declared_dead", running=len(self.runs))
        for run in list(self.runs.values()):
            if run.aio:
                run.aio.cancel()
        await self.register(k)

    # ------------------------------------------------------------------ control
    async def control(self) -> None:
        """Cancel requests (tasks.cancel, execution deadline) for runs of ours.  A blocking
        pop with a 1 s timeout keeps a cancel within the 2 s promise of SPEC §6.  A Redis
        Cluster refuses a pop over keys of several slots: there, one pop per partition."""
        if self.split:
            await asyncio.gather(*(self._control([k.control(self.id)]) for k in self.parts))
        else:
            await self._control([k.control(self.id) for k in self.parts])

    async def _control(self, keys: list[str]) -> None:
        while True:
            try:
                got = await self.r.blpop(keys, timeout=1)
            except (OSError, aredis.ConnectionError, aredis.TimeoutError) as e:
                raise_if_stop_requested()
                self.log.warning("control_failed", error=str(e))
                await asyncio.sleep(0.5)
                continue
            # A cancel can come back as a reply here: lost in the write of the BLPOP (3.11's
            # wait_for, shared/aio.py) or turned into the empty reply of the blocking read.
            raise_if_stop_requested()
            if not got:
                continue
            msg = json.loads(got[1])
            run = self.runs.get(msg.get("cancel", ""))
            if run and run.job_id == msg.get("job_id") and run.aio:
                self.log.info("run_cancelled", task_id=run.task_id, job_id=run.job_id)
                run.aio.cancel()

    # ------------------------------------------------------------------ fetch
    async def fetch(self) -> None:
        while not self.quiet.is_set():
            await self.slots.acquire()
            if self.quiet.is_set():
                self.slots.release()
                return
            free = 1
            while not self.slots.locked():  # take every free slot: one read for all of them
                await self.slots.acquire()
                free += 1
            self.reading = True
            entries: list[Entry] = []
            try:
                entries = await self.read(free)
            except Exception as e:  # noqa: BLE001 - a fetch loop that dies would strand the executor
                self.log.warning("fetch_failed", error=str(e))
                self._streams_at = 0.0
                await asyncio.sleep(0.5)
            for _ in range(free - len(entries)):
                self.slots.release()
            if entries:
                await self.claim(entries)
            self.reading = False

    async def streams(self) -> list[tuple[int, str, Keys]]:
        """(priority, stream, partition) of our app, highest priority first; a task created
        with a new priority adds a stream, so the list is looked up again every second."""
        now = time.monotonic()
        if now - self._streams_at > 1.0:
            found = [
                (prio, key, k)
                for k in self.parts
                for prio, key in await app_streams(self.r, k, self.app.name)
            ]
            base = [(0, k.stream(self.app.name), k) for k in self.parts]
            self._streams = sorted(set(found) | set(base), key=lambda x: -x[0])
            self._where = {key: (prio, k) for prio, key, k in self._streams}
            self._streams_at = now
        return self._streams

    def _entries(self, got: Any) -> list[Entry]:
        """XREADGROUP's reply as entries, highest priority first."""
        where = self._where
        out = [(where[s][1], s, eid, f, where[s][0]) for s, items in got for eid, f in items]
        return sorted(out, key=lambda e: -e[4])

    async def _at_most(self, out: list[Entry], free: int) -> list[Entry]:
        """A blocking read over several streams may return one entry from each: the surplus
        beyond `free` slots goes back on its stream (redeliver.lua) for someone to take."""
        for k, stream, eid, f, _ in out[free:]:
            await self.scripts.run("redeliver", [k.task(f["t"]), stream], [k.prefix, f["t"], eid, f["j"]])
        return out[:free]

    async def read(self, free: int) -> list[Entry]:
        streams = await self.streams()
        if self.split:
            return await self.read_cluster(streams, free)
        entries_of = self._entries
        if streams[0][0] == streams[-1][0]:  # one priority in use: one blocking read
            got = await self.r.xreadgroup(
                GROUP, self.id, {key: ">" for _, key, _ in streams}, count=free, block=1000
            )
            return entries_of(got)
        out: list[Entry] = []
        for _, key, _ in streams:  # highest priority first, without blocking
            if len(out) >= free:
                break
            out += entries_of(await self.r.xreadgroup(GROUP, self.id, {key: ">"}, count=free - len(out)))
        if out:
            return out
        got = await self.r.xreadgroup(
            GROUP, self.id, {key: ">" for _, key, _ in streams}, count=1, block=1000
        )
        return await self._at_most(entries_of(got), free)

    async def read_cluster(self, streams: list[tuple[int, str, Keys]], free: int) -> list[Entry]:
        """`read` on a Redis Cluster with several partitions, where one XREADGROUP may only name
        streams of one slot, i.e. of one partition.  Without blocking: the streams one at a time, highest priority
        first and, within a priority, partitions in turns (each pass starts one further on).
        With nothing found: a blocking read of the streams of one partition (the pass's first)
        for CLUSTER_BLOCK_MS only, since work arriving elsewhere would not end it; the next pass
        sees all partitions again.  So an idle executor notices new work within about that
        time, at the cost of a read per partition per wait."""
        n = len(self.parts)
        turn = self._turn = (self._turn + 1) % n
        entries_of = self._entries
        out: list[Entry] = []
        for _, key, _ in sorted(streams, key=lambda x: (-x[0], (x[2].partition - turn) % n)):
            if len(out) >= free:
                break
            out += entries_of(await self.r.xreadgroup(GROUP, self.id, {key: ">"}, count=free - len(out)))
        if out:
            return out
        k = self.parts[turn]
        mine = {key: ">" for _, key, kk in streams if kk is k}
        got = await self.r.xreadgroup(GROUP, self.id, mine, count=1, block=CLUSTER_BLOCK_MS)
        return await self._at_most(entries_of(got), free)

    async def claim(self, entries: list[Entry]) -> None:
        leases = [self.new_lease() for _ in entries]
        calls = [
            (
                "claim",
                [k.task(f["t"]), stream, k.executors(), k.running(self.id), k.deadlines()],
                [k.prefix, f["t"], eid, f["j"], self.id, lease],
            )
            for (k, stream, eid, f, _), lease in zip(entries, leases, strict=True)
        ]
        delay = 0.1
        while True:
            try:
                results = await self.scripts.run_many(calls)
                break
            except (OSError, aredis.ConnectionError, aredis.TimeoutError) as e:
                # The entries stay pending on us; a replay with the same leases is safe
                # (claim.lua answers a replay like the original), so try until it lands.
                self.log.warning("claim_failed", error=str(e), entries=len(entries))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        dead: set[int] = set()
        for (k, _, _, f, _), lease, res in zip(entries, leases, results, strict=True):
            if res[0] != "OK":
                self.slots.release()
                if res[0] == "DEAD":
                    dead.add(k.partition)
                continue
            h = dict(zip(res[1::2], res[2::2], strict=True))
            self.runner.start(k, f["t"], h, lease)
        for p in dead:
            # Reaped while we were reading: what we read is still QUEUED work but pending on
            # us, and the manager has already swept our entries.  Put it back ourselves.
            k = self.parts[p]
            n = await redeliver_pending(self.r, self.scripts, k, self.app.name, self.id)
            self.log.warning("claim_refused_dead", redelivered=n)
            await self.declared_dead(k)
