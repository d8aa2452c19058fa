"""The manager's operations on stored tasks: create, read, list, send, batch operations,
groups, notifications, attempts, executors; and the TaskView of a task hash.

Every state change is one Lua script, called through stagewise.storage.calls (which builds
its KEYS and ARGV and turns its reply into a result or an RpcError); what is left here is
choosing the tasks and partitions, and the plain reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as aredis

from stagewise import errors, tracing
from stagewise import log as slog
from stagewise.config import Settings
from stagewise.faults import unavailable_reason
from stagewise.keys import HEALTH_TTL_MS, Keys, parse_stream_name, partition_of
from stagewise.manager.query import Filters, running_by_app, scan
from stagewise.models import ChildrenCommand, Task, place
from stagewise.status import Status
from stagewise.storage import calls
from stagewise.storage.calls import results_of
from stagewise.storage.durability import Durability
from stagewise.storage.limits import BATCH as LIMITS_BATCH
from stagewise.storage.limits import Limits
from stagewise.storage.runner import Scripts

CLEAN_BATCH = 10_000  # tasks a clean reads per status index and partition
BACKLOG_RETRY_AFTER = 1.0  # s a client refused by backpressure is told to wait

_TIMES = ("created", "updated", "queued_at", "next_run", "wait_deadline", "exec_deadline")


_NOTE_ID = re.compile(r"^\d{1,4}-\d{1,20}-\d{1,20}$")  # partition-streamid


def _num(v: str | None) -> float | None:
    return float(v) if v else None


def _b(v: str | None) -> bool:
    return v == "1"


class Store:
    def __init__(self, client: aredis.Redis, settings: Settings) -> None:
        # redis-py's return types are unions over decode modes; we always decode, so Any.
        self.r: Any = client
        self.settings = settings
        # API writes (the methods below) wait as STAGEWISE_DURABILITY says; the scheduler's
        # roles, which share these Scripts, do not (stagewise.storage.durability)
        self.scripts = Scripts(client, Durability.of(settings))
        self.parts = [Keys(settings.namespace, p) for p in range(settings.partitions)]
        # flow control (SPEC §2a)
        self.limits = Limits(self.scripts, client, settings.namespace, settings.partitions)
        self.log = slog.get(role="store")
        # Fan-out: set by the scheduler (its spawn role's wake-up).  A task created here that
        # opens with a children stage is WAITING on the spawns zset the moment its create
        # returns; telling the spawn role saves it the rest of its tick.  Stages reached later
        # (after an executor's commit) are found by the tick.
        self.children_waiting: Callable[[], None] | None = None

    def _wake_spawn(self, tasks: Iterable[Task]) -> None:
        if self.children_waiting is not None and any(
            t.commands and isinstance(t.commands[0], ChildrenCommand) for t in tasks
        ):
            self.children_waiting()

    async def server_time(self) -> float:
        """Redis's clock (TIME), the one the scripts stamp tasks and indexes with."""
        sec, usec = await self.r.time()
        return float(sec + usec / 1e6)

    def keys(self, task_id: str) -> Keys:
        return self.parts[partition_of(task_id, len(self.parts))]

    # ------------------------------------------------------------------ create / read
    async def create(
        self, task: Task, on_conflict: str = "error", now: float | None = None, trace: str | None = None
    ) -> dict[str, str]:
        """Stores a validated task; returns its hash (the existing one when on_conflict is
        "ignore" and it exists).  Raises TASK_EXISTS / INVALID_TRANSITION, LIMIT_EXCEEDED
        (backpressure).  `trace`: the caller's trace context (stagewise.tracing.caller) the first
        run's spans join.  A debounced task whose key holds an IDLE task replaces that one
        (SPEC §2a): the hash returned is then that task's."""
        await self.check_backlog({task.doc.app})
        task = place(task, len(self.parts))  # a debounced task lives in its key's partition
        k = self.keys(task.id)
        out = await self.scripts.run(calls.create(k, task, on_conflict, now, trace), durable=[k])
        self._wake_spawn([task])  # one for later is not on the zset yet: a step that finds nothing
        return out

    # ------------------------------------------------------------------ flow control (SPEC §2a)
    async def check_backlog(self, apps: set[str]) -> None:
        """Backpressure (STAGEWISE_MAX_BACKLOG): a create for an app that has that many QUEUED
        tasks already (all partitions) is refused with LIMIT_EXCEEDED before anything is
        written.  The count is read, not reserved: creates racing at the threshold may pass it
        by as many as race."""
        cap = self.settings.max_backlog
        if cap <= 0:
            return
        names = sorted(apps)
        pipe = self.r.pipeline(transaction=False)
        for a in names:
            for k in self.parts:
                pipe.zcard(k.idx_app_status(a, Status.QUEUED))
        counts = await pipe.execute()
        n = len(self.parts)
        for i, a in enumerate(names):
            queued = sum(counts[i * n : (i + 1) * n])
            if queued >= cap:
                raise errors.RpcError(
                    errors.LIMIT_EXCEEDED,
                    f"app {a!r} has {queued} QUEUED tasks (STAGEWISE_MAX_BACKLOG={cap})",
                    {
                        "field": "app",
                        "reason": f"backlog of {queued} >= {cap}",
                        "retry_after": BACKLOG_RETRY_AFTER,
                    },
                )

    async def release_freed(self, parts: list[Keys]) -> None:
        """Gives back at once the permits of the runs that the manager's own transitions just
        took from RUNNING (cancel, unlock, expire, reap, orphan: each left them in its
        partition's outbox), so that the slots reach held tasks without waiting for the
        limits role.  A failure is logged and left to that role (OUTBOX_GRACE), whose drain
        gives back whatever a process left."""
        for k in parts:
            try:
                while await self.limits.drain(k) >= LIMITS_BATCH:
                    pass
            except Exception as e:  # noqa: BLE001 - the limits role drains what is left
                self.log.warning("limits_release_failed", partition=k.partition, error=str(e)[:300])

    async def pause_app(self, app: str, until: float | None) -> dict[str, Any]:
        """apps.pause (until; None: until apps.resume, kept as PAUSE_FOREVER) / apps.resume
        (`resume`): written to every partition, since each claim reads its own partition."""
        got = [await self.scripts.run(calls.app_pause(k, app, until)) for k in self.parts]
        return {"app": app, "paused_until": got[0] if got else None}

    async def paused_apps(self, now: float) -> dict[str, float]:
        """app -> until when it is paused (partition 0 holds what every partition holds)."""
        raw = await self.r.hgetall(self.parts[0].paused_apps())
        return {a: float(u) for a, u in raw.items() if float(u) > now}

    async def check_writable(self, parts: Sequence[Keys] | None = None, durable: bool = False) -> None:
        """Raises what Redis raised unless it takes a write in every partition (of `parts`, or
        all): one tiny write with a short TTL to Keys.health of each (on a Redis Cluster, so, of
        each partition's master), in one round trip per server.  `durable` (GET /healthz): also
        raises DurabilityNotMet when STAGEWISE_DURABILITY's wait is not met, since every API
        write then answers 1006."""
        pipe = self.r.pipeline(transaction=False)
        for k in self.parts if parts is None else parts:
            pipe.set(k.health(), "1", px=HEALTH_TTL_MS)
        for res in await pipe.execute(raise_on_error=False):
            if isinstance(res, Exception):
                raise res
        if durable:
            await self.scripts.run_many([], durable=self.parts)

    async def raw(self, task_id: str) -> dict[str, str] | None:
        h = await self.r.hgetall(self.keys(task_id).task(task_id))
        return h or None

    async def get(self, task_id: str, include_results: bool = True) -> dict[str, Any]:
        h = await self.raw(task_id)
        if h is None:
            raise errors.not_found(task_id)
        out = view(h, include_results)
        if h.get("spawn_token"):
            out["children"] = await self.children(task_id, h["spawn_token"])
        return out

    async def children(self, task_id: str, token: str) -> dict[str, Any] | None:
        """A parent's latest children stage (SPEC §3a): {stage, total, ended, on_failure,
        by_status, ids}; None when that join is gone.  Read for tasks.get only: one pipelined
        status read per child (at most 1,000)."""
        k = self.keys(task_id)
        j = await self.r.hgetall(k.join(task_id))
        if not j or j.get("token") != token:
            return None
        ids: list[str] = json.loads(j.get("ids") or "[]")
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(k.task(i), "status")
        by_status: dict[str, int] = {}
        for st in await pipe.execute() if ids else []:
            name = st or "DELETED"
            by_status[name] = by_status.get(name, 0) + 1
        return {
            "stage": int(j["stage"]),
            "total": int(j["total"]),
            "ended": int(j.get("ended") or 0),
            "on_failure": j.get("on_failure"),
            "by_status": by_status,
            "ids": ids,
        }

    async def views(self, ids: list[str], include_results: bool) -> list[dict[str, Any]]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys(i).task(i))
        return [view(h, include_results) for h in await pipe.execute() if h]

    # ------------------------------------------------------------------ messages
    async def send(self, task_id: str, data: Any) -> None:
        k = self.keys(task_id)
        tr = tracing.current()
        sent = await self.scripts.run(calls.send(k, task_id, data, tr is not None), durable=[k])
        if tr is not None and sent.wait is not None:
            tr.wait(task_id, sent.wait)

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
        batch = [self._batch_call(op, self.keys(i), i, dry_run, extra) for i in ids]
        written = [] if dry_run else [self.keys(i) for i in ids]  # a dry run writes nothing
        results = await self.scripts.run_many(batch, raise_on_error=False, durable=written)
        if op in ("cancel", "unlock") and not dry_run:
            # flow control: a run these took from RUNNING left its permits in its partition's
            # outbox; they go back now, not at the manager's next look (SPEC §2a: a slot freed
            # reaches a held task within 100 ms)
            changed = {self.keys(i).partition for i, res in zip(ids, results, strict=True)
                       if isinstance(res, dict) and res.get("changed")}  # fmt: skip
            await self.release_freed([self.parts[p] for p in sorted(changed)])
        for res in results:
            # Redis refusing writes (out of memory, read-only) is no fault of one task: the
            # call answers 1006 as a whole, and a retry is safe (a task already cancelled,
            # unlocked, restarted, cleaned or deleted is not changed again)
            reason = unavailable_reason(res) if isinstance(res, Exception) else None
            if reason is not None:
                raise errors.unavailable(reason) from res
        out = []
        for i, res in zip(ids, results, strict=True):
            if isinstance(res, Exception):
                out.append({"id": i, "status": None, "changed": False, "error": f"internal error: {res}"})
            else:
                out.append(res)
        return out

    @staticmethod
    def _batch_call(
        op: str, k: Keys, i: str, dry: bool, extra: dict[str, Any]
    ) -> calls.Call[calls.BatchResult]:
        match op:
            case "cancel":
                return calls.cancel(k, i, dry)
            case "unlock":
                return calls.unlock(k, i, dry)
            case "restart":
                return calls.restart(k, i, dry, from_=extra.get("from_", "first"))
            case "delete":
                return calls.delete(k, i, dry)
            case "clean":
                return calls.clean(k, i, dry, extra["cutoff"])
        raise ValueError(op)

    async def clean(
        self, older_than: float, dry_run: bool, now: float, limit: int = CLEAN_BATCH
    ) -> list[dict[str, Any]]:
        """Terminal tasks last updated before now - older_than, read from the status indexes
        oldest first, at most `limit` per index: the cost follows the tasks to clean, not the
        tasks stored.  Each index is read from its clean cursor (Keys.clean_cursor), the score
        of the last task a clean went through, which a clean that applies moves on: cleaned
        tasks stay in the index, and reading from the oldest every time would meet the same
        already cleaned ones forever once there are `limit` of them."""
        cutoff = now - older_than
        ranges: list[tuple[Keys, Status, list[tuple[str, float]]]] = []
        for k in self.parts:
            cursors = await self.r.hgetall(k.clean_cursor())
            for status in (Status.FINISHED, Status.FAILED, Status.CANCELED):
                got = await self.r.zrangebyscore(
                    k.idx_status(status),
                    cursors.get(status, "-inf"),  # inclusive: a tie at the cursor is looked at again
                    f"({cutoff!r}",
                    start=0,
                    num=limit,
                    withscores=True,
                )
                ranges.append((k, status, got))
        ids = [tid for _, _, got in ranges for tid, _ in got]
        results = await self.batch("clean", ids, dry_run, cutoff=cutoff)
        if not dry_run:
            await self._move_clean_cursors(ranges, results)
        return [
            b
            for b in results
            if b["changed"] or b["error"] not in ("already cleaned", "system task: never cleaned")
        ]

    async def _move_clean_cursors(
        self, ranges: list[tuple[Keys, Status, list[tuple[str, float]]]], results: list[dict[str, Any]]
    ) -> None:
        """Each cursor moves to the last task of its range that clean.lua went through,
        stopping before the first that failed (an internal error: it is tried again)."""
        offset = 0
        for k, status, got in ranges:
            moved: float | None = None
            for j, (_, score) in enumerate(got):
                if (results[offset + j]["error"] or "").startswith("internal error"):
                    break
                moved = score
            offset += len(got)
            if moved is not None:
                await self.r.hset(k.clean_cursor(), status, repr(moved))

    # ------------------------------------------------------------------ groups, notifications
    async def create_many(
        self, tasks: list[Task], group: str, on_conflict: str = "error", trace: str | None = None
    ) -> list[str]:
        """Stores a batch whole or not at all: one create_many.lua per partition checks every
        task of its partition before it writes any.  Across partitions (no script spans two
        slots) the ids are checked first for every partition; only a create of one of the
        ids racing in between that check and the writes can leave the other partitions'
        tasks stored, and is answered TASK_EXISTS.  One round trip for the whole batch."""
        await self.check_backlog({t.doc.app for t in tasks})
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
        by_part: dict[int, list[Task]] = {}
        for t in tasks:
            by_part.setdefault(self.keys(t.id).partition, []).append(t)
        await self.scripts.run_many(
            [calls.create_many(self.parts[p], part, on_conflict, trace) for p, part in by_part.items()],
            durable=[self.parts[p] for p in by_part],
        )
        self._wake_spawn(tasks)
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
        written: list[Keys] = []
        for nid in ids:
            part, _, sid = nid.partition("-")
            if not _NOTE_ID.match(nid) or int(part) >= len(self.parts):
                continue  # not an id notifications.list gave out: nothing to ack
            written.append(self.parts[int(part)])
            n += await self.r.xdel(self.parts[int(part)].notes(), sid)
        # the wait goes after the deletes, on a connection of its own: the fence before it
        # covers them (stagewise.storage.durability)
        await self.scripts.run_many([], durable=written)
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

    async def apps(self, now: float) -> list[dict[str, Any]]:
        """apps.list (SPEC §7), one row per app with a stream: tasks queued, running and waiting,
        failed in the last hour, live executors (a ping within dead_after), and lag (the age of
        its oldest QUEUED task).  Read from the per-app status indexes: a few commands per app
        and partition, whatever the number of tasks."""
        apps: set[str] = set()
        for k in self.parts:
            apps.update(parse_stream_name(name)[0] for name in await self.r.smembers(k.apps()))
        names = sorted(apps)
        rows: dict[str, dict[str, Any]] = {a: {"app": a, "queued": 0, "running": 0, "waiting": 0, "failed_last_hour": 0,
                    "paused_until": None, "executors": 0, "lag": None} for a in names}  # fmt: skip
        for a, until in (await self.paused_apps(now)).items():
            if a in rows:
                rows[a]["paused_until"] = until
        oldest: dict[str, float] = {}
        live: dict[str, set[str]] = {a: set() for a in names}
        # RUNNING has no status index (stagewise.status.UNINDEXED): counted from the deadlines zset
        running = await running_by_app(self.r, self.parts)
        for k, run in zip(self.parts, running, strict=True):
            pipe = self.r.pipeline(transaction=False)
            for a in names:
                pipe.zcard(k.idx_app_status(a, Status.QUEUED))
                pipe.zcard(k.idx_app_status(a, Status.WAITING))
                pipe.zcount(k.idx_app_status(a, Status.FAILED), now - 3600, "+inf")
                pipe.zrange(k.idx_app_status(a, Status.QUEUED), 0, 0, withscores=True)
            pipe.zrangebyscore(k.executors(), now - self.settings.dead_seconds, "+inf")
            got = await pipe.execute()
            eids = got.pop()
            for i, a in enumerate(names):
                queued, waiting, failed, first = got[i * 4 : i * 4 + 4]
                row = rows[a]
                row["queued"] += queued
                row["running"] += run[a]
                row["waiting"] += waiting
                row["failed_last_hour"] += failed
                if first:
                    oldest[a] = min(oldest.get(a, first[0][1]), first[0][1])
            if eids:
                pipe = self.r.pipeline(transaction=False)
                for eid in eids:
                    pipe.hget(k.executor(eid), "app")
                for eid, app in zip(eids, await pipe.execute(), strict=True):
                    if app in live:
                        live[app].add(eid)
        for a in names:
            rows[a]["executors"] = len(live[a])
            if a in oldest:
                rows[a]["lag"] = max(0.0, now - oldest[a])
        return list(rows.values())

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


def view(h: dict[str, str], include_results: bool = True) -> dict[str, Any]:
    """TaskView (SPEC §7) of a task hash."""
    out: dict[str, Any] = json.loads(h["doc"])
    # the hash's own id: a debounced create that replaced this task's document brought the
    # document of the create, whose id was another (SPEC §2a: the id stays)
    out["id"] = h["id"]
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
    # flow control (SPEC §2a): the limit key holding a QUEUED task back
    out["blocked_by"] = (h.get("blocked_by") or None) if status == Status.QUEUED else None
    for name in _TIMES:
        out[name] = _num(h.get(name))
    # fan-out (SPEC §3a): a child's parent run
    out["parent"] = (
        {"id": h["parent"], "stage": int(h.get("parent_stage") or 0), "job_id": h.get("parent_job") or None}
        if h.get("parent")
        else None
    )
    if include_results:
        # a cleaned task has no results left to show (SPEC §7): null, not a list of nulls
        out["results"] = None if out["cleaned"] else results_of(h)
    return out
