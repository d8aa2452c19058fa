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
    global _r
    if _r is None:
        _r = aredis.Redis.from_url(os.environ["STAGEWISE_REDIS_URL"], decode_responses=True)
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
