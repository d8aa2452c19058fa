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
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from stagewise.executor.run import Runner
from stagewise.keys import GROUP, Keys
from stagewise.storage import calls
from stagewise.storage.runner import Scripts
from stagewise.storage.streams import app_streams, redeliver_pending

# (partition keys, stream, entry id, fields {t, j}, priority)
Entry = tuple[Keys, str, str, dict[str, str], int]

CLUSTER_BLOCK_MS = 100  # Redis Cluster: how long an idle read blocks on one partition (read_cluster)


class Fetcher:
    """The fetch role of one executor: reads its app's streams as consumer `executor_id`,
    claims what it read and hands each claimed task to the `runner`.  `slots` (one per run) and
    `quiet` (stop fetching) are the executor's; `declared_dead` is what the executor does when a
    claim finds it reaped."""

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
        declared_dead: Callable[[Keys], Awaitable[None]],
        log: Any,
    ) -> None:
        self.r, self.scripts, self.app, self.executor_id = r, scripts, app, executor_id
        self.parts = parts
        self.split = split  # a cluster and several partitions: read partition by partition
        self.slots, self.quiet, self.runner, self.declared_dead = slots, quiet, runner, declared_dead
        self.log = log
        self.reading = False  # between XREADGROUP and the end of the claims of what it read
        self._streams: list[tuple[int, str, Keys]] = []
        self._where: dict[str, tuple[int, Keys]] = {}  # stream key -> (priority, partition)
        self._streams_at = 0.0
        self._turn = 0  # cluster: the partition read first, and the one a blocking read waits on
        self._leases = itertools.count(1)
        self._lease_prefix = uuid.uuid4().hex[:12]

    def new_lease(self) -> str:
        """A token unique to one claim: this process's random prefix and a counter."""
        return f"{self._lease_prefix}.{next(self._leases)}"

    async def fetch(self) -> None:
        """The fetch role, until `quiet`: one read for all the free slots, then the claim of
        what it read; a slot that no claimed run took is given back."""
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
                (prio, key, k) for k in self.parts for prio, key in await app_streams(self.r, k, self.app)
            ]
            base = [(0, k.stream(self.app), k) for k in self.parts]
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
            await self.scripts.run(calls.redeliver(k, stream, f["t"], eid, f["j"]))
        return out[:free]

    async def read(self, free: int) -> list[Entry]:
        """Up to `free` entries, highest priority first.  Several priorities in use: a
        non-blocking read of each stream in turn, and a blocking read of them all only when
        none had anything."""
        streams = await self.streams()
        if self.split:
            return await self.read_cluster(streams, free)
        entries_of = self._entries
        if streams[0][0] == streams[-1][0]:  # one priority in use: one blocking read
            got = await self.r.xreadgroup(
                GROUP, self.executor_id, {key: ">" for _, key, _ in streams}, count=free, block=1000
            )
            return entries_of(got)
        out = await self._each([key for _, key, _ in streams], free)  # highest priority first
        if out:
            return out
        got = await self.r.xreadgroup(
            GROUP, self.executor_id, {key: ">" for _, key, _ in streams}, count=1, block=1000
        )
        return await self._at_most(entries_of(got), free)

    async def _each(self, keys: list[str], free: int) -> list[Entry]:
        """Up to `free` entries from the streams `keys`, one non-blocking read each, in order."""
        out: list[Entry] = []
        for key in keys:
            if len(out) >= free:
                break
            got = await self.r.xreadgroup(GROUP, self.executor_id, {key: ">"}, count=free - len(out))
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
        each entry refused gives its slot back."""
        leases = [self.new_lease() for _ in entries]
        claims = [
            calls.claim(k, stream, eid, f["t"], f["j"], self.executor_id, lease)
            for (k, stream, eid, f, _), lease in zip(entries, leases, strict=True)
        ]
        delay = 0.1
        while True:
            try:
                results = await self.scripts.run_many(claims)
                break
            except (OSError, aredis.ConnectionError, aredis.TimeoutError) as e:
                # The entries stay pending on us; a replay with the same leases is safe
                # (claim.lua answers a replay like the original), so try until it lands.
                self.log.warning("claim_failed", error=str(e), entries=len(entries))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        dead: set[int] = set()
        for (k, _, _, f, _), lease, res in zip(entries, leases, results, strict=True):
            if res.code != "OK":
                self.slots.release()
                if res.code == "DEAD":
                    dead.add(k.partition)
                continue
            self.runner.start(k, f["t"], res.fields, lease)
        for p in dead:
            # Reaped while we were reading: what we read is still QUEUED work but pending on
            # us, and the manager has already swept our entries.  Put it back ourselves.
            k = self.parts[p]
            n = await redeliver_pending(self.r, self.scripts, k, self.app, self.executor_id)
            self.log.warning("claim_refused_dead", redelivered=n)
            await self.declared_dead(k)
