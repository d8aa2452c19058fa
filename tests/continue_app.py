"""The executor app of the continuation tests (tests/test_continuation.py): each stage records,
in Redis, the run facts of its task as the stage saw them (lease, run_started, attempt, executor),
so a test can tell whether stages ran in one run or were claimed anew."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from stagewise.executor import App, Ctx
from stagewise.keys import Keys
from stagewise.storage.connection import connect

app = App("cont")
_r: Any = None
NS = os.environ.get("STAGEWISE_NAMESPACE", "stagewise")
FACTS = ("lease", "run_started", "attempt", "executor_id", "stage")


async def _redis() -> Any:
    global _r
    if _r is None:
        _r = await connect(os.environ["STAGEWISE_REDIS_URL"], 8)
    return _r


def facts_key(ns: str, task_id: str) -> str:
    return f"conttest:{{{ns}}}:{task_id}:facts"


def gate_key(ns: str, task_id: str) -> str:
    return f"conttest:{{{ns}}}:{task_id}:gate"


async def _record(ctx: Ctx) -> None:
    r = await _redis()
    h = await r.hmget(Keys(NS, 0).task(ctx.task_id), list(FACTS))
    got = dict(zip(FACTS, (v.decode() if isinstance(v, bytes) else v for v in h), strict=True))
    await r.rpush(facts_key(NS, ctx.task_id), json.dumps(got))


@app.method("cont.step")
async def step(ctx: Ctx, i: int) -> int:
    await _record(ctx)
    return i + 1


@app.method("cont.gate")
async def gate(ctx: Ctx, i: int) -> int:
    """Records, then waits until the test opens the gate (an RPUSH to gate_key); 60 s at most.
    One-second BLPOPs: the client's socket timeout is shorter than a long one."""
    await _record(ctx)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if await (await _redis()).blpop([gate_key(NS, ctx.task_id)], 1):
            break
    return i + 1
