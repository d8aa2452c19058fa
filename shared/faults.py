"""Redis faults as the daemons' long-lived loops see them: which ones pass by themselves, how a
loop waits them out, and how it says so without flooding the log.

A fault *passes by itself* (`transient`) when the same call, sent again later, can succeed:
the connection is gone or timed out, the server is loading its data set, is out of memory under
`noeviction`, is a replica for now (a failover under way), or is a cluster whose slots are moving
or not all served.  Every script of stagewise is fenced and idempotent under replay, so a loop
that meets such a fault sends the same call again after a `Backoff`; any other error (a bug, a
script error) is not retried blindly.

A loop that fails again and again logs one warning per kind of failure (`Warnings`), not one per
retry, and one line when it works again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions as rex

# Error replies (their first word) that name a state of the server, not of the call.
TRANSIENT_REPLIES = frozenset(
    {
        "OOM",  # maxmemory reached under noeviction: writes refused until memory is freed
        "READONLY",  # a replica, e.g. the old master during a failover
        "LOADING",  # loading its data set after a restart
        "BUSY",  # a script ran past busy-reply-threshold
        "MASTERDOWN",  # a replica that lost its master
        "CLUSTERDOWN",  # a cluster with slots not served
        "TRYAGAIN",  # a multi-key command during a resharding
        "NOREPLICAS",  # min-replicas-to-write not met
        "UNBLOCKED",  # a blocking read ended by the server (its key or group went away)
    }
)

# Everything a long-lived loop waits out rather than dies of: any Redis error, any socket error,
# and the cluster client's own (a slot not covered while a failover is under way).
REDIS_FAULTS: tuple[type[BaseException], ...] = (OSError, rex.RedisError, rex.RedisClusterException)

BACKOFF_FIRST = 0.1  # s
BACKOFF_CAP = 2.0  # s: a loop retries at least this often, so it resumes soon after Redis does


def transient(e: BaseException) -> bool:
    """True when `e` is a Redis fault that passes by itself: the same call may succeed later."""
    if isinstance(e, OSError | rex.ConnectionError | rex.TimeoutError | rex.ClusterError):
        return True  # includes BusyLoadingError (LOADING) and CLUSTERDOWN / MASTERDOWN
    if isinstance(e, rex.SlotNotCoveredError):  # a cluster client between two slot maps
        return True
    if isinstance(e, rex.OutOfMemoryError | rex.ReadOnlyError | rex.TryAgainError):
        return True
    if isinstance(e, rex.ResponseError):
        words = str(e).split(None, 1)
        return bool(words) and words[0] in TRANSIENT_REPLIES
    return False


def kind(e: BaseException) -> str:
    """What sort of failure `e` is, for a log line: its class, and for an error reply its first
    word ("ResponseError:NOGROUP"); the same kind is logged once by `Warnings`."""
    name = type(e).__name__
    if type(e) is rex.ResponseError:  # redis-py gives the common codes classes of their own
        words = str(e).split(None, 1)
        return f"{name}:{words[0]}" if words else name
    return name


def is_nogroup(e: BaseException) -> bool:
    """The consumer group (or its stream) is gone: Redis lost data (a flushed database, a
    restart from an older file).  Re-creating the group is the cure, not waiting."""
    return isinstance(e, rex.ResponseError) and str(e).startswith("NOGROUP")


class Backoff:
    """Delays between retries: BACKOFF_FIRST, doubling, at most `cap`; `reset` after a success."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        """The delay to wait now; the next one is twice as long, up to the cap."""
        d = self.delay
        self.delay = min(d * 2, self.cap)
        return d

    async def wait(self) -> None:
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        self.delay = self.first


class Warnings:
    """The failures of one loop as log lines: a warning `event` the first time a kind of failure
    is seen (and whenever the kind changes), not at each retry; `<event>_recovered` (info, with the
    number of failures) at the first success after failures."""

    def __init__(self, log: Any, event: str) -> None:
        self.log, self.event = log, event
        self.kind: str | None = None
        self.failures = 0

    def failed(self, e: BaseException, **fields: Any) -> None:
        self.failures += 1
        k = kind(e)
        if k != self.kind:
            self.kind = k
            self.log.warning(self.event, error=str(e)[:500], kind=k, **fields)

    def ok(self, **fields: Any) -> None:
        if self.kind is not None:
            self.log.info(f"{self.event}_recovered", failures=self.failures, **fields)
            self.kind, self.failures = None, 0
