"""The Redis client of a daemon or producer: a plain one for a single server, a cluster
client for a Redis Cluster node, decided once when connecting.  Every client gets the same
bounded timeouts and no retries of its own (see SOCKET_TIMEOUT), so a call on a Redis that does
not answer fails within seconds, whatever the redis-py version's defaults."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

# Seconds to open a connection (TCP and TLS handshakes): a server that is up answers in
# milliseconds, one that is down refuses at once; only a host that drops packets waits this long.
CONNECT_TIMEOUT = 2.0
# Seconds any one reply may take, on every connection.  It bounds how long a call waits on a
# Redis that is stopped or cut off (SIGSTOP, a partition), so that the API answers 1006 within
# SPEC §7's 5 s instead of hanging.  It must stay above the longest a command of ours blocks on
# purpose, plus a margin for a loaded server: the executor's XREADGROUP BLOCK 1000 ms and BLPOP
# timeout 1 s (stagewise.executor.fetch / worker; CLUSTER_BLOCK_MS is 100 ms), or those reads
# would time out on an idle but healthy Redis.
SOCKET_TIMEOUT = 3.0
# No retries inside redis-py: from 6.0 its default client retries a failed or timed-out command
# (3 to 10 times, with back-off), which multiplies the bound above and sends a write again whose
# first try may have been applied (a create answered TASK_EXISTS for the task it had just
# stored).  Our callers decide: the daemons' loops try again, the API answers 1006 and the
# client may retry.  (redis-py's own `retry_on_timeout` is False by default in every version,
# and deprecated from 6.0, where timeouts are retried whatever it says; `retry` covers both.)
RETRIES = 0


def client_options() -> dict[str, Any]:
    """The connection options every client and node connection of ours gets (a Retry of its
    own each time: redis-py may change the one it is given)."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": Retry(NoBackoff(), RETRIES),
    }


def is_cluster(r: Any) -> bool:
    """True for a client that talks to a Redis Cluster (`connect` makes one for a cluster
    node): every command, and every script, may then only name keys of one slot, i.e. of one
    partition."""
    return isinstance(r, RedisCluster)


async def connect(url: str, max_connections: int) -> Any:
    """A client for `url`: a plain one for a single Redis server, a `RedisCluster` when the
    server is a Redis Cluster node (`INFO cluster` says `cluster_enabled:1`; the URL is then
    the startup node, the client finds the others itself).  The choice costs one round trip,
    here, once: the client handed back is used as is, so the single-server path carries no
    cluster logic per command.  Raises the connection error when Redis does not answer.

    The client is for a daemon whose own limits bound the connections it uses at once (the
    executor's concurrency, the manager's in-flight limit): `max_connections` (per node on a
    cluster) is set above that bound, so the pool never runs dry.  A plain pool, because
    redis-py's blocking pool wraps every checkout in a timeout, which costs more than the rest
    of a command's client work."""
    client = aredis.Redis.from_url(
        url, decode_responses=True, max_connections=max_connections, **client_options()
    )
    try:
        cluster = bool((await client.info("cluster")).get("cluster_enabled"))
    except ResponseError:  # refused (an ACL without INFO, a proxy): run as before, on one server
        return client
    except BaseException:
        await client.aclose()
        raise
    if not cluster:
        return client
    await client.aclose()
    rc = RedisCluster.from_url(
        url, decode_responses=True, max_connections=max_connections, **client_options()
    )
    try:
        await rc.initialize()
    except BaseException:
        await rc.aclose()
        raise
    return rc
