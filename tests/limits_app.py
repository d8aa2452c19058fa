"""The executor app of the flow-control tests: each handler records, in Redis, how many runs of
its limit key overlap (its own INCR/DECR around the work, and the highest count seen), and
when it started, so the tests see what the handlers saw, not what stagewise says."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from stagewise import RetryLater
from stagewise.executor import App, Ctx
from stagewise.storage.connection import connect

app = App("lim")
_r: Any = None
NS = os.environ.get("STAGEWISE_NAMESPACE", "stagewise")

# INCR the running count of a key and raise its recorded maximum, in one step
_ENTER = """
local c = redis.call('INCR', KEYS[1])
if c > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], c) end
return c
"""


async def _redis() -> Any:
    global _r
    if _r is None:  # a single server or a Redis Cluster, whichever the daemons use
        _r = await connect(os.environ["STAGEWISE_REDIS_URL"], 32)
    return _r


def running_key(ns: str, key: str) -> str:
    return f"limtest:{{{ns}}}:{key}:running"


def max_key(ns: str, key: str) -> str:
    return f"limtest:{{{ns}}}:{key}:max"


def starts_key(ns: str, key: str) -> str:
    return f"limtest:{{{ns}}}:{key}:starts"


def runs_key(ns: str) -> str:
    return f"limtest:{{{ns}}}:runs"


def pid_key(ns: str, pid: int) -> str:
    """Set of the tasks whose handler runs in process `pid` right now."""
    return f"limtest:{{{ns}}}:pid:{pid}"


def later_key(ns: str, task_id: str) -> str:
    return f"limtest:{{{ns}}}:later:{task_id}"


@app.method("lim.work")
async def work(ctx: Ctx, key: str, ms: int = 50, later: float = 0, pause: str | None = None) -> str:
    """Runs `ms` milliseconds under `key`'s overlap count; with `later`, its first attempt
    raises RetryLater(later, pause_key=pause)."""
    r = await _redis()
    if later and await r.incr(later_key(NS, ctx.task_id)) == 1:
        raise RetryLater(later, pause_key=pause)
    await r.eval(_ENTER, 2, running_key(NS, key), max_key(NS, key))
    await r.rpush(starts_key(NS, key), repr(time.time()))
    await r.rpush(runs_key(NS), ctx.task_id)
    await r.sadd(pid_key(NS, os.getpid()), f"{key}|{ctx.task_id}")
    try:
        await asyncio.sleep(ms / 1000)
    finally:
        await r.srem(pid_key(NS, os.getpid()), f"{key}|{ctx.task_id}")
        await r.decr(running_key(NS, key))
    return ctx.task_id
