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

from stagewise import errors, tracing
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


class WaitEnd(NamedTuple):
    """A wait that a script just ended, for its span (stagewise.tracing; asked for by the
    caller only while tracing is on): `kind` timer or message, its `stage`, when it `started`
    and `ended` (Redis's clock), the run's `job_id`, the task's `trace` field ('' none) and the
    `outcome`: ok (timer over, message received) or timeout (a message's)."""

    kind: str
    stage: int
    started: float
    ended: float
    job_id: str
    trace: str
    outcome: str


def _wait_end(res: Sequence[Any]) -> WaitEnd:
    kind, stage, started, ended, job_id, trace, outcome = res
    return WaitEnd(kind, int(stage), float(started), float(ended), job_id, trace, outcome)


class Wake(NamedTuple):
    """wake.lua: the status the task has now, or NOT_DUE / GONE / SKIP (with its status);
    `wait`: the wait it ended, when asked for (`traced`)."""

    code: str
    status: str | None
    wait: WaitEnd | None = None


class Sent(NamedTuple):
    """send.lua: DELIVERED (`wait`: the message wait it ended, when asked for) or KEPT."""

    code: str
    wait: WaitEnd | None = None


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


def _fields(task: Task, trace: str | None = None) -> list[str]:
    """The hash of a new task: its document, plus the settings the scripts read, as field,
    value strings; with `trace` (the caller's context, stagewise.tracing.caller), the field
    `trace` that joins the spans of the run to the caller's trace."""
    d = task.doc
    job_id = new_job_id()
    doc = msgspec.to_builtins(d)
    doc["id"] = task.id
    kws = doc.pop("kws")
    fields: dict[str, Any] = {
        "doc": _J(doc),
        "kws": _J(kws),
        "plan": _J(task.plan()),
        "stages": len(task.commands),
        "job_id": job_id,
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
        # flow control (SPEC §2a): the limits with their keys filled, the key holding the task
        # back, and whether a key woke it before it was parked (hold.lua, unblock.lua)
        "limits": _J(task.limits) if task.limits else "",
        "blocked_by": "",
        "woke": "",
        # debounce (SPEC §2a): the key filled ('' none); create.lua adds debounce_first
        "debounce": task.debounce or "",
    }
    if trace:  # only when the caller sent one: without, the hash has no such field
        fields["trace"] = tracing.stored(job_id, trace)
    return [str(x) for kv in fields.items() for x in kv]


def _new_task(
    k: Keys, task: Task, now: float | None, trace: str | None = None
) -> tuple[list[str], list[Any], list[str]]:
    """KEYS and per-task ARGV of store_new (_lib.lua) for one task, and the fields sent."""
    d = task.doc
    fields = _fields(task, trace)
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
    if code in ("IGNORED", "DEBOUNCED"):  # the existing task's whole hash
        return dict(zip(res[1::2], res[2::2], strict=True))
    raise refused(code, task_id, res)


def create(
    k: Keys, task: Task, on_conflict: str, now: float | None = None, trace: str | None = None
) -> Call[dict[str, str]]:
    """tasks.create: the stored hash; raises TASK_EXISTS / INVALID_TRANSITION.  `trace`: the
    caller's trace context (stagewise.tracing.caller), or None.  A debounced task (`k` must be
    its key's partition, models.place) may instead replace the IDLE task of its key: the hash
    is then that task's."""
    keys, (tid, app, due_at, enabled, sname, fields_json), fields = _new_task(k, task, now, trace)
    args = [k.prefix, tid, app, on_conflict, due_at, enabled, sname, fields_json]
    deb = task.doc.debounce
    if task.debounce and deb is not None:
        args += [task.debounce, repr(deb.period), "" if deb.max_wait is None else repr(deb.max_wait)]
    else:
        args += ["", "", ""]
    return Call("create", keys, args, partial(_created, task.id, fields))


def _created_many(res: Any) -> int:
    if res[0] == "CREATED":
        return int(res[1])
    raise refused(res[0], res[1], res, many=True)


def create_many(k: Keys, tasks: Sequence[Task], on_conflict: str, trace: str | None = None) -> Call[int]:
    """tasks.create_many for the tasks of one partition: how many were stored; raises
    TASK_EXISTS / INVALID_TRANSITION with nothing written.  `trace` as for create, for every task."""
    keys: list[str] = []
    args: list[Any] = [k.prefix, on_conflict]
    for t in tasks:
        t_keys, t_args, _ = _new_task(k, t, None, trace)
        keys += t_keys
        args += t_args
    return Call("create_many", keys, args, _created_many)


def send(k: Keys, task_id: str, data: Any, traced: bool = False) -> Call[Sent]:
    """tasks.send: DELIVERED or KEPT; raises TASK_NOT_FOUND / NOT_WAITING_FOR_MESSAGE.
    `traced`: a DELIVERED reply tells the wait it ended (WaitEnd), for its span."""

    def decode(res: Any) -> Sent:
        if res[0] == "DELIVERED":
            return Sent(res[0], _wait_end(res[2:]) if len(res) > 2 else None)
        if res[0] == "KEPT":
            return Sent(res[0])
        raise refused(res[0], task_id, res)

    return Call(
        "send",
        [k.task(task_id), k.inbox(task_id), k.due()],
        [k.prefix, task_id, _J(data), int(traced)],
        decode,
    )


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
    if len(res) > 2:  # {status, 'WAIT', kind, ...}: a wait ended, traced
        return Wake(res[0], None, _wait_end(res[2:]))
    return Wake(res[0], res[1] if len(res) > 1 else None)


def wake(k: Keys, task_member: str, traced: bool = False) -> Call[Wake]:
    """The due entry `task_member` (app/id) is acted on: see wake.lua.  `traced`: a reply that
    ends a wait tells it (WaitEnd), for its span."""
    _, _, tid = task_member.partition("/")
    return Call("wake", [k.task(tid), k.due()], [k.prefix, tid, task_member, int(traced)], _wake)


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


# Scripts that take many calls in one (claim.lua, commit.lua): script -> (KEYS, ARGV after the
# shared ARGV[1]) per call.  Their reply is the list of each call's reply, so a call of one gets
# [reply]; Scripts.run_many joins neighbouring calls of one partition (runner.merge).
MANY = {"claim": (5, 7), "commit": (2, 7)}


def _one(res: Any) -> Any:
    """A call's own reply from the list a MANY script answers with (an error in it raised)."""
    r = res[0]
    if isinstance(r, Exception):
        raise r
    return r


def _claim(res: Any) -> Claim:
    res = _one(res)
    return Claim(res[0], dict(zip(res[1::2], res[2::2], strict=True)))


def claim(
    k: Keys,
    stream: str,
    entry_id: str,
    task_id: str,
    job_id: str,
    executor_id: str,
    lease: str,
    permits: bool = False,
    traced: bool = False,
) -> Call[Claim]:
    """`permits`: the executor holds a permit under `lease` for each of the task's limit keys.
    `traced`: the reply carries the task's `trace` field too (when it has one)."""
    return Call(
        "claim",
        [k.task(task_id), stream, k.executors(), k.running(executor_id), k.deadlines()],
        [k.prefix, task_id, entry_id, job_id, executor_id, lease, "1" if permits else "", int(traced)],
        _claim,
    )


class Withdrawal(NamedTuple):
    """withdraw.lua: WITHDRAWN (the slot is free), GONE (no offer, no run), or TAKEN: create.lua
    claimed a run under the offer, `entry_id` and `fields` its pushed entry (as read from the
    pushed stream: t, lease and what claim.lua answers)."""

    code: str
    entry_id: str
    fields: dict[str, str]


def _withdrawal(res: Any) -> Withdrawal:
    if res[0] == "TAKEN":
        return Withdrawal(res[0], res[1], dict(zip(res[2::2], res[3::2], strict=True)))
    return Withdrawal(res[0], "", {})


def offer(k: Keys, executor_id: str, app: str, lease: str, acks: Sequence[str] = ()) -> Call[Code]:
    """Push delivery: a free run slot of the executor offered for a task of `app` created in this
    partition, the run to be claimed under `lease`; `acks`: pushed entries already started.
    OK, or DEAD (not registered)."""
    return Call(
        "offer",
        [k.executors(), k.idle(app), k.pushed(executor_id)],
        [k.prefix, executor_id, lease, *acks],
        _code,
    )


def withdraw(k: Keys, executor_id: str, app: str, lease: str, acks: Sequence[str] = ()) -> Call[Withdrawal]:
    """The offer under `lease` taken back: WITHDRAWN, TAKEN (with the run pushed under it) or GONE."""
    return Call(
        "withdraw",
        [k.idle(app), k.pushed(executor_id)],
        [k.prefix, executor_id, lease, *acks],
        _withdrawal,
    )


def _commit(res: Any) -> Commit:
    res = _one(res)
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
    later: bool = False,
) -> Call[Fail]:
    """A failed attempt: retried after `retry_delay` s, or the run fails (None); `later`: the
    handler asked for it (RetryLater), not counted as a retry."""
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
            "1" if later else "",
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


# --------------------------------------------------------------------------- flow control
# (SPEC §2a; the design and the order of these calls: stagewise/storage/limits.py)


class Acquired(NamedTuple):
    """limit_acquire.lua: OK (permit granted) or HELD (the task joined the key's held set), and
    the refs of held tasks the key woke, to put back on their streams (unblock.lua)."""

    code: str
    woken: list[str]


def _acquired(res: Any) -> Acquired:
    return Acquired(res[0], list(res[1:]))


def limit_acquire(
    kk: Keys, key: str, ref: str, permit: str, limit: Sequence[Any], order: str, check_after: float
) -> Call[Acquired]:
    """A permit of the limit `key` (`kk`: its partition) for the run `ref`, under `permit`;
    `limit` is the task's [key, concurrency, rate, per]."""
    _, conc, rate, per = limit
    args = [kk.prefix, key, ref, permit, int(conc), int(rate), repr(float(per)), order, check_after]
    return Call("limit_acquire", [kk.limit(key)], args, _acquired)


def limit_release(
    kk: Keys, key: str, permits: Sequence[str] = (), refs: Sequence[str] = ()
) -> Call[list[str]]:
    """Gives back `permits` and drops `refs` (woken tasks no longer held) of `key`, then pumps
    it: the refs of the held tasks it woke."""
    args = [kk.prefix, key, _J(list(permits)), _J(list(refs))]
    return Call("limit_release", [kk.limit(key)], args, list)


def limit_recheck(kk: Keys, grant: str, after: float) -> Call[Code]:
    """A permit whose run is still RUNNING: looked at again `after` s later (OK, or GONE)."""
    return Call("limit_recheck", [kk.limit_grants()], [kk.prefix, grant, after], _code)


class Paused(NamedTuple):
    """limit_pause.lua: until when the key is paused (None: not paused), and the woken refs."""

    paused_until: float | None
    woken: list[str]


def _paused(res: Any) -> Paused:
    return Paused(float(res[0]) if res[0] else None, list(res[1:]))


def limit_pause(kk: Keys, key: str, until: float | None, after: float | None = None) -> Call[Paused]:
    """Pauses `key` until `until`, or for `after` s from Redis's clock (RetryLater's
    pause_key); neither: resumes it."""
    args = [kk.prefix, key, "" if until is None else repr(until), "" if after is None else repr(after)]
    return Call("limit_pause", [kk.limit(key)], args, _paused)


def hold(k: Keys, stream: str, entry_id: str, task_id: str, job_id: str, key: str) -> Call[Code]:
    """The task of an entry is held back by `key`: HELD, REQUEUED (woken meanwhile) or STALE."""
    return Call("hold", [k.task(task_id), stream], [k.prefix, task_id, entry_id, job_id, key], _code)


def unblock(k: Keys, task_id: str, job_id: str) -> Call[Code]:
    """A held task woken by its key: REQUEUED (a fresh hint), WOKE (marked) or STALE."""
    return Call("unblock", [k.task(task_id)], [k.prefix, task_id, job_id], _code)


def permit_check(k: Keys, task_id: str, lease: str) -> Call[Code]:
    """Is the run of a permit (`lease`) still RUNNING: LIVE, or GONE (and the lease revoked)."""
    return Call("permit_check", [k.task(task_id), k.revoked()], [k.prefix, lease], _code)


def outbox_done(k: Keys, entry: str) -> Call[Code]:
    """The permits of an outbox entry were given back: OK, or GONE."""
    return Call("outbox_done", [k.limit_outbox()], [k.prefix, entry], _code)


def app_pause(k: Keys, app: str, until: float | None) -> Call[float | None]:
    """apps.pause (until) / apps.resume (None) in partition `k`: until when the app is paused."""
    return Call(
        "app_pause",
        [k.paused_apps()],
        [k.prefix, app, "" if until is None else repr(until)],
        lambda res: float(res[0]) if res[0] else None,
    )
