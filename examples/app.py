"""The "demo" executor app used by `make run`, the README and the tests.

Run it with:  stagewise executor examples.app:app --concurrency 8
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, NoReturn

from stagewise import App, Ctx

app = App("demo")


@app.method("demo.add")
async def add(a: int, b: int) -> int:
    return a + b


@app.method("demo.greet")
def greet(name: str, greeting: str = "hello") -> str:
    # A sync handler: the executor runs it in its thread pool.
    return f"{greeting}, {name}!"


@app.method("demo.charge")
async def charge(ctx: Ctx, amount: int, currency: str = "EUR") -> dict[str, Any]:
    # Stages run at least once, so a side effect should be idempotent: the charge id is derived
    # from the task id, and a re-run of this stage produces the same charge.
    charge_id = "ch_" + hashlib.sha256(f"{ctx.task_id}:charge".encode()).hexdigest()[:16]
    return {"ok": True, "amount": amount, "currency": currency, "charge_id": charge_id}


@app.method("demo.fail")
async def fail(message: str = "boom") -> NoReturn:
    raise RuntimeError(message)


@app.method("demo.sleep")
async def sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@app.method("demo.echo")
async def echo(value: Any) -> Any:
    return value
