"""The executor app of the chaos test: every execution of a stage is counted in Redis (by the
handler itself, before it returns), so repeated executions can be told from committed ones."""

from __future__ import annotations

import asyncio
import os
import random

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
