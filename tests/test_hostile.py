"""Hostile input against a real manager and executor (issue 7).

`test_hostile_requests` sends over 10,000 generated requests (hypothesis, derandomized, so the
verdict is the same every run) to a manager process while a demo executor runs what gets accepted:
random JSON, wrong types for every param of every SPEC §7 method, deep nesting, huge strings,
unicode (surrogates, NUL, RTL), raw bytes and invalid UTF-8, batches (empty, over 100), template
bombs, regex bombs, odd task ids, oversize bodies, and valid tasks whose conditions or templates
only explode when the executor evaluates them.  Every answer must be HTTP 200 with a well-formed
JSON-RPC reply, 204 for notifications, or a 4xx (413 for an oversize body); never a 5xx, a dropped
connection, an internal error (-32603) or a reply slower than REPLY_WITHIN.  Afterwards the
namespace is read whole: no key or index entry names a task whose creation was refused, every
stored task is in the index of its status and `tasks.get` serves it, and the manager and the
executor still serve a plain task.

`test_regex_bomb_at_run_time` runs catastrophic patterns on the executor: each stage fails with
TEMPLATE_ERROR naming the regex time limit, and the executor goes on serving.

`test_create_many_conflict_leaves_no_partial_batch` (xfail) shows a partial write the fuzz can hit
only by chance, which the fuzz therefore avoids: see Hostile.send_all.

The one-line summary of the counts is printed at the end of the run, failed or not (`pytest -s` shows
it; pytest shows it with a failure), and kept in SUMMARY.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import msgspec
import redis.asyncio
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from stagewise.keys import Keys, member, split_member
from stagewise.manager.rpc import MAX_JSON_DEPTH
from stagewise.status import UNINDEXED
from stagewise.templates import MAX_REGEX_SECONDS
from tests.helpers import TERMINAL, Daemons, ManagerProc, RpcError, task_until, wait_for

BODY_LIMIT = 1 << 20  # the manager's default STAGEWISE_BODY_LIMIT
PER_EXAMPLE = 32  # requests per hypothesis example
EXAMPLES = 320  # 32 x 320 = 10,240 requests
IN_FLIGHT = 8
REPLY_WITHIN = 5.0  # seconds; a slower reply counts as a hang
KNOWN_CODES = {-32700, -32600, -32601, -32602, 1001, 1002, 1003, 1004, 1005}  # -32603 is a bug here
CREATES = ("tasks.create", "tasks.create_many")
OMIT: Any = object()

SUMMARY: dict[str, Any] = {}  # the counts of the last run of test_hostile_requests


# --------------------------------------------------------------------------- values

TRICKY = [
    "",
    " ",
    "\x00",
    "\u202e",  # right-to-left override
    "\u200f",
    "\ufeff",
    "\ud800",  # lone surrogates: not encodable as UTF-8
    "\udfff",
    "{",
    "}",
    "{{",
    "}}",
    "{ns:0}",
    ":",
    "/",
    "\\",
    ".",
    "..",
    "é",
    "\U0001f600",
    "\n",
    '"',
    "*",
    "?",
    "[",
    "$raw",
    "kws",
]

texts = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(TRICKY), max_size=5).map("".join),
    st.text(st.characters(exclude_categories=()), max_size=6),
)
BIG_NUMBERS = [2**63, -(2**63) - 1, 2**64, 10**40, -1, 0, 1e308, -1e308, 5e-324, -0.0, 1.5]
numbers = st.one_of(
    st.integers(-1000, 1000), st.integers(), st.floats(allow_nan=False), st.sampled_from(BIG_NUMBERS)
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(texts, ch, max_size=4), max_leaves=8
)
huge_strings = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["a", "é", "{", "\u202e", "\x00", "{{ kws }}"]),
    st.builds(lambda big, n: big or n, st.sampled_from([0] * 30 + [70_000, 130_000]), st.integers(1, 5000)),
)  # a huge string is rarely huge: 70,000 x "{{ kws }}" crosses the body limit


def nest(levels: int, leaf: Any, as_dict: bool) -> Any:
    for _ in range(levels):
        leaf = {"a": leaf} if as_dict else [leaf]
    return leaf


deep_values = st.builds(nest, st.integers(20, 400), scalars, st.booleans())
wild = st.one_of(json_values, json_values, json_values, huge_strings, deep_values)

ODD_IDS = [
    "",
    " ",
    "a b",
    "a/b",
    "a{b}",
    "{t}",
    "}{",
    "a:b",
    "::",
    "..",
    "-",
    "x" * 128,
    "x" * 129,
    "é",
    "a\x00b",
    "\u202eabc",
    "id\n",
    "a*",
    "a?b",
    "[x]",
    "x" * 10_000,
]
valid_ids = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-", min_size=1, max_size=128
)
task_ids = st.one_of(valid_ids, valid_ids, st.sampled_from(ODD_IDS), texts)
id_values = st.one_of(task_ids, task_ids, wild)

SINCE = ["inf", "-inf", "nan", "1e309", "", " ", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]
SINCE += ["2024-13-45", "now", "1" * 400, 1e308, -1e308, 10**30, -(10**30), -1, 2**63]


def cursor_of(doc_text: str) -> str:
    return base64.urlsafe_b64encode(doc_text.encode()).decode().rstrip("=")


CURSORS = [
    cursor_of(text)
    for text in [
        "[" * 3000 + "]" * 3000,
        "[0,[[NaN,0]]]",
        "[0,[[Infinity,0]]]",
        "[0,[[0,100000000000000000000000000000]]]",
        "[0,[[1e308,1]]]",
        '[0,[["x",1]]]',
        "[99,[]]",
        "[-1,[]]",
        "[true,[[null,0]]]",
        "[0,[[null,0],[null,0],[null,0],[null,0],[null,0],[null,0],[null,0],[null,0]]]",
        '{"a":1}',
        "null",
        "\xff\xfe",
    ]
] + ["", "=", "!!!", "a" * 4096, "a" * 4097]

NUMERIC = [0, -1, 1, 1000, 1001, 10_000, 10_001, 2**63, 1e308, -1e308, 0.5, True, "10"]


def special(name: str) -> st.SearchStrategy[Any]:
    """Values aimed at one param: its edge cases next to random JSON."""
    if name in ("id", "task_id", "next_task"):
        return id_values
    if name == "ids":
        return st.one_of(
            st.lists(id_values, max_size=6), st.builds(lambda i, n: [i] * n, valid_ids, st.integers(1, 1500))
        )
    if name == "since":
        return st.sampled_from(SINCE)
    if name == "cursor":
        return st.sampled_from(CURSORS)
    if name in ("max_results", "older_than"):
        return st.sampled_from(NUMERIC)
    if name in ("tags",):
        return st.lists(st.one_of(texts, huge_strings), max_size=40)
    if name in ("group", "app", "status", "sort", "from", "on_conflict"):
        return st.one_of(
            texts, huge_strings, st.sampled_from(["QUEUED", "queued", "demo", "asc", "first", "replace"])
        )
    return wild


# --------------------------------------------------------------------------- tasks

ANCHORS = ["anchor-wait", "anchor-done", "anchor-idle"]

BOMB_PATTERNS = [
    "(a|aa)+$",
    "(a|a)*$",
    "(.*a){12}$",
    "(a+)+$",
    "((a*)*)*b$",
    "(x+x+)+y",
    "^(\\w+\\s?)*$",
    "(a|a?)+$",
    "(?:" + "|".join("a" * i for i in range(1, 40)) + ")+$",
    "(a*)*[^a]{2}$",
]
UNROLL_BOMBS = ["x{4294967294}", "(?:x{1000}){1000}", "a{1000000,}", "((a{100}){100}){100}", "[ab]{99999}"]
BAD_REGEX = ["(", "[z-a]", "a{2,1}", "(?P<x>a)(?P<x>b)", "\\", "(?<=a+)b", "x" * 1001, "(" * 400 + ")" * 400]


def subject(n: int) -> str:
    return "a" * n + "b"


regex_bombs = st.one_of(
    st.sampled_from(BOMB_PATTERNS), st.sampled_from(UNROLL_BOMBS), st.sampled_from(BAD_REGEX)
)

template_bombs = st.one_of(
    st.builds(lambda n: "{{" * n, st.integers(1, 3000)),
    st.builds(lambda n: "{{ kws }}" * n, st.integers(1, 500)),
    st.builds(lambda n: "{{ kws." + ".".join(["a"] * n) + " }}", st.integers(1, 60)),
    st.builds(lambda n: "{{ kws." + "a" * n + " }}", st.integers(1, 6000)),
    st.builds(lambda n: "{{ kws.a ?? " + "[" * n + "]" * n + " }}", st.sampled_from([1, 900, 1500, 2000])),
    st.builds(lambda n: "{{ kws.a ?? " + '{"a":' * n + "1" + "}" * n + " }}", st.integers(1, 800)),
    st.builds(lambda n: ["{{ kws.x }}"] * n, st.integers(1, 5000)),
    st.builds(lambda n: ["{{" * 2048] * n, st.sampled_from([1, 50, 200])),  # unclosed: scanned once each
    st.builds(lambda n: "{{ {{ kws.a }} }}" * n, st.integers(1, 200)),
    st.builds(lambda n: "}}" * n + "{{", st.integers(1, 2000)),
    st.sampled_from(["{{ }}", "{{ results.-1 }}", "{{ results.99999999999999999999 }}", "{{ task.nope }}"]),
    st.sampled_from(["{{ kws.a ?? NaN }}", "{{ kws.a ?? 1e999 }}", "{{ kws.\u202e }}", "{{ kws.\x00 }}"]),
)


@st.composite
def conditions(draw: st.DrawFn) -> Any:
    path = draw(st.sampled_from(["kws.s", "kws.a", "results.-1", "task.id", "kws." + "a" * 5000, "nope"]))
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return {path: {"match": draw(regex_bombs)}}
    if kind == 1:
        return [{path: {"match": draw(regex_bombs)}}] * draw(st.integers(1, 300))
    if kind == 2:
        return (
            nest(draw(st.integers(1, 60)), {path: 1}, True)
            if draw(st.booleans())
            else {"not": {"not": {path: 1}}}
        )
    if kind == 3:
        return {"kws.s": {"match": "{{ kws.p }}"}}  # the pattern comes from the data
    if kind == 4:
        return {path: {draw(st.sampled_from(["eq", "gt", "in", "has", "exists", "bogus"])): draw(wild)}}
    if kind == 5:
        return {"any": [{path: {"match": p}} for p in draw(st.lists(regex_bombs, max_size=20))]}
    if kind == 6:
        return {path: draw(template_bombs)}
    return draw(wild)


@st.composite
def commands(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return {"method": "demo.add", "params": {"a": draw(st.one_of(numbers, template_bombs)), "b": 2}}
    if kind == 1:
        return {"method": "demo.echo", "params": {"value": draw(st.one_of(template_bombs, wild))}}
    if kind == 2:
        return {"method": "demo.add", "params": {"a": 1, "b": 2}, "if": draw(conditions())}
    if kind == 3:
        return {"timer": draw(st.sampled_from([0.05, 0, -1, 1e308, "1", 30 * 86400 + 1]))}
    if kind == 4:
        return {
            "message": draw(
                st.sampled_from([{}, {"timeout": 0.05, "on_timeout": "fail"}, {"timeout": -1}, []])
            )
        }
    if kind == 5:
        return {draw(texts): draw(wild)} if draw(st.booleans()) else draw(wild)
    return {"method": draw(st.one_of(texts, huge_strings)), "params": draw(st.one_of(st.none(), wild))}


TASK_FIELDS = [
    "id", "app", "commands", "kws", "tags", "group", "description", "meta", "run_at", "cron", "tz",
    "priority", "max_exec_timeout", "max_retries", "retry_backoff", "restart_policy", "next_task",
    "notify", "system", "enabled", "status", "results", "bogus",
]  # fmt: skip


@st.composite
def tasks(draw: st.DrawFn) -> Any:
    """A task document: a demo task with nasty commands, and often one field set to something odd."""
    t: dict[str, Any] = {
        "id": draw(task_ids),
        "app": "demo",
        "kws": {"s": subject(draw(st.integers(1, 3000))), "a": 1, "x": 1, "p": draw(regex_bombs)},
        "commands": draw(st.lists(commands(), min_size=1, max_size=3)),
    }
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(TASK_FIELDS))
        value = draw(special(name) if name in ("id", "next_task", "tags") else wild)
        t[name] = value
    if draw(st.integers(0, 9)) == 0:
        del t[draw(st.sampled_from(["id", "app", "commands"]))]
    return t


@st.composite
def runnable_bomb_tasks(draw: st.DrawFn) -> Any:
    """A valid demo task whose condition or templates explode only on the executor."""
    n = draw(st.integers(2000, 20_000))
    pattern = draw(st.sampled_from(BOMB_PATTERNS[:3] + UNROLL_BOMBS[:2]))
    cond = draw(
        st.sampled_from(
            [
                {"kws.s": {"match": "{{ kws.p }}"}},
                [{"kws.s": {"match": "{{ kws.p }}"}}] * 50,
                {"any": [{"kws.s": {"match": "x"}}, {"kws.s": {"match": "{{ kws.p }}"}}]},
            ]
        )
    )
    echo = {"method": "demo.echo", "params": {"value": "{{ kws.s }}" * draw(st.integers(1, 400))}}
    return {
        "id": draw(valid_ids),
        "app": "demo",
        "kws": {"s": subject(n), "p": pattern},
        "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}, "if": cond}, echo],
    }


# --------------------------------------------------------------------------- requests


class Req:
    """One HTTP request body (not a dataclass: hypothesis would print every byte of it)."""

    __slots__ = ("body", "kind")

    def __init__(self, kind: str, body: bytes) -> None:
        self.kind = kind
        self.body = body

    def __repr__(self) -> str:
        return f"Req({self.kind}, {len(self.body)} bytes: {self.body[:160]!r})"

    @property
    def doc(self) -> Any:
        """The request as the manager decodes it (msgspec is its parser); OMIT when it cannot."""
        try:
            return msgspec.json.decode(self.body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError):
            return OMIT


def encode(kind: str, doc: Any, ascii_only: bool = True) -> Req:
    """Lone surrogates go out as JSON escapes (ascii_only) or as invalid UTF-8; NaN as a bare NaN."""
    text = json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True)
    return Req(kind, text.encode("utf-8", "surrogatepass"))


def rpc(method: Any, params: Any = OMIT, rid: Any = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not OMIT:
        body["params"] = params
    if rid is not OMIT:
        body["id"] = rid
    return body


METHODS: dict[str, dict[str, Any]] = {  # §7: every method with a valid value for each param
    "tasks.create": {"task": {"id": "ok-1", "app": "demo", "commands": [{"method": "demo.add"}]}, "on_conflict": "ignore"},
    "tasks.create_many": {"tasks": [{"id": "cm-1", "app": "zz", "commands": [{"method": "zz.x"}]}], "group": "g1", "on_conflict": "ignore"},
    "tasks.get": {"id": "anchor-done", "include_results": True},
    "tasks.list": {"status": "FINISHED", "app": "demo", "tags": ["t"], "group": "g1", "since": 0, "cleaned": False,
                   "sort": "asc", "max_results": 10, "cursor": None, "include_results": False},
    "tasks.status": {"id": "anchor-wait"},
    "tasks.send": {"id": "anchor-wait", "data": {"k": 1}},
    "tasks.cancel": {"ids": ["anchor-idle"], "dry_run": True},
    "tasks.unlock": {"ids": ["anchor-idle"], "dry_run": True},
    "tasks.restart": {"ids": ["anchor-done"], "dry_run": True, "from": "first"},
    "tasks.delete": {"ids": ["anchor-done"], "dry_run": True},
    "tasks.clean": {"older_than": 3600, "dry_run": True},
    "tasks.attempts": {"id": "anchor-done"},
    "groups.get": {"group": "g1"},
    "executors.list": {},
    "notifications.list": {"task_id": "anchor-done", "since": 0, "max_results": 10},
    "notifications.ack": {"ids": ["0-1-1"]},
    "system.info": {},
}  # fmt: skip
FILTERS = ["status", "app", "tags", "group", "since", "cleaned", "max_results"]
for _batch in ("tasks.cancel", "tasks.unlock", "tasks.restart", "tasks.delete"):
    METHODS[_batch] = {**METHODS[_batch], **{f: OMIT for f in FILTERS}}
PARAM_NAMES = {m: [*ps, "bogus"] for m, ps in METHODS.items()}
request_ids = st.one_of(st.integers(0, 10**6), st.integers(0, 10**6), texts, st.none(), wild)


@st.composite
def wrong_param(draw: st.DrawFn) -> Req:
    """A §7 method with valid params but one, which gets a wrong or extreme value."""
    method = draw(st.sampled_from(sorted(METHODS)))
    params = {k: v for k, v in METHODS[method].items() if v is not OMIT and v is not None}
    name = draw(st.sampled_from(PARAM_NAMES[method]))
    params[name] = draw(st.one_of(special(name), wild))
    if name != "dry_run" and "dry_run" in METHODS[method] and draw(st.booleans()):
        params["dry_run"] = False  # batch operations that apply, not dry runs
    return encode(f"param:{method}", rpc(method, params, draw(request_ids)), draw(st.booleans()))


@st.composite
def random_envelope(draw: st.DrawFn) -> Req:
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 4)):
        doc["jsonrpc"] = draw(st.one_of(st.just("2.0"), st.just("2.0"), wild))
    if draw(st.integers(0, 4)):
        doc["method"] = draw(st.one_of(st.sampled_from(sorted(METHODS)), texts, wild))
    if draw(st.booleans()):
        doc["params"] = draw(wild)
    if draw(st.integers(0, 3)):
        doc["id"] = draw(request_ids)
    if draw(st.integers(0, 5)) == 0:
        doc[draw(texts)] = draw(wild)
    return encode("envelope", doc, draw(st.booleans()))


@st.composite
def create_req(draw: st.DrawFn) -> Req:
    on_conflict = draw(st.sampled_from(["error", "ignore", "replace", OMIT, OMIT]))
    params: dict[str, Any] = {"task": draw(tasks())}
    if on_conflict is not OMIT:
        params["on_conflict"] = on_conflict
    rid = (
        draw(st.one_of(st.integers(0, 10**6), st.just(OMIT)))
        if draw(st.integers(0, 9)) == 0
        else draw(st.integers(0, 10**6))
    )
    return encode("create", rpc("tasks.create", params, rid), draw(st.booleans()))


@st.composite
def create_many_req(draw: st.DrawFn) -> Req:
    batch = draw(st.lists(tasks(), min_size=1, max_size=4))
    if draw(st.integers(0, 3)) == 0:  # many small tasks, up to over the limit of 1000
        small = {"app": "zz", "commands": [{"method": "zz.x"}]}
        batch = [{**small, "id": f"many-{i}"} for i in range(draw(st.integers(1, 1001)))]
    params: dict[str, Any] = {"tasks": batch}
    if draw(st.booleans()):
        params["group"] = draw(special("group"))
    return encode("create_many", rpc("tasks.create_many", params, draw(st.integers(0, 10**6))))


@st.composite
def runnable_bomb_req(draw: st.DrawFn) -> Req:
    return encode(
        "runnable", rpc("tasks.create", {"task": draw(runnable_bomb_tasks())}, draw(st.integers(0, 10**6)))
    )


@st.composite
def raw_bytes(draw: st.DrawFn) -> Req:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return Req("bytes", draw(st.binary(max_size=64)))
    if kind == 1:  # invalid UTF-8 inside an otherwise good request
        bad = draw(
            st.sampled_from(
                [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]
            )
        )
        return Req(
            "bad-utf8", b'{"jsonrpc":"2.0","id":1,"method":"tasks.get","params":{"id":"' + bad + b'"}}'
        )
    if kind == 2:  # a good request cut short, or with a byte replaced
        good = json.dumps(rpc("tasks.get", {"id": "anchor-done"})).encode()
        at = draw(st.integers(0, len(good) - 1))
        if draw(st.booleans()):
            return Req("truncated", good[:at])
        return Req("mangled", good[:at] + draw(st.binary(min_size=1, max_size=2)) + good[at + 1 :])
    if kind == 3:  # deep nesting, beyond any parser's patience
        n = draw(st.integers(100, 200_000))
        return Req(
            "deep-json", b"[" * n + b"]" * n if draw(st.booleans()) else b'{"a":' * n + b"1" + b"}" * n
        )
    return Req(
        "whitespace",
        draw(st.sampled_from([b"", b" ", b"\n\t ", b"\x00", b"\xef\xbb\xbf{}", b"null", b"1e400"])),
    )


@st.composite
def deep_create(draw: st.DrawFn) -> Req:
    """A create whose kws, meta or params nest around MAX_JSON_DEPTH, or past what decoders manage."""
    n = draw(st.one_of(st.integers(30, 20_000), st.sampled_from([249, 250, 251, 900, 975, 980, 985, 990])))
    deep = "[" * n + "1" + "]" * n
    where = draw(st.sampled_from(["kws", "meta", "params"]))
    task = {
        "id": draw(valid_ids),
        "app": "demo",
        "commands": [{"method": "demo.echo", "params": {"value": "@"}}],
    }
    text = json.dumps(rpc("tasks.create", {"task": task}, 7))
    if where == "params":
        text = text.replace('"@"', deep)
    else:
        text = text.replace('"app"', f'"{where}": {{"d": {deep}}}, "app"', 1)
    return Req("deep-create", text.encode())


@st.composite
def batch_req(draw: st.DrawFn) -> Req:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return Req("batch-empty", b"[]")
    members = [
        r.doc
        for r in draw(
            st.lists(st.one_of(wrong_param(), random_envelope(), create_req()), min_size=1, max_size=6)
        )
    ]
    members = [m for m in members if m is not OMIT] or [rpc("system.info")]
    if kind == 1:  # over the limit: answered with one LIMIT_EXCEEDED, nothing run
        members = [m for m in members if len(json.dumps(m)) < 2000] or [rpc("system.info")]
        members = members * (101 // len(members) + draw(st.integers(1, 3)))
    elif kind == 2:  # exactly at the limit, distinct ids
        members = [rpc("tasks.status", {"id": f"nope-{i}"}, i) for i in range(100)]
    return encode("batch-over" if len(members) > 100 else "batch-ok", members)


@st.composite
def oversize(draw: st.DrawFn) -> Req:
    n = BODY_LIMIT + draw(st.integers(1, 4096))
    doc = rpc(
        "tasks.create",
        {"task": {"id": "big", "app": "demo", "commands": [{"method": "demo.add"}], "kws": {"b": ""}}},
    )
    text = json.dumps(doc)
    return Req("oversize", text.replace('"b": ""', '"b": "' + "x" * (n - len(text)) + '"').encode())


@st.composite
def near_limit(draw: st.DrawFn) -> Req:
    """Just under the body limit: parsed and validated whole, then refused by a bad field."""
    doc = rpc(
        "tasks.create",
        {"task": {"id": draw(valid_ids), "app": "Bad", "commands": [{"method": "x"}], "kws": {"b": ""}}},
    )
    text = json.dumps(doc)
    pad = BODY_LIMIT - len(text) - draw(st.integers(0, 1000))
    filler = draw(st.sampled_from(["x", "{{", "é"]))
    body = text.replace('"b": ""', '"b": "' + filler * (pad // len(filler.encode())) + '"')
    return Req("near-limit", body.encode())


@st.composite
def plain(draw: st.DrawFn) -> Req:
    method = draw(
        st.sampled_from(["system.info", "tasks.get", "tasks.status", "tasks.list", "executors.list"])
    )
    params = {"id": draw(st.sampled_from(ANCHORS))} if method in ("tasks.get", "tasks.status") else {}
    return encode("plain", rpc(method, params, draw(st.integers(0, 10**6))))


WEIGHTS: list[tuple[st.SearchStrategy[Req], int]] = [  # per 200 requests; hypothesis favours the first
    (wrong_param(), 50),
    (create_req(), 50),
    (random_envelope(), 20),
    (plain(), 20),
    (raw_bytes(), 12),
    (batch_req(), 12),
    (create_many_req(), 10),
    (st.builds(lambda d: encode("json-value", d), wild), 8),
    (deep_create(), 6),
    (runnable_bomb_req(), 2),
    (near_limit(), 1),
    (oversize(), 1),
]
requests = st.sampled_from([s for s, weight in WEIGHTS for _ in range(weight)]).flatmap(lambda s: s)


# --------------------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    """What was sent and answered; which task ids were accepted, refused, or are unknowable."""

    sent: int = 0
    calls: int = 0
    http: Counter[int] = field(default_factory=Counter)
    codes: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    results: int = 0
    server_errors: int = 0
    dropped: int = 0
    slowest: float = 0.0
    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)  # created by a notification: no answer tells
    anonymous: int = 0  # tasks without an id in such creates (they get a generated one)
    blind_delete: bool = False  # a delete (not a dry run) whose answer tells nothing
    deleted: set[str] = field(default_factory=set)
    runnable: set[str] = field(default_factory=set)

    def line(self) -> str:
        return (
            f"hostile: {self.sent} HTTP requests ({self.calls} JSON-RPC calls), "
            f"HTTP {dict(sorted(self.http.items()))}, JSON-RPC errors {dict(sorted(self.codes.items()))}, "
            f"results {self.results}, 5xx {self.server_errors}, dropped {self.dropped}, "
            f"slowest {self.slowest:.2f}s, tasks accepted {len(self.accepted)} refused {len(self.refused)}"
        )


def _valid_id(rid: Any) -> bool:
    return rid is None or isinstance(rid, str) or (isinstance(rid, int | float) and not isinstance(rid, bool))


def _mentioned(member: Any) -> list[str]:
    """Task ids a create / create_many request names."""
    params = member.get("params") if isinstance(member, dict) else None
    if not isinstance(params, dict):
        return []
    docs = [params.get("task")] if member.get("method") == "tasks.create" else params.get("tasks")
    if not isinstance(docs, list):
        return []
    return [d["id"] for d in docs if isinstance(d, dict) and isinstance(d.get("id"), str)]


def check_reply(reply: Any, expect_id: Any, ledger: Ledger, where: str) -> None:
    assert isinstance(reply, dict), f"{where}: not a JSON-RPC response: {reply!r:.300}"
    assert reply.get("jsonrpc") == "2.0", f"{where}: {reply!r:.300}"
    assert ("result" in reply) != ("error" in reply), f"{where}: {reply!r:.300}"
    assert set(reply) == {"jsonrpc", "id", "result" if "result" in reply else "error"}, (
        f"{where}: {reply!r:.300}"
    )
    if expect_id is not OMIT:
        assert reply["id"] == expect_id or reply["id"] is None, (
            f"{where}: id {reply['id']!r} for {expect_id!r}"
        )
    if "result" in reply:
        ledger.results += 1
        return
    err = reply["error"]
    assert isinstance(err, dict) and isinstance(err.get("message"), str), f"{where}: {reply!r:.300}"
    code = err.get("code")
    ledger.codes[code] += 1
    assert code in KNOWN_CODES, f"{where}: error code {code}: {reply!r:.600}"
    if code == -32602:
        data = err.get("data")
        assert isinstance(data, dict) and isinstance(data.get("field"), str), f"{where}: {reply!r:.300}"
        assert isinstance(data.get("reason"), str) and data["reason"], f"{where}: {reply!r:.300}"


def account(req: Req, status: int, raw: bytes, ledger: Ledger) -> None:
    """Check one answer and record what it says about the tasks the request named."""
    where = repr(req)
    ledger.http[status] += 1
    ledger.kinds[req.kind] += 1
    if status >= 500:
        ledger.server_errors += 1
        raise AssertionError(f"HTTP {status} for {where}: {raw[:500]!r}")
    doc = req.doc if len(req.body) <= BODY_LIMIT else OMIT
    members = doc if isinstance(doc, list) else [doc]
    ledger.calls += max(len(members), 1)
    if status == 413:
        assert len(req.body) > BODY_LIMIT, f"413 for a body under the limit: {where}"
        reply = json.loads(raw)
        assert reply["error"]["code"] == -32600 and reply["error"]["data"]["field"] == "body", reply
        ledger.codes[-32600] += 1
        for m in members:
            ledger.refused.update(_mentioned(m))
        return
    assert len(req.body) <= BODY_LIMIT, f"HTTP {status} for an oversize body: {where}"
    assert status in (200, 204) or 400 <= status < 500, f"HTTP {status} for {where}: {raw[:300]!r}"
    if status == 204:
        assert raw == b"", f"204 with a body: {raw[:200]!r}"
        assert doc is not OMIT and all(isinstance(m, dict) and "id" not in m for m in members), where
        for m in members:
            _unanswered(m, ledger)
        return
    if status != 200:
        return
    reply = json.loads(raw)  # must be JSON
    if doc is not OMIT and _depth(doc) > MAX_JSON_DEPTH:
        doc = OMIT  # refused as a parse error too
    if doc is OMIT:  # not JSON to the manager's parser
        check_reply(reply, None, ledger, where)
        assert reply["error"]["code"] == -32700, f"{where}: {reply!r:.300}"
        return
    if isinstance(doc, list) and doc and len(doc) <= 100:
        assert isinstance(reply, list) and 0 < len(reply) <= len(doc), f"{where}: {reply!r:.300}"
        ids = [m.get("id") for m in doc if isinstance(m, dict)]
        for r in reply:
            check_reply(r, OMIT, ledger, where)
            assert r["id"] is None or r["id"] in ids, f"{where}: reply id {r['id']!r} not asked for"
        replies = reply
    else:
        check_reply(reply, doc.get("id", None) if isinstance(doc, dict) else None, ledger, where)
        replies = [reply]
        if isinstance(doc, list):  # the batch as a whole was refused: nothing ran
            assert reply["error"]["code"] in (-32600, 1005), f"{where}: {reply!r:.300}"
            for m in members:
                ledger.refused.update(_mentioned(m))
            return
    ids = Counter(repr(m["id"]) for m in members if isinstance(m, dict) and "id" in m)
    for m in members:
        if not isinstance(m, dict) or m.get("method") not in (*CREATES, "tasks.delete"):
            continue
        mine = []
        if "id" in m and _valid_id(m["id"]) and m["id"] is not None and ids[repr(m["id"])] == 1:
            mine = [r for r in replies if r.get("id") == m["id"] and type(r.get("id")) is type(m["id"])]
        if len(mine) != 1:
            _unanswered(m, ledger)
        elif m["method"] == "tasks.delete":
            if isinstance(mine[0].get("result"), list):
                ledger.deleted.update(
                    b["id"] for b in mine[0]["result"] if isinstance(b, dict) and b["changed"]
                )
        elif "result" in mine[0]:
            res = mine[0]["result"]
            got = [res["id"]] if m["method"] == "tasks.create" else res["ids"]
            ledger.accepted.update(got)
            if req.kind in ("runnable", "corpus"):
                ledger.runnable.update(got)
        else:
            ledger.refused.update(_mentioned(m))


def _depth(doc: Any) -> int:
    """How deep a decoded JSON value nests (a scalar is 0)."""
    deepest = 0
    stack = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, dict | list))
    return deepest


def _unanswered(m: Any, ledger: Ledger) -> None:
    """A create or delete whose outcome no reply tells (a notification, an id shared in a batch)."""
    if not isinstance(m, dict) or not isinstance(m.get("params"), dict):
        return
    if m.get("method") == "tasks.delete":
        ledger.blind_delete |= m["params"].get("dry_run") is False
    elif m.get("method") in CREATES:
        ledger.unknown.update(_mentioned(m))
        docs = [m["params"].get("task")] if m["method"] == "tasks.create" else m["params"].get("tasks")
        if isinstance(docs, list):
            ledger.anonymous += sum(isinstance(d, dict) and not isinstance(d.get("id"), str) for d in docs)


class Hostile:
    def __init__(self, m: ManagerProc, session: aiohttp.ClientSession) -> None:
        self.m = m
        self.session = session
        self.ledger = Ledger()

    async def send(self, req: Req) -> None:
        self.ledger.sent += 1
        t0 = time.monotonic()
        try:
            async with (
                asyncio.timeout(REPLY_WITHIN),
                self.session.post(
                    f"{self.m.url}/rpc", data=req.body, headers={"Content-Type": "application/json"}
                ) as resp,
            ):
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise AssertionError(f"no answer within {REPLY_WITHIN}s to {req!r}") from None
        except aiohttp.ClientError as e:
            self.ledger.dropped += 1
            raise AssertionError(f"connection dropped ({e!r}) for {req!r}") from None
        self.ledger.slowest = max(self.ledger.slowest, time.monotonic() - t0)
        account(req, status, raw, self.ledger)

    async def send_all(self, reqs: Iterable[Req]) -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)
        solo = asyncio.Lock()

        async def one(req: Req) -> None:
            if b'"tasks.create_many"' not in req.body:
                async with gate:
                    await self.send(req)
                return
            # tasks.create_many is not atomic: a create of one of its ids that lands between its
            # existence check and its writes makes it answer TASK_EXISTS after writing the others
            # (a known gap of shared/store.py), so it goes out alone.
            async with solo:
                for _ in range(IN_FLIGHT):
                    await gate.acquire()
                try:
                    await self.send(req)
                finally:
                    for _ in range(IN_FLIGHT):
                        gate.release()

        outcomes = await asyncio.gather(*(one(r) for r in reqs), return_exceptions=True)
        for o in outcomes:
            if isinstance(o, BaseException):
                raise o


def _demo(tid: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "app": "demo",
        "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}],
        **fields,
    }


def _create(tid: str, rid: int, **fields: Any) -> Req:
    return encode("corpus", rpc("tasks.create", {"task": _demo(tid, **fields)}, rid))


def corpus() -> list[Req]:
    """Known bombs, sent first whatever hypothesis draws (its explicit example)."""
    echo = {"method": "demo.echo", "params": {}}
    out = [
        # ~1 MB of unclosed "{{" strings: each must be scanned once, not once per position
        _create("c-braces", 1, commands=[{**echo, "params": {"value": ["{{" * 2048] * 240}}]),
        # a long key above many items: locations are spelled only when reported
        _create("c-long-key", 2, commands=[{**echo, "params": {"k" * 400_000: [0] * 100_000}}]),
        # a template default nested past what json decodes
        _create(
            "c-deep-default",
            3,
            commands=[{**echo, "params": {"v": "{{ kws.a ?? " + "[" * 2000 + "]" * 2000 + " }}"}}],
        ),
        # patterns that regex would unroll into gigabytes when compiling
        *[
            _create(f"c-unroll-{i}", 10 + i, commands=[{"method": "demo.add", "if": {"kws.s": {"match": p}}}])
            for i, p in enumerate(UNROLL_BOMBS)
        ],
        # a catastrophic pattern, static, that the executor runs against a long subject
        _create(
            "c-bomb",
            20,
            kws={"s": subject(30_000)},
            commands=[
                {"method": "demo.add", "params": {"a": 1, "b": 2}, "if": {"kws.s": {"match": "(a|aa)+$"}}}
            ],
        ),
        *[
            encode("corpus", rpc(m, {"since": v}, 30))
            for m in ("tasks.list", "notifications.list")
            for v in SINCE
        ],
        *[encode("corpus", rpc("tasks.cancel", {"app": "demo", "since": v}, 31)) for v in SINCE[:5]],
        *[encode("corpus", rpc("tasks.list", {"cursor": c}, 32)) for c in CURSORS],
        *[encode("corpus", rpc("tasks.get", {"id": i}, 33)) for i in ODD_IDS],
        *[encode("corpus", rpc("tasks.create", {"task": _demo(i)}, 34)) for i in ODD_IDS],
        # nesting around MAX_JSON_DEPTH, and just under what the decoders manage
        *[
            Req(
                "corpus",
                json.dumps(rpc("tasks.create", {"task": _demo(f"c-deep-{n}", kws={"d": "@"})}, 40 + i))
                .replace('"@"', "[" * n + "]" * n)
                .encode(),
            )
            for i, n in enumerate([250, 251, 252, 253, 975, 980, 985])
        ],
        Req("corpus", b"[]"),
        encode("corpus", [rpc("system.info", {}, i) for i in range(101)]),
    ]
    return out


def run_property(hostile: Hostile, loop: asyncio.AbstractEventLoop) -> None:
    """The hypothesis run, in a worker thread: each example's requests go out on the test's loop."""

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(st.lists(requests, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    @example(corpus())
    def every_answer_is_well_formed(reqs: list[Req]) -> None:
        asyncio.run_coroutine_threadsafe(hostile.send_all(reqs), loop).result(timeout=300)

    every_answer_is_well_formed()


# --------------------------------------------------------------------------- the namespace afterwards


@dataclass
class Snapshot:
    hashes: set[str] = field(default_factory=set)
    named: dict[str, str] = field(default_factory=dict)  # task id -> a key or index naming it
    dangling: list[str] = field(default_factory=list)  # index members without a task hash


async def snapshot(r: redis.asyncio.Redis, namespace: str) -> Snapshot:
    k = Keys(namespace, 0)
    per_task = {
        k.task(""): "hash",
        k.attempts(""): "attempts",
        k.inbox(""): "inbox",
        k.task_notes(""): "notes",
    }
    index_prefix = k.idx_tag("")[: -len("t:")]
    stream_prefix = k.stream_of("")
    snap = Snapshot()
    indexes = []
    async for key in r.scan_iter(match=f"{k.prefix}:*", count=1000):
        for prefix, what in per_task.items():
            if key.startswith(prefix):
                tid = key[len(prefix) :]
                snap.named.setdefault(tid, key)
                if what == "hash":
                    snap.hashes.add(tid)
        if key.startswith(index_prefix):
            indexes.append(key)
        elif key in (k.due(), k.deadlines(), k.ended()):
            for member in await r.zrange(key, 0, -1):
                snap.named.setdefault(split_member(member)[1], key)
        elif key.startswith(stream_prefix) and await r.type(key) == "stream":
            for _, entry in await r.xrange(key):
                if "t" in entry:
                    snap.named.setdefault(entry["t"], key)
    for key in indexes:
        for tid in await r.zrange(key, 0, -1):
            snap.named.setdefault(tid, key)
            if not await r.exists(k.task(tid)):
                snap.dangling.append(f"{key} -> {tid}")
    return snap


async def check_namespace(m: ManagerProc, r: redis.asyncio.Redis, namespace: str, ledger: Ledger) -> None:
    snap = await snapshot(r, namespace)
    assert not snap.dangling, f"index entries without a task: {snap.dangling[:10]}"
    strays = {tid: key for tid, key in snap.named.items() if tid not in ledger.accepted | ledger.unknown}
    generated = {tid for tid in strays if re.fullmatch("[0-9a-f]{32}", tid)}  # ids the manager made up
    assert len(generated) <= ledger.anonymous, f"{len(generated)} tasks with generated ids"
    strays = {tid: key for tid, key in strays.items() if tid not in generated}
    assert not strays, (
        f"keys of tasks whose creation was refused or never answered: {list(strays.items())[:10]}"
    )
    leaked = ledger.refused - ledger.accepted - ledger.unknown
    assert not leaked & set(snap.named), f"refused creates left keys: {sorted(leaked & set(snap.named))[:10]}"
    missing = ledger.accepted - snap.hashes - ledger.deleted
    assert not missing or ledger.blind_delete, f"accepted tasks that are gone: {sorted(missing)[:10]}"
    k = Keys(namespace, 0)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def consistent(tid: str) -> None:
        async with gate:
            view = await m.rpc("tasks.get", {"id": tid})
            assert view["id"] == tid
            status = await r.hget(k.task(tid), "status")
            # a RUNNING task has no status index: it is in the deadlines zset
            key, mem = (k.deadlines(), member(view["app"], tid)) if status in UNINDEXED else (k.idx_status(status), tid)
            assert status and await r.zscore(key, mem) is not None, (tid, status)

    await asyncio.gather(*(consistent(tid) for tid in snap.hashes))


# --------------------------------------------------------------------------- the tests


async def start(daemons: Daemons) -> ManagerProc:
    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=4, STAGEWISE_GRACE="1")
    await wait_for(lambda: m.rpc("executors.list"), timeout=15, what="the demo executor to register")
    return m


async def plain_task_finishes(m: ManagerProc, tid: str) -> None:
    task = {
        "id": tid,
        "app": "demo",
        "priority": 9,
        "commands": [{"method": "demo.add", "params": {"a": 40, "b": 2}}],
    }
    await m.rpc("tasks.create", {"task": task})
    done = await task_until(m, tid, lambda v: v["status"] in TERMINAL, within=30, what=f"{tid} to finish")
    assert done["status"] == "FINISHED" and done["results"] == [42], done


async def test_hostile_requests(daemons: Daemons, r: redis.asyncio.Redis, namespace: str) -> None:
    m = await start(daemons)
    anchors = [
        {"id": "anchor-wait", "app": "demo", "commands": [{"message": {}}, {"message": {}}]},
        {
            "id": "anchor-done",
            "app": "demo",
            "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}],
        },
        {"id": "anchor-idle", "app": "demo", "run_at": 4e9, "commands": [{"method": "demo.add"}]},
    ]
    for t in anchors:
        await m.rpc("tasks.create", {"task": t})
    hostile = Hostile(m, daemons.session())
    hostile.ledger.accepted.update(t["id"] for t in anchors)
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(run_property, hostile, asyncio.get_running_loop())
    finally:
        ledger = hostile.ledger
        SUMMARY.clear()
        SUMMARY.update(
            line=ledger.line(),
            seconds=round(time.monotonic() - t0, 1),
            http=dict(ledger.http),
            codes=dict(ledger.codes),
            kinds=dict(ledger.kinds),
        )
        print(f"\n{ledger.line()} in {SUMMARY['seconds']}s")
    summary = ledger.line()
    assert ledger.sent >= 10_000, summary
    assert ledger.server_errors == 0 and ledger.dropped == 0, summary
    assert m.alive, f"the manager died: {summary}\n{m.log_tail()}"
    assert all(p.alive for p in daemons.procs), f"a daemon died: {summary}\n{daemons.log_tails()}"

    # It still serves: health, a plain request, a plain task through the executor.
    status, body = await m.get("/healthz")
    assert status == 200 and body["ok"] is True, summary

    async def nothing_held() -> bool:  # no request of the storm is left holding or awaiting a slot
        _, doc = await m.get("/healthz")
        return doc["requests"]["serving"] == 0 and doc["requests"]["waiting"] == 0

    await wait_for(nothing_held, timeout=10, what="the manager's request counts back to 0")
    assert (await m.rpc("system.info"))["namespace"] == namespace
    await plain_task_finishes(m, "after-the-storm")
    ledger.accepted.add("after-the-storm")

    # The bombs that ran on the executor ended, each in bounded time.
    async def outcome(tid: str) -> str | None:
        try:
            v = await m.rpc("tasks.get", {"id": tid, "include_results": False})
        except RpcError as e:
            if e.code == 1001 and ledger.blind_delete:
                return "deleted"
            raise
        if v["status"] in ("WAITING", "IDLE"):
            # the runnable tasks have call stages only and no run_at: the id holds another task
            # now (a later create of the storm replaced the ended one), not this check's to run
            return "replaced"
        if v["status"] not in TERMINAL:
            return None
        err = v["error"] or {}
        timed_out = "regex took longer" in err.get("message", "")
        return f"{v['status']} {err.get('code', '')}".strip() + (" (regex time)" if timed_out else "")

    outcomes: Counter[str] = Counter()
    for tid in sorted(ledger.runnable - ledger.deleted):
        outcomes[await wait_for(partial(outcome, tid), timeout=30, what=f"bomb task {tid} to end")] += 1
    SUMMARY["run_time"] = dict(outcomes)
    print(f"run on the executor: {dict(sorted(outcomes.items()))}")
    assert await outcome("c-bomb") == "FAILED TEMPLATE_ERROR (regex time)", SUMMARY
    await check_namespace(m, r, namespace, ledger)


async def test_regex_bomb_at_run_time(daemons: Daemons) -> None:
    """Catastrophic patterns reach the executor through the data (kws.p), past the manager's
    checks: the stage fails with TEMPLATE_ERROR naming the time limit, in bounded time."""
    m = await start(daemons)
    ids = []
    for n, pattern in enumerate(["(a|aa)+$", "(.*a){12}$", "(x+x+)+y", "(a|a)*$"]):
        for shape in ("single", "many"):
            match = {"kws.s": {"match": "{{ kws.p }}"}}
            cond: Any = match if shape == "single" else [match] * 100  # 100 searches share one budget
            tid = f"bomb-{n}-{shape}"
            ids.append(tid)
            task = {
                "id": tid,
                "app": "demo",
                "kws": {"s": ("x" if "x" in pattern else "a") * 30_000 + "!", "p": pattern},
                "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}, "if": cond}],
            }
            await m.rpc("tasks.create", {"task": task})
    unrolled = {"id": "bomb-unroll", "app": "demo", "kws": {"s": "x", "p": "x{4294967294}"}}
    unrolled["commands"] = [
        {"method": "demo.add", "params": {"a": 1, "b": 2}, "if": {"kws.s": {"match": "{{ kws.p }}"}}}
    ]
    await m.rpc("tasks.create", {"task": unrolled})
    for tid in ids:
        done = await task_until(m, tid, lambda v: v["status"] in TERMINAL, within=30, what=f"{tid} to end")
        assert done["status"] == "FAILED", done
        assert done["error"]["code"] == "TEMPLATE_ERROR", done
        assert f"regex took longer than {MAX_REGEX_SECONDS} s" in done["error"]["message"], done
        assert "kws.s" in done["error"]["message"], done
    done = await task_until(m, "bomb-unroll", lambda v: v["status"] in TERMINAL, within=30)
    assert done["status"] == "FAILED" and done["error"]["code"] == "TEMPLATE_ERROR", done
    assert "regex too large" in done["error"]["message"], done
    await plain_task_finishes(m, "after-the-bombs")
    assert all(p.alive for p in daemons.procs), daemons.log_tails()


async def test_create_many_conflict_leaves_no_partial_batch(
    daemons: Daemons, r: redis.asyncio.Redis, namespace: str
) -> None:
    """create_many and a create of one of its ids, at once: exactly one of them gets the id.  When
    create_many loses (TASK_EXISTS), none of its other tasks may exist: it is stored whole or not
    at all, whichever way the two interleave."""
    m = await daemons.manager()
    ids = [f"cm-{i}" for i in range(800)]
    batch = [{"id": i, "app": "zz", "commands": [{"method": "zz.x"}]} for i in ids]
    many, single = await asyncio.gather(
        m.rpc("tasks.create_many", {"tasks": batch}),
        m.rpc("tasks.create", {"task": batch[700]}),
        return_exceptions=True,
    )
    k = Keys(namespace, 0)
    if isinstance(many, RpcError):
        assert many.code == 1002, many
        assert not isinstance(single, BaseException), single
        made = [i for i in ids if i != ids[700] and await r.exists(k.task(i))]
        assert not made, f"create_many answered TASK_EXISTS, yet created {len(made)} of its tasks"
    else:
        assert isinstance(single, RpcError) and single.code == 1002, single
        assert all([await r.exists(k.task(i)) for i in ids])
