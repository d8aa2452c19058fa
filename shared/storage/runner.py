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

An API write names the partitions it writes (`durable`): with a STAGEWISE_DURABILITY that
waits, its scripts are followed, in the same round trip and on the same connection (per server
on a cluster), by the fence and WAIT / WAITAOF (stagewise.storage.durability), and a wait not
met raises DurabilityNotMet.
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

from stagewise.faults import DurabilityNotMet
from stagewise.keys import Keys
from stagewise.storage.calls import MANY, Call, R
from stagewise.storage.connection import SOCKET_TIMEOUT, is_cluster
from stagewise.storage.durability import Durability, fence
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
    # push delivery (executor/fetch.py)
    "offer",
    "withdraw",
    "requeue_lost",
    # flow control (stagewise/storage/limits.py)
    "limit_acquire",
    "limit_release",
    "limit_recheck",
    "limit_pause",
    "hold",
    "unblock",
    "permit_check",
    "outbox_done",
    "app_pause",
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

# Calls of a script of calls.MANY that follow each other in a run_many and write one partition
# go as one EVALSHA (at most this many per call): one script call, one TIME, and one write per
# shared key for the lot (see claim.lua).
MERGE_MAX = 256

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


def pack_command(*args: Any) -> bytes:
    """Any command in RESP (the fence and the wait of a durable call)."""
    parts = [_arg(a) for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


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


class _Registered(dict[str, AsyncScript]):
    """Each script of NAMES registered on the client when first called, not all up front: a
    script's text (prelude and _lib.lua included) is ~35 KB, held for as long as the client is,
    and an executor calls a third of them; registering only hashes the text (nothing is sent
    to Redis until a call), so doing it late changes nothing but the memory held."""

    def __init__(self, client: aredis.Redis) -> None:
        super().__init__()
        self._client = client

    def __missing__(self, name: str) -> AsyncScript:
        if name not in NAMES:
            raise KeyError(name)
        script = self[name] = self._client.register_script(source(name))
        return script


class Scripts:
    """The scripts registered on one client; ``await scripts.run(calls.claim(...))``."""

    def __init__(self, client: aredis.Redis, durability: Durability | None = None) -> None:
        self._client = client
        self.durability = durability or Durability()
        self._single = not is_cluster(client)  # a cluster gets a cluster pipeline
        self._scripts = _Registered(client)

    async def run(self, call: Call[R], durable: Sequence[Keys] = ()) -> R:
        """One script call, its reply decoded; raises what the script (or the decoder) raised.
        `durable`: as for run_many."""
        if self._single or (durable and self.durability.waits):
            return (await self.run_many([call], durable=durable))[0]
        name, keys, args, decode = call
        return decode(await self._scripts[name](keys=keys, args=args, client=self._client))

    async def run_many(
        self, calls: Sequence[Call[Any]], raise_on_error: bool = True, durable: Sequence[Keys] = ()
    ) -> list[Any]:
        """Runs the calls, in order, in one round trip; returns their decoded replies in order.
        With `raise_on_error` false, a call that failed (or whose reply the decoder refused with
        an error) has its exception in its place and the others still count; otherwise the
        first failure is raised (after all have run).

        `durable`: the partitions an API write wrote (or, calls empty, the partitions of writes
        made before on any connection).  With a durability level that waits, the acknowledgement
        waits for them, and DurabilityNotMet is raised before any call's own error when it is
        not met: the caller answers 1006 (the writes may have been applied)."""
        parts = list(dict.fromkeys(durable)) if self.durability.waits else []
        if not calls and not parts:
            return []
        results, waits = await self._send(calls, parts)
        unknown = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
        if unknown:
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): load each
            # script once and send those calls again as one batch, rather than one at a time.
            for name in {calls[i].script for i in unknown}:
                await self._client.script_load(source(name))
            # and their wait again: they ran after the first one
            again, waits = await self._send([calls[i] for i in unknown], parts)
            for i, res in zip(unknown, again, strict=True):
                results[i] = res
        first: Exception | None = None
        late = False  # a call run on its own after the wait: the wait is sent again
        for i, res in enumerate(results):
            name, keys, args, decode = calls[i]
            if isinstance(res, NoScriptError):  # lost again meanwhile: redis-py's Script loads and runs it
                try:
                    res = await self._scripts[name](keys=keys, args=args, client=self._client)
                except ResponseError as e:
                    res = e
                late = True
            if not isinstance(res, Exception):
                try:
                    res = decode(res)
                except Exception as e:  # noqa: BLE001 - a refused reply (an RpcError) stays in its place
                    res = e
            results[i] = res
            if first is None and isinstance(res, Exception):
                first = res
        if late and parts:
            waits = (await self._send([], parts))[1]
        for reply in waits:  # a wait not met outranks a call's own refusal
            reason = self.durability.shortfall(reply)
            if reason is not None:
                raise DurabilityNotMet(reason)
        if raise_on_error and first is not None:
            raise first
        return results

    async def _send(self, calls: Sequence[Call[Any]], parts: Sequence[Keys]) -> tuple[list[Any], list[Any]]:
        """The raw replies of the calls, in order, errors in their places; and the wait's
        replies when `parts` is not empty (one per server written, after the fence).  Calls
        of a script of calls.MANY next to each other, on one partition, go as one call (`merge`);
        each still gets a reply of its own: [its reply], or the error that stands for it."""
        merged, groups = merge(calls)
        if len(merged) == len(calls):
            return await self._send_raw(calls, parts)
        raw, waits = await self._send_raw(merged, parts)
        out: list[Any] = []
        for res, n in zip(raw, groups, strict=True):
            if isinstance(res, Exception):
                out += [res] * n
            elif len(res) != n:
                out += [ResponseError(f"{n} calls merged, {len(res)} replies")] * n
            else:
                out += [x if isinstance(x, Exception) else [x] for x in res]
        return out, waits

    async def _send_raw(
        self, calls: Sequence[Call[Any]], parts: Sequence[Keys]
    ) -> tuple[list[Any], list[Any]]:
        if self._single:
            # One server: one fence covers every partition, since one replication stream does.
            extra = [fence(parts[0]), self.durability.command()] if parts else []
            out = await self._one_server(calls, extra)
            return out[: len(calls)], out[len(calls) + 1 :: 2]
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args, _ in calls:
            pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        # A cluster pipeline sends each node's commands on one connection, in order: the fence
        # of a partition (routed by its key) and the wait sent to the node that owns that key's
        # slot follow the scripts written there.  One fence and one wait per master written.
        cluster: Any = self._client
        nodes: dict[str, tuple[Keys, Any]] = {}
        for k in parts:
            node = cluster.get_node_from_key(k.health())
            nodes.setdefault(node.name, (k, node))
        for k, node in nodes.values():
            pipe.execute_command(*fence(k))
            pipe.execute_command(*self.durability.command(), target_nodes=node)
        out = list(await pipe.execute(raise_on_error=False))
        return out[: len(calls)], out[len(calls) + 1 :: 2]

    async def _one_server(self, calls: Sequence[Call[Any]], extra: Sequence[Sequence[Any]] = ()) -> list[Any]:
        """run_many on a single server: one pooled connection, our own RESP packing, and one
        timeout per REPLIES_PER_TIMEOUT replies rather than one per reply.  A read that is cut
        off (timeout, cancellation, lost connection) makes redis-py drop the connection, so a
        connection with replies still unread never goes back into use.  `extra`: commands sent
        after the calls on the same connection (a durable call's fence and wait); their
        replies follow the calls' in the list."""
        pool = self._client.connection_pool
        data = b"".join(pack_evalsha(self._scripts[n].sha, k, a) for n, k, a, _ in calls)
        data += b"".join(pack_command(*cmd) for cmd in extra)
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
                    for i in range(len(calls) + len(extra)):
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


def merge(calls: Sequence[Call[Any]]) -> tuple[list[Call[Any]], list[int]]:
    """The calls with each run of neighbours of one script of calls.MANY and one partition
    (ARGV[1], the key prefix) joined into one call (KEYS and ARGV after the prefix laid end to
    end, as the script reads them); and how many calls each one stands for."""
    out: list[Call[Any]] = []
    groups: list[int] = []
    for c in calls:
        if out and c.script in MANY and out[-1].script == c.script and c.args[0] == out[-1].args[0] and (
            groups[-1] < MERGE_MAX
        ):
            last = out[-1]
            if groups[-1] == 1:  # copy before extending: the caller's call stays as it was
                last = out[-1] = Call(last.script, list(last.keys), list(last.args), last.decode)
            last.keys.extend(c.keys)
            last.args.extend(c.args[1:])
            groups[-1] += 1
        else:
            out.append(c)
            groups.append(1)
    return out, groups
