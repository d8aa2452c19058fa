"""The Redis client of a daemon or producer: a plain one for a single server, a cluster
client for a Redis Cluster node, decided once when connecting."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError


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
    client = aredis.Redis.from_url(url, decode_responses=True, max_connections=max_connections)
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
    rc = RedisCluster.from_url(url, decode_responses=True, max_connections=max_connections)
    try:
        await rc.initialize()
    except BaseException:
        await rc.aclose()
        raise
    return rc
