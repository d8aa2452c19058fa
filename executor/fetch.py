"""Fetch: what this executor takes from its app's streams, and the claim of it.

The fetch loop waits for a free run slot, then takes every free slot and reads that many
entries through the consumer group in one read; what it read it claims in one pipelined round
trip (claim.lua, which also acknowledges each entry), and each task claimed starts a run
(executor/run.py).  An entry is a hint: the task hash decides, so a stale entry is simply
dropped by the claim.

Streams: one per (partition, priority) of the app; higher priorities are read first.  On a
single server (or a cluster with one partition) one XREADGROUP may name them all; on a Redis
Cluster with several partitions a read names the streams of one partition only (`read_cluster`).
A blocking read over several streams may deliver more than the free slots: the surplus goes
back on its stream (`_at_most`).

Between a read and the end of the claims of what it read, `reading` is set: a stopping
executor does not cancel the loop then, so that no entry is ever cut off between its read and
its claim; the loop sees `quiet` within its 1 s block and ends by itself.

No entry delivered to us is ever dropped.  Reads of several streams in turn that fail part-way
keep what the earlier reads returned, and claim it.  A read that fails may still have been
delivered (its reply lost with the connection): before the next read, the entries pending on us
are given back (redeliver.lua), as they are every `sweep_every` seconds whatever happened.  An
entry whose claim is refused (DEAD: we are not registered in its partition) is given back by
its id, whether or not it is still pending on us.  A claim that meets a Redis fault that passes
by itself is sent again with the same lease until it gets its answer (claim.lua answers a
replay like the original).  A read that finds a consumer group gone (Redis lost data) has the
executor make the groups again (`rejoin`).  Any failure of the loop is waited out with a capped
backoff and logged once per kind, never the end of the loop.

Push delivery (create.lua; `offer`, `withdraw`): with slots to spare, the executor offers up to
PUSH_OFFERS free slots per partition (offer.lua: `<executor> <lease>` on the app's idle list
there, each lease taken from the sequence below) and holds them back; the read then asks for the
other free slots' worth of entries, and names the executor's pushed streams too.  Two rather
than one, so that a task created right after a push (a client that creates the next task when
the last one's handler ran) still finds an offer before the executor has made its next one.  A create that finds the
offer claims the run in our name under that lease and puts it on our pushed stream, so the read
returns a run already claimed: it starts at once, with no claim round trip.  An offer is
withdrawn (withdraw.lua) when a read fills every other slot (a backlog: the held slot is
wanted), when its landing is in doubt, and when the executor stops; a withdrawal that finds the
offer taken hands over the run, which starts like any other.  A pushed run whose offer we no
longer hold (one made before we were declared dead) is handed back.  No offers on a Redis
Cluster read partition by partition (`split`): there the blocking read names one partition at
a time, so a push to another would wait for the rotation; claims serve it as before.

Leases are `<prefix>.<counter>`: a random prefix of this process, and a counter in the order of
the claims.  `settled` is the highest counter whose claim reply has been fully processed (each
claimed task's run started, in `runner.runs`): claims go out one batch at a time, and `settled`
moves past a batch in the same step as the last run of it starts, so every lease at or below
it is either a run this executor has started or one it never will.  The heartbeat reports it
with the leases of the runs held (ping.lua), which is how the manager tells a task RUNNING in
our name that we do not run (orphan.lua) from a claim still in flight.  An outstanding offer is
a claim that may be in flight (create.lua may have made it, and its run may not be in hand
yet): while one is, the report says `settled` is below its counter (`reported_settled`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from stagewise import tracing
from stagewise.aio import raise_if_stop_requested
from stagewise.executor.run import Runner
from stagewise.faults import Backoff, Warnings, is_nogroup, transient
from stagewise.keys import GROUP, Keys
from stagewise.storage import calls
from stagewise.storage.calls import Call, Claim
from stagewise.storage.limits import Limits
from stagewise.storage.runner import Scripts
from stagewise.storage.streams import app_streams, give_back, redeliver_pending

# (partition keys, stream, entry id, fields {t, j}, priority)
Entry = tuple[Keys, str, str, dict[str, str], int]

CLUSTER_BLOCK_MS = 100  # Redis Cluster: how long an idle read blocks on one partition (read_cluster)
PUSH_OFFERS = 2  # offers of push delivery an executor keeps out per partition, slots allowing (offer)


class Fetcher:
    """The fetch role of one executor: reads its app's streams as consumer `executor_id`,
    claims what it read and hands each claimed task to the `runner`.  `slots` (one per run) and
    `quiet` (stop fetching) are the executor's; `refused` is what the executor does when a
    claim finds it not registered in a partition, `rejoin` when a read finds a group gone."""

    def __init__(
        self,
        *,
        r: Any,
        scripts: Scripts,
        app: str,
        executor_id: str,
        parts: list[Keys],
        split: bool,
        slots: asyncio.Semaphore,
        quiet: asyncio.Event,
        runner: Runner,
        refused: Callable[[Keys], Awaitable[None]],
        rejoin: Callable[[], Awaitable[None]],
        log: Any,
        limits: Limits,
        sweep_every: float = 30.0,
    ) -> None:
        self.r, self.scripts, self.app, self.executor_id = r, scripts, app, executor_id
        self.parts = parts
        self.split = split  # a cluster and several partitions: read partition by partition
        self.slots, self.quiet, self.runner = slots, quiet, runner
        self.refused, self.rejoin = refused, rejoin
        self.log = log
        self.reading = False  # between XREADGROUP and the end of the claims of what it read
        # A read failed: entries it may have delivered are pending on us, to give back before
        # the next read.  A read found a group gone: make the groups again first.
        self.owe_pending = False
        self.lost_group = False
        # Every `sweep_every` s the entries pending on us are given back all the same: at that
        # point none is ours to claim, so one there was lost on the way (a reply we never got,
        # or a Redis that came back from an older file with the entry delivered to us).
        self.sweep_every = sweep_every
        self._swept = time.monotonic()
        self.warnings = Warnings(log, "fetch_failed")
        self.claim_warnings = Warnings(log, "claim_failed")
        # offers and withdrawals fail on their own: the read goes on (an offer in doubt only
        # holds its slot until a withdrawal settles it)
        self.offer_warnings = Warnings(log, "offer_failed")
        self._streams: list[tuple[int, str, Keys]] = []
        self._where: dict[str, tuple[int, Keys]] = {}  # stream key -> (priority, partition)
        self._streams_at = 0.0
        self._turn = 0  # cluster: the partition read first, and the one a blocking read waits on
        self._leases = itertools.count(1)
        self.lease_prefix = uuid.uuid4().hex[:12]
        self.settled = 0  # the highest lease counter whose claim reply was fully processed
        self.limits = limits  # flow control (SPEC §2a)
        self.paused = False  # apps.pause: a claim answered PAUSED, the next read waits a second
        # Push delivery: lease of each offer of ours outstanding -> its partition (each holds a slot)
        self.offers: dict[str, int] = {}
        self.doubt: set[str] = set()  # offers whose landing is unknown: withdrawn before a read
        self.acks: dict[int, list[str]] = {}  # pushed entries started, acknowledged with the next offer
        self.want_offer = True  # the last read left slots unfilled: the streams are drained
        self._pushed: list[tuple[Keys, str, dict[str, str]]] = []  # pushed entries the read returned
        self._pushed_keys = {k.pushed(executor_id): k for k in parts}

    def reported_settled(self) -> int:
        """`settled` for the heartbeat's report: below every outstanding offer's counter, since
        create.lua may have claimed a run under it that we have not started yet."""
        if not self.offers:
            return self.settled
        return min(self.settled, *(int(lease.rpartition(".")[2]) - 1 for lease in self.offers))

    def new_lease(self) -> str:
        """A token unique to one claim: this process's random prefix and a counter."""
        return f"{self.lease_prefix}.{next(self._leases)}"

    async def fetch(self) -> None:
        """The fetch role, until `quiet`: one read for all the free slots, then the claim of
        what it read; a slot that no claimed run took is given back."""
        backoff = Backoff()
        while not self.quiet.is_set():
            raise_if_stop_requested()  # a cancel lost in a read's socket write (shared/aio.py)
            if self.paused:
                # our app is paused (apps.pause): a second without reading, then a read whose
                # claims find out again (a resume is so seen within a second); the executor
                # stays registered and connected
                self.paused = False
                try:
                    await asyncio.wait_for(self.quiet.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
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
            failed = False
            try:
                await self._recover()
                free = await self.offer(free)
                entries = await self.read(free)
            except Exception as e:  # noqa: BLE001 - a fetch loop that dies would strand the executor
                self._failed(e)
                failed = True
            for _ in range(free - len(entries)):
                self.slots.release()
            if self._pushed:
                self.start_pushed()
                # the pushed runs go first, up to their handler's first wait, before the loop
                # writes its next offer: a task handed over waits for nothing of ours
                await asyncio.sleep(0)
            if entries:
                await self.claim(entries)
            if not failed:
                # a read that filled every slot it asked for: a backlog, so the slots held for
                # offers are wanted for claims, and no offer is made until a read comes back short
                self.want_offer = len(entries) < free
                if not self.want_offer and self.offers:
                    await self.withdraw(list(self.offers))
            self.reading = False
            if failed:  # nothing read: wait before the next try (at most BACKOFF_CAP)
                raise_if_stop_requested()
                await backoff.wait()
            elif not self.owe_pending:  # a whole read
                self.warnings.ok()
                backoff.reset()

    def _failed(self, e: Exception) -> None:
        """A read failed (or its give-back, or the recovery before it): whatever it may have
        delivered is pending on us; a group gone is made again; the streams are looked up
        again.  Logged once per kind of failure."""
        self.owe_pending = True
        if is_nogroup(e):
            self.lost_group = True
        self._streams_at = 0.0
        self.warnings.failed(e)

    async def _recover(self) -> None:
        """Before a read, after a failed one (and every `sweep_every` s): the groups made again
        if one was gone (rejoin), and the entries pending on us given back, since no claim of
        ours is under way."""
        if self.lost_group:
            await self.rejoin()
            self.lost_group = False
            self.forget_offers([k.partition for k in self.parts])  # Redis lost data: the offers with it
        if self.doubt:
            await self.withdraw(sorted(self.doubt))
        if time.monotonic() - self._swept > self.sweep_every:
            self.owe_pending = True
        if self.owe_pending:
            self._swept = time.monotonic()
            n = 0
            for k in self.parts:
                n += await redeliver_pending(self.r, self.scripts, k, self.app, self.executor_id)
            if self.offers:  # none in doubt: withdrawn above
                # a pushed run delivered to us in a read whose reply was lost: read it again
                got = await self.r.xreadgroup(
                    GROUP,
                    self.executor_id,
                    {self.parts[p].pushed(self.executor_id): "0" for p in set(self.offers.values())},
                )
                self._entries(got)
            self.owe_pending = False
            if n:
                self.log.info("pending_given_back", entries=n)

    async def streams(self) -> list[tuple[int, str, Keys]]:
        """(priority, stream, partition) of our app, highest priority first; a task created
        with a new priority adds a stream, so the list is looked up again every second."""
        now = time.monotonic()
        if now - self._streams_at > 1.0:
            found = [
                (prio, key, k) for k in self.parts for prio, key in await app_streams(self.r, k, self.app)
            ]
            base = [(0, k.stream(self.app), k) for k in self.parts]
            self._streams = sorted(set(found) | set(base), key=lambda x: -x[0])
            self._where = {key: (prio, k) for prio, key, k in self._streams}
            self._streams_at = now
        return self._streams

    def _entries(self, got: Any) -> list[Entry]:
        """XREADGROUP's reply as entries, highest priority first; pushed runs are kept aside
        for `start_pushed`."""
        where, pushed = self._where, self._pushed_keys
        out = []
        for s, items in got:
            if s in pushed:
                self._pushed += [(pushed[s], eid, f) for eid, f in items]
            else:
                out += [(where[s][1], s, eid, f, where[s][0]) for eid, f in items]
        return sorted(out, key=lambda e: -e[4])

    # ------------------------------------------------------------------ push delivery
    async def offer(self, free: int) -> int:
        """Offers slots in each partition, up to PUSH_OFFERS outstanding there, if the last read
        came back short (nothing waits on the streams) and the offers outstanding would hold at
        most half of our free slots (so an executor of concurrency 1 never offers: its one slot
        is for reads); returns the slots left for the read.  An offer whose reply is lost is in
        doubt: withdrawn before the next read."""
        if self.split or not self.want_offer or self.quiet.is_set():
            return free
        per = min(PUSH_OFFERS, (free + len(self.offers)) // (2 * len(self.parts)))
        have = {k.partition: 0 for k in self.parts}
        for p in self.offers.values():
            have[p] += 1
        need = [k for k in self.parts for _ in range(per - have[k.partition])]
        if not need:
            return free
        made = []
        # per partition, not per offer: two offers in one partition must not pop its list twice
        # (the second pop, empty, would replace the first and its acknowledgements be lost)
        acks = {p: self.acks.pop(p, []) for p in {k.partition for k in need}}
        left = dict(acks)  # each partition's acknowledgements go with its first call
        for k in need:
            lease = self.new_lease()
            self.offers[lease] = k.partition  # outstanding from now: `settled` stays below it
            made.append((lease, calls.offer(k, self.executor_id, self.app, lease, left.pop(k.partition, []))))
        try:
            got = await self.scripts.run_many([c for _, c in made])
        except Exception as e:  # noqa: BLE001 - the offers hold their slots until withdrawn
            self._unacked(acks)
            self.doubt.update(lease for lease, _ in made)
            self.offer_warnings.failed(e, offers=len(made))
            return free - len(made)
        self.offer_warnings.ok()
        for (lease, _), res in zip(made, got, strict=True):
            if res.code != "OK":  # DEAD: the heartbeat finds out and registers us again
                del self.offers[lease]
                free += 1
        return free - len(made)

    async def withdraw(self, leases: list[str]) -> None:
        """withdraw.lua for our offers under `leases`: a slot withdrawn (or never offered) is
        free again; an offer taken hands over its run, which starts.  Failed: the offers stay in
        doubt, withdrawn again before the next read (their slots held meanwhile)."""
        leases = [lease for lease in leases if lease in self.offers]
        if not leases:
            return
        where = {lease: self.offers[lease] for lease in leases}  # a refusal may forget them meanwhile
        acks = {p: self.acks.pop(p, []) for p in set(where.values())}
        left = dict(acks)  # each partition's acknowledgements go with its first call
        try:
            got = await self.scripts.run_many(
                [
                    calls.withdraw(
                        self.parts[where[lease]], self.executor_id, self.app, lease, left.pop(where[lease], [])
                    )
                    for lease in leases
                ]
            )
        except Exception as e:  # noqa: BLE001 - a withdrawal failing is no reason to stop reading
            self._unacked(acks)
            self.doubt.update(leases)
            self.offer_warnings.failed(e, offers=len(leases))
            return
        self.offer_warnings.ok()
        for lease, res in zip(leases, got, strict=True):
            self.doubt.discard(lease)
            if res.code == "TAKEN":
                self._pushed.append((self.parts[where[lease]], res.entry_id, res.fields))
            else:
                self._forget(lease)
        self.start_pushed()

    def _unacked(self, acks: dict[int, list[str]]) -> None:
        """Acknowledgements whose call failed: sent again with the next offer or withdrawal."""
        for p, ids in acks.items():
            self.acks.setdefault(p, []).extend(ids)

    def forget_offers(self, parts: list[int]) -> None:
        """Our offers in `parts` are gone (dropped with our registration, or with Redis's
        data): their slots are free."""
        for lease in [lease for lease, p in self.offers.items() if p in parts]:
            self._forget(lease)

    def _forget(self, lease: str) -> None:
        if self.offers.pop(lease, None) is not None:
            self.doubt.discard(lease)
            self.slots.release()

    def start_pushed(self) -> None:
        """Starts the runs create.lua pushed to us (read from our pushed streams, or handed over
        by a withdrawal), each in the slot its offer held.  A run under a lease we do not offer
        (an offer made before we were declared dead, or read twice) is handed back, or left to
        the run that has it."""
        pushed, self._pushed = self._pushed, []
        for k, eid, f in pushed:
            acks = self.acks.setdefault(k.partition, [])
            if not f or eid in acks:  # read again from the pending list: started already
                continue
            p, lease, tid = k.partition, f.get("lease", ""), f.get("t", "")
            acks.append(eid)
            if self.offers.get(lease) == p:
                del self.offers[lease]
                self.doubt.discard(lease)
                self.runner.start(k, tid, f, lease)
            elif not any(run.lease == lease and run.task_id == tid for run in self.runner.runs.values()):
                self.log.warning("push_unexpected", task_id=tid, lease=lease)
                asyncio.create_task(self._hand_back(k, tid, f.get("job_id", ""), lease))

    async def _hand_back(self, k: Keys, task_id: str, job_id: str, lease: str) -> None:
        try:
            await self.scripts.run(calls.handback(k, task_id, job_id, lease))
        except Exception as e:  # noqa: BLE001 - still RUNNING in our name: the reconcile takes it back
            self.claim_warnings.failed(e, entries=1)

    async def _at_most(self, out: list[Entry], free: int) -> list[Entry]:
        """A blocking read over several streams may return one entry from each: the surplus
        beyond `free` slots goes back on its stream (redeliver.lua) for someone to take.  If
        that fails, the surplus stays pending on us until the next read gives it back; what
        fits is claimed all the same."""
        try:
            await self._give_back(out[free:])
        except Exception as e:  # noqa: BLE001 - the entries in hand are claimed whatever happens
            self._failed(e)
        return out[:free]

    async def _give_back(self, entries: list[Entry]) -> None:
        """Entries read and not to be claimed by us: back on their streams, by id."""
        by_part: dict[int, list[tuple[str, str, str, str]]] = {}
        for k, stream, eid, f, _ in entries:
            by_part.setdefault(k.partition, []).append((stream, eid, f["t"], f["j"]))
        for p, items in by_part.items():
            await give_back(self.r, self.scripts, self.parts[p], items)

    async def read(self, free: int) -> list[Entry]:
        """Up to `free` entries, highest priority first.  Several priorities in use: a
        non-blocking read of each stream in turn, and a blocking read of them all only when
        none had anything."""
        streams = await self.streams()
        if self.split:
            return await self.read_cluster(streams, free)
        entries_of = self._entries
        # our pushed streams too, where we have an offer out (one in doubt may not have made
        # the stream's group: it is withdrawn first): a pushed run ends the wait
        mine = {
            self.parts[p].pushed(self.executor_id): ">"
            for lease, p in self.offers.items()
            if lease not in self.doubt
        }
        if streams[0][0] == streams[-1][0]:  # one priority in use: one blocking read
            got = await self.r.xreadgroup(
                GROUP, self.executor_id, {key: ">" for _, key, _ in streams} | mine, count=free, block=1000
            )
            return entries_of(got)
        out = await self._each([key for _, key, _ in streams], free)  # highest priority first
        if out:
            return out
        got = await self.r.xreadgroup(
            GROUP, self.executor_id, {key: ">" for _, key, _ in streams} | mine, count=1, block=1000
        )
        return await self._at_most(entries_of(got), free)

    async def _each(self, keys: list[str], free: int) -> list[Entry]:
        """Up to `free` entries from the streams `keys`, one non-blocking read each, in order.
        A read that fails after others returned entries ends the pass with those entries (they
        are pending on us, and only we know of them); the failure is the next read's to handle."""
        out: list[Entry] = []
        for key in keys:
            if len(out) >= free:
                break
            try:
                got = await self.r.xreadgroup(GROUP, self.executor_id, {key: ">"}, count=free - len(out))
            except Exception as e:
                if not out:
                    raise
                self._failed(e)
                break
            out += self._entries(got)
        return out

    async def read_cluster(self, streams: list[tuple[int, str, Keys]], free: int) -> list[Entry]:
        """`read` on a Redis Cluster with several partitions, where one XREADGROUP may only name
        streams of one slot, i.e. of one partition.  Without blocking: the streams one at a
        time, highest priority first and, within a priority, partitions in turns (each pass
        starts one further on).  With nothing found: a blocking read of the streams of one
        partition (the pass's first) for CLUSTER_BLOCK_MS only, since work arriving elsewhere
        would not end it; the next pass sees all partitions again.  So an idle executor notices
        new work within about that time, at the cost of a read per partition per wait."""
        n = len(self.parts)
        turn = self._turn = (self._turn + 1) % n
        entries_of = self._entries
        ordered = sorted(streams, key=lambda x: (-x[0], (x[2].partition - turn) % n))
        out = await self._each([key for _, key, _ in ordered], free)
        if out:
            return out
        k = self.parts[turn]
        mine = {key: ">" for _, key, kk in streams if kk is k}
        got = await self.r.xreadgroup(GROUP, self.executor_id, mine, count=1, block=CLUSTER_BLOCK_MS)
        return await self._at_most(entries_of(got), free)

    async def claim(self, entries: list[Entry]) -> None:
        """claim.lua for every entry read, in one round trip: each task claimed starts a run,
        each entry refused gives its slot back.  Entries refused because we are not registered
        in their partition (DEAD), or whose claim failed for good, go back on their streams.

        Flow control (stagewise/storage/limits.py): an entry whose hint names limits asks its
        keys for permits first; one held back is parked (hold.lua) and gives its slot back.
        A claim answered LIMITED (a hint without the task's limits) goes through the same once
        more; one answered PAUSED (apps.pause) or REVOKED goes back on its stream."""
        leases = [self.new_lease() for _ in entries]
        traced = tracing.current() is not None  # the claims then read the task's trace field
        permits: set[int] = set()  # entries claimed with permits: given back if no run follows
        todo = list(range(len(entries)))
        results: list[Claim | Exception | None] = [None] * len(entries)  # None: not claimed
        dead: dict[int, list[Entry]] = {}
        back: list[Entry] = []
        for round_ in range(2):
            ask = [i for i in todo if entries[i][3].get("l")]
            if ask:
                ok, parked = await self._permits(entries, leases, ask)
                permits.update(ok)
                back += [entries[i] for i in ask if i not in ok and i not in parked]
                for i in ask:
                    results[i] = None
                todo = [i for i in todo if i not in ask or i in ok]
            got = await self._claim_all(
                [
                    calls.claim(
                        k, stream, eid, f["t"], f["j"], self.executor_id, leases[i], i in permits, traced
                    )
                    for i in todo
                    for k, stream, eid, f, _ in [entries[i]]
                ]
            )
            again: list[int] = []
            for i, reply in zip(todo, got, strict=True):
                results[i] = reply
                if not isinstance(reply, Exception) and reply.code == "LIMITED" and round_ == 0:
                    k, stream, eid, f, prio = entries[i]
                    entries[i] = (k, stream, eid, {**f, "l": reply.fields["l"], "o": reply.fields["o"]}, prio)
                    again.append(i)
            todo = again
            if not todo:
                break
        for i, (entry, lease, res) in enumerate(zip(entries, leases, results, strict=True)):
            k, _, _, f, _ = entry
            if res is None:  # held back (parked), or in `back` already
                self.slots.release()
                continue
            if isinstance(res, Exception):  # no passing fault: a bug; the entry is still work
                self.log.error("claim_error", task_id=f["t"], error=str(res)[:500])
                back.append(entry)
            elif res.code == "DEAD":
                dead.setdefault(k.partition, []).append(entry)
            elif res.code == "OK":
                self.runner.start(k, f["t"], res.fields, lease, limited=i in permits)
                continue
            elif res.code in ("LIMITED", "PAUSED", "REVOKED"):
                self.paused = self.paused or res.code == "PAUSED"
                back.append(entry)
            if i in permits:  # no run follows the permits: their slots go back at once
                await self._give_permits_back(entry, lease)
            self.slots.release()
        # Every run of the batch has started (no await since the replies came): the heartbeat
        # may now report these leases as settled.
        if leases:
            self.settled = max(self.settled, int(leases[-1].rpartition(".")[2]))
        for p, refused in dead.items():
            self.log.warning("claim_refused_dead", partition=p, entries=len(refused))
        try:
            # Refused: the entries are still QUEUED work, pending on us, and the manager may
            # already have swept our pending entries.  Put them back ourselves, by id.
            await self._give_back(back + [e for es in dead.values() for e in es])
        except Exception as e:  # noqa: BLE001 - still pending on us: given back before the next read
            self._failed(e)
        for p in dead:
            try:
                await self.refused(self.parts[p])
            except Exception as e:  # noqa: BLE001 - the heartbeat finds out again and finishes it
                self._failed(e)

    async def _permits(
        self, entries: list[Entry], leases: list[str], ask: list[int]
    ) -> tuple[set[int], set[int]]:
        """Permits for the entries `ask` (limit_acquire.lua per key); the ones held back are
        parked (hold.lua), then the tasks the keys woke go back on their streams.  Returns the
        entries granted and the entries parked (their slots given back by the caller); any
        other is given back on its stream by the caller.  A failure leaves permits that may
        have been granted to the manager's check (LIMIT_PERMIT_CHECK)."""
        try:
            asks = []
            for i in ask:
                k, _, _, f, _ = entries[i]
                asks.append((k, self.app, f["t"], f["j"], leases[i], json.loads(f["l"]), f.get("o") or "0"))
            verdicts, woken = await self.limits.acquire(asks)
            held = [(i, key) for i, key in zip(ask, verdicts, strict=True) if key is not None]
            if held:
                await self.scripts.run_many(
                    [
                        calls.hold(k, stream, eid, f["t"], f["j"], key)
                        for i, key in held
                        for k, stream, eid, f, _ in [entries[i]]
                    ]
                )
            await self.limits.wake(woken)
        except Exception as e:  # noqa: BLE001 - the entries are still pending on us: given back
            self.claim_warnings.failed(e, entries=len(ask))
            return set(), set()
        return {i for i, key in zip(ask, verdicts, strict=True) if key is None}, {i for i, _ in held}

    async def _give_permits_back(self, entry: Entry, lease: str) -> None:
        k, _, _, f, _ = entry
        keys = [lim[0] for lim in json.loads(f["l"])]
        try:
            await self.limits.give_back(k, self.app, f["t"], lease, keys)
        except Exception as e:  # noqa: BLE001 - the manager's permit check gives them back
            self.claim_warnings.failed(e, entries=1)

    async def _claim_all(self, claims: list[Call[Claim]]) -> list[Claim | Exception]:
        """The claims' answers, in order, each sent again (with its same lease: claim.lua
        answers a replay like the original) while it meets a Redis fault that passes by itself;
        another error stands in its claim's place."""
        results: list[Claim | Exception] = [RuntimeError("not sent")] * len(claims)
        todo = list(range(len(claims)))
        backoff = Backoff()
        while todo:
            try:
                got = await self.scripts.run_many([claims[i] for i in todo], raise_on_error=False)
            except Exception as e:  # noqa: BLE001 - the batch as a whole
                if not transient(e):
                    got = [e] * len(todo)
                else:
                    self.claim_warnings.failed(e, entries=len(todo))
                    await backoff.wait()
                    continue
            again: list[int] = []
            fault: Exception | None = None
            for i, res in zip(todo, got, strict=True):
                if isinstance(res, Exception) and transient(res):
                    again.append(i)
                    fault = res
                else:
                    results[i] = res
            if fault is not None:
                self.claim_warnings.failed(fault, entries=len(again))
                await backoff.wait()
            else:
                self.claim_warnings.ok()
            todo = again
        return results
