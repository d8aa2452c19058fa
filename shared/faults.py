"""What a Redis error means, in one place: to an API caller (`unavailable_reason`: the reason of
a ``1006 UNAVAILABLE``, or None for an error a retry does not cure) and to the daemons'
long-lived loops (`transient`: the same call may succeed later; `Backoff`, `Warnings`: how a loop
waits a fault out and says so without flooding the log).

The JSON-RPC dispatcher answers ``1006 UNAVAILABLE {reason}`` for an error with a reason, and the
HTTP views and /healthz answer 503 with the same reason.  redis-py's exception classes differ by
version (MASTERDOWN has a class of its own only from 6.0, where it is a ClusterDownError;
BusyLoadingError is a ConnectionError), so subclasses are tested before their bases, and an error
code redis-py has no class for is read from the reply.

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
import re
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# --------------------------------------------------------------------------- the API's view

UNREACHABLE = "unreachable"  # refused, reset, or no reply within the socket timeout
LOADING = "loading"  # LOADING: the server is still reading its data set
READ_ONLY = "read-only"  # READONLY: a replica (a failover without Sentinel, REPLICAOF)
OUT_OF_MEMORY = "out of memory"  # OOM: maxmemory reached under noeviction
CLUSTER_DOWN = "cluster down"  # CLUSTERDOWN, or a slot no master serves
MASTER_DOWN = "master down"  # MASTERDOWN: a replica lost its master, replica-serve-stale-data no

REASONS = (UNREACHABLE, LOADING, READ_ONLY, OUT_OF_MEMORY, CLUSTER_DOWN, MASTER_DOWN)
# The reason of a durability wait not met starts with this word and says what was seen
# ("durability: 0 of 1 replicas acknowledged within 1.0 s"): an operator needs the counts.
DURABILITY = "durability"


class DurabilityNotMet(RedisError):
    """Redis applied the write, but STAGEWISE_DURABILITY's wait (WAIT, WAITAOF) did not see it
    on enough replicas or disks in time (stagewise.storage.durability).  The write may well be
    kept; it was not acknowledged, so the API answers 1006 with `reason` and the caller may
    retry (a create idempotently, with on_conflict "ignore")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

# An error reply's code, at its start or, for an error raised inside a script by an older
# Redis, after the script's own prefix ("... @user_script:1: -OOM command not allowed ...").
_CODE = re.compile(r"(?:^|\s-)(LOADING|READONLY|OOM|MASTERDOWN|CLUSTERDOWN)\b")
_BY_CODE = {
    "LOADING": LOADING,
    "READONLY": READ_ONLY,
    "OOM": OUT_OF_MEMORY,
    "MASTERDOWN": MASTER_DOWN,
    "CLUSTERDOWN": CLUSTER_DOWN,
}


def _text(exc: BaseException) -> str:
    # args[0], not str(exc): redis-py 8 renders some errors as "server:OutOfMemoryError"
    return str(exc.args[0]) if exc.args else ""


def describe(exc: BaseException) -> str:
    """`exc` for a log line: its class and its message."""
    text = _text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unavailable_reason(exc: BaseException) -> str | None:
    """The reason (one of REASONS, or a DURABILITY one) when `exc` says Redis cannot serve the
    call now, else None (a bug, a script's refusal, a wrong password: not something a retry
    cures)."""
    if isinstance(exc, DurabilityNotMet):
        return exc.reason
    if isinstance(exc, BusyLoadingError):
        return LOADING
    if isinstance(exc, MasterDownError):
        return MASTER_DOWN
    if isinstance(exc, ReadOnlyError):
        return READ_ONLY
    if isinstance(exc, OutOfMemoryError):
        return OUT_OF_MEMORY
    if isinstance(exc, ClusterDownError | SlotNotCoveredError):
        return CLUSTER_DOWN
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return None  # configuration, not an outage: answered and logged as an internal error
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return UNREACHABLE  # OSError: builtin ConnectionError and TimeoutError included
    if isinstance(exc, ResponseError):
        m = _CODE.search(_text(exc))
        return _BY_CODE[m.group(1)] if m else None
    if isinstance(exc, RedisClusterException):  # the cluster client's own, without a reply code
        text = _text(exc)
        if "not covered" in text:
            return CLUSTER_DOWN
        if "cannot be connected" in text:
            return UNREACHABLE
    return None


# --------------------------------------------------------------------------- the loops' view

# Error replies (their first word) beyond `unavailable_reason`'s that a loop waits out too.
TRANSIENT_REPLIES = frozenset(
    {
        "BUSY",  # a script ran past busy-reply-threshold
        "TRYAGAIN",  # a multi-key command during a resharding
        "NOREPLICAS",  # min-replicas-to-write not met
        "UNBLOCKED",  # a blocking read ended by the server (its key or group went away)
    }
)

# Everything a long-lived loop waits out rather than dies of: any Redis error, any socket error,
# and the cluster client's own (a slot not covered while a failover is under way).
REDIS_FAULTS: tuple[type[BaseException], ...] = (OSError, RedisError, RedisClusterException)

BACKOFF_FIRST = 0.1  # s
BACKOFF_CAP = 2.0  # s: a loop retries at least this often, so it resumes soon after Redis does


def transient(e: BaseException) -> bool:
    """True when `e` is a Redis fault that passes by itself: the same call may succeed later
    (every error with an `unavailable_reason`, and a few more a loop can wait out)."""
    if unavailable_reason(e) is not None:  # down, loading, read-only, out of memory, cluster down
        return True
    if isinstance(e, OSError | RedisConnectionError | RedisTimeoutError | ClusterError | TryAgainError):
        return True  # ConnectionError includes a refused password: an operator may mend it
    if isinstance(e, ResponseError):
        words = str(e).split(None, 1)
        return bool(words) and words[0] in TRANSIENT_REPLIES
    return False


def kind(e: BaseException) -> str:
    """What sort of failure `e` is, for a log line: its class, and for an error reply its first
    word ("ResponseError:NOGROUP"); the same kind is logged once by `Warnings`."""
    name = type(e).__name__
    if type(e) is ResponseError:  # redis-py gives the common codes classes of their own
        words = str(e).split(None, 1)
        return f"{name}:{words[0]}" if words else name
    return name


def is_nogroup(e: BaseException) -> bool:
    """The consumer group (or its stream) is gone: Redis lost data (a flushed database, a
    restart from an older file).  Re-creating the group is the cure, not waiting."""
    return isinstance(e, ResponseError) and str(e).startswith("NOGROUP")


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
