"""Bad input on POST /rpc (SPEC §2, §3, §7): every malformed request gets the right JSON-RPC error,
naming the offending field, and writes nothing to Redis.

One manager serves the whole module (a module-scoped fixture on the session event loop); the
cases are a table, one parametrized test each, and every case compares the namespace's keys
before and after.  The last test checks that the server still serves after all of them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from stagewise.keys import Keys
from tests.helpers import Daemons, ManagerProc

OMIT: Any = object()  # leave a member out of a request / a field out of a task

GOOD_CMD = {"method": "demo.add", "params": {"a": 1, "b": 2}}
BASE_TASK = {"app": "demo", "commands": [GOOD_CMD]}
MANAGED = [
    "status",
    "stage",
    "stages",
    "results",
    "job_id",
    "attempt",
    "retries",
    "executor_id",
    "created",
    "updated",
    "queued_at",
    "next_run",
    "wait_deadline",
    "exec_deadline",
    "exit_code",
    "error",
    "cleaned",
    "locked",
]
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
TASK_NOT_FOUND, LIMIT_EXCEEDED = 1001, 1005


# --------------------------------------------------------------------------- fixtures


@dataclass
class Server:
    m: ManagerProc
    namespace: str


@pytest.fixture(scope="module")
async def server(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """One manager for the module, in a namespace of its own."""
    namespace = "t" + uuid.uuid4().hex[:10]
    d = Daemons(redis_url, namespace, tmp_path_factory.mktemp("rpc-input-logs"))
    failed_before = request.session.testsfailed
    try:
        yield Server(await d.manager(), namespace)
    finally:
        try:
            await d.aclose()
        finally:
            if request.session.testsfailed > failed_before:
                print(f"\n----- daemon logs (namespace {namespace}) -----\n{d.log_tails()}")


async def keys_of(r: redis.asyncio.Redis, namespace: str) -> set[str]:
    """The keys of the namespace but the one GET /healthz writes (Keys.health, with a short
    TTL), which the readiness probe of Daemons.manager writes and no request does."""
    health = Keys(namespace).health()
    return {k async for k in r.scan_iter(match=f"*{namespace}*", count=1000) if k != health}


# --------------------------------------------------------------------------- the table


def req(method: Any, params: Any = OMIT, id: Any = 1, **extra: Any) -> dict[str, Any]:
    """A JSON-RPC request; `id=OMIT` makes it a notification."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not OMIT:
        body["params"] = params
    if id is not OMIT:
        body["id"] = id
    body.update(extra)
    return body


def task(**fields: Any) -> dict[str, Any]:
    """BASE_TASK with `fields` set (OMIT removes one)."""
    t = dict(BASE_TASK)
    for name, value in fields.items():
        if value is OMIT:
            t.pop(name, None)
        else:
            t[name] = value
    return t


def create(rid: Any = 1, on_conflict: Any = OMIT, **fields: Any) -> dict[str, Any]:
    """A tasks.create request (request id `rid`) for BASE_TASK with `fields` set."""
    params: dict[str, Any] = {"task": task(**fields)}
    if on_conflict is not OMIT:
        params["on_conflict"] = on_conflict
    return req("tasks.create", params, id=rid)


def nest_list(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def with_cmd(bad: Any) -> dict[str, Any]:
    """tasks.create whose third command (index 2) is `bad`."""
    return create(commands=[GOOD_CMD, {"timer": 5}, bad])


@dataclass
class Case:
    name: str
    body: Any  # a JSON-able request, or str / bytes sent as is
    code: int | None  # None: a notification, answered with HTTP 204 and no body
    field: str | None = None  # expected data.field (None: no field to name)
    id: Any = 1  # expected id of the reply
    reason: str | None = None  # a substring data.reason must contain (case-insensitive)
    data: Any = OMIT  # when set: the exact expected data (errors without a field)
    http: int = 200

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def P(case: Case, xfail: str | None = None) -> Any:  # noqa: N802 - reads like pytest.param
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(case, id=case.name, marks=marks)


P_ = INVALID_PARAMS
C2 = "task.commands[2]"

ENVELOPE = [
    P(Case("json-truncated", '{"jsonrpc": "2.0", "id": 1,', PARSE_ERROR, id=None)),
    P(Case("json-garbage", "nul", PARSE_ERROR, id=None)),
    P(Case("json-empty-body", b"", PARSE_ERROR, id=None)),
    P(
        Case(
            "json-trailing-data",
            '{"jsonrpc": "2.0", "id": 1, "method": "system.info"} x',
            PARSE_ERROR,
            id=None,
        )
    ),
    P(Case("json-bad-utf8-outside-string", b'\xff{"jsonrpc": "2.0"}', PARSE_ERROR, id=None)),
    P(
        Case(
            "json-bad-utf8-in-string", b'{"jsonrpc": "2.0", "id": 1, "method": "\xff"}', PARSE_ERROR, id=None
        ),
    ),
    P(
        Case(
            "json-number-out-of-range", '{"jsonrpc": "2.0", "id": 1e400, "method": "x"}', PARSE_ERROR, id=None
        )
    ),
    P(
        Case("json-nested-too-deep", b"[" * 5000 + b"]" * 5000, PARSE_ERROR, id=None),
    ),
    # deeper than MAX_JSON_DEPTH but within what msgspec decodes: refused whole, before anything runs
    P(Case("json-nested-300-in-kws", create(kws={"d": nest_list(300)}), PARSE_ERROR, id=None)),
    P(Case("not-an-object-number", "42", INVALID_REQUEST, "request", id=None)),
    P(Case("not-an-object-string", '"tasks.get"', INVALID_REQUEST, "request", id=None)),
    P(Case("not-an-object-null", "null", INVALID_REQUEST, "request", id=None)),
    P(Case("empty-batch", "[]", INVALID_REQUEST, id=None)),
    P(Case("jsonrpc-missing", {"id": 1, "method": "system.info"}, INVALID_REQUEST, "jsonrpc")),
    P(Case("jsonrpc-1.0", req("system.info", jsonrpc="1.0"), INVALID_REQUEST, "jsonrpc")),
    P(Case("jsonrpc-number", req("system.info", jsonrpc=2.0), INVALID_REQUEST, "jsonrpc")),
    P(Case("method-missing", {"jsonrpc": "2.0", "id": 1}, INVALID_REQUEST, "method")),
    P(Case("method-number", req(5), INVALID_REQUEST, "method")),
    P(Case("method-null", req(None), INVALID_REQUEST, "method")),
    P(Case("method-list", req(["tasks.get"]), INVALID_REQUEST, "method")),
    # JSON-RPC 2.0: a request that is not a valid Request object is answered (id null) even without id
    P(
        Case(
            "invalid-without-id",
            {"jsonrpc": "2.0", "method": 1, "params": "bar"},
            INVALID_REQUEST,
            "method",
            id=None,
        )
    ),
    P(Case("id-object", req("system.info", id={"a": 1}), INVALID_REQUEST, "id", id=None)),
    P(Case("id-list", req("system.info", id=[1]), INVALID_REQUEST, "id", id=None)),
    P(Case("id-true", req("system.info", id=True), INVALID_REQUEST, "id", id=None)),
    P(Case("id-false", req("system.info", id=False), INVALID_REQUEST, "id", id=None)),
    P(Case("unknown-member", req("system.info", foo=1), INVALID_REQUEST, "foo")),
    P(
        Case(
            "unknown-member-string-id",
            req("system.info", id="abc", extra=[]),
            INVALID_REQUEST,
            "extra",
            id="abc",
        )
    ),
    P(Case("unknown-method", req("nope.nope"), METHOD_NOT_FOUND, data={"method": "nope.nope"})),
    P(Case("unknown-method-empty", req(""), METHOD_NOT_FOUND, data={"method": ""})),
    P(Case("params-list", req("system.info", [1, 2]), P_, "params")),
    P(Case("params-string", req("tasks.get", "abc", id=7), P_, "params", id=7)),
    P(Case("params-number", req("tasks.list", 5, id="s"), P_, "params", id="s")),
    P(Case("unknown-param", req("tasks.get", {"id": "a", "bogus": 1}), P_, "bogus", reason="unknown")),
    P(Case("unknown-param-no-params-method", req("system.info", {"x": 1}), P_, "x")),
    P(Case("unknown-param-create", req("tasks.create", {"task": BASE_TASK, "bogus": 1}), P_, "bogus")),
    P(Case("bad-params-null-id", req("tasks.get", {"id": "a b"}, id=None), P_, "id", id=None)),
]

CREATE = [
    P(Case("create-no-params", req("tasks.create"), P_, "task", reason="missing")),
    P(Case("create-task-string", req("tasks.create", {"task": "x"}), P_, "task")),
    P(Case("create-task-list", req("tasks.create", {"task": [BASE_TASK]}), P_, "task")),
    P(Case("app-missing", create(app=OMIT), P_, "task.app", reason="missing")),
    P(Case("app-upper-case", create(app="Demo"), P_, "task.app")),
    P(Case("app-65-chars", create(app="a" * 65), P_, "task.app")),
    P(Case("app-empty", create(app=""), P_, "task.app")),
    P(Case("app-space", create(app="demo app"), P_, "task.app")),
    P(Case("app-number", create(app=5), P_, "task.app")),
    P(Case("commands-missing", create(commands=OMIT), P_, "task.commands", reason="missing")),
    P(Case("commands-empty", create(commands=[]), P_, "task.commands")),
    P(Case("commands-101", create(commands=[GOOD_CMD] * 101), P_, "task.commands")),
    P(Case("commands-object", create(commands=GOOD_CMD), P_, "task.commands")),
    P(Case("unknown-task-field", create(bogus=1), P_, "task.bogus", reason="unknown")),
    *[
        P(Case(f"managed-{name}-{i}", create(**{name: v}), P_, f"task.{name}", reason="managed"))
        for i, (name, v) in enumerate([(n, 0) for n in MANAGED] + [("status", "FINISHED"), ("results", [1])])
    ],
    P(Case("priority-string", create(priority="x"), P_, "task.priority")),
    P(Case("priority-float", create(priority=1.5), P_, "task.priority")),
    P(Case("priority-true", create(priority=True), P_, "task.priority")),
    P(Case("priority-10", create(priority=10), P_, "task.priority")),
    P(Case("priority-negative", create(priority=-1), P_, "task.priority")),
    P(Case("max_retries-negative", create(max_retries=-1), P_, "task.max_retries")),
    P(Case("max_retries-21", create(max_retries=21), P_, "task.max_retries")),
    P(Case("max_exec_timeout-0", create(max_exec_timeout=0), P_, "task.max_exec_timeout")),
    P(Case("max_exec_timeout-86401", create(max_exec_timeout=86401), P_, "task.max_exec_timeout")),
    P(Case("max_exec_timeout-string", create(max_exec_timeout="300"), P_, "task.max_exec_timeout")),
    P(Case("retry_backoff-negative", create(retry_backoff=-1), P_, "task.retry_backoff")),
    P(Case("restart_policy-x", create(restart_policy="x"), P_, "task.restart_policy")),
    P(Case("tags-33", create(tags=[f"t{i}" for i in range(33)]), P_, "task.tags")),
    P(Case("tags-65-char-tag", create(tags=["ok", "x" * 65]), P_, "task.tags[1]")),
    P(Case("tags-not-list", create(tags="a"), P_, "task.tags")),
    P(Case("tags-number-item", create(tags=[1]), P_, "task.tags[0]")),
    P(Case("description-4097", create(description="d" * 4097), P_, "task.description")),
    P(Case("description-number", create(description=5), P_, "task.description")),
    P(Case("meta-list", create(meta=[1]), P_, "task.meta")),
    P(Case("id-space", create(id="a b"), P_, "task.id")),
    P(Case("id-129-chars", create(id="x" * 129), P_, "task.id")),
    P(Case("id-empty", create(id=""), P_, "task.id")),
    P(Case("id-braces", create(id="a{b}"), P_, "task.id")),
    P(Case("id-number", create(id=5), P_, "task.id")),
    P(Case("run_at-tomorrow", create(run_at="tomorrow"), P_, "task.run_at")),
    P(Case("run_at-negative", create(run_at=-1), P_, "task.run_at")),
    P(Case("cron-bad", create(cron="bad cron"), P_, "task.cron")),
    P(Case("cron-6-fields", create(cron="* * * * * *"), P_, "task.cron")),
    P(Case("cron-minute-60", create(cron="60 * * * *"), P_, "task.cron")),
    P(Case("cron-number", create(cron=5), P_, "task.cron")),
    P(
        Case("cron-never-fires", create(cron="0 0 31 2 *"), P_, "task.cron"),
    ),
    P(Case("tz-mars", create(tz="Mars/Base"), P_, "task.tz")),
    P(Case("tz-empty", create(tz=""), P_, "task.tz")),
    P(Case("tz-absolute-path", create(tz="/etc/localtime"), P_, "task.tz")),
    P(Case("tz-number", create(tz=1), P_, "task.tz")),
    P(
        Case("tz-directory", create(tz="Europe"), P_, "task.tz"),
    ),
    P(
        Case("tz-too-long", create(tz="a" * 300), P_, "task.tz"),
    ),
    P(Case("next_task-bad-id", create(next_task="bad id!"), P_, "task.next_task")),
    P(Case("notify-yes", create(notify="yes"), P_, "task.notify")),
    P(Case("notify-1", create(notify=1), P_, "task.notify")),
    P(Case("system-string", create(system="no"), P_, "task.system")),
    P(Case("enabled-string", create(enabled="yes"), P_, "task.enabled")),
    P(Case("kws-list", create(kws=[1, 2]), P_, "task.kws")),
    P(Case("kws-string", create(kws="x"), P_, "task.kws")),
    P(Case("on_conflict-x", create(on_conflict="x"), P_, "on_conflict")),
    P(Case("on_conflict-null", create(on_conflict=None), P_, "on_conflict")),
]

COMMANDS = [
    P(Case("cmd-not-object", with_cmd("demo.add"), P_, C2)),
    P(Case("cmd-two-kinds", with_cmd({"method": "demo.add", "timer": 5}), P_, C2, reason="exactly one")),
    P(Case("cmd-three-kinds", with_cmd({"method": "demo.add", "timer": 5, "message": {}}), P_, C2)),
    P(Case("cmd-no-kind", with_cmd({"params": {"a": 1}}), P_, C2, reason="exactly one")),
    P(Case("cmd-empty", with_cmd({}), P_, C2)),
    P(Case("cmd-call-unknown-key", with_cmd({"method": "demo.add", "bogus": 1}), P_, f"{C2}.bogus")),
    P(Case("cmd-timer-unknown-key", with_cmd({"timer": 5, "timeout": 1}), P_, f"{C2}.timeout")),
    P(Case("cmd-message-unknown-key", with_cmd({"message": {}, "params": {}}), P_, f"{C2}.params")),
    P(Case("timer-0", with_cmd({"timer": 0}), P_, f"{C2}.timer")),
    P(Case("timer-negative", with_cmd({"timer": -5}), P_, f"{C2}.timer")),
    P(Case("timer-over-30-days", with_cmd({"timer": 30 * 86400 + 1}), P_, f"{C2}.timer")),
    P(Case("timer-string", with_cmd({"timer": "60"}), P_, f"{C2}.timer")),
    P(Case("timer-true", with_cmd({"timer": True}), P_, f"{C2}.timer")),
    P(Case("timer-first-command", create(commands=[{"timer": 0}]), P_, "task.commands[0].timer")),
    P(Case("message-not-object", with_cmd({"message": "x"}), P_, f"{C2}.message")),
    P(
        Case(
            "message-on_timeout-x", with_cmd({"message": {"on_timeout": "x"}}), P_, f"{C2}.message.on_timeout"
        )
    ),
    P(Case("message-timeout-negative", with_cmd({"message": {"timeout": -1}}), P_, f"{C2}.message.timeout")),
    P(Case("message-timeout-0", with_cmd({"message": {"timeout": 0}}), P_, f"{C2}.message.timeout")),
    P(Case("message-unknown-key", with_cmd({"message": {"wait": 5}}), P_, f"{C2}.message.wait")),
    P(Case("cmd-method-empty", with_cmd({"method": ""}), P_, f"{C2}.method")),
    P(Case("cmd-method-number", with_cmd({"method": 5}), P_, f"{C2}.method")),
    P(Case("call-params-list", with_cmd({"method": "demo.add", "params": [1, 2]}), P_, f"{C2}.params")),
    P(Case("call-params-string", with_cmd({"method": "demo.add", "params": "a"}), P_, f"{C2}.params")),
    P(Case("call-timeout-0", with_cmd({"method": "demo.add", "timeout": 0}), P_, f"{C2}.timeout")),
    P(Case("call-timeout-negative", with_cmd({"method": "demo.add", "timeout": -1}), P_, f"{C2}.timeout")),
    P(Case("call-timeout-string", with_cmd({"method": "demo.add", "timeout": "30"}), P_, f"{C2}.timeout")),
    P(
        Case(
            "template-unknown-root",
            with_cmd({"method": "demo.echo", "params": {"value": "{{ nope.x }}"}}),
            P_,
            f"{C2}.params.value",
            reason="nope",
        )
    ),
    P(
        Case(
            "template-nested-list",
            with_cmd({"method": "demo.echo", "params": {"value": {"b": ["ok", "x {{ results.x }} y"]}}}),
            P_,
            f"{C2}.params.value.b[1]",
        )
    ),
    P(
        Case(
            "template-unknown-task-field",
            with_cmd({"method": "demo.echo", "params": {"value": "{{ task.nope }}"}}),
            P_,
            f"{C2}.params.value",
        )
    ),
    P(
        Case(
            "template-bad-default",
            with_cmd({"method": "demo.echo", "params": {"value": "{{ kws.a ?? nope }}"}}),
            P_,
            f"{C2}.params.value",
        )
    ),
    P(
        Case(
            "template-key-with-colon",
            with_cmd({"method": "demo.echo", "params": {"a: b": "{{ nope }}"}}),
            P_,
            f"{C2}.params.a: b",
        ),
    ),
    P(
        Case(
            "if-bad-regex",
            with_cmd({"method": "demo.add", "if": {"kws.a": {"match": "("}}}),
            P_,
            f"{C2}.if.kws.a.match",
        )
    ),
    P(
        Case(
            "if-unknown-operator",
            with_cmd({"method": "demo.add", "if": {"kws.a": {"eq": 1, "bogus": 2}}}),
            P_,
            f"{C2}.if.kws.a",
            reason="operator",
        )
    ),
    P(Case("if-not-a-condition", with_cmd({"method": "demo.add", "if": "yes"}), P_, f"{C2}.if")),
    P(Case("if-all-not-list", with_cmd({"method": "demo.add", "if": {"all": "x"}}), P_, f"{C2}.if.all")),
    P(
        Case(
            "if-exists-not-bool",
            with_cmd({"method": "demo.add", "if": {"kws.a": {"exists": "yes"}}}),
            P_,
            f"{C2}.if.kws.a.exists",
        )
    ),
    P(Case("if-bad-root", with_cmd({"method": "demo.add", "if": {"nope.a": 1}}), P_, f"{C2}.if.nope.a")),
    P(
        Case(
            "if-bad-regex-in-any",
            with_cmd({"method": "demo.add", "if": {"any": [{"kws.a": 1}, {"kws.b": {"match": "[z-a]"}}]}}),
            P_,
            f"{C2}.if.any[1].kws.b.match",
        )
    ),
]

OTHER_METHODS = [
    P(Case("get-no-params", req("tasks.get"), P_, "id", reason="missing")),
    P(Case("get-missing-id", req("tasks.get", {"include_results": True}), P_, "id", reason="missing")),
    P(Case("get-bad-id", req("tasks.get", {"id": "a b"}), P_, "id")),
    P(Case("get-id-129", req("tasks.get", {"id": "x" * 129}), P_, "id")),
    P(Case("get-id-number", req("tasks.get", {"id": 5}), P_, "id")),
    P(
        Case(
            "get-include_results-yes",
            req("tasks.get", {"id": "a", "include_results": "yes"}),
            P_,
            "include_results",
        )
    ),
    P(
        Case(
            "get-unknown",
            req("tasks.get", {"id": "no-such-task"}),
            TASK_NOT_FOUND,
            data={"id": "no-such-task"},
        )
    ),
    P(Case("status-unknown", req("tasks.status", {"id": "no-such"}), TASK_NOT_FOUND, data={"id": "no-such"})),
    P(Case("attempts-unknown", req("tasks.attempts", {"id": "nope"}), TASK_NOT_FOUND, data={"id": "nope"})),
    P(
        Case(
            "send-unknown",
            req("tasks.send", {"id": "nope", "data": {"x": 1}}),
            TASK_NOT_FOUND,
            data={"id": "nope"},
        )
    ),
    P(Case("send-missing-id", req("tasks.send", {"data": 1}), P_, "id")),
    P(Case("send-bad-id", req("tasks.send", {"id": "a/b", "data": 1}), P_, "id")),
    P(Case("list-max_results-0", req("tasks.list", {"max_results": 0}), P_, "max_results")),
    P(Case("list-max_results-1001", req("tasks.list", {"max_results": 1001}), P_, "max_results")),
    P(Case("list-max_results-string", req("tasks.list", {"max_results": "10"}), P_, "max_results")),
    P(Case("list-sort-up", req("tasks.list", {"sort": "up"}), P_, "sort")),
    P(Case("list-status-bogus", req("tasks.list", {"status": "BOGUS"}), P_, "status")),
    P(Case("list-status-lower-case", req("tasks.list", {"status": "queued"}), P_, "status")),
    P(Case("list-app-bad", req("tasks.list", {"app": "Demo!"}), P_, "app")),
    P(Case("list-cursor-garbage", req("tasks.list", {"cursor": "!!!not a cursor"}), P_, "cursor")),
    P(Case("list-cursor-base64-junk", req("tasks.list", {"cursor": "aGVsbG8"}), P_, "cursor")),
    P(Case("list-cursor-negative-skip", req("tasks.list", {"cursor": "WzEsWy0xXV0"}), P_, "cursor")),
    P(Case("list-cursor-number", req("tasks.list", {"cursor": 5}), P_, "cursor")),
    # [0, [[0.0, 10**29]]]: an offset Redis cannot take; [0, [[NaN, 0]]]: a bound it refuses
    P(
        Case(
            "list-cursor-huge-skip",
            req("tasks.list", {"cursor": "WzAsIFtbMC4wLCAxMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDBdXV0"}),
            P_,
            "cursor",
        )
    ),  # noqa: E501
    P(Case("list-cursor-nan-score", req("tasks.list", {"cursor": "WzAsIFtbTmFOLCAwXV1d"}), P_, "cursor")),
    P(Case("list-include_results-1", req("tasks.list", {"include_results": 1}), P_, "include_results")),
    P(Case("cancel-no-ids", req("tasks.cancel", {"dry_run": False}), P_, "ids")),
    P(Case("cancel-ids-string", req("tasks.cancel", {"ids": "a", "dry_run": False}), P_, "ids")),
    P(Case("cancel-bad-id", req("tasks.cancel", {"ids": ["ok", "a b"], "dry_run": False}), P_, "ids[1]")),
    P(Case("cancel-dry_run-string", req("tasks.cancel", {"ids": ["a"], "dry_run": "no"}), P_, "dry_run")),
    # found by tests/test_hostile.py: a since Redis cannot take as a score or stream id (nan, inf, past
    # year 9999) was an internal error (notifications.list; tasks.list with nan); it is invalid now
    P(Case("list-since-nan", req("tasks.list", {"since": "nan"}), P_, "since")),
    P(Case("list-since-inf", req("tasks.list", {"since": "inf"}), P_, "since")),
    P(Case("list-since-after-9999", req("tasks.list", {"since": 1e12}), P_, "since")),
    P(Case("notifications-since-inf", req("notifications.list", {"since": "inf"}), P_, "since")),
    P(Case("notifications-since-1e308", req("notifications.list", {"since": 1e308}), P_, "since")),
    P(Case("cancel-since-nan", req("tasks.cancel", {"app": "demo", "since": "nan"}), P_, "since")),
]

NOTIFICATIONS = [
    P(Case("notification-bad-task", create(rid=OMIT, app="BAD"), None, id=None, http=204)),
    P(Case("notification-unknown-method", req("nope.nope", id=OMIT), None, id=None, http=204)),
    P(Case("notification-params-list", req("tasks.get", [1], id=OMIT), None, id=None, http=204)),
    P(Case("notification-unknown-task", req("tasks.send", {"id": "zz", "data": 1}, id=OMIT), None, http=204)),
    P(Case("notification-batch", [req("nope", id=OMIT), create(rid=OMIT, priority=99)], None, http=204)),
]

OVERSIZE = [
    P(
        Case(
            "body-over-1MiB",
            create(kws={"blob": "x" * (1 << 20)}),
            INVALID_REQUEST,
            "body",
            id=None,
            http=413,
        )
    ),
    P(Case("batch-101", [req("system.info", id=i) for i in range(101)], LIMIT_EXCEEDED, "batch", id=None)),
]

CASES = ENVELOPE + CREATE + COMMANDS + OTHER_METHODS + NOTIFICATIONS + OVERSIZE


def check_error(reply: Any, case: Case) -> None:
    assert isinstance(reply, dict), f"not a single JSON-RPC reply: {reply!r}"
    assert reply.get("jsonrpc") == "2.0", reply
    assert "id" in reply and reply["id"] == case.id, reply
    assert "result" not in reply, reply
    err = reply.get("error")
    assert isinstance(err, dict), reply
    assert err.get("code") == case.code, reply
    assert isinstance(err.get("message"), str) and err["message"], reply
    if case.field is not None:
        data = err.get("data")
        assert isinstance(data, dict), reply
        assert data.get("field") == case.field, reply
        assert isinstance(data.get("reason"), str) and data["reason"].strip(), reply
        if case.reason is not None:
            assert case.reason.lower() in data["reason"].lower(), reply
    elif case.data is not OMIT:
        assert err.get("data") == case.data, reply


@pytest.mark.parametrize("case", CASES)
async def test_bad_input(case: Case, server: Server, r: redis.asyncio.Redis) -> None:
    before = await keys_of(r, server.namespace)
    status, reply = await server.m.raw(case.encoded())
    assert status == case.http, (status, reply)
    if case.code is None:
        assert reply is None, reply
    else:
        check_error(reply, case)
    assert await keys_of(r, server.namespace) == before, "a rejected request wrote to Redis"


async def test_mixed_batch_answers_each_in_order(server: Server, r: redis.asyncio.Redis) -> None:
    before = await keys_of(r, server.namespace)
    batch = [
        req("system.info", id=1),
        create(rid=2, priority="x"),
        req("system.info", id=OMIT),  # a good notification: no reply
        req("nope.nope", id="three"),
        create(rid=OMIT, app="BAD"),  # a bad notification: no reply either
        req("tasks.get", {"id": "no-such-task"}, id=4),
        {"id": 5, "method": "system.info"},  # no "jsonrpc"
        "not a request",
        req("tasks.list", {"max_results": 1}, id=6.5),
        req("tasks.get", {"id": "x", "zz": 1}, id=None),
    ]
    status, reply = await server.m.raw(json.dumps(batch))
    assert status == 200, (status, reply)
    assert isinstance(reply, list), reply
    assert [x.get("id") for x in reply] == [1, 2, "three", 4, 5, None, 6.5, None], reply
    assert all(x.get("jsonrpc") == "2.0" for x in reply), reply
    info, bad_create, unknown, not_found, no_version, not_obj, listed, unknown_param = reply
    assert info["result"]["namespace"] == server.namespace, info
    assert "error" not in info
    assert bad_create["error"]["code"] == INVALID_PARAMS
    assert bad_create["error"]["data"]["field"] == "task.priority"
    assert unknown["error"]["code"] == METHOD_NOT_FOUND
    assert not_found["error"]["code"] == TASK_NOT_FOUND
    assert no_version["error"]["code"] == INVALID_REQUEST
    assert no_version["error"]["data"]["field"] == "jsonrpc"
    assert not_obj["error"]["code"] == INVALID_REQUEST
    assert not_obj["error"]["data"]["field"] == "request"
    assert listed["result"] == {"items": [], "next_cursor": None}, listed
    assert unknown_param["error"]["code"] == INVALID_PARAMS
    assert unknown_param["error"]["data"]["field"] == "zz"
    assert await keys_of(r, server.namespace) == before


async def _post_in_two_parts(m: ManagerProc, first: bytes, rest: bytes) -> tuple[int, Any]:
    """POST /rpc with chunked transfer encoding: `first`, then (once the server has answered a
    GET /healthz on another connection, so it has certainly received `first` alone) `rest`."""

    async def body() -> AsyncIterator[bytes]:
        yield first
        status, _ = await m.get("/healthz")
        assert status == 200
        yield rest

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(f"{m.url}/rpc", data=body(), headers={"Content-Type": "application/json"}) as resp,
    ):
        raw = await resp.read()
        try:
            return resp.status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return resp.status, raw


async def test_chunked_body_under_the_limit_is_read_whole(server: Server) -> None:
    body = json.dumps(req("system.info", id=1)).encode()
    status, reply = await _post_in_two_parts(server.m, body[:20], body[20:])
    assert status == 200, (status, reply)
    assert isinstance(reply, dict) and reply.get("result", {}).get("namespace") == server.namespace, reply


async def test_chunked_body_over_the_limit_is_413(server: Server, r: redis.asyncio.Redis) -> None:
    before = await keys_of(r, server.namespace)
    tail = json.dumps(create(kws={"a": 1})).encode()
    status, reply = await _post_in_two_parts(server.m, b" " * 600_000, b" " * 600_000 + tail)
    assert status == 413, (status, reply)
    assert reply["error"]["data"]["field"] == "body", reply
    assert await keys_of(r, server.namespace) == before


async def test_server_still_serves(server: Server, r: redis.asyncio.Redis) -> None:
    """Last in the module: after every bad request above, the manager answers normally."""
    m = server.m
    assert m.alive, m.log_tail()
    info = await m.rpc("system.info")
    assert info["namespace"] == server.namespace and info["version"]
    assert await keys_of(r, server.namespace) == set(), "the bad-input tests left keys behind"
    created = await m.rpc("tasks.create", {"task": task(id="after-the-table", priority=9)})
    assert created["id"] == "after-the-table" and created["priority"] == 9
    got = await m.rpc("tasks.get", {"id": "after-the-table"})
    assert got["id"] == "after-the-table" and got["app"] == "demo"
    assert got["commands"] == [GOOD_CMD]
    assert got["status"] in {"IDLE", "QUEUED"}
    assert any(k.endswith(":t:after-the-table") for k in await keys_of(r, server.namespace))
    status, _ = await m.get("/healthz")
    assert status == 200


def test_table_names_are_unique() -> None:
    names = [p.id for p in CASES]
    assert len(names) == len(set(names))
