"""A stop that Python 3.11's `asyncio.wait_for` swallows still stops the executor's loops.

redis-py sends every command through `wait_for` when a socket timeout is set.  On 3.11 a task
cancelled in the loop turn in which the awaited future completes gets the result and loses the
cancel (CPython gh-86296; shared/aio.py).  A heartbeat that lost its cancel this way kept pinging,
and the executor's stop waited for it forever: seen once in CI, on the cluster suite.  These tests
make the cancel land at exactly that moment, on a real Redis, inside the role's own loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from stagewise import sdnotify
from stagewise.config import Settings
from stagewise.executor import worker
from stagewise.executor.app import App
from stagewise.executor.worker import Executor
from stagewise.keys import Keys
from stagewise.storage.calls import Call
from tests.helpers import wait_for


def arriving_with_a_cancel(result: Any) -> asyncio.Future[Any]:
    """A future that gets `result` in the same loop turn as the current task gets cancelled,
    as when a stop lands just as redis-py's socket write completes."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    fut: asyncio.Future[Any] = loop.create_future()

    def arrive_and_cancel() -> None:
        fut.set_result(result)
        me.cancel()

    loop.call_soon(arrive_and_cancel)
    return fut


async def lose_the_cancel(result: Any) -> Any:
    """Hand `result` back through `wait_for` while the current task is being cancelled."""
    return await asyncio.wait_for(arriving_with_a_cancel(result), 10)


async def _first_loses_the_cancel(res: Any, lost: list[int]) -> Any:
    """The first reply comes back with a lost cancel; `lost` keeps the task's cancel count then."""
    if not lost:
        res = await lose_the_cancel(res)
        lost.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]
    return res


def _lose_in_ping(ex: Executor, lost: list[int]) -> None:
    real = ex.scripts.run

    async def run(call: Call[Any]) -> Any:
        res = await real(call)
        return await _first_loses_the_cancel(res, lost) if call.script == "ping" else res

    ex.scripts.run = run  # type: ignore[method-assign]


def _lose_in_blpop(ex: Executor, lost: list[int]) -> None:
    real = ex.r.blpop

    async def blpop(keys: list[str], timeout: float = 0) -> Any:  # noqa: ASYNC109 - redis-py's signature
        # a short block: the test need not wait a second
        return await _first_loses_the_cancel(await real(keys, timeout=0.01), lost)

    ex.r.blpop = blpop


ROLES: dict[str, tuple[Callable[[Executor], Awaitable[None]], Callable[[Executor, list[int]], None]]] = {
    "heartbeat": (Executor.heartbeat, _lose_in_ping),
    "control": (Executor.control, _lose_in_blpop),
}


@pytest.mark.parametrize("role", sorted(ROLES))
async def test_role_ends_on_a_cancel_that_wait_for_lost(redis_url: str, namespace: str, role: str) -> None:
    loop_of, lose = ROLES[role]
    settings = Settings(redis_url=redis_url, namespace=namespace, ping_interval=0.01)
    ex = Executor(App("lost-cancel"), settings, concurrency=1)
    await ex.start()
    try:
        lost: list[int] = []
        lose(ex, lost)
        task = asyncio.create_task(loop_of(ex))
        await wait_for(task.done, timeout=5, what=f"the {role} loop to end")
        # The cancel was really lost on the way (a CancelledError never reached the role) and
        # the role still ended as cancelled, as Task.cancel() asks.
        assert lost == ([1] if sys.version_info < (3, 12) else [])  # 3.12's wait_for raises
        assert task.cancelled()
    finally:
        ex.pool.shutdown(wait=False)
        await ex.r.aclose()


async def test_watchdog_ends_on_a_cancel_that_wait_for_lost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The systemd watchdog pinger awaits its health check through `wait_for` too."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # a check every 10 ms
    checks: list[asyncio.Future[bool]] = []

    def healthy() -> asyncio.Future[bool]:
        if checks:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(True)
        else:  # the first check answers as the pinger is cancelled
            fut = arriving_with_a_cancel(True)
        checks.append(fut)
        return fut

    task = asyncio.create_task(sdnotify.watchdog(healthy))
    try:
        await wait_for(task.done, timeout=5, what="the watchdog pinger to end")
    finally:  # a pinger that lost its cancel must not outlive the test: a second one ends it
        task.cancel()
        await asyncio.wait([task], timeout=5)
    assert task.cancelled() and len(checks) == 1, len(checks)


class _Lines:
    """Stands in for the executor's logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def emit(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))

        return emit


async def test_stop_does_not_wait_forever_for_a_role(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat that ignores every cancel (what no code of ours does now) holds the stop up
    for ROLE_STOP_TIMEOUT only: the executor leaves the registry and returns, and says which
    role it left behind."""
    monkeypatch.setattr(worker, "ROLE_STOP_TIMEOUT", 0.2)
    release = asyncio.Event()
    ignored: list[int] = []

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                ignored.append(1)

    settings = Settings(redis_url=redis_url, namespace=namespace, grace=0.1)
    ex = Executor(App("stubborn"), settings, concurrency=1)
    ex.heartbeat = stubborn  # type: ignore[method-assign]
    ex.log = lines = _Lines()
    stop = asyncio.Event()
    serving = asyncio.create_task(ex.serve(stop))
    await wait_for(
        lambda: (
            ex.r is not None
            and ("info", "executor_started", {"concurrency": 1, "cluster": False}) in lines.lines
        ),
        timeout=5,
        what="the executor up",
    )
    heartbeat = next(t for t in asyncio.all_tasks() if t.get_name() == "heartbeat")
    stop.set()
    try:
        await wait_for(serving.done, timeout=5, what="the stop to end")
        assert serving.result() is None
        left = [f["roles"] for level, event, f in lines.lines if event == "roles_not_stopped"]
        # control may be named too: a cancel that lands as its BLPOP is sent is lost (shared/aio.py)
        # and it ends only when that 1 s read returns; the wait does not hold the stop up for it.
        assert len(left) == 1 and "heartbeat" in left[0] and set(left[0]) <= {"heartbeat", "control"}, (
            lines.lines
        )
        assert ignored and not heartbeat.done()
        probe = aredis.Redis.from_url(redis_url)
        try:  # it left the registry all the same
            assert await probe.zscore(Keys(namespace, 0).executors(), ex.id) is None
        finally:
            await probe.aclose()
    finally:
        release.set()
        await asyncio.wait([heartbeat], timeout=5)
