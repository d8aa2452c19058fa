"""Flow control (SPEC §2a): keyed concurrency and rate limits across partitions.

Where the state lives
---------------------
A limit key's state lives in one partition, the key's own (``keys.limit_partition``); its
tasks live in theirs (``keys.partition_of``).  SPEC §10 lets a script touch one partition
only, so a claim of a limited task is two steps, each one script in one slot:

  1. ``limit_acquire.lua`` in each key's partition grants a *permit* under the claim's lease
     (member ``<task partition>|<app>/<id>|<lease>`` of the key's permits zset), or holds
     the task back (its ref ``<task partition>|<app>/<id>|<job id>`` joins the key's held
     set, in priority then FIFO order);
  2. ``claim.lua`` in the task's partition claims it, and refuses unless the executor says it
     holds the permits (a hint older than the task's limits cannot skip them).

A task held back by a key is parked by ``hold.lua``: its entry acknowledged, QUEUED with
``blocked_by``; nothing reads it while it waits.

Why a permit cannot leak or be counted twice (SIGKILL anywhere)
---------------------------------------------------------------
* Every run that leaves RUNNING, by any path (commit to WAITING or FINISHED, fail, hand-back,
  unlock, cancel, expire, reap, orphan), goes through ``release`` in ``_lib.lua``, which
  writes the run to its partition's *outbox* in the same step as the transition.  The
  outbox is drained (``drain``): each key's ``limit_release.lua`` gives the permit back, then
  ``outbox_done.lua`` removes the entry.  The executor drains right after its own runs end;
  the manager drains whatever is left (a process killed in between) every tick.  Giving a
  permit back twice is a no-op (ZREM).
* A permit whose claim never came (the executor died between the steps, the claim was
  refused and the give-back lost) is found by the manager in the key partition's grants zset
  ``LIMIT_PERMIT_CHECK`` seconds after it was granted, and checked against its run with
  ``permit_check.lua`` in the task's partition: RUNNING under its lease -> LIVE (looked at
  again later); otherwise the lease is *revoked* in that same step, and ``claim.lua``
  refuses a revoked lease, so a claim arriving after the check (a stalled executor) can
  never run on the slot the manager then gives back.  A permit is so counted for exactly one
  run, or for none.
* Freed slots go to held tasks by ``limit_pump`` (``_lib.lua``), which reads the key's whole
  state each time (slots, rate window, reservations, pause) and moves as many held refs as
  there is room for into the *woken* set, each reserving a slot until its task's claim comes
  back through ``limit_acquire.lua``.  ``unblock.lua`` puts the woken task back on its
  stream.  A reservation whose task does not come within ``LIMIT_WOKEN_GRACE`` (the waker
  died before ``unblock``) is handed out again by the next pump (the key is due then, in the
  partition's ``limit_due`` zset, which the manager reads): unblock is idempotent, and a
  task gone meanwhile (``STALE``) has its ref dropped.  Since the pump counts from state and
  not from events, a pump more or less never wakes a task too many or too few.

Costs: a held task costs nothing while it waits (no poll, no re-read); the manager reads only
due keys, due permits and an outbox that is empty unless a process died mid-way.  A claim of a
task with n keys takes n+1 scripts (n acquires, batched per key rank over all entries read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from stagewise.keys import LIMIT_PERMIT_CHECK, Keys, limit_partition
from stagewise.storage import calls
from stagewise.storage.calls import Acquired, Call
from stagewise.storage.runner import Scripts

BATCH = 100  # outbox entries, due keys and due permits read per partition and pass


def ref_of(k: Keys, app: str, task_id: str, job_id: str) -> str:
    """A held task's member in its keys' held and woken sets."""
    return f"{k.partition}|{app}/{task_id}|{job_id}"


def permit_of(k: Keys, app: str, task_id: str, lease: str) -> str:
    """A run's member in its keys' permits zsets."""
    return f"{k.partition}|{app}/{task_id}|{lease}"


def _split(member: str) -> tuple[int, str, str, str]:
    """(partition, app, task id, job id or lease) of a ref or permit."""
    p, m, last = member.split("|", 2)
    app, _, task_id = m.partition("/")
    return int(p), app, task_id, last


class Limits:
    """The limit scripts of one namespace, in the order their design asks (module docstring);
    used by the executor (acquire, give_back, drain) and the manager (everything)."""

    def __init__(self, scripts: Scripts, r: Any, namespace: str, partitions: int) -> None:
        self.scripts, self.r = scripts, r
        self.namespace, self.partitions = namespace, partitions
        self.parts = [Keys(namespace, p) for p in range(partitions)]

    def of(self, key: str) -> Keys:
        """The partition that keeps `key`'s state."""
        return self.parts[limit_partition(key, self.partitions)]

    # ------------------------------------------------------------------ executor side
    async def acquire(
        self, asks: Sequence[tuple[Keys, str, str, str, str, list[list[Any]], str]]
    ) -> tuple[list[str | None], dict[str, list[str]]]:
        """Permits for runs about to be claimed: each ask is (task partition, app, task id,
        job id, lease, limits, order).  Returns, per ask, None (every key granted: claim it
        with permits) or the key that holds it back (the other keys' permits are given
        back; the caller parks the task with hold.lua), and the tasks the keys woke on the
        way, for the caller to put back (`wake`) once it parked its own.
        Keys are asked in the task's order, one round trip per rank for all asks."""
        out: list[str | None] = [None] * len(asks)
        got: list[list[str]] = [[] for _ in asks]
        todo = [i for i, a in enumerate(asks) if a[5]]
        woken: dict[str, list[str]] = {}
        rank = 0
        while todo:
            batch = [
                calls.limit_acquire(
                    self.of(asks[i][5][rank][0]),
                    asks[i][5][rank][0],
                    ref_of(asks[i][0], asks[i][1], asks[i][2], asks[i][3]),
                    permit_of(asks[i][0], asks[i][1], asks[i][2], asks[i][4]),
                    asks[i][5][rank],
                    asks[i][6],
                    LIMIT_PERMIT_CHECK,
                )
                for i in todo
            ]
            results: list[Acquired] = await self.scripts.run_many(batch)
            nxt = []
            for i, res in zip(todo, results, strict=True):
                key = asks[i][5][rank][0]
                if res.woken:
                    woken.setdefault(key, []).extend(res.woken)
                if res.code == "OK":
                    got[i].append(key)
                    if rank + 1 < len(asks[i][5]):
                        nxt.append(i)
                else:
                    out[i] = key
            todo = nxt
            rank += 1
        back = [
            (asks[i][0], asks[i][1], asks[i][2], asks[i][4], got[i])
            for i in range(len(asks))
            if out[i] and got[i]
        ]
        if back:
            woken = _merge(woken, await self._give_back(back))
        return out, woken

    async def give_back(self, k: Keys, app: str, task_id: str, lease: str, keys: Sequence[str]) -> None:
        """The permits of a claim that did not follow (refused, failed): given back, and the
        tasks that wakes put back on their streams."""
        await self.wake(await self._give_back([(k, app, task_id, lease, list(keys))]))

    async def _give_back(self, runs: Sequence[tuple[Keys, str, str, str, list[str]]]) -> dict[str, list[str]]:
        batch: list[Call[list[str]]] = []
        names: list[str] = []
        for k, app, task_id, lease, keys in runs:
            for key in keys:
                batch.append(calls.limit_release(self.of(key), key, [permit_of(k, app, task_id, lease)]))
                names.append(key)
        woken: dict[str, list[str]] = {}
        for key, refs in zip(names, await self.scripts.run_many(batch), strict=True):
            if refs:
                woken.setdefault(key, []).extend(refs)
        return woken

    async def wake(self, woken: dict[str, list[str]]) -> int:
        """Puts the woken held tasks back on their streams (unblock.lua); the refs of tasks
        no longer held (STALE) are dropped from their key, whose pump may wake others in
        their place, until none is left.  Returns how many went back."""
        n = 0
        while woken:
            items = [(key, ref) for key, refs in woken.items() for ref in refs]
            batch = []
            for _, ref in items:
                p, _, task_id, job_id = _split(ref)
                batch.append(calls.unblock(self.parts[p], task_id, job_id))
            stale: dict[str, list[str]] = {}
            for (key, ref), res in zip(items, await self.scripts.run_many(batch), strict=True):
                if res.code == "STALE":
                    stale.setdefault(key, []).append(ref)
                elif res.code == "REQUEUED":
                    n += 1
            woken = {}
            if stale:
                keys = list(stale)
                got = await self.scripts.run_many(
                    [calls.limit_release(self.of(key), key, refs=stale[key]) for key in keys]
                )
                woken = {key: refs for key, refs in zip(keys, got, strict=True) if refs}
        return n

    async def drain(self, k: Keys, older_than: float | None = None, now: float | None = None) -> int:
        """Gives back the permits of the runs of partition `k` that left RUNNING (its outbox),
        then removes their entries; with `older_than`, only entries at least that old (the
        manager leaves fresh ones to the executor that wrote them).  Returns how many."""
        if older_than is None or now is None:
            entries = await self.r.zrange(k.limit_outbox(), 0, BATCH - 1)
        else:
            entries = await self.r.zrangebyscore(
                k.limit_outbox(), "-inf", now - older_than, start=0, num=BATCH
            )
        if not entries:
            return 0
        batch: list[Call[list[str]]] = []
        names: list[str] = []
        for e in entries:
            m, lease, *keys = e.split("|")
            permit = f"{k.partition}|{m}|{lease}"
            for key in keys:
                batch.append(calls.limit_release(self.of(key), key, [permit]))
                names.append(key)
        woken: dict[str, list[str]] = {}
        for key, refs in zip(names, await self.scripts.run_many(batch), strict=True):
            if refs:
                woken.setdefault(key, []).extend(refs)
        await self.scripts.run_many([calls.outbox_done(k, e) for e in entries])
        await self.wake(woken)
        return len(entries)

    # ------------------------------------------------------------------ manager side
    async def pump_due(self, kk: Keys, now: float) -> int:
        """Keys of partition `kk` due for a look (a rate window opens, a pause ends, a
        reservation lapsed): pumped, and what they wake put back.  Returns how many keys."""
        keys = await self.r.zrangebyscore(kk.limit_due(), "-inf", now, start=0, num=BATCH)
        if not keys:
            return 0
        got = await self.scripts.run_many([calls.limit_release(kk, key) for key in keys])
        await self.wake({key: refs for key, refs in zip(keys, got, strict=True) if refs})
        return len(keys)

    async def check_permits(self, kk: Keys, now: float) -> int:
        """Permits of partition `kk`'s keys due for a check: a run still RUNNING under its
        lease keeps it (looked at again later); any other gives it back (its lease revoked
        first, in the task's partition).  Returns how many were given back."""
        grants = await self.r.zrangebyscore(kk.limit_grants(), "-inf", now, start=0, num=BATCH)
        if not grants:
            return 0
        checks = []
        for g in grants:
            _, permit = g.split("|", 1)
            p, _, task_id, lease = _split(permit)
            checks.append(calls.permit_check(self.parts[p], task_id, lease))
        gone: dict[str, list[str]] = {}
        live: list[str] = []
        for g, res in zip(grants, await self.scripts.run_many(checks), strict=True):
            key, permit = g.split("|", 1)
            if res.code == "LIVE":
                live.append(g)
            else:
                gone.setdefault(key, []).append(permit)
        if live:
            await self.scripts.run_many([calls.limit_recheck(kk, g, LIMIT_PERMIT_CHECK) for g in live])
        if gone:
            keys = list(gone)
            got = await self.scripts.run_many([calls.limit_release(kk, key, gone[key]) for key in keys])
            await self.wake({key: refs for key, refs in zip(keys, got, strict=True) if refs})
        return sum(len(v) for v in gone.values())

    async def pause(self, key: str, until: float | None, after: float | None = None) -> float | None:
        """limits.pause (until) / limits.resume (None) / RetryLater's pause_key (`after` s):
        until when the key is paused now."""
        res = await self.scripts.run(calls.limit_pause(self.of(key), key, until, after))
        if res.woken:
            await self.wake({key: res.woken})
        return res.paused_until

    async def seen(self, now: float, max_results: int) -> list[dict[str, Any]]:
        """limits.list (beyond SPEC: the dashboard's Limits view): the keys asked for most
        recently, across partitions, each as limits.get has it plus `seen` (the last time a
        task asked it for a slot).  Reads at most `max_results` keys per partition."""
        seen: list[tuple[str, float]] = []
        for kk in self.parts:
            seen += await self.r.zrevrange(kk.limit_keys(), 0, max_results - 1, withscores=True)
        seen.sort(key=lambda ks: -ks[1])
        seen = seen[:max_results]
        rows = [await self.get(key, now) for key, _ in seen]
        return [{**row, "seen": t} for row, (_, t) in zip(rows, seen, strict=True)]

    async def get(self, key: str, now: float) -> dict[str, Any]:
        """limits.get: {key, running, held, paused_until}; `held` counts the tasks waiting for
        the key, the woken ones whose claim has not come yet included."""
        kk = self.of(key)
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(kk.limit_permits(key))
        pipe.zcard(kk.limit_held(key))
        pipe.zcard(kk.limit_woken(key))
        pipe.hget(kk.limit(key), "paused")
        running, held, woken, paused = await pipe.execute()
        until = float(paused) if paused else None
        return {
            "key": key,
            "running": int(running),
            "held": int(held) + int(woken),
            "paused_until": until if until is not None and until > now else None,
        }


def _merge(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, list[str]]:
    for key, refs in b.items():
        a.setdefault(key, []).extend(refs)
    return a


class Drainer:
    """Drains a partition's outbox soon after a run of a limited task ended (the executor's
    side): runs that end together share one drain; a failure is left to the manager."""

    def __init__(self, limits: Limits, log: Any) -> None:
        self.limits, self.log = limits, log
        self._dirty: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def kick(self, k: Keys) -> None:
        self._dirty.add(k.partition)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="limits.drain")

    async def _loop(self) -> None:
        while self._dirty:
            p = self._dirty.pop()
            try:
                while await self.limits.drain(self.limits.parts[p]) >= BATCH:
                    pass
            except Exception as e:  # noqa: BLE001 - the manager drains what is left
                self.log.warning("limits_drain_failed", partition=p, error=str(e)[:300])

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
