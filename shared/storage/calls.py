"""Every script call, built in one place and read in one place.

Each function below returns a `Call`: the script's name, its KEYS and ARGV laid out as the
script's header says, and the decoder that turns its reply into a typed result.  The manager,
the executor and the transition tests all build their calls here, and ``Scripts.run`` /
``run_many`` (runner.py) hand back what the decoder made.  A script's refusal codes become
RpcErrors in one table (`refused`).

Replies whose first element is their code are NamedTuples with `code` first, so ``reply[0]``
and ``reply.code`` name the same thing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec

from stagewise import errors
from stagewise.errors import RpcError
from stagewise.keys import Keys, stream_name
from stagewise.models import Task
from stagewise.policy import next_cron
from stagewise.status import Status

R = TypeVar("R")


class Call(NamedTuple, Generic[R]):
    """One script call: run it with ``Scripts.run(call)`` to get its decoded reply."""

    script: str
    keys: list[str]
    args: list[Any]
    decode: Callable[[Any], R]


def _J(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def new_job_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- reply types


class Code(NamedTuple):
    """A reply that is a code and nothing else worth reading (handback, redeliver, expire,
    reap, forget, drop_consumer, send, requeue_lost): e.g. QUEUED, STALE, REQUEUED, DROPPED,
    FAILED, SKIP, NOT_DUE, DELIVERED, GONE."""

    code: str


class Wake(NamedTuple):
    """wake.lua: the status the task has now, or NOT_DUE / GONE / SKIP (with its status)."""

    code: str
    status: str | None


class Claim(NamedTuple):
    """claim.lua: OK with what the executor runs the task with (doc, kws, job_id, stage,
    stages, retries, attempt, exec_deadline, and r.<i> of the stages before the current one),
    or STALE (drop the entry) / DEAD (this executor was declared dead)."""

    code: str
    fields: dict[str, str]


class Commit(NamedTuple):
    """commit.lua: RUN (go on at `stage`; `taken` holds (stage, JSON) of the messages the
    inbox gave to the message stages passed on the way), WAITING / FINISHED (let go), STALE
    (abandon the run) or REPLAY (applied before; hand the run back)."""

    code: str
    stage: int | None
    taken: list[tuple[int, str]]


class Orphan(NamedTuple):
    """orphan.lua: QUEUED (taken back; `reason` unregistered or not_held), or SKIP / REAPING /
    UNREPORTED / UNSETTLED / HELD (left alone; `reason` None)."""

    code: str
    reason: str | None


class Report(NamedTuple):
    """What an executor's heartbeat says of its runs in one partition (ping.lua keeps it for
    orphan.lua): the `prefix` of its leases, `settled` (the highest lease counter whose claim
    reply it has fully processed) and `held` (the leases of the runs it holds there)."""

    prefix: str
    settled: int
    held: list[str]


class Fail(NamedTuple):
    """fail.lua: RETRY (at next_run), FAILED or STALE."""

    code: str
    next_run: float | None


BatchResult = dict[str, Any]  # {id, status, changed, error} (SPEC §7)


# --------------------------------------------------------------------------- refusals


def refused(code: str, task_id: str, reply: Sequence[Any], *, many: bool = False) -> RpcError:
    """The RpcError of a script's refusal: the one table from return codes to errors."""
    match code:
        case "NOT_FOUND":
            return errors.not_found(task_id)
        case "EXISTS":
            data = {"ids": [task_id]} if many else {"id": task_id}
            return RpcError(errors.TASK_EXISTS, f"task {task_id!r} exists", data)
        case "INVALID_TRANSITION":
            return errors.invalid_transition(reply[-1], Status.IDLE)
        case "NOT_WAITING":
            return RpcError(
                errors.NOT_WAITING_FOR_MESSAGE,
                f"task {task_id!r} ({reply[1]}) has no message stage ahead to take the message",
                {"id": task_id, "status": reply[1]},
            )
    raise ValueError(f"unexpected reply {list(reply)!r}")


def _code(res: Any) -> Code:
    return Code(res[0])


# --------------------------------------------------------------------------- create


def _fields(task: Task) -> list[str]:
    """The hash of a new task: its document, plus the settings the scripts read, as field,
    value strings."""
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
        "entry": "",
        "wait_deadline": "",
        "exec_deadline": "",
    }
    return [str(x) for kv in fields.items() for x in kv]


def _new_task(k: Keys, task: Task, now: float | None) -> tuple[list[str], list[Any], list[str]]:
    """KEYS and per-task ARGV of store_new (_lib.lua) for one task, and the fields sent."""
    d = task.doc
    fields = _fields(task)
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
    # one JSON argument for the fields instead of ~80: redis-py encodes arguments one by one,
    # which was the largest cost of a create on the client
    args = [task.id, d.app, due_at, int(d.enabled), stream_name(d.app, d.priority), _J(fields)]
    return keys, args, fields


def _created(task_id: str, fields: list[str], res: Any) -> dict[str, str]:
    """The stored hash, so that the caller's view needs no read: CREATED sends back only what
    the script set (status, times, stage, ...) on top of the fields we sent."""
    code = res[0]
    if code == "CREATED":
        h = dict(zip(fields[0::2], fields[1::2], strict=True))
        h.update(zip(res[1::2], res[2::2], strict=True))
        return h
    if code == "IGNORED":  # the existing task's whole hash
        return dict(zip(res[1::2], res[2::2], strict=True))
    raise refused(code, task_id, res)


def create(k: Keys, task: Task, on_conflict: str, now: float | None = None) -> Call[dict[str, str]]:
    """tasks.create: the stored hash; raises TASK_EXISTS / INVALID_TRANSITION."""
    keys, (tid, app, due_at, enabled, sname, fields_json), fields = _new_task(k, task, now)
    args = [k.prefix, tid, app, on_conflict, due_at, enabled, sname, fields_json]
    return Call("create", keys, args, partial(_created, task.id, fields))


def _created_many(res: Any) -> int:
    if res[0] == "CREATED":
        return int(res[1])
    raise refused(res[0], res[1], res, many=True)


def create_many(k: Keys, tasks: Sequence[Task], on_conflict: str) -> Call[int]:
    """tasks.create_many for the tasks of one partition: how many were stored; raises
    TASK_EXISTS / INVALID_TRANSITION with nothing written."""
    keys: list[str] = []
    args: list[Any] = [k.prefix, on_conflict]
    for t in tasks:
        t_keys, t_args, _ = _new_task(k, t, None)
        keys += t_keys
        args += t_args
    return Call("create_many", keys, args, _created_many)


def send(k: Keys, task_id: str, data: Any) -> Call[Code]:
    """tasks.send: DELIVERED or KEPT; raises TASK_NOT_FOUND / NOT_WAITING_FOR_MESSAGE."""

    def decode(res: Any) -> Code:
        if res[0] in ("DELIVERED", "KEPT"):
            return Code(res[0])
        raise refused(res[0], task_id, res)

    return Call("send", [k.task(task_id), k.inbox(task_id), k.due()], [k.prefix, task_id, _J(data)], decode)


# --------------------------------------------------------------------------- batch operations


def _batch(task_id: str, res: Any) -> BatchResult:
    if res[0] == "NOT_FOUND":
        return {"id": task_id, "status": None, "changed": False, "error": "TASK_NOT_FOUND"}
    return {"id": task_id, "status": res[0], "changed": res[1] == "1", "error": res[2] or None}


def cancel(k: Keys, task_id: str, dry_run: bool) -> Call[BatchResult]:
    return Call(
        "cancel", [k.task(task_id), k.due()], [k.prefix, task_id, int(dry_run)], partial(_batch, task_id)
    )


def unlock(k: Keys, task_id: str, dry_run: bool) -> Call[BatchResult]:
    return Call("unlock", [k.task(task_id)], [k.prefix, task_id, int(dry_run)], partial(_batch, task_id))


def delete(k: Keys, task_id: str, dry_run: bool) -> Call[BatchResult]:
    return Call(
        "delete",
        [k.task(task_id), k.attempts(task_id), k.inbox(task_id), k.due()],
        [k.prefix, task_id, int(dry_run)],
        partial(_batch, task_id),
    )


def clean(k: Keys, task_id: str, dry_run: bool, cutoff: float) -> Call[BatchResult]:
    return Call(
        "clean", [k.task(task_id)], [k.prefix, task_id, int(dry_run), cutoff], partial(_batch, task_id)
    )


def restart(
    k: Keys,
    task_id: str,
    dry_run: bool = False,
    from_: str = "first",
    due_at: float | str = "",
    mode: str = "restart",
    chain_from: str = "",
) -> Call[BatchResult]:
    """A fresh run: tasks.restart (mode restart), cron's next fire (mode cron, due_at) and
    next_task chaining (mode chain, chain_from: the finishing run's job id)."""
    return Call(
        "restart",
        [k.task(task_id), k.due(), k.inbox(task_id), k.ended()],
        [k.prefix, task_id, int(dry_run), new_job_id(), from_, due_at, mode, chain_from],
        partial(_batch, task_id),
    )


# --------------------------------------------------------------------------- the manager


def _wake(res: Any) -> Wake:
    return Wake(res[0], res[1] if len(res) > 1 else None)


def wake(k: Keys, task_member: str) -> Call[Wake]:
    """The due entry `task_member` (app/id) is acted on: see wake.lua."""
    _, _, tid = task_member.partition("/")
    return Call("wake", [k.task(tid), k.due()], [k.prefix, tid, task_member], _wake)


def expire(k: Keys, task_member: str) -> Call[Code]:
    """A RUNNING task's execution deadline: FAILED, NOT_DUE or SKIP."""
    _, _, tid = task_member.partition("/")
    return Call("expire", [k.task(tid), k.deadlines()], [k.prefix, tid, task_member], _code)


class Mark(NamedTuple):
    """mark_dead.lua: DEAD (reap it: `app` is its app, '' when its info is gone; `live` when it
    registered again since), ALIVE or GONE (nothing to do)."""

    code: str
    app: str
    live: bool


def _mark(res: Any) -> Mark:
    return Mark(res[0], res[1] if len(res) > 1 else "", len(res) > 2 and res[2] == "1")


def mark_dead(k: Keys, executor_id: str, dead_after: float) -> Call[Mark]:
    """Declares the executor dead if its last ping is at least `dead_after` s old: the first
    step of a reap, and the one that decides (see mark_dead.lua)."""
    return Call(
        "mark_dead",
        [
            k.executors(),
            k.dead_executors(),
            k.running(executor_id),
            k.reaping(executor_id),
            k.executor(executor_id),
        ],
        [k.prefix, executor_id, dead_after],
        _mark,
    )


def reap(k: Keys, task_member: str, executor_id: str, max_interruptions: int) -> Call[Code]:
    """A run the dead executor held at its mark (`task_member`, app/id, from its reaping hash):
    QUEUED, FAILED (EXECUTOR_LOST) or SKIP."""
    _, _, tid = task_member.partition("/")
    return Call(
        "reap",
        [k.task(tid), k.reaping(executor_id)],
        [k.prefix, tid, executor_id, max_interruptions, task_member],
        _code,
    )


def forget(k: Keys, executor_id: str) -> Call[Code]:
    """The last step of a reap: GONE (it left the registry), LIVE (it registered again and
    stays) or BUSY (runs left to reap)."""
    return Call(
        "forget",
        [
            k.executors(),
            k.dead_executors(),
            k.reaping(executor_id),
            k.executor(executor_id),
            k.running(executor_id),
            k.control(executor_id),
        ],
        [k.prefix, executor_id],
        _code,
    )


def redeliver(k: Keys, stream: str, task_id: str, entry_id: str, job_id: str) -> Call[Code]:
    """A stream entry delivered but never claimed: REQUEUED or DROPPED."""
    return Call("redeliver", [k.task(task_id), stream], [k.prefix, task_id, entry_id, job_id], _code)


def _orphan(res: Any) -> Orphan:
    return Orphan(res[0], res[1] if len(res) > 1 else None)


def orphan(k: Keys, task_member: str, lease: str) -> Call[Orphan]:
    """A RUNNING task (`task_member`, app/id, under `lease`) that no live executor may run:
    QUEUED when its executor is unregistered, or live and reported not holding the lease; see
    orphan.lua."""
    _, _, tid = task_member.partition("/")
    return Call("orphan", [k.task(tid), k.executors(), k.dead_executors()], [k.prefix, tid, lease], _orphan)


def requeue_lost(k: Keys, task_id: str, job_id: str, entry: str) -> Call[Code]:
    """A task QUEUED for the run `job_id` with the hint `entry` ('' none recorded): REQUEUED
    when the hint is gone, HINTED (no entry recorded: a fresh one), UNDELIVERED, PENDING or
    SKIP; see requeue_lost.lua."""
    return Call("requeue_lost", [k.task(task_id)], [k.prefix, task_id, job_id, entry], _code)


def drop_consumer(k: Keys, stream: str, consumer: str) -> Call[Code]:
    """The consumer leaves the stream's group if nothing is pending on it: DROPPED, PENDING or
    NONE (no such stream or group)."""
    return Call("drop_consumer", [stream], [k.prefix, consumer], _code)


# --------------------------------------------------------------------------- fan-out (SPEC §3a)


def spawn(
    k: Keys,
    parent_member: str,
    job_id: str,
    stage: int,
    score: float,
    on_failure: str,
    children: Sequence[Task],
    error: dict[str, Any] | None = None,
) -> Call[Code]:
    """The children of a parent's children stage, started in one step with the parent's join
    (`parent_member`: app/id; `score`: of its spawns entry, as read), or the parent's run failed
    with `error` ({code, message}): SPAWNED, FAILED or STALE; see spawn.lua."""
    _, _, pid = parent_member.partition("/")
    keys = [k.task(pid), k.spawns(), k.join(pid), k.live_children(pid)]
    err = _J(error) if error else ""
    args: list[Any] = [k.prefix, pid, parent_member, job_id, stage, score, on_failure, err]
    for t in children:
        t_keys, t_args, _ = _new_task(k, t, None)
        keys += t_keys
        args += t_args
    return Call("spawn", keys, args, _code)


def cancel_children(k: Keys, parent_id: str, batch: int) -> Call[Code]:
    """Up to `batch` live children of a parent that no longer waits for them cancelled: DONE
    (the cascade of this parent is over) or MORE; see cancel_children.lua."""
    return Call(
        "cancel_children", [k.cascades(), k.live_children(parent_id)], [k.prefix, parent_id, batch], _code
    )


# --------------------------------------------------------------------------- the executor


def ping(
    k: Keys, executor_id: str, info: Sequence[Any] | None = None, report: Report | None = None
) -> Call[bool]:
    """A heartbeat; with `info` (field, value, ...) a registration; with `report`, what the
    executor runs in this partition (kept for orphan.lua).  False: this executor is not
    registered (declared dead, or the registry was lost): it must register again."""
    rep: list[Any] = ["", "", ""] if report is None else [report.prefix, report.settled, _J(report.held)]
    flag = 0 if info is None else 1
    args = [k.prefix, executor_id, flag, *rep, *(info or ())]
    return Call("ping", [k.executors(), k.executor(executor_id)], args, bool)


def _claim(res: Any) -> Claim:
    return Claim(res[0], dict(zip(res[1::2], res[2::2], strict=True)))


def claim(
    k: Keys, stream: str, entry_id: str, task_id: str, job_id: str, executor_id: str, lease: str
) -> Call[Claim]:
    return Call(
        "claim",
        [k.task(task_id), stream, k.executors(), k.running(executor_id), k.deadlines()],
        [k.prefix, task_id, entry_id, job_id, executor_id, lease],
        _claim,
    )


def _commit(res: Any) -> Commit:
    stage = int(res[1]) if len(res) > 1 else None
    return Commit(res[0], stage, [(int(res[i]), res[i + 1]) for i in range(2, len(res), 2)])


def commit(
    k: Keys, task_id: str, job_id: str, lease: str, stage: int, result: str, outcome: str, method: str = ""
) -> Call[Commit]:
    """The result (JSON) of `stage`; `outcome` ok or skipped; `method` for the histogram."""
    return Call(
        "commit",
        [k.task(task_id), k.attempts(task_id)],
        [k.prefix, task_id, job_id, lease, stage, result, outcome, method],
        _commit,
    )


def _fail(res: Any) -> Fail:
    return Fail(res[0], float(res[1]) if len(res) > 1 else None)


def fail(
    k: Keys,
    task_id: str,
    job_id: str,
    lease: str,
    stage: int,
    error: dict[str, Any],
    retry_delay: float | None,
    outcome: str = "error",
    method: str = "",
) -> Call[Fail]:
    """A failed attempt: retried after `retry_delay` s, or the run fails (None)."""
    return Call(
        "fail",
        [k.task(task_id), k.attempts(task_id), k.due()],
        [
            k.prefix,
            task_id,
            job_id,
            lease,
            stage,
            _J(error),
            "" if retry_delay is None else retry_delay,
            outcome,
            method,
        ],
        _fail,
    )


def handback(k: Keys, task_id: str, job_id: str, lease: str) -> Call[Code]:
    """A run given back at its current stage: QUEUED, or STALE (no longer ours)."""
    return Call("handback", [k.task(task_id)], [k.prefix, task_id, job_id, lease], _code)


# --------------------------------------------------------------------------- task hashes


def results_of(h: dict[str, str]) -> list[Any]:
    """Results of the committed stages, in stage order (results[i] is stage i's)."""
    n = min(int(h.get("stage") or 0), int(h.get("stages") or 0))
    return [json.loads(h[f"r.{i}"]) if f"r.{i}" in h else None for i in range(n)]
