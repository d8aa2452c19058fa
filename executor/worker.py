"""The executor daemon: one process serving one app.  `Executor` holds its lifecycle and roles
and composes the rooms that do the work.

Roles (each an asyncio task):
  heartbeat  pings every ping_interval on the executors zset (never on a work stream); told it
             was declared dead, it drops its runs and registers again
  fetch      the Fetcher (executor/fetch.py): reads the app streams through the consumer group,
             as many entries as free slots, and claims them in one pipelined round trip (the
             claim acknowledges the entry)
  control    pops the cancel requests for runs of ours and cancels their tasks
  runs       one per claimed task, by the Runner (executor/run.py): stages from the current one,
             each called (executor/call.py) and its result committed with a fenced script that
             also decides what comes next; commits go out together (executor/batcher.py)
Shutdown is two-phase: quiet (stop fetching), then wait up to the grace period for runs, then
hand unfinished runs back (SUSPENDED -> QUEUED at their current stage).  Heartbeat and control
then get ROLE_STOP_TIMEOUT to end before the executor leaves the registry.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from stagewise import log as slog
from stagewise import sdnotify  # systemd notify protocol: no-ops without $NOTIFY_SOCKET
from stagewise.aio import raise_if_stop_requested
from stagewise.config import Settings
from stagewise.executor.app import App
from stagewise.executor.batcher import Batcher
from stagewise.executor.fetch import Fetcher
from stagewise.executor.run import Run, Runner
from stagewise.keys import GROUP, Keys
from stagewise.storage import calls
from stagewise.storage.connection import connect, is_cluster
from stagewise.storage.runner import Scripts
from stagewise.storage.streams import redeliver_pending

ROLE_STOP_TIMEOUT = 5.0  # s shutdown waits for heartbeat and control to end (shutdown)
HANDBACK_TIMEOUT = 5.0  # s a stop tries to hand its unfinished runs back through Redis faults


class Roles(NamedTuple):
    """The long-lived tasks of a serving executor (runs are tasks of their own, in `runs`)."""

    heartbeat: asyncio.Task[None]
    fetch: asyncio.Task[None]
    control: asyncio.Task[None]


class Executor:
    """Serves `app` with up to `concurrency` runs at a time: `serve(stop)` until `stop` is set."""

    def __init__(self, app: App, settings: Settings, concurrency: int = 8) -> None:
        self.app = app
        self.settings = settings
        self.concurrency = concurrency
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.parts = [Keys(settings.namespace, p) for p in range(settings.partitions)]
        # The Redis client, its scripts, the commit batcher, the runner and the fetcher are made
        # by `start`: connect asks the server whether it is a Redis Cluster, and all use it.
        self.r: Any = None
        self.scripts: Scripts
        self.batcher: Batcher
        self.runner: Runner
        self.fetcher: Fetcher
        self.cluster = False  # a Redis Cluster: a command names keys of one partition only
        self.split = False  # a cluster and several partitions: read and pop partition by partition
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="handler")
        self.runs: dict[str, Run] = {}
        self.slots = asyncio.Semaphore(concurrency)
        self.quiet = asyncio.Event()  # stop fetching
        self.log = slog.get(app=app.name, executor_id=self.id)

    async def register(self, k: Keys) -> None:
        """Enters (or re-enters) the executors registry of a partition with what
        executors.list shows."""
        await self.ping(
            k,
            "app",
            self.app.name,
            "host",
            socket.gethostname(),
            "pid",
            os.getpid(),
            "concurrency",
            self.concurrency,
        )

    async def ping(self, k: Keys, *info: Any) -> bool:
        """ping.lua on a partition: with `info` (field, value pairs) it registers us; without,
        it is the heartbeat, which answers False when we were declared dead."""
        return await self.scripts.run(calls.ping(k, self.id, info or None))

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
        self.batcher = Batcher(self.scripts, self.log)
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
        self.fetcher = Fetcher(
            r=self.r,
            scripts=self.scripts,
            app=self.app.name,
            executor_id=self.id,
            parts=self.parts,
            split=self.split,
            slots=self.slots,
            quiet=self.quiet,
            runner=self.runner,
            declared_dead=self.declared_dead,
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
        roles = Roles(
            heartbeat=asyncio.create_task(self.heartbeat(), name="heartbeat"),
            fetch=asyncio.create_task(self.fetcher.fetch(), name="fetch"),
            control=asyncio.create_task(self.control(), name="control"),
        )
        # systemd: READY=1 once registered with the consumer groups set up; WATCHDOG=1 only while
        # the loop turns (the pinger is a task on it) and no role task has died.
        watchdog = asyncio.create_task(
            sdnotify.watchdog(lambda: not any(t.done() for t in roles), self.log), name="watchdog"
        )
        sdnotify.ready(f"app {self.app.name}, concurrency {self.concurrency}, id {self.id}")
        await stop.wait()
        watchdog.cancel()
        await self.shutdown(roles)

    async def shutdown(self, roles: Roles) -> None:
        self.log.info("executor_stopping", running=len(self.runs), grace=self.settings.grace)
        sdnotify.stopping(f"stopping: {len(self.runs)} runs, grace {self.settings.grace:g}s")
        self.quiet.set()
        # fetch notices `quiet` within its 1 s block; it is not cancelled, so no entry is ever
        # cut off between its read and its claim.
        if not self.fetcher.reading:  # waiting for a free slot: safe to stop right there
            roles.fetch.cancel()
        await asyncio.wait([roles.fetch], timeout=5)
        pending = [r.aio for r in self.runs.values() if r.aio]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.grace)
        # Past the grace period: hand back, not lose.  What cannot be handed back (Redis away)
        # keeps us in that partition's registry, so that the manager takes it back once our
        # pings stop.
        unfinished = list(self.runs.values())
        until = asyncio.get_running_loop().time() + HANDBACK_TIMEOUT
        left = await self.runner.give_up(unfinished, "stopping", until) if unfinished else []
        stay = {run.keys.partition for run in left}
        roles.heartbeat.cancel()
        roles.control.cancel()
        # Let them end before the client closes, so that no read of theirs is cut off by the
        # close.  Both loops honour a cancel even when redis-py swallows it (shared/aio.py),
        # control within its 1 s pop; the bound is for what we have not seen: a stop must
        # never hang on a role.
        _, stuck = await asyncio.wait([roles.heartbeat, roles.control], timeout=ROLE_STOP_TIMEOUT)
        if stuck:
            self.log.warning("roles_not_stopped", roles=sorted(t.get_name() for t in stuck))
        for k in self.parts:  # leave the registry: nothing of ours is running any more
            if k.partition in stay:
                kept = sum(1 for run in left if run.keys.partition == k.partition)
                self.log.warning("registry_kept", partition=k.partition, runs=kept)
                continue
            try:
                await redeliver_pending(self.r, self.scripts, k, self.app.name, self.id)
                pipe = self.r.pipeline(transaction=False)
                pipe.zrem(k.executors(), self.id)
                pipe.delete(k.executor(self.id), k.running(self.id))
                await pipe.execute()
            except (OSError, aredis.RedisError) as e:  # still registered: reaped once our pings stop
                self.log.warning("leave_failed", partition=k.partition, error=str(e))
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
                    if not await self.ping(k):
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
