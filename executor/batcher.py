"""The commit batcher: the stage commits (and fails) of concurrent runs go out together, one
pipeline per turn of the event loop, each still its own atomic, fenced script."""

from __future__ import annotations

import asyncio
from typing import Any

from stagewise.faults import Backoff, Warnings, transient
from stagewise.storage.calls import Call, R
from stagewise.storage.runner import Scripts

Pending = tuple[Call[Any], asyncio.Future[Any]]


class Batcher:
    """Sends the stage commits of concurrent runs together: calls made while the event loop is
    busy go out as one pipeline when it next turns, so a busy executor pays one round trip (and
    one connection checkout) for many commits instead of one each.  Each caller still gets its
    own script's answer; every script stays one atomic, fenced step.

    A call that meets a Redis fault that passes by itself (stagewise.faults.transient: Redis
    away, out of memory, read-only during a failover, loading) is sent again after a capped
    backoff until it gets its answer: applied or not, we cannot tell, and every script is fenced
    (commit.lua answers REPLAY to a commit it has already applied).  So a run is never left
    without its answer while its task stays RUNNING; any other error is its caller's to see."""

    def __init__(self, scripts: Scripts, log: Any) -> None:
        self.scripts = scripts
        self.queue: list[Pending] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.warnings = Warnings(log, "write_failed")
        self.scheduled = False  # a _flush is due on the next turn of the loop

    async def run(self, call: Call[R]) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if not self.queue and not self.tasks:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        self.queue.append((call, fut))
        return await fut

    def _flush(self) -> None:
        """Sends what is queued, unless a batch is still on its way: then the calls made
        meanwhile wait for its reply and go together (_sent).  A busy executor so sends its
        commits in few, large batches (each one EVALSHA per script and partition, whose writes
        to shared keys go out once per batch: commit.lua), and an idle one at once."""
        self.scheduled = False
        if not self.queue or self.tasks:
            return
        batch, self.queue = self.queue, []
        t = asyncio.create_task(self._send(batch))
        self.tasks.add(t)
        t.add_done_callback(self._sent)

    def _sent(self, t: asyncio.Task[None]) -> None:
        self.tasks.discard(t)
        if self.queue and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[Pending]) -> None:
        todo = batch
        try:
            backoff = Backoff()
            while todo:
                todo = [(c, fut) for c, fut in todo if not fut.done()]  # a run cancelled meanwhile
                if not todo:
                    return
                try:
                    results = await self.scripts.run_many([c for c, _ in todo], raise_on_error=False)
                except Exception as e:  # the batch as a whole: Redis away, or a bug
                    if not transient(e):
                        raise
                    self.warnings.failed(e, calls=len(todo))
                    await backoff.wait()
                    continue
                again: list[Pending] = []
                fault: Exception | None = None
                for (c, fut), res in zip(todo, results, strict=True):
                    if isinstance(res, Exception) and transient(res):  # e.g. OOM on this call
                        again.append((c, fut))
                        fault = res
                    elif fut.done():  # its run was cancelled meanwhile
                        continue
                    elif isinstance(res, Exception):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
                if fault is not None:
                    self.warnings.failed(fault, calls=len(again))
                    await backoff.wait()
                else:
                    self.warnings.ok()
                todo = again
        except Exception as e:  # noqa: BLE001 - every caller still waiting learns it
            for _, fut in todo:
                if not fut.done():
                    fut.set_exception(e)
