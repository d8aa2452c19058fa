"""Loads the Lua scripts of ``scripts/`` once, by name, and runs the calls of ``calls``.

Each script is one state transition; the generated prelude (``prelude``: key names, statuses,
the consumer group, from their Python definitions) and ``_lib.lua`` (helpers every transition
needs) are put in front of each.  A call (``calls.Call``) carries its script's name, KEYS,
ARGV and the decoder of its reply; ``run``/``run_many`` hand back the decoded replies.
``run_many`` sends many calls in one round trip (``run`` is one call): that
is the hot path of the executor (claims, commits) and of the manager, so on a single server
it packs the EVALSHAs itself and reads the replies on one pooled connection under one
timeout, instead of going through a redis-py pipeline (its per-argument encoding and its
per-reply timeout were a third of the executor's CPU per stage).  On a Redis Cluster it uses a
cluster pipeline, which routes each EVALSHA to the node of its KEYS (all of one partition, so
of one slot).  Either way a script the server did not know (Redis restart, failover, SCRIPT
FLUSH) is loaded and run again on its own, so an emptied script cache costs one extra round
trip, never an error.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stagewise.storage.calls import Call, R
from stagewise.storage.connection import SOCKET_TIMEOUT, is_cluster
from stagewise.storage.prelude import prelude

NAMES = (
    "create",
    "create_many",
    "claim",
    "commit",
    "fail",
    "wake",
    "send",
    "mark_dead",
    "reap",
    "forget",
    "expire",
    "cancel",
    "unlock",
    "restart",
    "redeliver",
    "drop_consumer",
    "ping",
    "delete",
    "clean",
    "handback",
    "orphan",
    "requeue_lost",
    "spawn",
    "cancel_children",
)


@cache
def source(name: str) -> str:
    """The text a script runs as: prelude, _lib.lua, then the script itself."""
    folder = resources.files("stagewise.storage") / "scripts"
    lib = (folder / "_lib.lua").read_text()
    return prelude() + lib + "\n" + (folder / f"{name}.lua").read_text()


# ConnectionPool.get_connection's arguments: redis-py before 5.3 requires a command name (one
# is not used for anything), 5.3 and later take none and warn about any.
_CHECKOUT_ARGS: tuple[str, ...] = (
    ("EVALSHA",)
    if inspect.signature(aredis.ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
    else ()
)

# run_many on one server: how many replies share one socket-timeout period.  A reply of one of
# our scripts takes well under a millisecond, so a batch that needs more than socket_timeout
# per this many replies is talking to a dead or stuck server.
REPLIES_PER_TIMEOUT = 64


def _arg(value: Any) -> bytes:
    """One argument as redis-py would send it (str as UTF-8, numbers as their repr)."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"a script argument must be str, bytes, int or float, not {type(value).__name__}")


def pack_evalsha(sha: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    """EVALSHA sha numkeys KEYS... ARGV... in RESP, as one bytes string."""
    n = b"%d" % len(keys)
    out = [
        b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
        % (3 + len(keys) + len(args), len(sha), sha.encode(), len(n), n)
    ]
    for x in (*keys, *args):
        b = x.encode() if type(x) is str else _arg(x)
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Scripts:
    """The scripts registered on one client; ``await scripts.run(calls.claim(...))``."""

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self._single = not is_cluster(client)  # a cluster gets a cluster pipeline
        self._scripts: dict[str, AsyncScript] = {}
        for name in NAMES:
            self._scripts[name] = client.register_script(source(name))

    async def run(self, call: Call[R]) -> R:
        """One script call, its reply decoded; raises what the script (or the decoder) raised."""
        if self._single:
            return (await self.run_many([call]))[0]
        name, keys, args, decode = call
        return decode(await self._scripts[name](keys=keys, args=args, client=self._client))

    async def run_many(self, calls: Sequence[Call[Any]], raise_on_error: bool = True) -> list[Any]:
        """Runs the calls, in order, in one round trip; returns their decoded replies in order.
        With `raise_on_error` false, a call that failed (or whose reply the decoder refused with
        an error) has its exception in its place and the others still count; otherwise the
        first failure is raised (after all have run)."""
        if not calls:
            return []
        results = await self._send(calls)
        unknown = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
        if unknown:
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): load each
            # script once and send those calls again as one batch, rather than one at a time.
            for name in {calls[i].script for i in unknown}:
                await self._client.script_load(source(name))
            for i, res in zip(unknown, await self._send([calls[i] for i in unknown]), strict=True):
                results[i] = res
        first: Exception | None = None
        for i, res in enumerate(results):
            name, keys, args, decode = calls[i]
            if isinstance(res, NoScriptError):  # lost again meanwhile: redis-py's Script loads and runs it
                try:
                    res = await self._scripts[name](keys=keys, args=args, client=self._client)
                except ResponseError as e:
                    res = e
            if not isinstance(res, Exception):
                try:
                    res = decode(res)
                except Exception as e:  # noqa: BLE001 - a refused reply (an RpcError) stays in its place
                    res = e
            results[i] = res
            if first is None and isinstance(res, Exception):
                first = res
        if raise_on_error and first is not None:
            raise first
        return results

    async def _send(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """The raw replies of the calls, in order, errors in their places."""
        if self._single:
            return await self._one_server(calls)
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args, _ in calls:
            pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def _one_server(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """run_many on a single server: one pooled connection, our own RESP packing, and one
        timeout per REPLIES_PER_TIMEOUT replies rather than one per reply.  A read that is cut
        off (timeout, cancellation, lost connection) makes redis-py drop the connection, so a
        connection with replies still unread never goes back into use."""
        pool = self._client.connection_pool
        data = b"".join(pack_evalsha(self._scripts[n].sha, k, a) for n, k, a, _ in calls)
        conn = await pool.get_connection(*_CHECKOUT_ARGS)
        try:
            await conn.send_packed_command(data, check_health=False)
            out: list[Any] = []
            # connect() gives every client a socket timeout; a client made without one (redis-py
            # has none by default before 8.0) still gets a bound, never an endless wait
            period = conn.socket_timeout or SOCKET_TIMEOUT
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(period) as window:
                    for i in range(len(calls)):
                        if period and i and not i % REPLIES_PER_TIMEOUT:
                            window.reschedule(loop.time() + period)
                        try:  # math.inf: no timeout of its own, the window above bounds it
                            out.append(await conn.read_response(timeout=math.inf))
                        except ResponseError as e:
                            out.append(e)
            except TimeoutError:
                raise RedisTimeoutError(f"no reply from Redis within {period} s") from None
            return out
        finally:
            await pool.release(conn)
