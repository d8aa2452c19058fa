"""The executor daemon: one process serving one app.  `Executor` holds its lifecycle and roles
and composes the rooms that do the work.

Roles (each an asyncio task):
  heartbeat  pings every ping_interval on the executors zset (never on a work stream), each
             partition on its own, with a report of the runs it holds there (`report`: the
             manager takes back a task RUNNING in our name that we do not run); told it is not
             registered in a partition (declared dead, or Redis lost the registry), it gives up
             (hands back) its runs of that partition only and registers again (`refused`)
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

Redis faults: no role ever ends on a Redis error.  Each waits it out with a capped backoff
(stagewise.faults: at most 2 s between tries, so the executor is back at work within that of
Redis's return), logs one warning per kind of failure and one line when it works again; a
consumer group found gone is made again (`rejoin`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from redis.exceptions import ResponseError

from stagewise import log as slog
from stagewise import sdnotify  # systemd notify protocol: no-ops without $NOTIFY_SOCKET
from stagewise.aio import raise_if_stop_requested
from stagewise.config import Settings
from stagewise.executor.app import App
from stagewise.executor.batcher import Batcher
from stagewise.executor.fetch import Fetcher
from stagewise.executor.run import Run, Runner
from stagewise.faults import BACKOFF_CAP, REDIS_FAULTS, Backoff, Warnings
from stagewise.keys import GROUP, Keys, parse_stream_name
from stagewise.storage import calls
from stagewise.storage.connection import connect, is_cluster
from stagewise.storage.limits import Drainer, Limits
from stagewise.storage.runner import Scripts
from stagewise.storage.streams import redeliver_pending

ROLE_STOP_TIMEOUT = 5.0  # s shutdown waits for heartbeat and control to end (shutdown)
HANDBACK_TIMEOUT = 5.0  # s a stop tries to hand its unfinished runs back through Redis faults
FAULTS = REDIS_FAULTS  # what a role waits out: any Redis error, any socket error


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
        # partition -> the task handling a refusal there (one at a time: the heartbeat and a
        # claim may both find out)
        self.refusals: dict[int, asyncio.Task[None]] = {}

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
        it is the heartbeat, which answers False when we are not registered (declared dead, or
        the registry lost).  Either carries our `report` of the partition."""
        return await self.scripts.run(calls.ping(k, self.id, info or None, self.report(k)))

    def report(self, k: Keys) -> calls.Report:
        """What we run in partition `k`, for the manager's reconciliation (orphan.lua): the
        leases of our runs there (those given up whose hand-back has not landed too) and the
        fetcher's `settled` watermark, read in one step: a lease at or below it that is not
        listed is a run we have let go and never run again."""
        runs = [*self.runs.values(), *self.runner.owed]
        held = sorted({run.lease for run in runs if run.keys.partition == k.partition})
        return calls.Report(self.fetcher.lease_prefix, self.fetcher.reported_settled(), held)

    # ------------------------------------------------------------------ lifecycle
    @property
    def max_connections(self) -> int:
        # runs (<= concurrency) + fetch + control (one per partition on a cluster) + heartbeat +
        # shutdown work: never more
        return self.concurrency + 16 + len(self.parts)

    async def start(self, r: Any = None) -> None:
        """Sets up on `r` (a client made by connect with max_connections), or connects."""
        self.r = r if r is not None else await connect(self.settings.redis_url, self.max_connections)
        self.cluster = is_cluster(self.r)
        self.split = self.cluster and len(self.parts) > 1
        self.scripts = Scripts(self.r)
        self.batcher = Batcher(self.scripts, self.log)
        self.limits = Limits(self.scripts, self.r, self.settings.namespace, self.settings.partitions)
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
            drainer=Drainer(self.limits, self.log),
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
            refused=self.refused,
            rejoin=self.rejoin,
            log=self.log,
            limits=self.limits,
            sweep_every=self.settings.dead_seconds,
        )
        for k in self.parts:  # every group first, then the registrations: once listed as an
            await self.join(k)  # executor, it reads every partition
        for k in self.parts:
            await self.register(k)
        self.log.info("executor_started", concurrency=self.concurrency, cluster=self.cluster)

    async def join(self, k: Keys) -> None:
        """The consumer group of every stream of our app in partition `k` (at least the
        priority-0 one), made at 0 where missing, so what was queued before us is delivered
        too, and each stream named in the partition's apps set."""
        names = {self.app.name}
        names.update(n for n in await self.r.smembers(k.apps()) if parse_stream_name(n)[0] == self.app.name)
        for name in sorted(names):
            try:
                await self.r.xgroup_create(k.stream_of(name), GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
            await self.r.sadd(k.apps(), name)

    async def rejoin(self) -> None:
        """A read found a consumer group gone: Redis lost data (a flushed database, a restart
        from an older file, a failover to a replica that lagged).  The groups are made again
        (join), and a partition where we are no longer registered too is `refused`."""
        self.log.warning("groups_lost")
        for k in self.parts:
            await self.join(k)
            if not await self.ping(k):
                await self.refused(k)

    async def serve(self, stop: asyncio.Event, r: Any = None) -> None:
        await self.start(r)
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
        # Our offers of push delivery taken back: a run pushed meanwhile starts, and is waited
        # for (and handed back past the grace period) like the others.
        # One try: an offer left behind is dropped by the first create that finds us gone from the
        # registry, and a run pushed meanwhile is taken back by the reconcile (orphan.lua).
        try:
            async with asyncio.timeout(ROLE_STOP_TIMEOUT):
                await self.fetcher.withdraw(list(self.fetcher.offers))
        except TimeoutError as e:  # a Redis that stopped answering
            self.log.warning("withdraw_failed", error=str(e))
        pending = [r.aio for r in self.runs.values() if r.aio]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.grace)
        # Past the grace period: hand back, not lose; runs an earlier refusal gave up too.
        # What cannot be handed back (Redis away) keeps us in that partition's registry, so
        # that the manager takes it back once our pings stop.
        unfinished = [*self.runs.values(), *self.runner.owed]
        until = asyncio.get_running_loop().time() + HANDBACK_TIMEOUT
        left = await self.runner.give_up(unfinished, "stopping", until) if unfinished else []
        stay = {run.keys.partition for run in left}
        roles.heartbeat.cancel()
        roles.control.cancel()
        # Let them end before the client closes, so that no read of theirs is cut off by the
        # close.  Both loops honour a cancel even when redis-py swallows it (shared/aio.py),
        # control within its 1 s pop; the bound is for what we have not seen: a stop must
        # never hang on a role.
        refusals = [t for t in self.refusals.values() if not t.done()]
        for t in refusals:  # what they would hand back is in runner.owed, handed back above
            t.cancel()
        _, stuck = await asyncio.wait([roles.heartbeat, roles.control, *refusals], timeout=ROLE_STOP_TIMEOUT)
        if stuck:
            self.log.warning("roles_not_stopped", roles=sorted(t.get_name() for t in stuck))
        for k in self.parts:  # leave the registry: nothing of ours is running any more
            if k.partition in stay:
                kept = sum(1 for run in left if run.keys.partition == k.partition)
                self.log.warning("registry_kept", partition=k.partition, runs=kept)
                continue
            try:
                async with asyncio.timeout(ROLE_STOP_TIMEOUT):  # a Redis that stopped answering
                    await redeliver_pending(self.r, self.scripts, k, self.app.name, self.id)
                    pipe = self.r.pipeline(transaction=False)
                    pipe.zrem(k.executors(), self.id)
                    pipe.delete(k.executor(self.id), k.running(self.id), k.pushed(self.id))
                    await pipe.execute()
            except FAULTS as e:  # still registered: the manager reaps us once our pings stop
                self.log.warning("leave_failed", partition=k.partition, error=str(e))
        await self.r.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.log.info("executor_stopped")

    # ------------------------------------------------------------------ heartbeat
    async def heartbeat(self) -> None:
        """A ping per partition every ping_interval; after a failed one, sooner (a capped
        backoff, never more than ping_interval), so that a ping lands soon after Redis is back."""
        interval = self.settings.ping_interval
        warnings = {k.partition: Warnings(self.log, "ping_failed") for k in self.parts}
        backoff = Backoff(cap=min(BACKOFF_CAP, interval))
        delay = interval
        while True:
            raise_if_stop_requested()  # a cancel lost in a ping's socket write (shared/aio.py)
            await asyncio.sleep(delay)
            failed = False
            for k in self.parts:  # each partition on its own: one down is no reason to skip others
                try:
                    if not await self.ping(k):
                        self.refusal(k)  # not awaited: the other partitions' pings go on
                    warnings[k.partition].ok(partition=k.partition)
                except FAULTS as e:
                    raise_if_stop_requested()
                    warnings[k.partition].failed(e, partition=k.partition)
                    failed = True
            if failed:
                delay = backoff.next()
            else:
                delay = interval
                backoff.reset()

    def refusal(self, k: Keys) -> asyncio.Task[None]:
        """The task that handles our refusal in partition `k` (`_refused`): the one under way,
        or a new one."""
        t = self.refusals.get(k.partition)
        if t is None or t.done():
            t = asyncio.create_task(self._refused(k), name=f"refused-{k.partition}")
            t.add_done_callback(self._refusal_done)
            self.refusals[k.partition] = t
        return t

    def _refusal_done(self, t: asyncio.Task[None]) -> None:
        if not t.cancelled() and (e := t.exception()) is not None:  # the next ping answers 0 again
            self.log.warning("refusal_failed", task=t.get_name(), error=str(e)[:500])

    async def refused(self, k: Keys) -> None:
        """`refusal(k)`, waited for (a cancel of the caller does not cancel it)."""
        await asyncio.shield(self.refusal(k))

    async def _refused(self, k: Keys) -> None:
        """We are not registered in partition `k` (a ping answered 0, a claim DEAD): the
        manager declared us dead there and takes back the runs we held, or Redis lost the
        registry.  The runs of that partition are given up (cancelled and handed back: fenced,
        so it does not matter whether the reaper got to them first); the runs of the other
        partitions are still ours and go on.  Then we register again."""
        if await self.ping(k):  # registered again meanwhile
            return
        runs = [run for run in self.runs.values() if run.keys.partition == k.partition]
        self.log.warning("declared_dead", partition=k.partition, running=len(runs))
        # our offer there was dropped with us (mark_dead.lua); a run pushed under it is the
        # reap's, and is handed back if it reaches us (start_pushed)
        self.fetcher.forget_offers([k.partition])
        await self.runner.give_up(runs, "declared dead")
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
        warnings = Warnings(self.log, "control_failed")
        backoff = Backoff()
        while True:
            try:
                got = await self.r.blpop(keys, timeout=1)
            except FAULTS as e:
                raise_if_stop_requested()
                warnings.failed(e)
                await backoff.wait()
                continue
            # A cancel can come back as a reply here: lost in the write of the BLPOP (3.11's
            # wait_for, shared/aio.py) or turned into the empty reply of the blocking read.
            raise_if_stop_requested()
            warnings.ok()
            backoff.reset()
            if not got:
                continue
            try:
                msg = json.loads(got[1])
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.log.warning("control_unreadable", message=str(got[1])[:200])
                continue
            run = self.runs.get(msg.get("cancel", ""))
            if run and run.job_id == msg.get("job_id") and run.aio:
                self.log.info("run_cancelled", task_id=run.task_id, job_id=run.job_id)
                run.aio.cancel()
