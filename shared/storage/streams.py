"""The app streams of a partition, and the give-back of entries a consumer read but never
claimed: used by the executor (at stop, and when refused as dead) and by the manager (when it
reaps a dead executor)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from stagewise.keys import GROUP, Keys, parse_stream_name
from stagewise.storage.calls import Call, Code, redeliver
from stagewise.storage.runner import Scripts


async def app_streams(r: Any, k: Keys, app: str) -> list[tuple[int, str]]:
    """(priority, stream key) of every stream of `app` in a partition, highest priority first."""
    out = []
    for name in await r.smembers(k.apps()):
        a, prio = parse_stream_name(name)
        if a == app:
            out.append((prio, k.stream_of(name)))
    return sorted(out, reverse=True)


async def redeliver_pending(r: Any, scripts: Scripts, k: Keys, app: str, consumer: str) -> int:
    """Entries a consumer read but never claimed are still QUEUED work: put a fresh hint on
    the stream for each (redeliver.lua checks the task is still QUEUED for that job), then
    drop the consumer from the group.  Returns how many were re-queued."""
    n = 0
    for _, stream in await app_streams(r, k, app):
        n += await _redeliver_stream(r, scripts, k, stream, consumer)
    return n


async def _redeliver_stream(r: Any, scripts: Scripts, k: Keys, stream: str, consumer: str) -> int:
    n = 0
    while True:
        pending = await r.xpending_range(stream, GROUP, "-", "+", 100, consumername=consumer)
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
    try:
        await r.xgroup_delconsumer(stream, GROUP, consumer)
    except ResponseError:  # no such stream/group: nothing was pending either
        pass
    return n
