"""Redis-facing operations on tasks, shared by the manager and the executor.

Every state change is one Lua script (shared/scripts); this module builds their KEYS and
ARGV from stagewise.keys and maps their return codes to results or RpcErrors, in one place.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import msgspec
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from stagewise import errors
from stagewise.config import Settings
from stagewise.keys import GROUP, Keys, parse_stream_name, partition_of, stream_name
from stagewise.models import Task
from stagewise.policy import next_cron
from stagewise.query import Filters, scan
from stagewise.scripting import Scripts, is_cluster  # noqa: F401 - is_cluster: for connect's callers
from stagewise.status import Status

_TIMES = ("created", "updated", "queued_at", "next_run", "wait_deadline", "exec_deadline")


_NOTE_ID = re.compile(r"^\d{1,4}-\d{1,20}-\d{1,20}$")  # partition-streamid


def _J(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


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
    def _fields(self, task: Task) -> list[str]:
        """The hash of a new task: its document, plus the settings the scripts read, as one JSON
        array of field, value strings: one argument instead of ~80 (redis-py encodes arguments
        one by one, which was the largest cost of a create on the client)."""
        d = task.doc
        doc = msgspec.to_builtins(d)
        doc["id"] = task.id
        kws = doc.pop("kws")
        fields: dict[str, Any] = {
            "doc": _J(doc),
            "kws": _J(kws),
            "plan": _J(task.plan()),
            "stages": len(task.commands),
            "job_id": new_job_id(),
            "attempt": 0,
            "retries": 0,
            "interruptions": 0,
            "exec_used": 0,
            "max_exec": d.max_exec_timeout,
            "max_retries": d.max_retries,
            "restart_policy": d.restart_policy,
            "enabled": int(d.enabled),
            "notify": int(d.notify),
            "system": int(d.system),
            "priority": d.priority,
            "group": d.group or "",
            "tags": _J(d.tags) if d.tags else "",
            "next_task": d.next_task or "",
            "cron": d.cron or "",
            "tz": d.tz,
            "cleaned": 0,
            "executor_id": "",
            "lease": "",
            "error": "",
            "exit_code": "",
            "queued_at": "",
            "wait_deadline": "",
            "exec_deadline": "",
        }
        return [str(x) for kv in fields.items() for x in kv]

    def _create_call(
        self, task: Task, on_conflict: str, now: float | None
    ) -> tuple[list[str], list[Any], list[str]]:
        """KEYS and ARGV of create.lua, and the hash fields sent (field, value, ...)."""
        d, k = task.doc, self.keys(task.id)
        fields = self._fields(task)
        due_at: float | str = ""
        if d.cron:
            due_at = next_cron(d.cron, d.tz, now if now is not None else time.time())
        elif d.run_at is not None:
            due_at = d.run_at
        keys = [
            k.task(task.id),
            k.stream(d.app, d.priority),
            k.due(),
            k.apps(),
            k.attempts(task.id),
            k.inbox(task.id),
        ]
        args = [
            k.prefix,
            task.id,
            d.app,
            on_conflict,
            due_at,
            int(d.enabled),
            stream_name(d.app, d.priority),
            _J(fields),
        ]
        return keys, args, fields

    def _create_many_calls(self, tasks: list[Task], on_conflict: str) -> list[tuple[list[str], list[Any]]]:
        """KEYS and ARGV of create_many.lua, one call per partition the tasks fall in."""
        parts: dict[int, tuple[list[str], list[Any]]] = {}
        for t in tasks:
            keys, args, _ = self._create_call(t, on_conflict, None)
            prefix, tid, app, _oc, due_at, enabled, sname, fields = args
            p_keys, p_args = parts.setdefault(self.keys(t.id).partition, ([], [prefix, on_conflict]))
            p_keys += keys
            p_args += [tid, app, due_at, enabled, sname, fields]
        return list(parts.values())

    @staticmethod
    def _created(task: Task, res: Any, fields: list[str]) -> dict[str, str]:
        """The stored hash, so that the caller's view needs no read: CREATED sends back only
        what the script set (status, times, stage, ...) on top of the fields we sent."""
        code = res[0]
        if code == "CREATED":
            h = dict(zip(fields[0::2], fields[1::2], strict=True))
            h.update(zip(res[1::2], res[2::2], strict=True))
            return h
        if code == "IGNORED":  # the existing task's whole hash
            return dict(zip(res[1::2], res[2::2], strict=True))
        if code == "EXISTS":
            raise errors.RpcError(errors.TASK_EXISTS, f"task {task.id!r} exists", {"id": task.id})
        raise errors.invalid_transition(res[1], Status.IDLE)

    async def create(
        self, task: Task, on_conflict: str = "error", now: float | None = None
    ) -> dict[str, str]:
        """Stores a validated task; returns its hash (the existing one when on_conflict is
        "ignore" and it exists).  Raises TASK_EXISTS / INVALID_TRANSITION."""
        keys, args, fields = self._create_call(task, on_conflict, now)
        return self._created(task, await self.scripts.run("create", keys, args), fields)

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
    async def list_tasks(
        self, f: Filters, sort: str, max_results: int, cursor: str | None, include_results: bool
    ) -> dict[str, Any]:
        ids, next_cursor = await scan(self.r, self.parts, f, sort == "desc", max_results, cursor)
        return {"items": await self.views(ids, include_results), "next_cursor": next_cursor}

    async def select(self, f: Filters, cap: int) -> list[str]:
        """Every id matching the filters (batch operations), at most `cap`."""
        out: list[str] = []
        cursor: str | None = None
        while len(out) < cap:
            ids, cursor = await scan(self.r, self.parts, f, False, min(1000, cap - len(out)), cursor)
            out += ids
            if cursor is None:
                break
        return out

    # ------------------------------------------------------------------ batch operations
    async def batch(self, op: str, ids: list[str], dry_run: bool, **extra: Any) -> list[dict[str, Any]]:
        """cancel / unlock / restart / delete / clean of each id: one BatchResult per id, in
        order; a bad id never fails the batch.  One fenced script per task, pipelined."""
        calls = [(op, *self._batch_call(op, self.keys(i), i, int(dry_run), extra)) for i in ids]
        out = []
        for i, res in zip(ids, await self.scripts.run_many(calls, raise_on_error=False), strict=True):
            if isinstance(res, Exception):
                out.append({"id": i, "status": None, "changed": False, "error": f"internal error: {res}"})
            elif res[0] == "NOT_FOUND":
                out.append({"id": i, "status": None, "changed": False, "error": "TASK_NOT_FOUND"})
            else:
                out.append({"id": i, "status": res[0], "changed": res[1] == "1", "error": res[2] or None})
        return out

    def _batch_call(
        self, op: str, k: Keys, i: str, dry: int, extra: dict[str, Any]
    ) -> tuple[list[str], list[Any]]:
        match op:
            case "cancel":
                return [k.task(i), k.due()], [k.prefix, i, dry]
            case "unlock":
                return [k.task(i)], [k.prefix, i, dry]
            case "restart":
                return (
                    [k.task(i), k.due(), k.inbox(i), k.ended()],
                    [k.prefix, i, dry, new_job_id(), extra.get("from_", "first"), "", "restart", ""],
                )
            case "delete":
                return [k.task(i), k.attempts(i), k.inbox(i), k.due()], [k.prefix, i, dry]
            case "clean":
                return [k.task(i)], [k.prefix, i, dry, extra["cutoff"]]
        raise ValueError(op)

    async def clean(self, older_than: float, dry_run: bool, now: float) -> list[dict[str, Any]]:
        """Terminal tasks last updated before now - older_than, read from the status indexes
        oldest first: the cost follows the tasks to clean, not the tasks stored."""
        cutoff = now - older_than
        ids: list[str] = []
        for k in self.parts:
            for status in (Status.FINISHED, Status.FAILED, Status.CANCELED):
                ids += await self.r.zrangebyscore(
                    k.idx_status(status), "-inf", f"({cutoff!r}", start=0, num=10_000
                )
        results = await self.batch("clean", ids, dry_run, cutoff=cutoff)
        return [
            b
            for b in results
            if b["changed"] or b["error"] not in ("already cleaned", "system task: never cleaned")
        ]

    # ------------------------------------------------------------------ groups, notifications
    async def create_many(self, tasks: list[Task], group: str, on_conflict: str = "error") -> list[str]:
        """Stores a batch whole or not at all: one create_many.lua per partition checks every
        task of its partition before it writes any.  Across partitions (no script spans two
        slots) the ids are checked first for every partition; only a create of one of the
        ids racing in between that check and the writes can leave the other partitions'
        tasks stored, and is answered TASK_EXISTS.  One round trip for the whole batch."""
        pipe = self.r.pipeline(transaction=False)
        for t in tasks:
            pipe.exists(self.keys(t.id).task(t.id))
        taken = [t.id for t, e in zip(tasks, await pipe.execute(), strict=True) if e]
        if taken and on_conflict == "error":
            raise errors.RpcError(
                errors.TASK_EXISTS,
                f"{len(taken)} task(s) exist: {', '.join(taken[:10])}",
                {"ids": taken[:100]},
            )
        calls = [("create_many", *call) for call in self._create_many_calls(tasks, on_conflict)]
        for res in await self.scripts.run_many(calls):
            if res[0] == "EXISTS":  # created meanwhile by someone else
                raise errors.RpcError(errors.TASK_EXISTS, f"task {res[1]!r} exists", {"ids": [res[1]]})
            if res[0] == "INVALID_TRANSITION":
                raise errors.invalid_transition(res[2], Status.IDLE)
        return [t.id for t in tasks]

    async def group(self, group: str) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for k in self.parts:
            ids = await self.r.zrange(k.idx_group(group), 0, -1)
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                pipe.hget(k.task(i), "status")
            for st in await pipe.execute():
                if st:
                    by_status[st] = by_status.get(st, 0) + 1
        return {"group": group, "total": sum(by_status.values()), "by_status": by_status}

    async def notifications(
        self, task_id: str | None, since: float | None, max_results: int
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = "-" if since is None else str(int(since * 1000))
        for k in self.parts:
            if task_id is not None:
                if self.keys(task_id) is not k:
                    continue
                nids = await self.r.lrange(k.task_notes(task_id), 0, -1)
                pipe = self.r.pipeline(transaction=False)
                for nid in nids:
                    pipe.xrange(k.notes(), nid, nid)
                rows = [row[0] for row in await pipe.execute() if row]
                rows = [
                    row for row in rows if since is None or int(row[0].split("-")[0]) >= int(since * 1000)
                ]
            else:
                rows = await self.r.xrange(k.notes(), start, "+", count=max_results)
            for nid, f in rows:
                out.append(
                    {
                        "id": f"{k.partition}-{nid}",
                        "task_id": f["task_id"],
                        "job_id": f["job_id"] or None,
                        "status": f["status"],
                        "created": int(nid.split("-")[0]) / 1000,
                        "error": json.loads(f["error"]) if f.get("error") else None,
                    }
                )
        out.sort(key=lambda n: (n["created"], n["id"]))
        return out[:max_results]

    async def ack(self, ids: list[str]) -> int:
        n = 0
        for nid in ids:
            part, _, sid = nid.partition("-")
            if not _NOTE_ID.match(nid) or int(part) >= len(self.parts):
                continue  # not an id notifications.list gave out: nothing to ack
            n += await self.r.xdel(self.parts[int(part)].notes(), sid)
        return n

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
        calls, trimmed = [], []
        for mid in ids:
            body = bodies.get(mid)
            if body is None:  # trimmed away: nothing to re-send, just stop it pending
                trimmed.append(mid)
                continue
            calls.append(("redeliver", [k.task(body["t"]), stream], [k.prefix, body["t"], mid, body["j"]]))
        if trimmed:
            await r.xack(stream, GROUP, *trimmed)
        await scripts.run_many(calls)
        n += len(calls)
    try:
        await r.xgroup_delconsumer(stream, GROUP, consumer)
    except ResponseError:  # no such stream/group: nothing was pending either
        pass
    return n


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
