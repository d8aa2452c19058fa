"""The stage call (executor/call.py) keeps a failing handler's traceback with its STAGE_ERROR
(SPEC §7): the handler's own frames, not the executor's or the thread pool's, at most the
last 8 KiB.  Pure: no Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from stagewise import App
from stagewise.executor.call import TRACEBACK_BYTES, Facts, Failure, call

app = App("tb")


def helper(n: int) -> None:
    raise ValueError(f"bad value {n}")


@app.method("tb.async")
async def failing_async(n: int) -> None:
    helper(n)


@app.method("tb.sync")
def failing_sync(n: int) -> None:
    helper(n)


@app.method("tb.deep")
def deep(n: int) -> None:
    if n:
        deep(n - 1)
    raise KeyError("at the bottom")


async def fail_of(method: str, n: int) -> dict[str, Any]:
    facts = Facts("t", "j", 1, time.time() + 60, "ex")
    with ThreadPoolExecutor(1) as pool, pytest.raises(Failure) as got:
        await call(app, pool, {"method": method, "params": {"n": n}}, {}, facts, 0)
    return got.value.error


@pytest.mark.parametrize(("method", "handler"), [("tb.async", "failing_async"), ("tb.sync", "failing_sync")])
async def test_a_handlers_traceback_is_kept_from_its_own_frames(method: str, handler: str) -> None:
    err = await fail_of(method, 7)
    assert err["code"] == "STAGE_ERROR" and err["type"] == "ValueError" and err["message"] == "bad value 7"
    tb = err["traceback"]
    assert tb.startswith("Traceback (most recent call last):\n")
    assert f"in {handler}\n" in tb and "in helper\n" in tb
    assert tb.rstrip().endswith("ValueError: bad value 7")
    assert "executor/call.py" not in tb and "concurrent/futures" not in tb


async def test_a_long_traceback_keeps_its_last_8_kib() -> None:
    err = await fail_of("tb.deep", 200)
    tb = err["traceback"]
    assert len(tb.encode()) <= TRACEBACK_BYTES == 8192
    assert tb.rstrip().endswith("KeyError: 'at the bottom'")


async def test_errors_of_ours_carry_no_traceback() -> None:
    facts = Facts("t", "j", 1, time.time() + 60, "ex")
    with ThreadPoolExecutor(1) as pool, pytest.raises(Failure) as got:
        await call(app, pool, {"method": "tb.nope"}, {}, facts, 0)
    assert got.value.error["code"] == "METHOD_NOT_FOUND" and "traceback" not in got.value.error
