"""Scripts survive an emptied script cache (Redis restart, failover, SCRIPT FLUSH), and
run_many's own packing and reading on one server keep every reply in its place."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aredis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stagewise.config import Settings
from stagewise.keys import Keys
from stagewise.manager.query import Filters
from stagewise.manager.store import Store
from stagewise.models import parse_task
from stagewise.storage.calls import Call
from stagewise.storage.runner import Scripts, pack_evalsha


async def test_pipelined_scripts_after_script_flush(r: Any, redis_url: str, namespace: str) -> None:
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace))
    for i in range(3):
        await store.create(
            parse_task({"id": f"f{i}", "app": "a", "run_at": 4e9, "commands": [{"method": "m"}]})
        )
    await r.script_flush()
    res = await store.batch("cancel", ["f0", "f1", "nope"], dry_run=False)
    assert [b["changed"] for b in res] == [True, True, False]
    await r.script_flush()
    await store.create(parse_task({"id": "g", "app": "a", "commands": [{"method": "m"}]}))  # single call
    page = await store.list_tasks(Filters(status="CANCELED"), "asc", 10, None, False)
    assert [v["id"] for v in page["items"]] == ["f0", "f1"]


# ---------------------------------------------------------------------- run_many on one server
@pytest.mark.parametrize(
    "args",
    [
        ["plain", "ünïcödé", "", "with\r\nCRLF"],
        [0, 1, -7, 2**53, 10**30],
        [0.1, 1.0, -2.5e-7, 1e300, 4e9],
        [b"raw bytes", b"\x00\xff"],
    ],
)
def test_pack_evalsha_sends_what_redis_py_sends(args: list[Any]) -> None:
    ours = pack_evalsha("0" * 40, ["{ns:0}:t:a", "key two"], args)
    theirs = b"".join(Connection().pack_command("EVALSHA", "0" * 40, 2, "{ns:0}:t:a", "key two", *args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_pack_evalsha_refuses_what_redis_would_get_wrong(bad: Any) -> None:
    with pytest.raises(TypeError, match="script argument"):
        pack_evalsha("0" * 40, [], ["ok", bad])


def _wake(ns: str, due: str, member: str) -> Call[list[str]]:
    """wake.lua with a due key of the test's choosing, its reply left as it came."""
    k = Keys(ns, 0)
    return Call("wake", [k.task(member), due], [k.prefix, member, f"a/{member}"], list)


async def test_run_many_puts_each_reply_and_error_in_its_place(r: Any, namespace: str) -> None:
    scripts = Scripts(r)
    k = Keys(namespace, 0)
    await r.set(k.prefix + ":not-a-zset", "x")  # ZSCORE on it: WRONGTYPE inside the script
    calls = [_wake(namespace, k.due(), "a"), _wake(namespace, k.prefix + ":not-a-zset", "b")] * 50
    calls.append(_wake(namespace, k.due(), "c"))
    await r.script_flush()  # and the first call of the batch meets NOSCRIPT: loaded, run again
    got = await scripts.run_many(calls, raise_on_error=False)
    wrong = [i for i, res in enumerate(got) if isinstance(res, ResponseError) and "WRONGTYPE" in str(res)]
    assert wrong == list(range(1, 100, 2))
    assert [got[i] for i in range(len(got)) if i not in wrong] == [["NOT_DUE"]] * 51
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await scripts.run_many(calls[:3])
    assert await scripts.run_many([]) == []


async def test_run_many_times_out_on_a_silent_server_and_leaves_no_reply_behind(
    r: Any, redis_url: str, namespace: str
) -> None:
    """A server that stops answering: the batch fails with a timeout within the client's socket
    timeout; the connection it used is dropped, so the late replies never reach a later call."""
    client = aredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.2)
    try:
        scripts = Scripts(client)
        k = Keys(namespace, 0)
        await scripts.run_many([_wake(namespace, k.due(), "x")])  # scripts loaded, connection made
        await r.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        with pytest.raises(RedisTimeoutError):
            await scripts.run_many([_wake(namespace, k.due(), "x")] * 10)
        await r.ping()  # answered once the pause is over
        await r.zadd(k.due(), {"a/late": 1})
        got = await scripts.run_many([_wake(namespace, k.due(), "late"), _wake(namespace, k.due(), "y")])
        assert got == [["GONE"], ["NOT_DUE"]]
    finally:
        await client.aclose()
