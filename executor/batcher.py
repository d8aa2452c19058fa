"""The commit batcher: the stage commits (and fails) of concurrent runs go out together, one
pipeline per turn of the event loop, each still its own atomic, fenced script."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aredis

from stagewise.storage.calls import Call, R
from stagewise.storage.runner import Scripts


class Batcher:
    """Sends the stage commits of concurrent runs together: calls made while the event loop is
    busy go out as one pipeline when it next turns, so a busy executor pays one round trip (and
    one connection checkout) for many commits instead of one each.  Each caller still gets its
    own script's answer; every script stays one atomic, fenced step."""

    def __init__(self, scripts: Scripts) -> None:
        self.scripts = scripts
        self.queue: list[tuple[Call[Any], asyncio.Future[Any]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, call: Call[R]) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if not self.queue:
            asyncio.get_running_loop().call_soon(self._flush)
        self.queue.append((call, fut))
        return await fut

    def _flush(self) -> None:
        batch, self.queue = self.queue, []
        t = asyncio.create_task(self._send(batch))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[tuple[Call[Any], asyncio.Future[Any]]]) -> None:
        calls = [call for call, _ in batch]
        delay = 0.1
        while True:
            try:
                results = await self.scripts.run_many(calls, raise_on_error=False)
                break
            except (OSError, aredis.ConnectionError, aredis.TimeoutError):
                # Applied or not, we cannot tell: send the same calls again.  Each script is
                # fenced, and commit.lua answers REPLAY to a commit it has already applied.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as e:  # noqa: BLE001 - anything else: every caller learns it
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                return
        for (*_, fut), res in zip(batch, results, strict=True):
            if fut.done():  # its run was cancelled meanwhile
                continue
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)
