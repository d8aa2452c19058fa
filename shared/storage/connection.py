"""The Redis client of a daemon or producer: a plain one for a single server, a cluster
client for a Redis Cluster node, the master of a Sentinel service for a ``redis+sentinel://``
URL; decided once when connecting.  Every client gets the same bounded timeouts and no retries
of its own (see SOCKET_TIMEOUT), so a call on a Redis that does not answer fails within
seconds, whatever the redis-py version's defaults."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

from stagewise.config import fail
from stagewise.faults import REDIS_FAULTS

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

SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379  # a sentinel host given without a port


def client_options() -> dict[str, Any]:
    """The connection options every client and node connection of ours gets (a Retry of its
    own each time: redis-py may change the one it is given)."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": Retry(NoBackoff(), RETRIES),
    }


class _ConnectsOutsideTheLock:
    """redis-py 5.3 to 7.1 open a new connection (TCP, then a handshake whose replies it waits
    for) while holding the pool's lock: while Redis does not answer, concurrent calls that each
    need a new connection wait out each other's socket timeouts in turn, n calls n x 3 s.  This
    is get_connection as 7.2 changed it: the lock only around taking a connection from the pool,
    the connect and check outside it."""

    async def get_connection(self: Any, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        async with self._lock:
            connection = self.get_available_connection()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


class _Pool(_ConnectsOutsideTheLock, aredis.ConnectionPool):
    pass


class _SentinelPool(_ConnectsOutsideTheLock, SentinelConnectionPool):
    pass


def _connects_under_the_lock() -> bool:
    major, minor = (int(n) for n in redis.__version__.split(".")[:2])
    return (5, 3) <= (major, minor) < (7, 2)


# The pool classes of our plain and Sentinel clients: redis-py's own, but on 5.3 to 7.1 ones
# that connect outside the pool's lock (_ConnectsOutsideTheLock).
POOL, SENTINEL_POOL = (
    (_Pool, _SentinelPool) if _connects_under_the_lock() else (aredis.ConnectionPool, SentinelConnectionPool)
)


async def connect_when_ready(url: str, max_connections: int, stop: asyncio.Event, log: Any) -> Any | None:
    """`connect`, waiting for Redis as a daemon starting must: one `redis_unavailable` warning a
    second while it does not answer; a mistake waiting will not mend (connect's ValueError)
    stops the process with one line (config.fail); None when `stop` is set meanwhile."""
    while not stop.is_set():
        try:
            return await connect(url, max_connections)
        except ValueError as e:
            fail(f"stagewise: STAGEWISE_REDIS_URL: {e}")
        except REDIS_FAULTS as e:
            log.warning("redis_unavailable", error=str(e)[:500])
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    return None


def is_cluster(r: Any) -> bool:
    """True for a client that talks to a Redis Cluster (`connect` makes one for a cluster
    node): every command, and every script, may then only name keys of one slot, i.e. of one
    partition."""
    return isinstance(r, RedisCluster)


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``.
    The credentials are the Redis servers' (master and replicas); the sentinels are asked
    without any."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parses a Sentinel URL (SPEC §10); raises ValueError naming what is wrong (never
    quoting a password)."""

    def bad(why: str) -> ValueError:
        return ValueError(
            f"bad Sentinel URL ({why}): expected "
            f"{SENTINEL_SCHEME}[:password@]host:port[,host:port...]/service_name[/db]"
        )

    if not url.startswith(SENTINEL_SCHEME):
        raise bad(f"it does not start with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME) :]
    if "?" in rest or "#" in rest:
        raise bad("options after '?' or '#' are not supported")
    netloc, _, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        if not colon:
            raise bad("credentials must be ':password@' or 'user:password@'")
        username, password = unquote(user) or None, unquote(secret)
    sentinels: list[tuple[str, int]] = []
    for n, item in enumerate(hosts.split(","), 1):
        if item.startswith("["):  # [::1]:26379
            host, close, tail = item[1:].partition("]")
            if not close or (tail and not tail.startswith(":")):
                raise bad(f"sentinel {n} {item!r} is not [ipv6]:port")
            port_text = tail[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise bad(f"sentinel {n} has no host" if hosts else "no sentinel host:port given")
        if port_text == "":
            port = SENTINEL_PORT
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise bad(f"sentinel {n} {item!r}: the port must be a number from 1 to 65535")
        sentinels.append((host, port))
    parts = path.split("/") if path else []
    if parts and parts[-1] == "":  # a trailing slash
        parts.pop()
    if not parts or not parts[0]:
        raise bad("no service name: the path must be /service_name")
    if len(parts) > 2:
        raise bad(f"the path {'/' + path!r} has more than /service_name/db")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise bad(f"the database {parts[1]!r} is not a number")
        db = int(parts[1])
    return SentinelUrl(tuple(sentinels), unquote(parts[0]), db, username, password)


class SentinelRedis(aredis.Redis):
    """The master of a Sentinel service: every new connection asks the sentinels where the
    master is, so the client follows a failover.  Closing it closes the connections to the
    sentinels too."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for s in self.sentinel_manager.sentinels:
                await s.aclose()


def _sentinel_client(url: str, max_connections: int) -> SentinelRedis:
    u = parse_sentinel_url(url)
    sentinel = Sentinel(list(u.sentinels), sentinel_kwargs=client_options())
    client = sentinel.master_for(
        u.service,
        redis_class=SentinelRedis,
        connection_pool_class=SENTINEL_POOL,
        db=u.db,
        username=u.username,
        password=u.password,
        decode_responses=True,
        max_connections=max_connections,
        **client_options(),
    )
    assert isinstance(client, SentinelRedis)
    client.sentinel_manager = sentinel
    return client


# Error replies to the connection's own set-up (SELECT, AUTH, HELLO) that a retry cannot cure.
_CONFIG_REPLY = re.compile(r"DB index is out of range|invalid DB index|WRONGPASS|NOAUTH|NOPERM", re.I)


def _safe(url: str) -> str:
    """`url` without its password, for an error line."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


async def connect(url: str, max_connections: int) -> Any:
    """A client for `url`: a plain one for a single Redis server, a `RedisCluster` when the
    server is a Redis Cluster node (`INFO cluster` says `cluster_enabled:1`; the URL is then
    the startup node, the client finds the others itself), the master of a Sentinel service
    for ``redis+sentinel://`` (SPEC §10).  The choice costs one round trip, here, once: the
    client handed back is used as is, so the single-server path carries no cluster logic per
    command.  Raises the connection error when Redis does not answer, ValueError for a
    mistake that waiting will not mend: a malformed URL, a database index Redis does not have,
    credentials it refuses.

    The client is for a daemon whose own limits bound the connections it uses at once (the
    executor's concurrency, the manager's in-flight limit): `max_connections` (per node on a
    cluster) is set above that bound, so the pool never runs dry.  A plain pool, because
    redis-py's blocking pool wraps every checkout in a timeout, which costs more than the rest
    of a command's client work."""
    if url.startswith(SENTINEL_SCHEME):
        master = _sentinel_client(url, max_connections)
        try:
            await master.ping()
        except BaseException:
            await master.aclose()
            raise
        return master
    try:
        pool = POOL.from_url(url, decode_responses=True, max_connections=max_connections, **client_options())
    except ValueError as e:  # an unknown scheme, a port or database that is not a number
        raise ValueError(f"cannot use {_safe(url)!r}: {e}") from None
    client = aredis.Redis.from_pool(pool)
    try:
        cluster = bool((await client.info("cluster")).get("cluster_enabled"))
    except (AuthenticationError, AuthorizationError) as e:  # waiting will not mend a password
        await client.aclose()
        raise ValueError(f"Redis refused the credentials of {_safe(url)!r}: {e}") from None
    except ResponseError as e:
        if _CONFIG_REPLY.search(str(e)):  # e.g. a database index past `databases`
            await client.aclose()
            raise ValueError(f"Redis refused {_safe(url)!r}: {e}") from None
        return client  # refused (an ACL without INFO, a proxy): run as before, on one server
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
