"""The names the Lua scripts share with Python cannot drift apart.

Key names, statuses, the consumer group and the duration buckets are defined once in Python
(stagewise.keys, stagewise.status) and handed to Lua by the generated prelude; these tests run
the prelude on the real Redis and compare, check that no script spells one of those names
itself, and that every script's header (KEYS, ARGV) matches the call that stagewise.storage.calls
builds for it.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest

from stagewise.keys import DURATION_BUCKETS, GROUP, Keys, stream_name
from stagewise.models import parse_task
from stagewise.status import TERMINAL, Status
from stagewise.storage import calls
from stagewise.storage.prelude import KEY_FUNCTIONS, prelude
from stagewise.storage.runner import NAMES

SCRIPTS = resources.files("stagewise.storage") / "scripts"


def script_text(name: str) -> str:
    return (SCRIPTS / f"{name}.lua").read_text()


async def lua(r: Any, body: str, prefix: str) -> Any:
    return await r.eval(prelude() + body, 0, prefix)


@pytest.mark.parametrize("partition", [0, 3])
async def test_every_key_function_of_the_prelude_is_the_python_key(r: Any, partition: int) -> None:
    k = Keys("ns-x.y", partition)
    for name, (method, params) in KEY_FUNCTIONS.items():
        args = [f"arg{i}:with-{i}" for i in range(len(params))]
        body = f"return {name}({', '.join(repr(a) for a in args)})"
        assert await lua(r, body, k.prefix) == method(k, *args), name


def test_every_key_method_has_its_lua_function() -> None:
    """A key added in Python without a Lua function would push a script to spell it."""
    methods = {n for n in vars(Keys) if not n.startswith("_") and callable(getattr(Keys, n))}
    # stream = stream_of(stream_name(...)) in _lib.lua; lock, the cursors, stats and health:
    # the manager's own
    python_only = {"stream", "lock", "clean_cursor", "reconcile_cursor", "stats", "health"}
    assert methods - python_only == {m.__name__ for m, _ in KEY_FUNCTIONS.values()}


async def test_statuses_group_and_buckets_are_pythons(r: Any) -> None:
    body = """
    local out = {GROUP}
    for _, name in ipairs(ARGV) do if name ~= ARGV[1] then out[#out + 1] = S[name] end end
    return out"""
    names = [s.name for s in Status]
    got = await r.eval(prelude() + body, 0, "{p:0}", *names)
    assert got == [GROUP, *[s.value for s in Status]]
    terminal = await lua(r, "local t = {} for s in pairs(TERMINAL) do t[#t + 1] = s end return t", "{p:0}")
    assert set(terminal) == {s.value for s in TERMINAL}
    buckets = await lua(r, "return BUCKETS", "{p:0}")
    assert tuple(float(b) for b in buckets) == DURATION_BUCKETS


async def test_an_unknown_status_name_is_an_error_in_lua(r: Any) -> None:
    with pytest.raises(Exception, match="unknown status QEUED"):
        await lua(r, "return S.QEUED", "{p:0}")


@pytest.mark.parametrize("priority", [0, 1, 9])
async def test_stream_names_agree(r: Any, priority: int) -> None:
    lib = (SCRIPTS / "_lib.lua").read_text()
    k = Keys("ns", 0)
    got = await r.eval(
        prelude() + lib + "return {stream_name('app', ARGV[2]), k_stream('app', ARGV[2])}",
        0,
        k.prefix,
        priority,
    )
    assert got == [stream_name("app", priority), k.stream("app", priority)]


@pytest.mark.parametrize("name", ["_lib", *NAMES])
def test_no_script_spells_a_key_a_status_or_the_group(name: str) -> None:
    code = "\n".join(line.split("--", 1)[0] for line in script_text(name).splitlines())
    assert "PREFIX" not in code, "keys come from the k_* functions of the prelude"
    statuses = "|".join(s.value for s in Status if s.value != "CANCELED")  # also an error code
    assert not re.search(rf"'({statuses})'", code), "statuses are S.<NAME>"
    assert f"'{GROUP}'" not in code, "the group is GROUP"


def _header(name: str) -> tuple[int, int]:
    """The highest KEYS[n] and ARGV[n] a script's header names."""
    head = "\n".join(line for line in script_text(name).splitlines() if line.startswith("--"))
    keys = [int(n) for n in re.findall(r"KEYS\[(\d+)\]", head)]
    argv = [int(n) for n in re.findall(r"ARGV\[(\d+)\]", head)]
    return max(keys, default=0), max(argv, default=0)


def _sample_calls() -> list[calls.Call[Any]]:
    k = Keys("ns", 0)
    task = parse_task({"app": "a", "commands": [{"method": "m"}]})
    return [
        calls.create(k, task, "error"),
        calls.send(k, "t", {"x": 1}),
        calls.cancel(k, "t", False),
        calls.unlock(k, "t", False),
        calls.delete(k, "t", False),
        calls.clean(k, "t", False, 1.0),
        calls.restart(k, "t"),
        calls.wake(k, "a/t"),
        calls.expire(k, "a/t"),
        calls.mark_dead(k, "e", 15.0),
        calls.reap(k, "a/t", "e", 5),
        calls.forget(k, "e"),
        calls.redeliver(k, k.stream("a"), "t", "1-0", "j"),
        calls.drop_consumer(k, k.stream("a"), "e"),
        calls.ping(k, "e"),
        calls.orphan(k, "a/t", "l"),
        calls.requeue_lost(k, "t", "j", "1-0"),
        calls.claim(k, k.stream("a"), "1-0", "t", "j", "e", "l"),
        calls.commit(k, "t", "j", "l", 0, "null", "ok", "m"),
        calls.fail(k, "t", "j", "l", 0, {"code": "X"}, None, "error", "m"),
        calls.handback(k, "t", "j", "l"),
        calls.offer(k, "e", "a", "l"),  # ARGV[4..]: pushed entries to acknowledge, none here
        calls.withdraw(k, "e", "a", "l"),
        # flow control
        calls.limit_acquire(k, "key", "0|a/t|j", "0|a/t|l", ["key", 2, 0, 1.0], "1", 5.0),
        calls.limit_release(k, "key", ["0|a/t|l"], ["0|a/t|j"]),
        calls.limit_recheck(k, "key|0|a/t|l", 5.0),
        calls.limit_pause(k, "key", 1.0),
        calls.hold(k, k.stream("a"), "1-0", "t", "j", "key"),
        calls.unblock(k, "t", "j"),
        calls.permit_check(k, "t", "l"),
        calls.outbox_done(k, "a/t|l|key"),
        calls.app_pause(k, "a", None),
        calls.cancel_children(k, "t", 10),
    ]


@pytest.mark.parametrize("call", _sample_calls(), ids=lambda c: c.script)
def test_each_call_matches_its_scripts_header(call: calls.Call[Any]) -> None:
    n_keys, n_argv = _header(call.script)
    assert len(call.keys) == n_keys, "KEYS"
    assert len(call.args) == n_argv, "ARGV"


def test_every_script_has_a_call() -> None:
    # create_many: 6 KEYS per task; spawn: 4, then 6 per child
    built = {c.script for c in _sample_calls()} | {"create_many", "spawn"}
    assert built == set(NAMES)


def test_spawn_call_matches_its_scripts_header() -> None:
    """spawn.lua: KEYS 4 + 6 per child, ARGV 8 + 6 per child."""
    k = Keys("ns", 0)
    child = parse_task({"app": "a", "commands": [{"method": "m"}]})
    call = calls.spawn(k, "a/p", "j", 1, 1.5, "fail", [child, child])
    n_keys, n_argv = _header("spawn")
    assert "KEYS[5..] 6 per child" in script_text("spawn") and "ARGV[9..] 6 per child" in script_text("spawn")
    assert len(call.keys) == n_keys + 6 * 2 and len(call.args) == n_argv + 6 * 2
