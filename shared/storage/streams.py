"""The app streams of a partition, and the give-back of entries a consumer read but never
claimed: used by the executor (at stop, when refused as dead, after a read whose reply was
lost) and by the manager (when it reaps a dead executor)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from stagewise.keys import GROUP, Keys, parse_stream_name
from stagewise.storage.calls import Call, Code, drop_consumer, redeliver
from stagewise.storage.runner import Scripts

GIVE_BACK_ROUNDS = 3  # passes over a stream whose consumer keeps reading while it is swept


async def app_streams(r: Any, k: Keys, app: str | None) -> list[tuple[int, str]]:
    """(priority, stream key) of every stream of `app` in a partition (of every app: None),
    highest priority first."""
    out = []
    for name in await r.smembers(k.apps()):
        a, prio = parse_stream_name(name)
        if app is None or a == app:
            out.append((prio, k.stream_of(name)))
    return sorted(out, reverse=True)


async def redeliver_pending(r: Any, scripts: Scripts, k: Keys, app: str | None, consumer: str) -> int:
    """Entries a consumer read but never claimed are still QUEUED work: put a fresh hint on
    the stream for each (redeliver.lua checks the task is still QUEUED for that job), then
    drop the consumer from the group once nothing is pending on it (drop_consumer.lua, in one
    step, so an entry it read meanwhile is never dropped with it).  `app` None: the streams of
    every app of the partition (a dead executor whose info is gone).  Returns how many were
    re-queued."""
    n = 0
    for _, stream in await app_streams(r, k, app):
        n += await _redeliver_stream(r, scripts, k, stream, consumer)
    return n


async def give_back(r: Any, scripts: Scripts, k: Keys, entries: list[tuple[str, str, str, str]]) -> int:
    """Entries this process read and will not claim, as (stream, entry id, task id, job id):
    a fresh hint for each whose task is still QUEUED for that job (redeliver.lua), the old one
    acknowledged.  By id, not from the pending list: the entries may no longer be pending on
    us (a reaper dropped the consumer), and are still work."""
    res = await scripts.run_many([redeliver(k, s, t, e, j) for s, e, t, j in entries])
    return sum(1 for c in res if c.code == "REQUEUED")


async def _redeliver_stream(r: Any, scripts: Scripts, k: Keys, stream: str, consumer: str) -> int:
    n = 0
    for _ in range(GIVE_BACK_ROUNDS):
        while True:
            try:
                pending = await r.xpending_range(stream, GROUP, "-", "+", 100, consumername=consumer)
            except ResponseError as e:
                if str(e).startswith("NOGROUP"):  # no such stream or group: nothing is pending
                    return n
                raise
            if not pending:
                break
            ids = [p["message_id"] for p in pending]
            bodies = {e[0]: e[1] for e in await r.xrange(stream, ids[0], ids[-1]) if e[1]}
            calls: list[Call[Code]] = []
            trimmed: list[str] = []
            for mid in ids:
                body = bodies.get(mid)
                if body is None:  # trimmed away: nothing to re-send, just stop it pending
                    trimmed.append(mid)
                    continue
                calls.append(redeliver(k, stream, body["t"], mid, body["j"]))
            if trimmed:
                await r.xack(stream, GROUP, *trimmed)
            await scripts.run_many(calls)
            n += len(calls)
        if (await scripts.run(drop_consumer(k, stream, consumer))).code != "PENDING":
            return n
    return n  # still reading (a live executor under the same name): it keeps its consumer
