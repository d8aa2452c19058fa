"""The executor app of the flow-control tests: each handler records, in Redis, how many runs of
its limit key overlap (its own INCR/DECR around the work, and the highest count seen), and
when it started, so the tests see what the handlers saw, not what stagewise says."""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as aredis

from stagewise.executor import App, Ctx

app = App("lim")
_r: aredis.Redis | None = None
NS = os.environ.get("STAGEWISE_NAMESPACE", "stagewise")

# INCR the running count of a key and raise its recorded maximum, in one step
_ENTER = """
local c = redis.call('INCR', KEYS[1])
if c > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], c) end
return c
"""


def _redis() -> aredis.Redis:
    global _r
    if _r is None:
        _r = aredis.Redis.from_url(os.environ["STAGEWISE_REDIS_URL"], decode_responses=True)
    return _r


def running_key(ns: str, key: str) -> str:
    return f"limtest:{{{ns}}}:{key}:running"


def max_key(ns: str, key: str) -> str:
    return f"limtest:{{{ns}}}:{key}:max"


def starts_key(ns: str, key: str) -> str:
    return f"limtest:{{{ns}}}:{key}:starts"


def runs_key(ns: str) -> str:
    return f"limtest:{{{ns}}}:runs"


@app.method("lim.work")
async def work(ctx: Ctx, key: str, ms: int = 50) -> str:
    r = _redis()
    await r.eval(_ENTER, 2, running_key(NS, key), max_key(NS, key))
    await r.rpush(starts_key(NS, key), repr(time.time()))
    await r.rpush(runs_key(NS), ctx.task_id)
    try:
        await asyncio.sleep(ms / 1000)
    finally:
        await r.decr(running_key(NS, key))
    return ctx.task_id
