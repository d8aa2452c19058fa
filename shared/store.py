"""Redis-facing operations on tasks, shared by the manager and the executor.

Every state change is one Lua script (shared/scripts); this module builds their KEYS and
ARGV from shared.keys and maps their return codes to results or RpcErrors, in one place.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import msgspec
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from shared import errors
from shared.config import Settings
from shared.keys import GROUP, Keys, member, parse_stream_name, partition_of, stream_name
from shared.models import Task
from shared.policy import next_cron
from shared.scripting import Scripts
from shared.status import Status

_TIMES = ("created", "updated", "queued_at", "next_run", "wait_deadline", "exec_deadline")


def new_job_id() -> str:
    return uuid.uuid4().hex


def _num(v: str | None) -> float | None:
    return float(v) if v else None


def _b(v: str | None) -> bool:
    return v == "1"


class Store:
    def __init__(self, client: aredis.Redis, settings: Settings) -> None:
        # redis-py's return types are unions over decode modes; we always decode, so Any.
        self.r: Any = client
        self.settings = settings
        self.scripts = Scripts(client)
        self.parts = [Keys(settings.namespace, p) for p in range(settings.partitions)]

    def keys(self, task_id: str) -> Keys:
        return self.parts[partition_of(task_id, len(self.parts))]

    # ------------------------------------------------------------------ create / read
    def _fields(self, task: Task) -> list[Any]:
        d = task.doc
        doc = msgspec.to_builtins(d)
        doc["id"] = task.id
        kws = doc.pop("kws")
        return [
            "doc",
            json.dumps(doc, separators=(",", ":")),
            "kws",
            json.dumps(kws, separators=(",", ":")),
            "plan",
            json.dumps(task.plan(), separators=(",", ":")),
            "stages",
            len(task.commands),
            "job_id",
            new_job_id(),
            "attempt",
            0,
            "retries",
            0,
            "interruptions",
            0,
            "exec_used",
            0,
            "max_exec",
            d.max_exec_timeout,
            "max_retries",
            d.max_retries,
            "restart_policy",
            d.restart_policy,
            "enabled",
            int(d.enabled),
            "notify",
            int(d.notify),
            "system",
            int(d.system),
            "priority",
            d.priority,
            "group",
            d.group or "",
            "next_task",
            d.next_task or "",
            "cron",
            d.cron or "",
            "tz",
            d.tz,
            "cleaned",
            0,
            "executor_id",
            "",
            "lease",
            "",
            "error",
            "",
            "exit_code",
            "",
            "queued_at",
            "",
            "wait_deadline",
            "",
            "exec_deadline",
            "",
        ]

    async def create(self, task: Task, on_conflict: str = "error", now: float | None = None) -> str:
        """Stores a validated task; returns its status.  Raises TASK_EXISTS / INVALID_TRANSITION."""
        d, k = task.doc, self.keys(task.id)
        due_at: float | str = ""
        if d.cron:
            import time

            due_at = next_cron(d.cron, d.tz, now if now is not None else time.time())
        elif d.run_at is not None:
            due_at = d.run_at
        res = await self.scripts.run(
            "create",
            [
                k.task(task.id),
                k.stream(d.app, d.priority),
                k.due(),
                k.apps(),
                k.attempts(task.id),
                k.inbox(task.id),
            ],
            [
                k.prefix,
                task.id,
                d.app,
                on_conflict,
                due_at,
                int(d.enabled),
                stream_name(d.app, d.priority),
                *self._fields(task),
            ],
        )
        code = res[0]
        if code == "CREATED":
            return str(res[1])
        if code == "IGNORED":
            return ""
        if code == "EXISTS":
            raise errors.RpcError(errors.TASK_EXISTS, f"task {task.id!r} exists", {"id": task.id})
        raise errors.invalid_transition(res[1], Status.IDLE)

    async def raw(self, task_id: str) -> dict[str, str] | None:
        h = await self.r.hgetall(self.keys(task_id).task(task_id))
        return h or None

    async def get(self, task_id: str, include_results: bool = True) -> dict[str, Any]:
        h = await self.raw(task_id)
        if h is None:
            raise errors.not_found(task_id)
        return view(h, include_results)

    async def views(self, ids: list[str], include_results: bool) -> list[dict[str, Any]]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys(i).task(i))
        return [view(h, include_results) for h in await pipe.execute() if h]

    # ------------------------------------------------------------------ messages
    async def send(self, task_id: str, data: Any) -> None:
        k = self.keys(task_id)
        res = await self.scripts.run(
            "send",
            [k.task(task_id), k.inbox(task_id), k.due()],
            [k.prefix, task_id, json.dumps(data, separators=(",", ":"))],
        )
        if res[0] == "NOT_FOUND":
            raise errors.not_found(task_id)
        if res[0] == "NOT_WAITING":
            raise errors.RpcError(
                errors.NOT_WAITING_FOR_MESSAGE,
                f"task {task_id!r} ({res[1]}) has no message stage ahead to take the message",
                {"id": task_id, "status": res[1]},
            )

    # ------------------------------------------------------------------ listing
    def _index(self, k: Keys, status: str | None, app: str | None) -> str:
        if status and app:
            return k.idx_app_status(app, status)
        if status:
            return k.idx_status(status)
        if app:
            return k.idx_app(app)
        return k.idx_all()

    async def list_tasks(
        self,
        status: str | None,
        app: str | None,
        sort: str,
        max_results: int,
        cursor: str | None,
        include_results: bool,
    ) -> dict[str, Any]:
        """Keyset pagination over the `updated` indexes of every partition, merged.  The cursor
        holds the last score and, per partition, how many items at exactly that score were
        already returned (members with equal scores come in a fixed order)."""
        desc = sort == "desc"
        score, skips = (
            (None, [0] * len(self.parts)) if not cursor else _decode_cursor(cursor, len(self.parts))
        )
        pipe = self.r.pipeline(transaction=False)
        for i, k in enumerate(self.parts):
            key = self._index(k, status, app)
            hi = "+inf" if score is None else repr(score)
            lo = "-inf" if score is None else repr(score)
            if desc:
                pipe.zrevrangebyscore(key, hi, "-inf", start=skips[i], num=max_results + 1, withscores=True)
            else:
                pipe.zrangebyscore(key, lo, "+inf", start=skips[i], num=max_results + 1, withscores=True)
        rows = [(s, m, p) for p, got in enumerate(await pipe.execute()) for m, s in got]
        rows.sort(key=lambda x: (x[0], x[1]), reverse=desc)
        page, more = rows[:max_results], len(rows) > max_results
        next_cursor = None
        if more and page:
            last = page[-1][0]
            new_skips = [(skips[p] if score == last else 0) for p in range(len(self.parts))]
            for s, _, p in page:
                if s == last:
                    new_skips[p] += 1
            next_cursor = _encode_cursor(last, new_skips)
        items = await self.views([m for _, m, _ in page], include_results)
        return {"items": items, "next_cursor": next_cursor}

    # ------------------------------------------------------------------ batch operations
    async def cancel(self, ids: list[str], dry_run: bool) -> list[dict[str, Any]]:
        """tasks.cancel: one BatchResult per id; a bad id never fails the batch."""
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            k = self.keys(i)
            await self.scripts.queue(pipe, "cancel", [k.task(i), k.due()], [k.prefix, i, int(dry_run)])
        out = []
        for i, res in zip(ids, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(res, Exception):
                out.append({"id": i, "status": None, "changed": False, "error": f"internal: {res}"})
            elif res[0] == "NOT_FOUND":
                out.append({"id": i, "status": None, "changed": False, "error": "TASK_NOT_FOUND"})
            else:
                out.append({"id": i, "status": res[0], "changed": res[1] == "1", "error": res[2] or None})
        return out

    # ------------------------------------------------------------------ attempts, executors
    async def attempts(self, task_id: str) -> list[dict[str, Any]]:
        k = self.keys(task_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(k.task(task_id))
        pipe.lrange(k.attempts(task_id), 0, -1)
        exists, rows = await pipe.execute()
        if not exists:
            raise errors.not_found(task_id)
        return [json.loads(r) for r in rows]

    async def executors(self) -> list[dict[str, Any]]:
        """Live executors (registered and not yet reaped), with their running count."""
        out: dict[str, dict[str, Any]] = {}
        for k in self.parts:
            ids = await self.r.zrange(k.executors(), 0, -1, withscores=True)
            pipe = self.r.pipeline(transaction=False)
            for eid, _ in ids:
                pipe.hgetall(k.executor(eid))
                pipe.scard(k.running(eid))
            got = await pipe.execute()
            for (eid, last), info, running in zip(ids, got[0::2], got[1::2], strict=True):
                e = out.setdefault(
                    eid,
                    {
                        "id": eid,
                        "app": info.get("app"),
                        "host": info.get("host"),
                        "pid": int(info["pid"]) if info.get("pid") else None,
                        "started": _num(info.get("started")),
                        "last_ping": last,
                        "running": 0,
                    },
                )
                e["running"] += running
                e["last_ping"] = max(e["last_ping"], last)
        return sorted(out.values(), key=lambda e: e["id"])


async def app_streams(r: Any, k: Keys, app: str) -> list[tuple[int, str]]:
    """(priority, stream key) of every stream of `app` in a partition, highest priority first."""
    out = []
    for name in await r.smembers(k.apps()):
        a, prio = parse_stream_name(name)
        if a == app:
            out.append((prio, k.stream_of(name)))
    return sorted(out, reverse=True)


async def redeliver_pending(r: Any, scripts: Scripts, k: Keys, app: str, consumer: str) -> int:
    """Entries a consumer read but never claimed are still QUEUED work: put a fresh hint on
    the stream for each (redeliver.lua checks the task is still QUEUED for that job), then
    drop the consumer from the group.  Returns how many were re-queued."""
    n = 0
    for _, stream in await app_streams(r, k, app):
        n += await _redeliver_stream(r, scripts, k, stream, consumer)
    return n


async def _redeliver_stream(r: Any, scripts: Scripts, k: Keys, stream: str, consumer: str) -> int:
    n = 0
    while True:
        pending = await r.xpending_range(stream, GROUP, "-", "+", 100, consumername=consumer)
        if not pending:
            break
        ids = [p["message_id"] for p in pending]
        bodies = {e[0]: e[1] for e in await r.xrange(stream, ids[0], ids[-1]) if e[1]}
        pipe = r.pipeline(transaction=False)
        for mid in ids:
            body = bodies.get(mid)
            if body is None:  # trimmed away: nothing to re-send, just stop it pending
                pipe.xack(stream, GROUP, mid)
                continue
            await scripts.queue(
                pipe, "redeliver", [k.task(body["t"]), stream], [k.prefix, body["t"], mid, body["j"]]
            )
            n += 1
        await pipe.execute()
    try:
        await r.xgroup_delconsumer(stream, GROUP, consumer)
    except ResponseError:  # no such stream/group: nothing was pending either
        pass
    return n


def _encode_cursor(score: float, skips: list[int]) -> str:
    raw = json.dumps([score, skips], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, parts: int) -> tuple[float, list[int]]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, skips = json.loads(raw)
        if (
            not isinstance(score, int | float)
            or len(skips) != parts
            or not all(isinstance(s, int) and s >= 0 for s in skips)
        ):
            raise ValueError
        return float(score), skips
    except (ValueError, TypeError, json.JSONDecodeError):
        raise errors.invalid_params("cursor", "not a cursor returned by tasks.list") from None


def results_of(h: dict[str, str]) -> list[Any]:
    """Results of the committed stages, in stage order (results[i] is stage i's)."""
    n = min(int(h.get("stage") or 0), int(h.get("stages") or 0))
    return [json.loads(h[f"r.{i}"]) if f"r.{i}" in h else None for i in range(n)]


def view(h: dict[str, str], include_results: bool = True) -> dict[str, Any]:
    """TaskView (SPEC §7) of a task hash."""
    out: dict[str, Any] = json.loads(h["doc"])
    out["kws"] = json.loads(h["kws"]) if h.get("kws") else {}
    status = h["status"]
    out.update(
        status=status,
        stage=int(h["stage"]),
        stages=int(h["stages"]),
        job_id=h.get("job_id") or None,
        attempt=int(h.get("attempt") or 0),
        retries=int(h.get("retries") or 0),
        executor_id=h.get("executor_id") or None,
        exit_code=int(h["exit_code"]) if h.get("exit_code") else None,
        error=json.loads(h["error"]) if h.get("error") else None,
        cleaned=_b(h.get("cleaned")),
        locked=status == Status.RUNNING and bool(h.get("lease")),
    )
    for name in _TIMES:
        out[name] = _num(h.get(name))
    if include_results:
        out["results"] = results_of(h)
    return out


def member_of(h: dict[str, str]) -> str:
    return member(h["app"], h["id"])


def connect(url: str, max_connections: int) -> Any:
    """A client whose pool makes callers wait for a free connection instead of failing with
    MaxConnectionsError when more requests are in flight than the pool holds."""
    pool = aredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=max_connections, timeout=30
    )
    return aredis.Redis(connection_pool=pool)
