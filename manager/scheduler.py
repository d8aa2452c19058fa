"""The manager's periodic work, as independent roles.  Each role is its own asyncio task that
runs one step, then waits its own interval, so a slow step of one role never holds up another:
a clean of tens of thousands of tasks runs while due work keeps flowing every tick.

  role        every                           step
  due         tick                            IDLE run_at / cron fire, timer end, message timeout,
                                              retry time -> wake.lua
  deadlines   tick                            RUNNING past exec_deadline -> expire.lua (EXEC_TIMEOUT)
  ended       tick                            tasks that just ended: next_task gets a fresh run
                                              (chaining), a cron task goes back to IDLE
  reap        max(ping_interval / 2, tick)    executors whose heartbeat lapsed are declared dead
                                              (mark_dead.lua: fenced by the last ping, after which
                                              they can claim nothing); the runs they held then ->
                                              reap.lua (re-queued), their unclaimed pending entries
                                              -> redeliver.lua, then they leave the registry
                                              (forget.lua); see Scheduler.reap_executor
  trim        TRIM_EVERY                      app streams lose the entries every consumer is done
                                              with, so Redis memory stays bounded under a steady load
  trim_notes  TRIM_EVERY                      notifications older than notify_retention
  clean       min(CLEAN_EVERY, clean_after)   retention: terminal tasks older than clean_after lose
                                              results and kws (only when clean_after is set)

Each step reads only what is due from a sorted set or index (never all tasks) and acts through
one fenced, idempotent script per task, so any number of managers can run these roles at once:
of two managers racing for an entry, one acts, the other gets NOT_DUE / SKIP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis

from stagewise import log as slog
from stagewise.faults import REDIS_FAULTS, Warnings
from stagewise.keys import GROUP, Keys, split_member
from stagewise.manager import stats
from stagewise.manager.store import Store
from stagewise.policy import catch_up_cron
from stagewise.storage import calls
from stagewise.storage.streams import redeliver_pending

REDIS_ERRORS = REDIS_FAULTS  # any Redis or socket error, the cluster client's own too
TRIM_EVERY = 2.0  # s
CLEAN_EVERY = 60.0  # s


def _older(a: str, b: str) -> str:
    """The smaller of two stream ids."""
    pa, pb = tuple(map(int, a.split("-"))), tuple(map(int, b.split("-")))
    return a if pa <= pb else b


@dataclass(frozen=True)
class Role:
    """One periodic job: `step(now)` (now = Redis server time), then `every` seconds of rest."""

    name: str
    every: float
    step: Callable[[float], Awaitable[object]]


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
        # due, deadlines and ended share the tick but not a task: ended makes a round trip or
        # two per task it chains, and a job that keeps crashing (a bad entry) must not keep
        # the others from their work.
        self.roles = [
            Role("due", settings.tick, self._each(self.due)),
            Role("deadlines", settings.tick, self._each(self.deadlines)),
            Role("ended", settings.tick, self._each(self.ended)),
            Role("reap", max(settings.ping_interval / 2, settings.tick), self._each(self.reap)),
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

    def _count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def _each(self, job: Callable[[Keys, float], Awaitable[object]]) -> Callable[[float], Awaitable[None]]:
        """A step that runs `job` on every partition in turn."""

        async def step(now: float) -> None:
            for k in self.parts:
                await job(k, now)

        return step

    async def server_time(self) -> float:
        sec, usec = await self.r.time()
        return sec + usec / 1e6

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
            try:
                await role.step(await self.server_time())
                warnings.ok(scheduler_role=role.name)
            except REDIS_ERRORS as e:
                warnings.failed(e, scheduler_role=role.name)
            except Exception:  # a bug must not stop this role, nor the others: log it, go on
                self.log.exception("tick_crashed", scheduler_role=role.name)
            finally:
                self.busy.discard(role.name)
                self.steps[role.name] += 1
            # The rest is counted from the end of the step, so a step that overruns its
            # interval (a long clean) is not run again back to back.
            try:
                await asyncio.wait_for(stop.wait(), role.every)
            except TimeoutError:
                pass

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
        results = await self.scripts.run_many([calls.wake(k, m) for m in members])
        for m, res in zip(members, results, strict=True):
            if res.code not in ("NOT_DUE", "SKIP", "GONE"):
                self._count("woken")
                self.log.debug("woken", member=m, status=res.code)
        return len(members)

    async def deadlines(self, k: Keys, now: float) -> int:
        members = await self.r.zrangebyscore(k.deadlines(), "-inf", now, start=0, num=self.settings.batch)
        if not members:
            return 0
        for m, res in zip(members, await self.scripts.run_many([calls.expire(k, m) for m in members]), strict=True):
            if res.code == "FAILED":
                self._count("exec_timeouts")
                self.log.info("exec_timeout", member=m)
        return len(members)

    async def reap(self, k: Keys, now: float) -> None:
        """Executors whose last ping is older than dead_seconds, and those declared dead whose
        reap is not finished (a manager died mid-reap): each is reaped by `reap_executor`."""
        stale = await self.r.zrangebyscore(k.executors(), "-inf", now - self.settings.dead_seconds)
        marked = await self.r.zrange(k.dead_executors(), 0, -1)
        for eid in dict.fromkeys([*marked, *stale]):
            await self.reap_executor(k, eid)

    async def reap_executor(self, k: Keys, eid: str) -> None:
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
        mark = await self.scripts.run(calls.mark_dead(k, eid, self.settings.dead_seconds))
        if mark.code != "DEAD":
            return
        held = await self.r.hkeys(k.reaping(eid))
        outcomes = await self.scripts.run_many(
            [calls.reap(k, m, eid, self.settings.max_interruptions) for m in held]
        )
        redelivered = 0
        if not mark.live:
            redelivered = await redeliver_pending(self.r, self.scripts, k, mark.app or None, eid)
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

    async def trim_notes(self, k: Keys, now: float) -> None:
        """Notifications older than the retention go (their count is bounded at XADD too)."""
        floor = int((now - self.settings.notify_retention) * 1000)
        await self.r.xtrim(k.notes(), minid=f"{floor}-0", approximate=True)
