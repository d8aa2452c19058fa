"""The executor app of the chaos test: every execution of a stage is counted in Redis (by the
handler itself, before it returns), so repeated executions can be told from committed ones."""

from __future__ import annotations

import asyncio
import os
import random
import time

import redis.asyncio as aredis

from stagewise.executor import App, Ctx

app = App("chaos")
_r: aredis.Redis | None = None
NS = os.environ.get("STAGEWISE_NAMESPACE", "stagewise")


def _redis() -> aredis.Redis:
    """Where executions are counted: CHAOS_COUNTER_URL when the run sets it (a Redis that the
    Redis faults of tests/redis_faults_table.py leave alone, and a plain one when the tasks live
    on a Redis Cluster), else the tasks' own Redis."""
    global _r
    if _r is None:
        url = os.environ.get("CHAOS_COUNTER_URL") or os.environ["STAGEWISE_REDIS_URL"]
        _r = aredis.Redis.from_url(url, decode_responses=True)
    return _r


def exec_key(namespace: str) -> str:
    return f"chaos:{namespace}:executions"


@app.method("chaos.step")
async def step(ctx: Ctx, value: int, min_ms: int = 20, max_ms: int = 200) -> int:
    # Counted when it starts: an execution cut short by a SIGKILL is still an execution.
    await _redis().hincrby(exec_key(NS), f"{ctx.task_id}:{ctx.stage}", 1)
    # Work that takes a while, so that kills land in the middle of stages.
    await asyncio.sleep(random.uniform(min_ms, max_ms) / 1000)
    return value + 1


def open_key(namespace: str) -> str:
    """Hash '<task>:<stage>:<pid>:<n>' -> '<limit key>|<start>': executions of chaos.limited that
    started and have not ended (a SIGKILL leaves its own here; its end is the kill)."""
    return f"chaos:{namespace}:open"


def spans_key(namespace: str) -> str:
    """List of '<limit key>|<start>|<end>': executions of chaos.limited that ended."""
    return f"chaos:{namespace}:spans"


_n = 0


@app.method("chaos.limited")
async def limited(ctx: Ctx, value: int, key: str, min_ms: int = 20, max_ms: int = 200) -> int:
    """chaos.step under a limit key, recording its own span (start, end) in Redis, so the run can
    count how many executions of a key overlapped, whatever stagewise says."""
    global _n
    _n += 1
    r = _redis()
    me = f"{ctx.task_id}:{ctx.stage}:{os.getpid()}:{_n}"
    await r.hincrby(exec_key(NS), f"{ctx.task_id}:{ctx.stage}", 1)
    start = time.time()
    await r.hset(open_key(NS), me, f"{key}|{start!r}")
    await asyncio.sleep(random.uniform(min_ms, max_ms) / 1000)
    # the end is written before the commit that frees the slot: a span never ends late
    await r.rpush(spans_key(NS), f"{key}|{start!r}|{time.time()!r}")
    await r.hdel(open_key(NS), me)
    return value + 1
