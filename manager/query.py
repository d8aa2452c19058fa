"""tasks.list filters served from Redis indexes (never a scan of all tasks).

Every index is a ZSET scored by `updated`.  A query reads the most selective indexes that
cover part of its filters (a tag, the group, app+status, status), merging them in order from
the cursor on, and checks the remaining filters on the few fields it fetches per candidate.

Pagination is keyset: per index read (a lane), the cursor keeps the last score consumed and how many
members at exactly that score were consumed (members with equal scores come in a fixed
order), so pages never repeat or skip an item, across partitions too.

RUNNING has no status index (stagewise.status.UNINDEXED): its lane is the partition's deadlines
zset, which holds exactly the RUNNING tasks, read whole, with each task's `updated`, and ordered
here as a status index would be (by `updated`, then id).  It holds at most as many tasks as the
executors run at once.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stagewise import errors
from stagewise.keys import Keys, split_member
from stagewise.status import UNINDEXED, Status

CHUNK = 200  # candidates read per index per round trip
SCAN_BUDGET = 20_000  # candidates looked at per page before answering with what was found


@dataclass(frozen=True)
class Running:
    """The lane of the RUNNING tasks of one partition (of one app, or all): in place of a status
    index key."""

    deadlines: str
    app: str | None = None


Source = str | Running  # what a lane reads: an index key, or the RUNNING tasks


def status_source(k: Keys, status: str, app: str | None = None) -> Source:
    if status in UNINDEXED:
        return Running(k.deadlines(), app)
    return k.idx_app_status(app, status) if app else k.idx_status(status)


def running_count(deadlines: list[str]) -> Counter[str]:
    """How many tasks of each app are RUNNING, from the members of a partition's deadlines zset
    (ZRANGE 0 -1): /metrics reads them in its own pipeline, apps.list through running_by_app."""
    return Counter(split_member(m)[0] for m in deadlines)


async def running_by_app(r: Any, parts: list[Keys]) -> list[Counter[str]]:
    """Per partition, how many tasks of each app are RUNNING (apps.list)."""
    pipe = r.pipeline(transaction=False)
    for k in parts:
        pipe.zrange(k.deadlines(), 0, -1)
    return [running_count(got) for got in await pipe.execute()]


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    app: str | None = None
    tags: tuple[str, ...] = ()
    group: str | None = None
    since: float | None = None  # updated >= since
    cleaned: bool | None = None
    parent: str | None = None  # fan-out (SPEC §3a): children of this task

    def options(self, k: Keys) -> list[tuple[list[Source], bool]]:
        """The ways to serve this query from one partition's indexes: (index keys to merge,
        True when they alone answer every filter but `since`).  Without a status filter the
        status indexes (and the RUNNING lane) are merged: a task sits in exactly one of them, so no
        index has to be kept for "all tasks"."""
        out: list[tuple[list[Source], bool]] = []
        only_tags = not (self.status or self.app or self.group or self.parent or self.cleaned is not None)
        for tag in self.tags:
            out.append(([k.idx_tag(tag)], only_tags and len(self.tags) == 1))
        if self.group:
            out.append(
                (
                    [k.idx_group(self.group)],
                    not (self.tags or self.status or self.app or self.parent or self.cleaned is not None),
                )
            )
        if self.parent:
            out.append(
                (
                    [k.idx_parent(self.parent)],
                    not (self.tags or self.group or self.status or self.app or self.cleaned is not None),
                )
            )
        statuses = [self.status] if self.status else list(Status)
        exact = not (self.tags or self.group or self.parent) and self.cleaned is None
        out.append(([status_source(k, s, self.app) for s in statuses], exact))
        return out

    def accepts(self, h: dict[str, Any]) -> bool:
        if not h.get("status"):
            return False  # deleted between the index read and now
        if self.status and h["status"] != self.status:
            return False
        if self.app and h["app"] != self.app:
            return False
        if self.group and h["group"] != self.group:
            return False
        if self.cleaned is not None and (h["cleaned"] == "1") != self.cleaned:
            return False
        if self.parent and h["parent"] != self.parent:
            return False
        if self.tags:
            have = set(json.loads(h["tags"])) if h.get("tags") else set()
            if not set(self.tags) <= have:
                return False
        return True


FIELDS = ("status", "app", "group", "cleaned", "tags", "parent")


@dataclass
class Position:
    score: float | None = None
    skip: int = 0

    def consume(self, score: float) -> None:
        if score == self.score:
            self.skip += 1
        else:
            self.score, self.skip = score, 1


@dataclass
class _Lane:
    k: Keys
    key: Source
    pos: Position
    buf: list[tuple[str, float, bool]] = field(default_factory=list)  # member, score, matches
    done: bool = False


async def scan(
    r: Any,
    parts: list[Keys],
    f: Filters,
    desc: bool,
    limit: int,
    cursor: str | None,
    budget: int = SCAN_BUDGET,
) -> tuple[list[str], str | None]:
    """Ids of up to `limit` tasks matching `f`, in `updated` order, and the next cursor (None at
    the end).  Answers early (with a cursor) after `budget` candidates."""
    if cursor:
        choice, positions = decode_cursor(cursor)
    else:
        choice, positions = await _choose(r, parts, f), None
    options = [f.options(k) for k in parts]
    if not 0 <= choice < len(options[0]):
        raise errors.invalid_params("cursor", "not a cursor returned by tasks.list")
    exact = options[0][choice][1]
    plan = [(k, key) for k, opts in zip(parts, options, strict=True) for key in opts[choice][0]]
    if positions is None:
        positions = [Position() for _ in plan]
    elif len(positions) != len(plan):
        raise errors.invalid_params("cursor", "not a cursor returned by tasks.list")
    lanes = [_Lane(k, key, pos) for (k, key), pos in zip(plan, positions, strict=True)]
    out: list[str] = []
    seen = 0
    while len(out) < limit and seen < budget:
        await _fill(r, lanes, desc, f, exact)
        live = [ln for ln in lanes if ln.buf]
        if not live:
            return out, None
        pick = (max if desc else min)(live, key=lambda ln: (ln.buf[0][1], ln.buf[0][0]))
        member, score, ok = pick.buf.pop(0)
        pick.pos.consume(score)
        seen += 1
        if ok:
            out.append(member)
    if all(ln.done and not ln.buf for ln in lanes):
        return out, None
    return out, encode_cursor(choice, [ln.pos for ln in lanes])


async def _choose(r: Any, parts: list[Keys], f: Filters) -> int:
    """The option whose indexes hold the fewest members: with a tag and a status, the smaller
    of the two is read and the other checked, so a rare combination is found quickly."""
    options = [f.options(k) for k in parts]
    if len(options[0]) == 1:
        return 0
    pipe = r.pipeline(transaction=False)
    for opts in options:
        for keys, _ in opts:
            for key in keys:
                pipe.zcard(key.deadlines if isinstance(key, Running) else key)
    sizes = iter(await pipe.execute())
    totals = [0] * len(options[0])
    for opts in options:
        for n, (keys, _) in enumerate(opts):
            totals[n] += sum(next(sizes) for _ in keys)
    return min(range(len(totals)), key=lambda n: (totals[n], n))


async def _fill(r: Any, lanes: list[_Lane], desc: bool, f: Filters, exact: bool) -> None:
    """Refills the empty lanes: one pipelined index read, and (when the index does not answer
    every filter) one pipelined read of the candidates' filter fields."""
    need = [ln for ln in lanes if not ln.buf and not ln.done]
    if not need:
        return
    bounds = []
    for ln in need:
        lo = -math.inf if f.since is None else f.since
        hi = math.inf
        start = 0
        if ln.pos.score is not None:
            start = ln.pos.skip
            if desc:
                hi = ln.pos.score
            else:
                lo = ln.pos.score
        bounds.append((lo, hi, start))
    running = await _running_rows(r, [ln for ln in need if isinstance(ln.key, Running)])
    pipe = r.pipeline(transaction=False)
    for ln, (lo, hi, start) in zip(need, bounds, strict=True):
        if isinstance(ln.key, Running):
            continue
        if desc:
            pipe.zrevrangebyscore(ln.key, _bound(hi), _bound(lo), start=start, num=CHUNK, withscores=True)
        else:
            pipe.zrangebyscore(ln.key, _bound(lo), _bound(hi), start=start, num=CHUNK, withscores=True)
    got = iter(await pipe.execute())
    for ln, (lo, hi, start) in zip(need, bounds, strict=True):
        if isinstance(ln.key, Running):
            # what ZRANGEBYSCORE lo hi LIMIT start CHUNK would answer on an index of them
            rows = [(m, s) for m, s in running[id(ln)] if lo <= s <= hi]
            rows.sort(key=lambda x: (x[1], x[0]), reverse=desc)
            rows = rows[start : start + CHUNK]
        else:
            rows = next(got)
        ln.done = len(rows) < CHUNK
        ln.buf = [(m, float(s), True) for m, s in rows]
    if exact:
        return
    pipe = r.pipeline(transaction=False)
    for ln in need:
        for m, _, _ in ln.buf:
            pipe.hmget(ln.k.task(m), FIELDS)
    fields = iter(await pipe.execute())
    for ln in need:
        ln.buf = [(m, s, f.accepts(dict(zip(FIELDS, next(fields), strict=True)))) for m, s, _ in ln.buf]


def _bound(x: float) -> str:
    return "-inf" if x == -math.inf else "+inf" if x == math.inf else repr(x)


async def _running_rows(r: Any, lanes: list[_Lane]) -> dict[int, list[tuple[str, float]]]:
    """For each lane of RUNNING tasks: (id, updated) of every task of its deadlines zset (of its
    app) that is RUNNING still."""
    out: dict[int, list[tuple[str, float]]] = {}
    if not lanes:
        return out
    pipe = r.pipeline(transaction=False)
    for ln in lanes:
        pipe.zrange(ln.k.deadlines(), 0, -1)
    ids: list[list[str]] = []
    for ln, members in zip(lanes, await pipe.execute(), strict=True):
        app = ln.key.app if isinstance(ln.key, Running) else None
        ids.append([tid for a, tid in map(split_member, members) if app is None or a == app])
    pipe = r.pipeline(transaction=False)
    for ln, tids in zip(lanes, ids, strict=True):
        for tid in tids:
            pipe.hmget(ln.k.task(tid), "status", "updated")
    got = iter(await pipe.execute())
    for ln, tids in zip(lanes, ids, strict=True):
        rows = []
        for tid in tids:
            status, updated = next(got)
            if status == Status.RUNNING and updated:
                rows.append((tid, float(updated)))
        out[id(ln)] = rows
    return out


def encode_cursor(choice: int, positions: list[Position]) -> str:
    raw = json.dumps([choice, [[p.score, p.skip] for p in positions]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_SKIP = 2**53  # a LIMIT offset Redis takes; a real cursor skips at most the ties of one score


def decode_cursor(cursor: str) -> tuple[int, list[Position]]:
    try:
        choice, raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(choice, int) or not isinstance(raw, list):
            raise ValueError
        out = []
        for score, skip in raw:
            if score is not None and not (isinstance(score, int | float) and math.isfinite(score)):
                raise ValueError  # json.loads takes NaN and Infinity, which Redis refuses as a bound
            if not isinstance(skip, int) or not 0 <= skip <= MAX_SKIP:
                raise ValueError
            out.append(Position(None if score is None else float(score), skip))
        return choice, out
    except (ValueError, TypeError):
        raise errors.invalid_params("cursor", "not a cursor returned by tasks.list") from None
