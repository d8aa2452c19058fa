"""Cancellation that survives Python 3.11's `asyncio.wait_for`.

On 3.11, a task cancelled at the moment the future it waits on through `wait_for` completes gets
the future's result and loses the cancel (CPython gh-86296, fixed in 3.12 by the rewrite of
`wait_for` on `asyncio.timeout`).  redis-py wraps every socket write in `wait_for` when a socket
timeout is set, so a long-lived loop that is stopped by `Task.cancel()` can swallow its stop and
go on forever.  The cancel request is still counted on the task (`Task.cancelling()`), so such a
loop asks at each turn.
"""

from __future__ import annotations

import asyncio


def raise_if_stop_requested() -> None:
    """Raise the CancelledError that a swallowed cancel should have raised: the current task
    has a cancel request that no CancelledError has answered."""
    me = asyncio.current_task()
    if me and me.cancelling():
        raise asyncio.CancelledError
