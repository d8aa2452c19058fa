"""The manager's periodic work, as independent roles.  Each role is its own asyncio task that
runs one step, then waits its own interval, so a slow step of one role never holds up another:
a clean of tens of thousands of tasks runs while due work keeps flowing every tick.

  role        every                           step
  due         tick                            IDLE run_at / cron fire, timer end, message timeout,
                                              retry time -> wake.lua
  deadlines   tick                            RUNNING past exec_deadline -> expire.lua (EXEC_TIMEOUT)
  ended       tick                            tasks that just ended: next_task gets a fresh run
                                              (chaining), a cron task goes back to IDLE
  reap        max(ping_interval / 2, tick)    executors whose heartbeat lapsed (not counting the
                                              time Redis was away for this manager too: Outages)
                                              are declared dead (mark_dead.lua: fenced by the
                                              last ping, after which
                                              they can claim nothing); the runs they held then ->
                                              reap.lua (re-queued), their unclaimed pending entries
                                              -> redeliver.lua, then they leave the registry
                                              (forget.lua); see Scheduler.reap_executor
  reconcile   ping_interval                   what a Redis that lost writes (a restart from an
                                              older file, a failover to a replica that lagged) left
                                              stuck: RUNNING tasks no live executor runs ->
                                              orphan.lua, QUEUED tasks whose stream entry is gone
                                              -> requeue_lost.lua; see Scheduler.reconcile
  limits      tick                            flow control (stagewise/storage/limits.py): outbox
                                              entries an executor left (permits of ended runs),
                                              limit keys due (rate window, pause end, lapsed
                                              reservation), permits due for a check against their run
  spawn       tick, or woken by the API's create  runs that reached a children stage: their children's
              of a task opening with children  documents filled (stagewise.fanout) and started with
                                              the parent's join -> spawn.lua (SPEC §3a); a backlog
                                              in rounds of SPAWN_BATCH within one step
  cascade     tick                            live children of parents that no longer wait for
                                              them -> cancel_children.lua, CASCADE_BATCH a call
  trim        TRIM_EVERY                      app streams lose the entries every consumer is done
                                              with, so Redis memory stays bounded under a steady load
  trim_notes  TRIM_EVERY                      notifications older than notify_retention
  clean       min(CLEAN_EVERY, clean_after)   retention: terminal tasks older than clean_after lose
                                              results and kws (only when clean_after is set)

Each step reads only what is due from a sorted set or index (never all tasks) and acts through
one fenced, idempotent script per task, so any number of managers can run these roles at once:
of two managers racing for an entry, one acts, the other gets NOT_DUE / SKIP.  The reconcile
role reads, per partition and pass, the RUNNING tasks (the deadlines zset holds exactly those),
the executors' registry and reports, and at most RECONCILE_BATCH QUEUED tasks: its cost
follows the tasks running and that cap, whatever the number of tasks stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis

from stagewise import fanout, tracing
from stagewise import log as slog
from stagewise.faults import BACKOFF_CAP, REDIS_FAULTS, Warnings, unavailable_reason
from stagewise.keys import GROUP, Keys, split_member
from stagewise.manager import stats
from stagewise.manager.store import Store
from stagewise.policy import catch_up_cron
from stagewise.status import Status
from stagewise.storage import calls
from stagewise.storage.streams import redeliver_pending

REDIS_ERRORS = REDIS_FAULTS  # any Redis or socket error, the cluster client's own too
TRIM_EVERY = 2.0  # s
CLEAN_EVERY = 60.0  # s
RECONCILE_BATCH = 200  # QUEUED tasks whose hint the reconcile role looks at, per partition and pass
RUNNING_PAGE = 1000  # RUNNING tasks the reconcile role reads per round trip
# Outbox entries younger than this are left to the process that wrote them (an executor's run
# that ended, or the manager's own cancel, unlock, expire, reap, orphan: each drains at once,
# Store.release_freed); what is older was left by a process that died in between.
OUTBOX_GRACE = 0.05  # s
SPAWN_BATCH = 50  # parents whose children the spawn role starts per partition and step
# children built per partition and step, at most (the first parent's all, however many): filling and
# checking a child's document is Python work in the manager's event loop, which serves the API too
SPAWN_CHILDREN = 2000
SPAWN_ROUNDS = 10  # batches of a backlog the spawn role works through in one step (see spawn)
CASCADE_BATCH = 200  # children one cancel_children.lua cancels (a bounded script)


def _older(a: str, b: str) -> str:
    """The smaller of two stream ids."""
    pa, pb = tuple(map(int, a.split("-"))), tuple(map(int, b.split("-")))
    return a if pa <= pb else b


@dataclass(frozen=True)
class Report:
    """An executor's last report of its runs in a partition (ping.lua): its lease prefix, the
    lease counter its claims are settled up to, the leases it holds, when it reported."""

    prefix: str
    settled: int
    held: frozenset[str]
    reported: float

    @classmethod
    def parse(cls, raw: list[str | None]) -> Report | None:
        """From HMGET lease_prefix settled held reported; None: no report (yet, or ever: an
        executor of an older version)."""
        prefix, settled, held, reported = raw
        if settled is None or held is None or reported is None:
            return None
        try:
            return cls(prefix or "", int(settled), frozenset(json.loads(held)), float(reported))
        except (TypeError, ValueError):
            return None


def suspect(
    eid: str,
    lease: str,
    run_started: str | None,
    live: set[str],
    dead: set[str],
    reports: dict[str, Report | None],
) -> bool:
    """Whether orphan.lua may take back a RUNNING task held by `eid` under `lease`: its rules,
    read outside the script to spare a script per running task.  orphan.lua reads them again, in
    one step, and decides."""
    if eid not in live:
        return eid not in dead  # registry lost (a reaping hash left: the script sees it)
    rep = reports.get(eid)
    try:
        if rep is None or run_started is None or rep.reported <= float(run_started):
            return False  # no report since the claim
    except ValueError:
        return False
    prefix, _, n = lease.rpartition(".")
    return prefix == rep.prefix and n.isdigit() and int(n) <= rep.settled and lease not in rep.held


class Outages:
    """The spans of time (this process's clock) in which this manager could not use Redis, for
    one partition: from the last write the partition took (the reap role's probe) to the next
    one, whenever the probe or any role failed in between because Redis was away (an error with
    an `unavailable_reason`; a step that fails for a reason of its own, a bad entry, opens no
    span).  Per partition: on a Redis Cluster one master may be away while the others serve.

    A heartbeat that Redis refused is not a sign of a dead executor: when Redis is away (killed,
    stopped, restarting, out of memory), every executor's pings fail with it, and its last ping
    ages though it is alive and keeps its runs.  Declaring it dead at Redis's return would take
    those runs back and run their stages a second time.  So an executor's silence counts only
    the time outside these spans.  An executor that died before or during an outage is still
    declared dead, that much later: a span ends when Redis takes writes again, so an outage
    holds a reap back for as long as it lasts, not longer."""

    def __init__(self, keep: float) -> None:
        self.keep = keep  # s: spans that ended longer ago than this are forgotten
        self.spans: list[tuple[float, float]] = []
        self.last_ok = time.time()
        self.down_since: float | None = None

    def failed(self) -> None:
        if self.down_since is None:
            self.down_since = self.last_ok

    def ok(self, t: float) -> None:
        if self.down_since is not None:
            self.spans.append((self.down_since, t))
            self.down_since = None
        self.last_ok = t
        self.spans = [(a, b) for a, b in self.spans if b > t - self.keep]

    def within(self, since: float, until: float) -> float:
        """Seconds of [since, until] in which Redis was away."""
        spans = [*self.spans, (self.down_since, until)] if self.down_since is not None else self.spans
        return sum(max(0.0, min(b, until) - max(a, since)) for a, b in spans)


@dataclass(frozen=True)
class Role:
    """One periodic job: `step(now)` (now = Redis server time), then `every` seconds of rest."""

    name: str
    every: float
    step: Callable[[float], Awaitable[object]]
    # set by whoever knows there is work for the role now: its rest ends early
    wake: asyncio.Event | None = None


class Scheduler:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.r: Any = store.r  # decode_responses=True: replies are str
        self.scripts = store.scripts
        settings = store.settings
        self.settings = settings
        self.parts = [Keys(settings.namespace, p) for p in range(settings.partitions)]
        self.log = slog.get(role="scheduler")
        self.stats: dict[str, int] = {}
        # spans older than an hour are forgotten: an executor silent since then is reaped by now
        self.outages = {k.partition: Outages(keep=3600.0) for k in self.parts}
        # the API's creates of tasks that open with a children stage (Store.children_waiting)
        self.spawn_wake = asyncio.Event()
        store.children_waiting = self.spawn_wake.set
        # due, deadlines and ended share the tick but not a task: ended makes a round trip or
        # two per task it chains, and a job that keeps crashing (a bad entry) must not keep
        # the others from their work.
        self.roles = [
            Role("due", settings.tick, self._each(self.due)),
            Role("deadlines", settings.tick, self._each(self.deadlines)),
            Role("ended", settings.tick, self._each(self.ended)),
            # fan-out (SPEC §3a)
            Role("spawn", settings.tick, self._each(self.spawn), wake=self.spawn_wake),
            Role("cascade", settings.tick, self._each(self.cascade)),
            Role("reap", max(settings.ping_interval / 2, settings.tick), self._reap_step),
            Role("reconcile", settings.ping_interval, self._each(self.reconcile)),
            Role("limits", settings.tick, self._each(self.limits)),
            Role("trim", TRIM_EVERY, self._each(lambda k, _now: self.trim(k))),
            Role("trim_notes", TRIM_EVERY, self._each(self.trim_notes)),
        ]
        if settings.clean_after:
            self.roles.append(Role("clean", min(CLEAN_EVERY, settings.clean_after), self.clean))
        if settings.stats_every:  # the dashboard's last hour (manager/stats.py)
            self.roles.append(Role("stats", settings.stats_every, lambda now: stats.sample(store, now)))
        # What the roles are doing, for tests and diagnostics: the roles in a step right now,
        # and how many steps each has ended (with or without an error).
        self.busy: set[str] = set()
        self.steps: dict[str, int] = {role.name: 0 for role in self.roles}
        self.reconcile_batch = RECONCILE_BATCH

    def _count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def _each(self, job: Callable[[Keys, float], Awaitable[object]]) -> Callable[[float], Awaitable[None]]:
        """A step that runs `job` on every partition in turn."""

        async def step(now: float) -> None:
            for k in self.parts:
                await job(k, now)

        return step

    async def server_time(self) -> float:
        return await self.store.server_time()

    async def run(self, stop: asyncio.Event) -> None:
        """Runs every role until `stop` is set, then returns once each has finished the step
        it was in.  A role that fails is logged and goes on at its next interval, so run never
        ends early: manager/main.py reads a finished run as a manager that is not healthy."""
        tasks = [
            asyncio.create_task(self._run_role(role, stop), name=f"scheduler.{role.name}")
            for role in self.roles
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # Only when run itself is cancelled (or a role ended by a BaseException such as
            # SystemExit): no role outlives run.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_role(self, role: Role, stop: asyncio.Event) -> None:
        # Any Redis error (unreachable, out of memory, read-only, loading, a cluster slot down)
        # is a failed step, tried again at the next interval; logged once per kind of failure,
        # not at every tick of an outage.
        warnings = Warnings(self.log, "tick_failed")
        while not stop.is_set():
            self.busy.add(role.name)
            if role.wake is not None:
                role.wake.clear()  # a wake-up from now on is for work this step may not see
            try:
                await role.step(await self.server_time())
                warnings.ok(scheduler_role=role.name)
            except REDIS_ERRORS as e:
                if unavailable_reason(e) is not None:  # Redis away, not a failing step of ours
                    for outages in self.outages.values():  # which partition, a step cannot tell
                        outages.failed()
                warnings.failed(e, scheduler_role=role.name)
            except Exception:  # a bug must not stop this role, nor the others: log it, go on
                self.log.exception("tick_crashed", scheduler_role=role.name)
            finally:
                self.busy.discard(role.name)
                self.steps[role.name] += 1
            # The rest is counted from the end of the step, so a step that overruns its
            # interval (a long clean) is not run again back to back.
            await self._rest(role, stop)

    @staticmethod
    async def _rest(role: Role, stop: asyncio.Event) -> None:
        """`role.every` seconds, or less: until stop, or the role's wake-up."""
        waits = [asyncio.ensure_future(stop.wait())]
        if role.wake is not None:
            waits.append(asyncio.ensure_future(role.wake.wait()))
        try:
            await asyncio.wait(waits, timeout=role.every, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def clean(self, now: float) -> None:
        """Retention: terminal tasks last updated more than clean_after ago lose their results
        and kws.  Store.clean sends its scripts pipelined and awaits the replies, so the event
        loop, and with it every other role, keeps turning while Redis works through them."""
        cleaned = await self.store.clean(self.settings.clean_after, False, now)
        if cleaned:
            self.log.info("cleaned", tasks=sum(1 for b in cleaned if b["changed"]))

    async def due(self, k: Keys, now: float) -> int:
        members = await self.r.zrangebyscore(k.due(), "-inf", now, start=0, num=self.settings.batch)
        if not members:
            return 0
        tr = tracing.current()
        results = await self.scripts.run_many([calls.wake(k, m, tr is not None) for m in members])
        for m, res in zip(members, results, strict=True):
            if res.code not in ("NOT_DUE", "SKIP", "GONE"):
                self._count("woken")
                self.log.debug("woken", member=m, status=res.code)
                if tr is not None and res.wait is not None:  # a timer or message wait ended
                    tr.wait(split_member(m)[1], res.wait)
        return len(members)

    async def deadlines(self, k: Keys, now: float) -> int:
        members = await self.r.zrangebyscore(k.deadlines(), "-inf", now, start=0, num=self.settings.batch)
        if not members:
            return 0
        expired = False
        for m, res in zip(
            members, await self.scripts.run_many([calls.expire(k, m) for m in members]), strict=True
        ):
            if res.code == "FAILED":
                self._count("exec_timeouts")
                self.log.info("exec_timeout", member=m)
                expired = True
        if expired:  # their limit slots go back now (Store.release_freed)
            await self.store.release_freed([k])
        return len(members)

    async def _reap_step(self, now: float) -> None:
        """The reap role's step, partition by partition: a write to the partition (its master,
        on a Redis Cluster) tells its Outages that Redis takes writes now, then `reap`; a
        partition that refuses the write is skipped (its span goes on), the others are reaped,
        and the step fails with the first refusal."""
        first: BaseException | None = None
        for k in self.parts:
            try:
                await self.store.check_writable([k])
            except REDIS_ERRORS as e:
                if unavailable_reason(e) is None:
                    raise
                self.outages[k.partition].failed()
                first = first or e
                continue
            here = time.time()
            self.outages[k.partition].ok(here)
            await self.reap(k, now, now - here)
        if first is not None:
            raise first

    async def reap(self, k: Keys, now: float, offset: float = 0.0) -> None:
        """Executors silent for longer than dead_seconds, not counting the time Redis was away
        (Outages; `offset`: Redis's clock minus ours), and those declared dead whose reap is not
        finished (a manager died mid-reap): each is reaped by `reap_executor`."""
        dead = self.settings.dead_seconds
        stale = await self.r.zrangebyscore(k.executors(), "-inf", now - dead, withscores=True)
        marked = await self.r.zrange(k.dead_executors(), 0, -1)
        after: dict[str, float] = {eid: dead for eid in marked}
        for eid, last in stale:
            away = self.outages[k.partition].within(last - offset, now - offset)
            # after Redis's return, an executor's next ping may wait out its retry backoff
            grace = dead + away + (BACKOFF_CAP if away else 0.0)
            if now - last >= grace:
                after.setdefault(eid, grace)
        for eid, grace in after.items():
            await self.reap_executor(k, eid, grace)

    async def reap_executor(self, k: Keys, eid: str, dead_after: float | None = None) -> None:
        """Takes back what an executor of partition `k` held, in four steps, each a fenced
        script (or several) that any manager may repeat:

          1. mark_dead.lua declares it dead, only if its last ping is still older than
             dead_seconds (a ping that just landed wins: ALIVE, nothing is done).  In the same
             step it leaves the executors zset for the dead-executors zset and the runs it held
             move from its running set to its reaping hash, each with the lease of its claim.
             From then on its claims are refused (DEAD) and its pings answer 0, so it can take
             nothing more until it registers again, and the reaping hash lists all it held.
          2. reap.lua on each run of the reaping hash: RUNNING under the recorded lease ->
             QUEUED at its stage (or FAILED, EXECUTOR_LOST); anything else (ended, handed back,
             claimed again by a re-registered executor under a new lease) is skipped.
          3. Entries still pending on it go back on their streams (redeliver.lua), unless it
             registered again meanwhile: then it gives back its own.
          4. forget.lua removes the dead mark; its registry entry, info, running set and
             control list go too, unless it registered again meanwhile.

        A manager that dies anywhere in between leaves the executor in the dead-executors zset,
        where the next reap pass (of any manager) finds it and finishes."""
        if dead_after is None:
            dead_after = self.settings.dead_seconds
        mark = await self.scripts.run(calls.mark_dead(k, eid, dead_after))
        if mark.code != "DEAD":
            return
        held = await self.r.hkeys(k.reaping(eid))
        outcomes = await self.scripts.run_many(
            [calls.reap(k, m, eid, self.settings.max_interruptions) for m in held]
        )
        redelivered = 0
        if not mark.live:
            redelivered = await redeliver_pending(self.r, self.scripts, k, mark.app or None, eid)
        if any(o.code in ("QUEUED", "FAILED") for o in outcomes):
            await self.store.release_freed([k])  # the dead runs' limit slots, now
        left = await self.scripts.run(calls.forget(k, eid))
        if left.code == "BUSY":  # marked again since step 2 read the hash: the next pass goes on
            return
        requeued = sum(1 for o in outcomes if o.code == "QUEUED")
        self._count("executors_reaped")
        self.log.warning(
            "executor_dead",
            executor_id=eid,
            app=mark.app or None,
            requeued=requeued,
            failed=sum(1 for o in outcomes if o.code == "FAILED"),
            redelivered=redelivered,
            registered_again=left.code == "LIVE",
        )

    async def reconcile(self, k: Keys, now: float) -> None:
        """What a Redis that lost recent writes (a restart from an older file, a failover to a
        replica that lagged, a flushed registry) leaves stuck, taken back within
        2 x STAGEWISE_DEAD_AFTER pings of its return:

          - a task RUNNING in the name of an executor that does not run it: the executor
            finished it and Redis lost the commit, or the executor is no longer registered
            (`orphans`, orphan.lua).  Executors report with each ping the leases of the runs
            they hold and the lease counter their claims are settled up to; the role acts at its
            first pass after the first report that follows Redis's return (a ping interval or so);
          - a task QUEUED whose stream entry is gone (`lost_deliveries`, requeue_lost.lua),
            once it has been QUEUED for dead_seconds.

        Cost per pass and partition: a read of each RUNNING task's executor and lease, of the
        registry and the reports of the executors that hold them, and at most `reconcile_batch`
        QUEUED tasks; a script only for the tasks that look stuck.  Nothing grows with the
        number of tasks stored.  A QUEUED backlog larger than what a cycle of passes covers in
        dead_seconds (reconcile_batch per ping_interval) is gone through in more passes."""
        await self.orphans(k, now)
        await self.lost_deliveries(k, now)

    async def orphans(self, k: Keys, now: float) -> int:
        """RUNNING tasks that no live executor runs -> orphan.lua (QUEUED again at their stage).
        The deadlines zset holds exactly the RUNNING tasks; those past their deadline are the
        deadlines role's.  Returns how many were taken back."""
        live = set(await self.r.zrange(k.executors(), 0, -1))
        dead = set(await self.r.zrange(k.dead_executors(), 0, -1))
        reports: dict[str, Report | None] = {}
        suspects: list[tuple[str, str, str]] = []  # (member, lease, executor id)
        offset = 0
        while True:
            members = await self.r.zrangebyscore(
                k.deadlines(), f"({now!r}", "+inf", start=offset, num=RUNNING_PAGE
            )
            if not members:
                break
            pipe = self.r.pipeline(transaction=False)
            for m in members:
                pipe.hmget(k.task(split_member(m)[1]), "status", "executor_id", "lease", "run_started")
            rows = await pipe.execute()
            unread = sorted({row[1] for row in rows if row[1] in live and row[1] not in reports})
            if unread:
                pipe = self.r.pipeline(transaction=False)
                for eid in unread:
                    pipe.hmget(k.executor(eid), "lease_prefix", "settled", "held", "reported")
                for eid, raw in zip(unread, await pipe.execute(), strict=True):
                    reports[eid] = Report.parse(raw)
            for m, (status, eid, lease, started) in zip(members, rows, strict=True):
                if (
                    status == Status.RUNNING
                    and lease
                    and suspect(eid or "", lease, started, live, dead, reports)
                ):
                    suspects.append((m, lease, eid or ""))
            if len(members) < RUNNING_PAGE:
                break
            offset += len(members)
        requeued = 0
        for i in range(0, len(suspects), self.settings.batch):
            chunk = suspects[i : i + self.settings.batch]
            results = await self.scripts.run_many([calls.orphan(k, m, lease) for m, lease, _ in chunk])
            for (m, _, eid), res in zip(chunk, results, strict=True):
                if res.code == "QUEUED":
                    requeued += 1
                    self._count("orphans")
                    self.log.warning("orphan_requeued", member=m, executor_id=eid or None, reason=res.reason)
        if requeued:
            await self.store.release_freed([k])  # their limit slots, now
        return requeued

    async def lost_deliveries(self, k: Keys, now: float) -> int:
        """QUEUED tasks queued more than dead_seconds ago whose stream entry is gone ->
        requeue_lost.lua (a fresh entry).  At most `reconcile_batch` a pass, walking the QUEUED
        index (score: `updated`, when the task was queued) from the cursor kept in Redis
        (Keys.reconcile_cursor: the score and id of the last task looked at; ids of one score
        come in order) up to now - dead_seconds, then from the oldest again.  Returns how many
        were re-queued."""
        idx, ck, cap = k.idx_status(Status.QUEUED), k.reconcile_cursor(), self.reconcile_batch
        upper = f"({now - self.settings.dead_seconds!r}"
        at, last_id = await self.r.hmget(ck, "score", "member")
        after = float(at) if at and last_id is not None else None
        offset = 0
        while True:
            page = await self.r.zrangebyscore(
                idx, at or "-inf", upper, start=offset, num=cap, withscores=True
            )
            fresh = [tid for tid, sc in page if after is None or sc > after or tid > last_id]
            if fresh or len(page) < cap:  # a page of ties all looked at already: read on
                break
            offset += len(page)
        requeued = 0
        if fresh:
            pipe = self.r.pipeline(transaction=False)
            for tid in fresh:
                pipe.hmget(k.task(tid), "status", "job_id", "entry")
            rows = await pipe.execute()
            todo = [
                (tid, row) for tid, row in zip(fresh, rows, strict=True) if row[0] == Status.QUEUED and row[1]
            ]
            results = await self.scripts.run_many(
                [calls.requeue_lost(k, tid, job, entry or "") for tid, (_, job, entry) in todo]
            )
            for (tid, (_, _, entry)), res in zip(todo, results, strict=True):
                if res.code == "REQUEUED":
                    requeued += 1
                    self._count("lost_deliveries")
                    self.log.warning("lost_delivery", partition=k.partition, task_id=tid, entry=entry)
        if len(page) < cap:  # the end of what is old enough: the next pass starts from the oldest
            await self.r.delete(ck)
        else:
            tid, score = page[-1]
            await self.r.hset(ck, mapping={"score": repr(score), "member": tid})
        return requeued

    async def limits(self, k: Keys, now: float) -> None:
        """Flow control's due work in partition `k`: outbox entries older than OUTBOX_GRACE
        (the process that wrote one drains it at once; older ones were left by a process that
        died in between), keys
        due, permits due.  Each reads a sorted set up to now: nothing grows with the tasks
        held or stored."""
        lim = self.store.limits
        if await lim.drain(k, OUTBOX_GRACE, now):
            self._count("limit_outbox_drained")
        await lim.pump_due(k, now)
        if n := await lim.check_permits(k, now):
            self._count("limit_permits_reclaimed", n)
            self.log.info("limit_permits_reclaimed", partition=k.partition, permits=n)

    async def trim(self, k: Keys) -> int:
        """Drops stream entries below the oldest one still needed: the oldest pending entry
        and the group's last delivered id (entries past it were never read).  Safe without
        Redis 8.2's trim modes, and idempotent, so managers need not take turns."""
        removed = 0
        for name in await self.r.smembers(k.apps()):
            stream = k.stream_of(name)
            try:
                groups = await self.r.xinfo_groups(stream)
                summary = await self.r.xpending(stream, GROUP)
            except aredis.ResponseError:
                continue
            last = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP), None)
            if last is None or last == "0-0":
                continue
            floor = _older(summary["min"], last) if summary.get("pending") else last
            # MINID keeps entries >= floor: the last delivered entry itself stays, harmlessly.
            removed += await self.r.xtrim(stream, minid=floor, approximate=False)
        if removed:
            self._count("trimmed", removed)
        return removed

    async def ended(self, k: Keys, now: float) -> int:
        """Tasks that just ended and have something to follow: next_task gets a fresh run
        (chaining), and a cron task goes back to IDLE until its next fire."""
        members = await self.r.zrangebyscore(k.ended(), "-inf", "+inf", start=0, num=self.settings.batch)
        for m in members:
            try:
                await self._follow(k, m, now)
            except REDIS_ERRORS:
                raise  # Redis away: the entry stays, and the role tries again at its next step
            except Exception:  # noqa: BLE001 - one task's bad data must not block all that follow it
                self.log.exception("follow_failed", member=m)
            await self.r.zrem(k.ended(), m)
        return len(members)

    async def _follow(self, k: Keys, m: str, now: float) -> None:
        """What follows the end of one task: its next_task, its next cron fire."""
        _, tid = split_member(m)
        h = await self.r.hgetall(k.task(tid))
        if h and h.get("next_task") and h["status"] == "FINISHED":
            nxt = h["next_task"]
            nk = self.store.keys(nxt)
            res = await self.scripts.run(calls.restart(nk, nxt, mode="chain", chain_from=h["job_id"]))
            self.log.info("chained", task_id=tid, next_task=nxt, result=res["status"], error=res["error"])
        if h and h.get("cron") and h["status"] in ("FINISHED", "FAILED"):
            queued = float(h["queued_at"]) if h.get("queued_at") else now
            due_at = catch_up_cron(h["cron"], h.get("tz") or "UTC", queued, now)
            res = await self.scripts.run(calls.restart(k, tid, due_at=due_at, mode="cron"))
            self.log.info("cron_rescheduled", task_id=tid, next_run=due_at, result=res["status"])

    # ------------------------------------------------------------------ fan-out (SPEC §3a)
    async def spawn(self, k: Keys, now: float) -> int:
        """Parents whose run reached a children stage: their children's documents are filled
        here (templates are Python) and spawn.lua starts them with the parent's join, one
        script per parent (up to 1,000 children in one round trip).  The entry stays until
        spawn.lua removes it, so a manager that dies midway leaves it to the next step.

        A backlog (a bulk create of parents) is worked through in rounds of one batch within
        the step, up to SPAWN_ROUNDS, rather than a batch per tick: each tick waited for would
        hold the parents behind it that long before their children even exist."""
        done = 0
        for _ in range(SPAWN_ROUNDS):
            n, more = await self._spawn_batch(k)
            done += n
            if not more:
                break
        return done

    async def _spawn_batch(self, k: Keys) -> tuple[int, bool]:
        """One batch of `spawn`: the parents it handled, and whether more may be waiting (the
        batch was full, or cut at SPAWN_CHILDREN)."""
        entries = await self.r.zrangebyscore(
            k.spawns(), "-inf", "+inf", start=0, num=SPAWN_BATCH, withscores=True
        )
        if not entries:
            return 0, False
        pipe = self.r.pipeline(transaction=False)
        for m, _ in entries:
            pipe.hgetall(k.task(split_member(m)[1]))
        batch: list[calls.Call[calls.Code]] = []
        built = 0
        cut = False
        for (m, score), h in zip(entries, await pipe.execute(), strict=True):
            if built >= SPAWN_CHILDREN:
                cut = True
                break  # the others stay on the spawns zset for the next round
            await asyncio.sleep(0)  # let the API in between two parents' documents
            pid = split_member(m)[1]
            if not h or h.get("status") != Status.WAITING:
                # spawn.lua drops the entry (STALE) once it sees the parent no longer waits there
                batch.append(calls.spawn(k, m, h.get("job_id", "") if h else "", -1, score, "fail", []))
                continue
            stage, job_id = int(h["stage"]), h["job_id"]
            try:
                children, on_failure = fanout.build(h, pid, stage, self.settings.partitions)
            except fanout.SpawnError as e:
                err = {"code": e.code, "message": e.message}
                batch.append(calls.spawn(k, m, job_id, stage, score, "fail", [], err))
                continue
            except Exception:  # noqa: BLE001 - a bug: logged; the entry stays, the other parents go on
                self.log.exception("spawn_build_failed", member=m)
                continue
            built += len(children)
            batch.append(calls.spawn(k, m, job_id, stage, score, on_failure, children))
        for call, res in zip(batch, await self.scripts.run_many(batch, raise_on_error=False), strict=True):
            if isinstance(res, Exception):
                if isinstance(res, REDIS_ERRORS):
                    raise res
                self.log.error("spawn_failed", parent=call.args[1], error=str(res))
            elif res.code != "STALE":
                self._count("spawned")
                self.log.debug("spawned", parent=call.args[1], result=res.code)
        # a parent whose build failed (a bug, logged) stays on the zset: a batch of nothing but
        # those must not spin the rounds, so "more" needs a batch that started something
        return len(batch), bool(batch) and (cut or len(entries) == SPAWN_BATCH)

    async def cascade(self, k: Keys, now: float) -> int:
        """Parents that no longer wait for their live children (cancelled, failed, restarted):
        CASCADE_BATCH of those children cancelled per script, until none is left."""
        parents = await self.r.zrangebyscore(k.cascades(), "-inf", "+inf", start=0, num=self.settings.batch)
        if not parents:
            return 0
        results = await self.scripts.run_many([calls.cancel_children(k, p, CASCADE_BATCH) for p in parents])
        self._count("cascaded", len(results))
        return len(parents)

    async def trim_notes(self, k: Keys, now: float) -> None:
        """Notifications older than the retention go (their count is bounded at XADD too)."""
        floor = int((now - self.settings.notify_retention) * 1000)
        await self.r.xtrim(k.notes(), minid=f"{floor}-0", approximate=True)
