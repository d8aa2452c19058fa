"""What a Redis error means to a caller: `unavailable_reason` tells a Redis that cannot serve a
call now (down, loading, read-only, out of memory, a cluster slot or a replica's master down)
from every other error.  The one place that decides it: the JSON-RPC dispatcher answers
``1006 UNAVAILABLE {reason}`` for such an error, and the HTTP views and /healthz answer 503
with the same reason.

redis-py's exception classes differ by version (MASTERDOWN has a class of its own only from
6.0, where it is a ClusterDownError; BusyLoadingError is a ConnectionError), so subclasses are
tested before their bases, and an error code redis-py has no class for is read from the reply.
"""

from __future__ import annotations

import re

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

UNREACHABLE = "unreachable"  # refused, reset, or no reply within the socket timeout
LOADING = "loading"  # LOADING: the server is still reading its data set
READ_ONLY = "read-only"  # READONLY: a replica (a failover without Sentinel, REPLICAOF)
OUT_OF_MEMORY = "out of memory"  # OOM: maxmemory reached under noeviction
CLUSTER_DOWN = "cluster down"  # CLUSTERDOWN, or a slot no master serves
MASTER_DOWN = "master down"  # MASTERDOWN: a replica lost its master, replica-serve-stale-data no

REASONS = (UNREACHABLE, LOADING, READ_ONLY, OUT_OF_MEMORY, CLUSTER_DOWN, MASTER_DOWN)

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
    """The reason (one of REASONS) when `exc` says Redis cannot serve the call now, else None
    (a bug, a script's refusal, a wrong password: not something a retry cures)."""
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
