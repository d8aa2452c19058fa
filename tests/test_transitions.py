"""The state transitions of SPEC §6, driven one Lua script at a time against the real Redis.

No daemons: the test plays the executor (read the stream, claim, commit, fail, hand back) and
the manager (wake, expire, reap) by hand through the scripts, with the calls the daemons use
(stagewise.storage.calls: each script's KEYS, ARGV and decoded reply), and reads the outcome
back from the task hash.  Allowed
transitions end in the right status, stage, results and error, with the task in exactly one
status index; refused ones and stale (fenced) writes change nothing at all.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from stagewise.config import Settings
from stagewise.errors import INVALID_TRANSITION, NOT_WAITING_FOR_MESSAGE, TASK_EXISTS, RpcError
from stagewise.keys import GROUP, Keys, member
from stagewise.manager.query import Filters
from stagewise.manager.scheduler import Scheduler
from stagewise.manager.store import Store
from stagewise.models import parse_task
from stagewise.policy import retry_delay
from stagewise.status import UNINDEXED, Status
from stagewise.storage import calls
from stagewise.storage.calls import Call, Claim, Code, Commit, Fail, Wake
from tests.helpers import wait_for

APP = "demo"
NON_TERMINAL = ["IDLE", "QUEUED", "RUNNING", "WAITING", "SUSPENDED"]
TERMINAL = ["FINISHED", "FAILED", "CANCELED"]


def call(value: Any = "x") -> dict[str, Any]:
    return {"method": "demo.echo", "params": {"value": value}}


def timer(seconds: float) -> dict[str, Any]:
    return {"timer": seconds}


def message(**spec: Any) -> dict[str, Any]:
    return {"message": spec}


@dataclass(frozen=True)
class Lease:
    """What an executor holds after a claim: the run's job id, its lease token, its id."""

    job: str
    lease: str
    executor: str


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(r: Any, redis_url: str, namespace: str) -> Store:
    return Store(r, Settings(redis_url=redis_url, namespace=namespace))


@pytest.fixture
def k(namespace: str) -> Keys:
    return Keys(namespace, 0)


# --------------------------------------------------------------------------- the client


async def create(store: Store, on_conflict: str = "error", **doc: Any) -> str:
    doc.setdefault("app", APP)
    doc.setdefault("commands", [call()])
    task = parse_task(doc)
    await store.create(task, on_conflict)
    return task.id


async def cancel(store: Store, tid: str, dry_run: bool = False) -> dict[str, Any]:
    [res] = await store.batch("cancel", [tid], dry_run)
    return res


# --------------------------------------------------------------------------- the executor


async def read_entry(
    r: Any, k: Keys, app: str = APP, consumer: str = "ex1"
) -> tuple[str, dict[str, str]] | None:
    got = await r.xreadgroup(GROUP, consumer, {k.stream(app): ">"}, count=1)
    if not got:
        return None
    [(_, [(entry_id, fields)])] = got
    return entry_id, fields


async def register(store: Store, k: Keys, executor_id: str) -> None:
    info = ["app", APP, "host", "test", "pid", 1]
    assert await store.scripts.run(calls.ping(k, executor_id, info)) is True


async def claim(
    store: Store,
    k: Keys,
    task_id: str,
    entry_id: str,
    job_id: str,
    executor_id: str,
    lease: str,
    *,
    registered: bool = True,
) -> Claim:
    if registered:
        await register(store, k, executor_id)
    return await store.scripts.run(
        calls.claim(k, k.stream(APP), entry_id, task_id, job_id, executor_id, lease)
    )


async def take(store: Store, r: Any, k: Keys, tid: str, executor: str = "ex1", lease: str = "") -> Lease:
    """Reads the next stream entry (it must be for `tid`) and claims it (with `lease`, or a
    random one)."""
    entry = await read_entry(r, k, APP, executor)
    assert entry is not None and entry[1]["t"] == tid, entry
    lease = lease or uuid.uuid4().hex
    res = await claim(store, k, tid, entry[0], entry[1]["j"], executor, lease)
    assert res.code == "OK", res
    return Lease(entry[1]["j"], lease, executor)


async def commit(store: Store, k: Keys, tid: str, run: Lease, stage: int, result: Any = None) -> Commit:
    return await store.scripts.run(calls.commit(k, tid, run.job, run.lease, stage, json.dumps(result), "ok"))


def stage_error(stage: int, code: str = "STAGE_ERROR") -> dict[str, Any]:
    return {"code": code, "message": "boom", "stage": stage, "type": "ValueError"}


async def fail(
    store: Store, k: Keys, tid: str, run: Lease, stage: int, *, delay: float = 60.0, final: bool = False
) -> Fail:
    """A failed attempt, retried after `delay` while the task's retries last (the executor's
    decision: stagewise.policy.retry_delay), or failing the run now when `final`."""
    h = await store.raw(tid)
    assert h is not None
    retry = retry_delay(int(h["retries"]), int(h["max_retries"]), 1.0, final)
    retry = None if retry is None else delay
    return await store.scripts.run(calls.fail(k, tid, run.job, run.lease, stage, stage_error(stage), retry))


async def handback(store: Store, k: Keys, tid: str, run: Lease) -> Code:
    return await store.scripts.run(calls.handback(k, tid, run.job, run.lease))


# --------------------------------------------------------------------------- the manager


async def wake(store: Store, k: Keys, tid: str) -> Wake:
    return await store.scripts.run(calls.wake(k, member(APP, tid)))


async def wake_when_due(store: Store, k: Keys, tid: str, within: float = 2.0) -> Wake:
    """Polls wake.lua itself (idempotent: NOT_DUE changes nothing) until it acts."""

    async def acted() -> Wake | None:
        res = await wake(store, k, tid)
        return None if res.code == "NOT_DUE" else res

    return await wait_for(acted, timeout=within, what=f"wake of {tid}")


async def expire(store: Store, k: Keys, tid: str) -> Code:
    return await store.scripts.run(calls.expire(k, member(APP, tid)))


async def mark_dead(store: Store, k: Keys, executor: str, dead_after: float = 0) -> calls.Mark:
    """The first step of the manager's reap: with `dead_after` 0 any last ping is old enough."""
    return await store.scripts.run(calls.mark_dead(k, executor, dead_after))


async def reap(store: Store, k: Keys, tid: str, executor: str, max_interruptions: int = 5) -> Code:
    """The manager's reap of one run: the executor is declared dead (at once), then the run
    it held at the mark is taken back."""
    assert (await mark_dead(store, k, executor)).code == "DEAD"
    return await store.scripts.run(calls.reap(k, member(APP, tid), executor, max_interruptions))


# --------------------------------------------------------------------------- reading back


async def check(store: Store, r: Any, k: Keys, tid: str, status: str, **expected: Any) -> dict[str, Any]:
    """The TaskView has `status` (and the `expected` fields); the task is in that status's
    indexes (global and per app) and in no other status's; a RUNNING task (no status index) is
    in the deadlines zset, and only then."""
    v = await store.get(tid)
    assert v["status"] == status, v
    for name, value in expected.items():
        assert v[name] == value, (name, v[name], value)
    for s in Status:
        indexed = s == status and s not in UNINDEXED
        assert (await r.zscore(k.idx_status(s), tid) is not None) == indexed, s
        assert (await r.zscore(k.idx_app_status(APP, s), tid) is not None) == indexed, s
    assert (await r.zscore(k.deadlines(), member(APP, tid)) is not None) == (status == "RUNNING")
    return v


async def snapshot(r: Any, k: Keys, tid: str) -> dict[str, Any]:
    """Everything a transition of `tid` may write."""
    m = member(APP, tid)
    return {
        "hash": await r.hgetall(k.task(tid)),
        "attempts": await r.lrange(k.attempts(tid), 0, -1),
        "inbox": await r.lrange(k.inbox(tid), 0, -1),
        "due": await r.zscore(k.due(), m),
        "deadline": await r.zscore(k.deadlines(), m),
        "stream": await r.xlen(k.stream(APP)),
        "index": {s.value: await r.zscore(k.idx_status(s), tid) for s in Status},
    }


async def pending(r: Any, k: Keys) -> int:
    return int((await r.xpending(k.stream(APP), GROUP))["pending"])


async def make(store: Store, r: Any, k: Keys, status: str, **doc: Any) -> tuple[str, Lease | None]:
    """A task brought to `status` through the scripts; with the lease of its last claim."""
    run = None
    if status == "IDLE":
        tid = await create(store, run_at=time.time() + 3600, **doc)
    elif status == "WAITING":
        tid = await create(store, commands=[call(), timer(60)], **doc)
        run = await take(store, r, k, tid)
        assert (await commit(store, k, tid, run, 0, "a"))[0] == "WAITING"
    elif status == "SUSPENDED":
        tid = await create(store, max_retries=1, **doc)
        run = await take(store, r, k, tid)
        assert (await fail(store, k, tid, run, 0))[0] == "RETRY"
    else:
        tid = await create(store, **doc)
        if status in ("RUNNING", "FINISHED", "FAILED"):
            run = await take(store, r, k, tid)
        if status == "FINISHED":
            res, stage = ["RUN", 0], 0
            while res[0] == "RUN":
                res = await commit(store, k, tid, run, stage, "a")  # type: ignore[arg-type]
                stage += 1
            assert res[0] == "FINISHED", res
        elif status == "FAILED":
            assert (await fail(store, k, tid, run, 0))[0] == "FAILED"  # type: ignore[arg-type]
        elif status == "CANCELED":
            assert (await cancel(store, tid))["changed"]
    await check(store, r, k, tid, status)
    return tid, run


# =========================================================================== create


@pytest.mark.parametrize("on_conflict", ["error", "replace"])
async def test_create_many_script_writes_nothing_unless_every_task_can_be_stored(
    store: Store, r: Any, k: Keys, on_conflict: str
) -> None:
    """create_many.lua checks every task of its partition before it writes one: an id that
    exists (error) or a task that has not ended (replace) refuses the whole batch."""
    held = await create(store, commands=[message()])  # WAITING: exists, and has not ended
    new = [parse_task({"app": APP, "id": f"{held}-{i}", "commands": [call()]}) for i in range(3)]
    batch = [*new[:2], parse_task({"app": APP, "id": held, "commands": [call()]}), new[2]]
    name, keys, args, _ = calls.create_many(k, batch, on_conflict)  # one partition: one call
    before = await snapshot(r, k, held)
    res = await store.scripts.run(Call(name, keys, args, list))  # the reply as the script sent it
    assert res == (["EXISTS", held] if on_conflict == "error" else ["INVALID_TRANSITION", held, "WAITING"])
    assert await snapshot(r, k, held) == before
    assert not any([await r.exists(k.task(t.id)) for t in new])
    assert await r.xlen(k.stream(APP)) == before["stream"]
    res = await store.scripts.run(Call(name, keys[:12] + keys[18:], args[:14] + args[20:], list))
    assert res == ["CREATED", 3]
    assert [(await store.get(t.id))["status"] for t in new] == ["QUEUED"] * 3


@pytest.mark.parametrize(
    "doc",
    [
        {"commands": [call()]},
        {"commands": [timer(5), call()]},
        {"commands": [message()]},
        {"commands": [call()], "run_at": 4_000_000_000},
        {"commands": [call()], "enabled": False},
        {"commands": [call()], "cron": "* * * * *", "tags": ["a"], "group": "g", "notify": True},
    ],
    ids=["queued", "timer", "message", "run_at", "disabled", "cron"],
)
async def test_create_replies_with_the_stored_hash(
    store: Store, r: Any, k: Keys, doc: dict[str, Any]
) -> None:
    """create.lua sends back only what it set; with what was sent, that is the whole hash."""
    h = await store.create(parse_task({"app": APP, **doc}))
    assert h == await r.hgetall(k.task(h["id"]))


async def test_create_due_now_is_queued_with_a_stream_entry(store: Store, r: Any, k: Keys) -> None:
    """No executor offers a slot (push delivery): the task waits on its app stream."""
    tid = await create(store, commands=[call(), call()])
    v = await check(store, r, k, tid, "QUEUED", stage=0, results=[], attempt=0, retries=0)
    assert v["queued_at"] is not None and v["next_run"] is None
    # the group was made with the stream, at 0: the entry queued by the create is delivered
    groups = await r.xinfo_groups(k.stream(APP))
    assert [g["name"] for g in groups] == [GROUP]
    entries = await r.xrange(k.stream(APP))
    assert [f for _, f in entries] == [{"t": tid, "j": v["job_id"]}]
    assert await r.hget(k.task(tid), "entry") == entries[0][0]  # the hint's id, kept with the task
    assert await read_entry(r, k) == (entries[0][0], {"t": tid, "j": v["job_id"]})
    assert await r.zscore(k.due(), member(APP, tid)) is None


async def test_create_due_now_with_an_offer_is_claimed_for_the_offering_executor(
    store: Store, r: Any, k: Keys
) -> None:
    """Push delivery: an executor's offer (offer.lua) is taken by the create, which claims the
    run in its name under the offered lease (QUEUED -> RUNNING in the create's step) and puts
    the claim's answer on the executor's pushed stream, not a hint on the app stream."""
    await register(store, k, "ex1")
    assert await store.scripts.run(calls.offer(k, "ex1", APP, "p.7")) == Code("OK")
    assert await r.lrange(k.idle(APP), 0, -1) == ["ex1 p.7"]
    tid = await create(store, commands=[call(), call()])
    v = await check(store, r, k, tid, "RUNNING", stage=0, attempt=1, executor_id="ex1")
    assert await r.hmget(k.task(tid), "lease", "entry") == ["p.7", ""]
    assert await r.lrange(k.idle(APP), 0, -1) == []  # taken
    assert await r.sismember(k.running("ex1"), member(APP, tid))
    assert await r.zscore(k.deadlines(), member(APP, tid)) is not None
    assert await r.xlen(k.stream(APP)) == 0
    got = await r.xreadgroup(GROUP, "ex1", {k.pushed("ex1"): ">"})
    [(_, [(eid, f)])] = got
    assert f["t"] == tid and f["lease"] == "p.7" and f["job_id"] == v["job_id"]
    assert f["stage"] == "0" and f["attempt"] == "1" and json.loads(f["doc"])["app"] == APP
    # fenced like a claimed run: the offered lease commits, another does not
    run = Lease(v["job_id"], "p.7", "ex1")
    assert (await commit(store, k, tid, Lease(v["job_id"], "p.8", "ex1"), 0, 1)).code == "STALE"
    assert (await commit(store, k, tid, run, 0, 1)).code == "RUN"
    # the next offer acknowledges and deletes the pushed entry the executor has started
    assert await store.scripts.run(calls.offer(k, "ex1", APP, "p.9", [eid])) == Code("OK")
    assert await r.xlen(k.pushed("ex1")) == 0
    assert [g["pending"] for g in await r.xinfo_groups(k.pushed("ex1"))] == [0]


async def test_an_offer_is_not_taken_by_a_task_with_limits_a_paused_app_or_a_dead_executor(
    store: Store, r: Any, k: Keys
) -> None:
    await register(store, k, "ex1")
    assert await store.scripts.run(calls.offer(k, "ex1", APP, "p.1")) == Code("OK")
    tid = await create(store, limits=[{"key": "k", "concurrency": 1}])
    await check(store, r, k, tid, "QUEUED")
    await r.hset(k.paused_apps(), APP, time.time() + 3600)
    tid = await create(store)
    await check(store, r, k, tid, "QUEUED")
    assert await r.lrange(k.idle(APP), 0, -1) == ["ex1 p.1"]  # still offered
    await r.hdel(k.paused_apps(), APP)
    # declared dead: its offers go with the mark, and a create queues the task
    assert (await mark_dead(store, k, "ex1")).code == "DEAD"
    assert await r.lrange(k.idle(APP), 0, -1) == []
    tid = await create(store)
    await check(store, r, k, tid, "QUEUED")
    # not registered: no offer at all; an offer left by an executor that is gone is dropped
    assert await store.scripts.run(calls.offer(k, "ex1", APP, "p.2")) == Code("DEAD")
    await r.rpush(k.idle(APP), "ex9 q.1")
    tid = await create(store)
    await check(store, r, k, tid, "QUEUED")
    assert await r.lrange(k.idle(APP), 0, -1) == []


async def test_withdraw_frees_an_offer_or_hands_over_the_run_taken_under_it(
    store: Store, r: Any, k: Keys
) -> None:
    await register(store, k, "ex1")
    assert await store.scripts.run(calls.offer(k, "ex1", APP, "p.1")) == Code("OK")
    w = await store.scripts.run(calls.withdraw(k, "ex1", APP, "p.1"))
    assert w.code == "WITHDRAWN" and await r.lrange(k.idle(APP), 0, -1) == []
    assert (await store.scripts.run(calls.withdraw(k, "ex1", APP, "p.1"))).code == "GONE"
    assert await store.scripts.run(calls.offer(k, "ex1", APP, "p.2")) == Code("OK")
    tid = await create(store)
    w = await store.scripts.run(calls.withdraw(k, "ex1", APP, "p.2"))
    assert w.code == "TAKEN" and w.fields["t"] == tid and w.fields["lease"] == "p.2"
    assert await r.xlen(k.pushed("ex1")) == 0  # handed over: not read again from the stream
    # the run is ours under p.2: a hand-back puts it back on its stream, fenced as ever
    v = await store.get(tid)
    assert await store.scripts.run(calls.handback(k, tid, v["job_id"], "p.2")) == Code("QUEUED")
    await check(store, r, k, tid, "QUEUED")


async def test_create_in_the_future_is_idle_with_a_due_entry(store: Store, r: Any, k: Keys) -> None:
    run_at = time.time() + 3600
    tid = await create(store, run_at=run_at)
    v = await check(store, r, k, tid, "IDLE", stage=0)
    assert v["next_run"] == pytest.approx(run_at, abs=1e-3)
    assert await r.zscore(k.due(), member(APP, tid)) == pytest.approx(run_at, abs=1e-3)
    assert await r.xlen(k.stream(APP)) == 0
    assert [g["name"] for g in await r.xinfo_groups(k.stream(APP))] == [GROUP]


@pytest.mark.parametrize("run_at", [None, 3600])
async def test_create_disabled_is_idle_and_never_due(store: Store, r: Any, k: Keys, run_at: Any) -> None:
    tid = await create(store, enabled=False, run_at=run_at and time.time() + run_at)
    v = await check(store, r, k, tid, "IDLE")
    assert v["next_run"] is None
    assert await r.zscore(k.due(), member(APP, tid)) is None
    assert await r.xlen(k.stream(APP)) == 0
    assert await wake(store, k, tid) == Wake("NOT_DUE", None)


@pytest.mark.parametrize("old", TERMINAL)
async def test_create_replace_over_a_terminal_task_starts_afresh(
    store: Store, r: Any, k: Keys, old: str
) -> None:
    tid, _ = await make(store, r, k, old, id="t1", commands=[call(), call()])
    before = await store.get(tid)
    assert await store.attempts(tid) or old == "CANCELED"
    await create(store, "replace", id=tid, commands=[call("new")], tags=["fresh"])
    v = await check(store, r, k, tid, "QUEUED", stage=0, stages=1, results=[], attempt=0, retries=0)
    assert v["tags"] == ["fresh"] and v["error"] is None and v["exit_code"] is None
    assert v["job_id"] != before["job_id"] and v["created"] >= before["created"]
    assert await store.attempts(tid) == []
    if old == "CANCELED":  # canceled while QUEUED: its old entry is still unread, and stale
        entry = await read_entry(r, k)
        assert entry is not None and entry[1]["j"] == before["job_id"]
        assert await claim(store, k, tid, entry[0], entry[1]["j"], "ex1", "l0") == Claim("STALE", {})
    # the new run is on the stream; a claim takes it
    run = await take(store, r, k, tid)
    assert run.job == v["job_id"]
    await check(store, r, k, tid, "RUNNING", attempt=1)


# =========================================================================== wake (IDLE)


async def test_idle_is_queued_by_wake_once_due(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, run_at=time.time() + 0.2)
    before = await snapshot(r, k, tid)
    assert await wake(store, k, tid) == Wake("NOT_DUE", None)  # refused: nothing changes
    assert await snapshot(r, k, tid) == before
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    v = await check(store, r, k, tid, "QUEUED", stage=0)
    assert v["next_run"] is None and v["queued_at"] is not None
    assert await r.zscore(k.due(), member(APP, tid)) is None
    entry = await read_entry(r, k)
    assert entry is not None and entry[1] == {"t": tid, "j": v["job_id"]}
    assert await wake(store, k, tid) == Wake("NOT_DUE", None)  # the due entry is gone: acted once


@pytest.mark.parametrize(
    "first", [timer(60), message(), message(timeout=30)], ids=["timer", "message", "message_timeout"]
)
async def test_idle_due_at_a_wait_stage_waits_without_an_executor(
    store: Store, r: Any, k: Keys, first: dict[str, Any]
) -> None:
    """A run due at a timer or message stage is advanced by wake.lua itself: it waits at once
    and nothing is put on the stream for an executor to claim and hand on."""
    tid = await create(store, run_at=time.time() + 0.1, commands=[first, call()])
    assert await wake_when_due(store, k, tid) == Wake("WAITING", None)
    await check(store, r, k, tid, "WAITING", stage=0, executor_id=None)
    assert await r.xlen(k.stream(APP)) == 0
    timeout = first.get("timer") or (first.get("message") or {}).get("timeout")
    due = await r.zscore(k.due(), member(APP, tid))
    assert (due is None) == (timeout is None)


async def test_idle_due_at_a_message_already_sent_goes_on_to_the_call(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, run_at=time.time() + 0.1, commands=[message(), call()])
    await store.send(tid, {"early": 1})  # kept in the inbox: the message stage is ahead
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    await check(store, r, k, tid, "QUEUED", stage=1, results=[{"early": 1}])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 1, "b") == Commit("FINISHED", 2, [])


async def test_retry_from_the_first_stage_waits_at_its_timer(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[timer(0.1), call()], max_retries=1, restart_policy="first")
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    run = await take(store, r, k, tid)
    assert (await fail(store, k, tid, run, 1, delay=0.1)).code == "RETRY"
    await check(store, r, k, tid, "SUSPENDED", stage=0, results=[])
    assert await wake_when_due(store, k, tid) == Wake("WAITING", None)
    await check(store, r, k, tid, "WAITING", stage=0)
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    await check(store, r, k, tid, "QUEUED", stage=1, results=[None])


async def test_a_run_queued_at_a_wait_stage_is_advanced_by_the_claim(store: Store, r: Any, k: Keys) -> None:
    """Versions before 0.2 queued such runs for an executor to hand on; claim.lua advances
    them itself (the entry is dropped as STALE), so an executor only ever runs calls."""
    tid = await create(store, commands=[timer(60), call()])
    v = await store.get(tid)
    assert v["status"] == "WAITING"
    # what an old wake.lua left: QUEUED at stage 0 (a timer) with a stream entry
    await r.hset(k.task(tid), "status", "QUEUED")
    await r.zrem(k.idx_status("WAITING"), tid)
    await r.zrem(k.idx_app_status(APP, "WAITING"), tid)
    await r.zrem(k.due(), member(APP, tid))
    await r.xadd(k.stream(APP), {"t": tid, "j": v["job_id"]})
    entry = await read_entry(r, k)
    assert entry is not None
    assert await claim(store, k, tid, entry[0], entry[1]["j"], "ex1", "l1") == Claim("STALE", {})
    await check(store, r, k, tid, "WAITING", stage=0, executor_id=None)
    assert await r.zscore(k.due(), member(APP, tid)) is not None
    assert await pending(r, k) == 0


# =========================================================================== claim


async def test_claim_runs_the_task_and_acknowledges_the_entry(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store)
    entry = await read_entry(r, k, consumer="ex1")
    assert entry is not None and await pending(r, k) == 1
    res = await claim(store, k, tid, entry[0], entry[1]["j"], "ex1", "lease-1")
    assert res[0] == "OK"
    h = res.fields
    stored = await r.hgetall(k.task(tid))
    # what the executor runs the task with, as stored after the claim
    assert set(h) == {"doc", "kws", "job_id", "stage", "stages", "retries", "attempt", "exec_deadline"}
    assert h == {f: stored[f] for f in h}
    assert stored["executor_id"] == "ex1" and stored["lease"] == "lease-1" and h["attempt"] == "1"
    v = await check(store, r, k, tid, "RUNNING", stage=0, attempt=1, executor_id="ex1", locked=True)
    assert v["exec_deadline"] == pytest.approx(time.time() + 300, abs=5)
    assert await pending(r, k) == 0
    assert await r.sismember(k.running("ex1"), member(APP, tid))
    assert await r.zscore(k.deadlines(), member(APP, tid)) == pytest.approx(v["exec_deadline"], abs=1e-3)


@pytest.mark.parametrize("why", ["canceled", "replaced", "already_claimed"])
async def test_claim_of_an_entry_whose_task_is_not_queued_is_stale(
    store: Store, r: Any, k: Keys, why: str
) -> None:
    tid = await create(store)
    if why == "already_claimed":  # a duplicate hint (as a redelivery makes) for a run ex1 holds
        v = await store.get(tid)
        await r.xadd(k.stream(APP), {"t": tid, "j": v["job_id"]})
        await take(store, r, k, tid, executor="ex1")
    entry = await read_entry(r, k, consumer="ex2")
    assert entry is not None and entry[1]["t"] == tid
    if why == "canceled":
        await cancel(store, tid)
    elif why == "replaced":  # QUEUED again, but under a new job id: the entry is the old run's
        await cancel(store, tid)
        await create(store, "replace", id=tid)
        assert (await store.get(tid))["job_id"] != entry[1]["j"]
    before = await snapshot(r, k, tid)
    assert await claim(store, k, tid, entry[0], entry[1]["j"], "ex2", "lease-2") == Claim("STALE", {})
    assert await snapshot(r, k, tid) == before
    assert await pending(r, k) == 0
    assert not await r.sismember(k.running("ex2"), member(APP, tid))


async def test_claim_by_an_unregistered_executor_is_dead_and_leaves_the_entry_pending(
    store: Store, r: Any, k: Keys
) -> None:
    tid = await create(store)
    entry = await read_entry(r, k, consumer="ghost")
    assert entry is not None
    before = await snapshot(r, k, tid)
    res = await claim(store, k, tid, entry[0], entry[1]["j"], "ghost", "lease-g", registered=False)
    assert res == Claim("DEAD", {})
    assert await snapshot(r, k, tid) == before
    assert await pending(r, k) == 1
    await check(store, r, k, tid, "QUEUED")


async def test_claim_replayed_with_the_same_lease_answers_the_same(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store)
    entry = await read_entry(r, k)
    assert entry is not None
    first = await claim(store, k, tid, entry[0], entry[1]["j"], "ex1", "lease-1")
    assert first[0] == "OK"
    again = await claim(store, k, tid, entry[0], entry[1]["j"], "ex1", "lease-1")
    # the same hash (a reply may list a field twice; the later value is the current one)
    assert again == first
    await check(store, r, k, tid, "RUNNING", attempt=1)
    assert await pending(r, k) == 0
    # a different lease on the same entry is not a replay
    assert await claim(store, k, tid, entry[0], entry[1]["j"], "ex1", "lease-2") == Claim("STALE", {})
    await check(store, r, k, tid, "RUNNING", attempt=1)


# =========================================================================== commit


async def test_commit_goes_on_to_the_next_call(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), call(), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, {"a": 1}) == Commit("RUN", 1, [])
    v = await check(store, r, k, tid, "RUNNING", stage=1, results=[{"a": 1}], locked=True)
    assert v["executor_id"] == "ex1"
    assert await commit(store, k, tid, run, 1, [2]) == Commit("RUN", 2, [])
    await check(store, r, k, tid, "RUNNING", stage=2, results=[{"a": 1}, [2]])
    attempts = await store.attempts(tid)
    assert [(a["stage"], a["outcome"], a["job_id"], a["executor_id"]) for a in attempts] == [
        (0, "ok", run.job, "ex1"),
        (1, "ok", run.job, "ex1"),
    ]


async def test_commit_of_the_last_stage_finishes(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    assert await commit(store, k, tid, run, 1, "b") == Commit("FINISHED", 2, [])
    v = await check(store, r, k, tid, "FINISHED", stage=2, results=["a", "b"], exit_code=0, error=None)
    assert v["executor_id"] is None and not v["locked"]
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    assert await r.zscore(k.deadlines(), member(APP, tid)) is None


@pytest.mark.parametrize(
    ("command", "due_in"),
    [(timer(60), 60), (message(), None), (message(timeout=30), 30)],
    ids=["timer", "message", "message_with_timeout"],
)
async def test_commit_before_a_wait_stage_waits(
    store: Store, r: Any, k: Keys, command: dict[str, Any], due_in: float | None
) -> None:
    tid = await create(store, commands=[call(), command, call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("WAITING", 1, [])
    v = await check(store, r, k, tid, "WAITING", stage=1, results=["a"], executor_id=None, locked=False)
    due = await r.zscore(k.due(), member(APP, tid))
    if due_in is None:
        assert due is None and v["wait_deadline"] is None
    else:
        assert due == pytest.approx(time.time() + due_in, abs=5)
        assert v["wait_deadline"] == pytest.approx(due, abs=1e-3)
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    assert await r.zscore(k.deadlines(), member(APP, tid)) is None


@pytest.mark.parametrize("last", [True, False], ids=["then_finished", "then_running"])
async def test_a_stage_result_is_committed_once(store: Store, r: Any, k: Keys, last: bool) -> None:
    tid = await create(store, commands=[call()] if last else [call(), call()])
    run = await take(store, r, k, tid)
    assert (await commit(store, k, tid, run, 0, "once"))[0] == ("FINISHED" if last else "RUN")
    before = await snapshot(r, k, tid)
    # a second commit of the same stage by the same run is a replay (its reply was lost):
    # recognised while the run still holds the task, refused once it does not; never applied
    assert await commit(store, k, tid, run, 0, "twice") == (
        Commit("STALE", None, []) if last else Commit("REPLAY", 1, [])
    )
    assert await snapshot(r, k, tid) == before
    assert (await store.get(tid))["results"][0] == "once"
    assert [a["stage"] for a in await store.attempts(tid)] == [0]


async def test_a_continued_run_whose_commit_reply_was_lost_is_handed_back_at_the_next_stage(
    store: Store, r: Any, k: Keys
) -> None:
    """A commit that moved the run on to its next call stage (RUN) and whose reply was lost: the
    executor's replay is answered REPLAY, it hands the run back (executor/run.py), and the next
    stage is claimed anew with the committed result kept; nothing of stage 0 runs again."""
    tid = await create(store, commands=[call(), call(), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    assert await commit(store, k, tid, run, 0, "a") == Commit("REPLAY", 1, [])  # the resend
    assert await handback(store, k, tid, run) == Code("QUEUED")
    await check(store, r, k, tid, "QUEUED", stage=1, results=["a"], executor_id=None)
    run2 = await take(store, r, k, tid, executor="ex2")
    assert run2.job == run.job and run2.lease != run.lease
    assert await commit(store, k, tid, run, 1, "stale") == Commit("STALE", None, [])  # the old lease
    assert await commit(store, k, tid, run2, 1, "b") == Commit("RUN", 2, [])
    assert await commit(store, k, tid, run2, 2, "c") == Commit("FINISHED", 3, [])
    await check(store, r, k, tid, "FINISHED", results=["a", "b", "c"])
    attempts = await store.attempts(tid)
    assert [(a["stage"], a["outcome"]) for a in attempts] == [
        (0, "ok"),
        (1, "handed_back"),
        (1, "ok"),
        (2, "ok"),
    ]


# =========================================================================== WAITING -> ...


async def test_timer_ends_and_the_task_is_queued(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), timer(0.2), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("WAITING", 1, [])
    assert await wake(store, k, tid) == Wake("NOT_DUE", None)
    await check(store, r, k, tid, "WAITING", stage=1)
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    v = await check(store, r, k, tid, "QUEUED", stage=2, results=["a", None])
    assert v["wait_deadline"] is None and v["job_id"] == run.job
    assert await r.zscore(k.due(), member(APP, tid)) is None
    run2 = await take(store, r, k, tid, executor="ex2")
    assert run2.job == run.job
    assert await commit(store, k, tid, run2, 2, "c") == Commit("FINISHED", 3, [])
    await check(store, r, k, tid, "FINISHED", results=["a", None, "c"])


async def test_trailing_timer_finishes_the_task(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), timer(0.2)])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("WAITING", 1, [])
    assert await wake_when_due(store, k, tid) == Wake("FINISHED", None)
    await check(store, r, k, tid, "FINISHED", stage=2, results=["a", None], exit_code=0)
    assert await r.xlen(k.stream(APP)) == 1  # nothing queued for an executor


@pytest.mark.parametrize("spec", [{}, {"timeout": 30}, {"timeout": 30, "on_timeout": "fail"}])
async def test_message_received_queues_the_task(store: Store, r: Any, k: Keys, spec: dict[str, Any]) -> None:
    tid = await create(store, commands=[call(), message(**spec), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("WAITING", 1, [])
    await store.send(tid, {"ok": [1, 2]})
    v = await check(store, r, k, tid, "QUEUED", stage=2, results=["a", {"ok": [1, 2]}])
    assert v["wait_deadline"] is None
    assert await r.zscore(k.due(), member(APP, tid)) is None
    assert await r.llen(k.inbox(tid)) == 0
    entry = await read_entry(r, k)
    assert entry is not None and entry[1] == {"t": tid, "j": run.job}


async def test_message_to_a_trailing_message_stage_finishes(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[message()])
    await check(store, r, k, tid, "WAITING", stage=0)
    await store.send(tid, "done")
    await check(store, r, k, tid, "FINISHED", stage=1, results=["done"], exit_code=0)


@pytest.mark.parametrize("when", ["QUEUED", "RUNNING"])
async def test_message_sent_early_is_taken_at_once(store: Store, r: Any, k: Keys, when: str) -> None:
    tid = await create(store, commands=[call(), message(), call()])
    if when == "QUEUED":
        await store.send(tid, {"early": 1})
        await check(store, r, k, tid, "QUEUED", stage=0, results=[])
        run = await take(store, r, k, tid)
    else:
        run = await take(store, r, k, tid)
        await store.send(tid, {"early": 1})
    assert await r.lrange(k.inbox(tid), 0, -1) == ['{"early":1}']
    await check(store, r, k, tid, "RUNNING")
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 2, [(1, '{"early":1}')])
    v = await check(store, r, k, tid, "RUNNING", stage=2, results=["a", {"early": 1}])
    assert v["executor_id"] == "ex1"
    assert await r.llen(k.inbox(tid)) == 0


async def test_messages_sent_early_are_kept_in_order(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), timer(0.2), message(), call(), message()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("WAITING", 1, [])
    await store.send(tid, "m1")  # WAITING at the timer: kept for stage 2
    await store.send(tid, "m2")  # kept for stage 4
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    await check(store, r, k, tid, "QUEUED", stage=3, results=["a", None, "m1"])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 3, "d") == Commit("FINISHED", 5, [])
    await check(store, r, k, tid, "FINISHED", results=["a", None, "m1", "d", "m2"])


async def test_message_timeout_continue_records_null(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), message(timeout=0.2, on_timeout="continue"), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("WAITING", 1, [])
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    await check(store, r, k, tid, "QUEUED", stage=2, results=["a", None], error=None)


async def test_message_timeout_fail_fails_the_run(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), message(timeout=0.2, on_timeout="fail"), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("WAITING", 1, [])
    assert await wake_when_due(store, k, tid) == Wake("FAILED", None)
    v = await check(store, r, k, tid, "FAILED", stage=1, results=["a"], exit_code=1)
    assert v["error"]["code"] == "MESSAGE_TIMEOUT" and v["error"]["stage"] == 1
    assert await r.zscore(k.due(), member(APP, tid)) is None
    with pytest.raises(RpcError) as e:  # too late: the run is over
        await store.send(tid, "late")
    assert e.value.code == NOT_WAITING_FOR_MESSAGE


# =========================================================================== fail / retry


async def test_failed_attempt_without_retries_fails(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), call()], max_retries=0)
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    assert await fail(store, k, tid, run, 1) == Fail("FAILED", None)
    v = await check(store, r, k, tid, "FAILED", stage=1, results=["a"], exit_code=1, retries=0)
    assert v["error"] == stage_error(1)
    assert v["executor_id"] is None and not v["locked"]
    assert await r.zscore(k.due(), member(APP, tid)) is None
    assert await r.zscore(k.deadlines(), member(APP, tid)) is None
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    attempts = await store.attempts(tid)
    assert [(a["stage"], a["outcome"], a["error"]) for a in attempts] == [
        (0, "ok", None),
        (1, "error", stage_error(1)),
    ]


async def test_failed_attempt_with_retries_is_suspended_then_queued(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), call()], max_retries=2)
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    res = await fail(store, k, tid, run, 1, delay=0.2)
    assert res[0] == "RETRY"
    v = await check(store, r, k, tid, "SUSPENDED", stage=1, results=["a"], retries=1, executor_id=None)
    assert v["next_run"] == pytest.approx(float(res[1]), abs=1e-3)
    assert v["next_run"] == pytest.approx(time.time() + 0.2, abs=1)
    assert await r.zscore(k.due(), member(APP, tid)) == pytest.approx(v["next_run"], abs=1e-3)
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    v = await check(store, r, k, tid, "QUEUED", stage=1, results=["a"], retries=1, next_run=None)
    assert await r.zscore(k.due(), member(APP, tid)) is None
    run2 = await take(store, r, k, tid, executor="ex2")
    assert run2.job == run.job
    await check(store, r, k, tid, "RUNNING", stage=1, attempt=2, executor_id="ex2")


async def test_last_retry_failing_fails_the_run(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, max_retries=1)
    run = await take(store, r, k, tid)
    assert (await fail(store, k, tid, run, 0, delay=0))[0] == "RETRY"
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    run = await take(store, r, k, tid)
    assert await fail(store, k, tid, run, 0) == Fail("FAILED", None)
    await check(store, r, k, tid, "FAILED", retries=1, error=stage_error(0))


async def test_failure_marked_final_fails_whatever_retries_are_left(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, max_retries=5)
    run = await take(store, r, k, tid)
    assert await fail(store, k, tid, run, 0, final=True) == Fail("FAILED", None)
    await check(store, r, k, tid, "FAILED", retries=0)


@pytest.mark.parametrize(("policy", "stage", "results"), [("current", 2, ["a", "b"]), ("first", 0, [])])
async def test_restart_policy_of_a_retry(
    store: Store, r: Any, k: Keys, policy: str, stage: int, results: list[Any]
) -> None:
    tid = await create(store, commands=[call(), call(), call()], max_retries=1, restart_policy=policy)
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    assert await commit(store, k, tid, run, 1, "b") == Commit("RUN", 2, [])
    assert (await fail(store, k, tid, run, 2, delay=0))[0] == "RETRY"
    await check(store, r, k, tid, "SUSPENDED", stage=stage, results=results)
    h = await r.hgetall(k.task(tid))
    assert [f for f in sorted(h) if f.startswith("r.")] == [f"r.{i}" for i in range(len(results))]
    assert await wake_when_due(store, k, tid) == Wake("QUEUED", None)
    await check(store, r, k, tid, "QUEUED", stage=stage, results=results)
    run = await take(store, r, k, tid)
    for s in range(stage, 3):
        await commit(store, k, tid, run, s, f"{s}'")
    expected = ["a", "b", "2'"] if policy == "current" else ["0'", "1'", "2'"]
    await check(store, r, k, tid, "FINISHED", results=expected)


# =========================================================================== reap / handback / expire


@pytest.mark.parametrize("how", ["reap", "handback"])
async def test_lost_or_handed_back_run_is_queued_again_at_its_stage(
    store: Store, r: Any, k: Keys, how: str
) -> None:
    tid = await create(store, commands=[call(), call()])
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    if how == "reap":
        assert await reap(store, k, tid, "ex1") == Code("QUEUED")
    else:
        assert await handback(store, k, tid, run) == Code("QUEUED")
    v = await check(store, r, k, tid, "QUEUED", stage=1, results=["a"], executor_id=None, locked=False)
    assert v["job_id"] == run.job
    h = await r.hgetall(k.task(tid))
    assert h["interruptions"] == ("1" if how == "reap" else "0")
    assert [h["entry"]] == [e for e, _ in await r.xrevrange(k.stream(APP), count=1)]  # its fresh hint
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    assert await r.zscore(k.deadlines(), member(APP, tid)) is None
    attempts = await store.attempts(tid)
    assert (attempts[-1]["stage"], attempts[-1]["outcome"]) == (1, "lost" if how == "reap" else "handed_back")
    run2 = await take(store, r, k, tid, executor="ex2")
    assert await commit(store, k, tid, run2, 1, "b") == Commit("FINISHED", 2, [])
    await check(store, r, k, tid, "FINISHED", results=["a", "b"], attempt=2)


async def test_reap_of_a_task_the_executor_no_longer_holds_is_skipped(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store)
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("FINISHED", 1, [])
    before = await snapshot(r, k, tid)
    assert await reap(store, k, tid, "ex1") == Code("SKIP")
    assert await snapshot(r, k, tid) == before


async def test_executor_lost_too_often_on_one_stage_fails(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), call()])
    run = await take(store, r, k, tid, executor="ex0")
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    for i in range(1, 3):  # max_interruptions 2: lost twice on stage 1 is still re-queued
        assert await reap(store, k, tid, run.executor, max_interruptions=2) == Code("QUEUED")
        run = await take(store, r, k, tid, executor=f"ex{i}")
        assert await handback(store, k, tid, run) == Code("QUEUED")  # graceful: not counted
        run = await take(store, r, k, tid, executor=f"ex{i}")
    assert await reap(store, k, tid, run.executor, max_interruptions=2) == Code("FAILED")
    v = await check(store, r, k, tid, "FAILED", stage=1, results=["a"], exit_code=1)
    assert v["error"]["code"] == "EXECUTOR_LOST" and v["error"]["stage"] == 1
    assert not await r.sismember(k.running(run.executor), member(APP, tid))


async def test_interruptions_are_counted_per_stage(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), call()])
    run = await take(store, r, k, tid)
    assert await reap(store, k, tid, "ex1", max_interruptions=1) == Code("QUEUED")  # stage 0, once
    run = await take(store, r, k, tid, executor="ex2")
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    assert await reap(store, k, tid, "ex2", max_interruptions=1) == Code("QUEUED")  # stage 1, once
    await check(store, r, k, tid, "QUEUED", stage=1)


@pytest.mark.parametrize("max_retries", [0, 3])
async def test_execution_deadline_fails_the_run_and_tells_the_executor(
    store: Store, r: Any, k: Keys, max_retries: int
) -> None:
    tid = await create(store, commands=[call(), call()], max_exec_timeout=1, max_retries=max_retries)
    run = await take(store, r, k, tid)
    v = await store.get(tid)
    assert v["exec_deadline"] == pytest.approx(time.time() + 1, abs=0.5)
    before = await snapshot(r, k, tid)
    assert await expire(store, k, tid) == Code("NOT_DUE")
    assert await snapshot(r, k, tid) == before

    async def expired() -> Code | None:
        res = await expire(store, k, tid)
        return None if res == Code("NOT_DUE") else res

    assert await wait_for(expired, timeout=2.5, what="execution deadline") == Code("FAILED")
    v = await check(store, r, k, tid, "FAILED", stage=0, exit_code=1, executor_id=None, retries=0)
    assert v["error"]["code"] == "EXEC_TIMEOUT" and v["error"]["stage"] == 0
    assert await r.zscore(k.deadlines(), member(APP, tid)) is None
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    ctl = [json.loads(m) for m in await r.lrange(k.control("ex1"), 0, -1)]
    assert ctl == [{"cancel": tid, "job_id": run.job}]
    assert (await store.attempts(tid))[-1]["outcome"] == "timeout"


# =========================================================================== declared dead


async def registry(r: Any, k: Keys, executor: str) -> dict[str, Any]:
    """Where an executor stands in the registry of a partition."""
    return {
        "live": await r.zscore(k.executors(), executor) is not None,
        "dead": await r.zscore(k.dead_executors(), executor) is not None,
        "info": await r.exists(k.executor(executor)) == 1,
        "running": await r.smembers(k.running(executor)),
        "reaping": await r.hgetall(k.reaping(executor)),
    }


async def test_an_executor_declared_dead_can_claim_and_ping_no_more(store: Store, r: Any, k: Keys) -> None:
    held = await create(store)
    waiting = await create(store)
    run = await take(store, r, k, held)
    entry = await read_entry(r, k)  # read before the mark, claimed after it
    assert entry is not None and entry[1]["t"] == waiting
    assert await mark_dead(store, k, "ex1") == calls.Mark("DEAD", APP, False)
    assert await registry(r, k, "ex1") == {
        "live": False,
        "dead": True,
        "info": True,
        "running": set(),
        "reaping": {member(APP, held): run.lease},  # what it held, with the lease of the claim
    }
    before = await snapshot(r, k, waiting)
    claimed = await store.scripts.run(
        calls.claim(k, k.stream(APP), entry[0], waiting, entry[1]["j"], "ex1", "lease-late")
    )
    assert claimed == Claim("DEAD", {})
    assert await snapshot(r, k, waiting) == before and await pending(r, k) == 1
    assert await store.scripts.run(calls.ping(k, "ex1")) is False  # the heartbeat is refused too
    assert not await r.zscore(k.executors(), "ex1")  # and does not register it again
    assert [e["id"] for e in await store.executors()] == []
    # marking again changes nothing: the reap is still to be finished
    assert await mark_dead(store, k, "ex1") == calls.Mark("DEAD", APP, False)
    assert (await registry(r, k, "ex1"))["reaping"] == {member(APP, held): run.lease}


async def test_a_ping_that_lands_before_the_mark_wins(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store)
    run = await take(store, r, k, tid)
    sec, usec = await r.time()
    await r.zadd(k.executors(), {"ex1": sec + usec / 1e6 - 100})  # its heartbeat lapsed ...
    stale = await r.zrangebyscore(k.executors(), "-inf", sec - 15)
    assert stale == ["ex1"]  # ... as the reaper reads it
    assert await store.scripts.run(calls.ping(k, "ex1")) is True  # then a ping lands
    assert await mark_dead(store, k, "ex1", dead_after=15) == calls.Mark("ALIVE", "", False)
    assert await registry(r, k, "ex1") == {
        "live": True,
        "dead": False,
        "info": True,
        "running": {member(APP, tid)},
        "reaping": {},
    }
    assert await commit(store, k, tid, run, 0, "a") == Commit("FINISHED", 1, [])
    assert await mark_dead(store, k, "nobody") == calls.Mark("GONE", "", False)


async def test_a_reap_cut_short_by_a_manager_crash_is_finished_by_the_next(
    store: Store, r: Any, k: Keys
) -> None:
    first, second, unread = await create(store), await create(store), await create(store)
    runs = {tid: await take(store, r, k, tid) for tid in (first, second)}
    entry = await read_entry(r, k)  # read by ex1, never claimed
    assert entry is not None and entry[1]["t"] == unread
    # manager 1: declares ex1 dead, takes back one run, and dies
    assert (await mark_dead(store, k, "ex1")).code == "DEAD"
    assert await store.scripts.run(calls.reap(k, member(APP, first), "ex1", 5)) == Code("QUEUED")
    # manager 2 finds ex1 among the dead, though it is no longer among the executors
    sec, usec = await r.time()
    await Scheduler(store).reap(k, sec + usec / 1e6)
    await check(store, r, k, first, "QUEUED", executor_id=None, locked=False)
    await check(store, r, k, second, "QUEUED", executor_id=None, locked=False)
    assert (await r.hgetall(k.task(first)))["interruptions"] == "1"  # taken back once, not twice
    await check(store, r, k, unread, "QUEUED")
    assert await pending(r, k) == 0  # its unclaimed entry went back on the stream
    assert await registry(r, k, "ex1") == {
        "live": False,
        "dead": False,
        "info": False,
        "running": set(),
        "reaping": {},
    }
    assert "ex1" not in {c["name"] for c in await r.xinfo_consumers(k.stream(APP), GROUP)}
    # every task runs again, and the old runs are fenced off
    got = {}
    for _ in range(3):
        e = await read_entry(r, k, consumer="ex2")
        assert e is not None
        got[e[1]["t"]] = e
    assert set(got) == {first, second, unread}
    assert await commit(store, k, first, runs[first], 0, "late") == Commit("STALE", None, [])


async def test_the_reap_does_not_count_the_time_redis_was_away(
    r: Any, redis_url: str, namespace: str, k: Keys
) -> None:
    """An executor whose last ping fell in a span in which the manager could not use Redis
    either (Scheduler.outages) is given the rest of that span, and the executors' retry backoff,
    on top of dead_seconds: its pings were refused, it did not die.  An outage before its last
    ping gives it nothing: past dead_seconds it is reaped, its run re-queued."""
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace, ping_interval=0.1, dead_after=2))
    await register(store, k, "ex1")
    tid = await create(store)
    await take(store, r, k, tid)
    last = float(await r.zscore(k.executors(), "ex1"))
    here = time.time()
    offset = await store.server_time() - here  # Redis's clock minus ours
    await wait_for(lambda: _later_than(r, last + 0.3), what="dead_seconds (0.2 s) to pass")
    scheduler = Scheduler(store)
    scheduler.outages[0].spans = [(here - 0.05, here + 0.2)]  # Redis away across its last ping
    assert 0.2 <= scheduler.outages[0].within(here - 0.1, here + 1) <= 0.26
    await scheduler.reap(k, await store.server_time(), offset)
    assert (await registry(r, k, "ex1"))["live"]
    await check(store, r, k, tid, "RUNNING")
    scheduler.outages[0].spans = [(here - 2.0, here - 1.0)]  # an outage before its last ping
    assert scheduler.outages[0].within(here - 0.1, here + 1) == 0
    await scheduler.reap(k, await store.server_time(), offset)
    assert not (await registry(r, k, "ex1"))["live"]
    await check(store, r, k, tid, "QUEUED", executor_id=None, locked=False)


async def test_an_executor_registered_again_during_its_reap_is_not_removed(
    store: Store, r: Any, k: Keys
) -> None:
    lost, again, new = await create(store), await create(store), await create(store)
    old_lost = await take(store, r, k, lost)
    old_again = await take(store, r, k, again)
    assert (await mark_dead(store, k, "ex1")).code == "DEAD"
    # ex1 learns it was refused: it gives `again` back, registers, and claims `again` and `new`
    assert await handback(store, k, again, old_again) == Code("QUEUED")
    ours = {tid: await take(store, r, k, tid) for tid in (new, again)}  # registers it again
    assert await mark_dead(store, k, "ex1", dead_after=60) == calls.Mark("DEAD", APP, True)
    sec, usec = await r.time()
    await Scheduler(store).reap(k, sec + usec / 1e6)
    # the run held at the mark is taken back; the runs claimed since are not
    await check(store, r, k, lost, "QUEUED", executor_id=None)
    for tid, run in ours.items():
        await check(store, r, k, tid, "RUNNING", executor_id="ex1")
        assert (await r.hgetall(k.task(tid)))["lease"] == run.lease
    assert await registry(r, k, "ex1") == {
        "live": True,
        "dead": False,
        "info": True,
        "running": {member(APP, again), member(APP, new)},
        "reaping": {},
    }
    assert await store.scripts.run(calls.ping(k, "ex1")) is True
    for tid, run in ours.items():
        assert await commit(store, k, tid, run, 0, "b") == Commit("FINISHED", 1, [])
    assert await commit(store, k, lost, old_lost, 0, "late") == Commit("STALE", None, [])


async def test_forget_waits_for_runs_marked_since(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store)
    await take(store, r, k, tid)
    assert (await mark_dead(store, k, "ex1")).code == "DEAD"
    assert await store.scripts.run(calls.forget(k, "ex1")) == Code("BUSY")
    assert (await registry(r, k, "ex1"))["dead"]
    assert await store.scripts.run(calls.reap(k, member(APP, tid), "ex1", 5)) == Code("QUEUED")
    assert await store.scripts.run(calls.forget(k, "ex1")) == Code("GONE")
    assert await store.scripts.run(calls.forget(k, "ex1")) == Code("GONE")  # idempotent
    assert not any((await registry(r, k, "ex1")).values())


async def test_a_consumer_is_dropped_only_with_nothing_pending(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store)
    entry = await read_entry(r, k)
    assert entry is not None
    stream = k.stream(APP)
    assert await store.scripts.run(calls.drop_consumer(k, stream, "ex1")) == Code("PENDING")
    assert await pending(r, k) == 1  # the entry is still there to give back
    res = await store.scripts.run(calls.redeliver(k, stream, tid, entry[0], entry[1]["j"]))
    assert res == Code("REQUEUED")
    [(fresh, _)] = await r.xrange(stream, f"({entry[0]}", "+")
    assert await r.hget(k.task(tid), "entry") == fresh  # the task points at its fresh hint
    assert await store.scripts.run(calls.drop_consumer(k, stream, "ex1")) == Code("DROPPED")
    assert await r.xinfo_consumers(stream, GROUP) == []
    assert await store.scripts.run(calls.drop_consumer(k, k.stream("nope"), "ex1")) == Code("NONE")


# =========================================================================== reconciliation


async def report(
    store: Store, k: Keys, executor: str, settled: int, held: list[str], prefix: str = "p"
) -> None:
    """The executor's heartbeat with its report: leases `prefix`.<n>, claims settled up to
    `settled`, the runs of `held`."""
    assert await store.scripts.run(calls.ping(k, executor, None, calls.Report(prefix, settled, held))) is True


async def orphan(store: Store, k: Keys, tid: str, lease: str) -> calls.Orphan:
    return await store.scripts.run(calls.orphan(k, member(APP, tid), lease))


@pytest.mark.parametrize("why", ["unregistered", "not_held"])
async def test_a_running_task_no_live_executor_runs_is_queued_again_at_its_stage(
    store: Store, r: Any, k: Keys, why: str
) -> None:
    """Redis lost writes: the task is RUNNING at stage 1 in the name of ex1, which is no longer
    registered (its registry lost), or is live and reports it no longer holds the lease (it
    finished the run, and Redis lost the commit).  Taken back like a reap, not counted as an
    interruption; the old run's late writes are fenced off."""
    tid = await create(store, commands=[call(), call()])
    run = await take(store, r, k, tid, lease="p.1")
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    if why == "unregistered":
        await r.zrem(k.executors(), "ex1")
        await r.delete(k.executor("ex1"))
    else:
        await report(store, k, "ex1", settled=1, held=[])
    assert await orphan(store, k, tid, "p.1") == calls.Orphan("QUEUED", why)
    v = await check(store, r, k, tid, "QUEUED", stage=1, results=["a"], executor_id=None, locked=False)
    assert v["job_id"] == run.job
    h = await r.hgetall(k.task(tid))
    assert h["interruptions"] == "0" and h["lease"] == ""
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    assert await r.zscore(k.deadlines(), member(APP, tid)) is None
    assert [h["entry"]] == [e for e, _ in await r.xrevrange(k.stream(APP), count=1)]
    last = (await store.attempts(tid))[-1]
    assert (last["stage"], last["outcome"], last["executor_id"]) == (1, "lost", "ex1")
    assert await r.hget(k.metrics(APP), "orphans") == "1"
    # the old run is fenced off; taken again, the task finishes
    assert await commit(store, k, tid, run, 1, "late") == Commit("STALE", None, [])
    assert await handback(store, k, tid, run) == Code("STALE")
    run2 = await take(store, r, k, tid, executor="ex2")
    assert await commit(store, k, tid, run2, 1, "b") == Commit("FINISHED", 2, [])
    await check(store, r, k, tid, "FINISHED", results=["a", "b"])
    assert await orphan(store, k, tid, run2.lease) == calls.Orphan("SKIP", None)


@pytest.mark.parametrize(
    "case",
    ["held", "claim_in_flight", "other_prefix", "reported_before_the_claim", "never_reported", "declared_dead",
     "other_lease", "unregistered_and_reaped"],
)  # fmt: skip
async def test_a_run_its_executor_may_still_be_running_is_never_taken(
    store: Store, r: Any, k: Keys, case: str
) -> None:
    """Refused, with nothing written: the live executor reported the lease as held; its lease is
    above the watermark (a claim whose reply the executor has not processed yet) or of a prefix
    not the executor's; the executor has not reported since the claim (or never reports: an
    older version); the executor is declared dead (the reap's); the caller read another lease;
    the executor left the registry but its reap is not over."""
    tid = await create(store)
    if case == "reported_before_the_claim":
        await register(store, k, "ex1")
        await report(store, k, "ex1", settled=5, held=[])
    lease = {"claim_in_flight": "p.2", "other_prefix": "q.1"}.get(case, "p.1")
    run = await take(store, r, k, tid, lease=lease)
    expected = {
        "held": "HELD",
        "claim_in_flight": "UNSETTLED",
        "other_prefix": "UNSETTLED",
        "reported_before_the_claim": "UNREPORTED",
        "never_reported": "UNREPORTED",
        "declared_dead": "REAPING",
        "other_lease": "SKIP",
        "unregistered_and_reaped": "REAPING",
    }[case]
    if case in ("held", "claim_in_flight", "other_prefix"):
        await report(store, k, "ex1", settled=1, held=["p.1"] if case == "held" else [])
    elif case == "declared_dead":
        assert (await mark_dead(store, k, "ex1")).code == "DEAD"
    elif case == "unregistered_and_reaped":  # its reaping hash is still there
        assert (await mark_dead(store, k, "ex1")).code == "DEAD"
        await r.zrem(k.dead_executors(), "ex1")
    before = await snapshot(r, k, tid)
    running = await r.smembers(k.running("ex1"))
    asked = "p.9" if case == "other_lease" else run.lease
    assert await orphan(store, k, tid, asked) == calls.Orphan(expected, None)
    assert await snapshot(r, k, tid) == before
    assert await r.smembers(k.running("ex1")) == running
    assert await r.hget(k.metrics(APP), "orphans") is None
    assert await commit(store, k, tid, run, 0, "a") == Commit("FINISHED", 1, [])


async def requeue_lost(store: Store, r: Any, k: Keys, tid: str) -> Code:
    h = await r.hgetall(k.task(tid))
    return await store.scripts.run(calls.requeue_lost(k, tid, h["job_id"], h.get("entry", "")))


@pytest.mark.parametrize("how", ["deleted", "trimmed", "acked_without_a_claim", "stream_gone"])
async def test_a_queued_task_whose_hint_is_gone_gets_a_fresh_one(
    store: Store, r: Any, k: Keys, how: str
) -> None:
    """QUEUED -> SUSPENDED -> QUEUED in one step (lost delivery), with a fresh hint that an
    executor reads and claims; counted in the app's metrics."""
    tid = await create(store, commands=[call(), call()])
    old = await r.hget(k.task(tid), "entry")
    stream = k.stream(APP)
    if how == "deleted":
        assert await r.xdel(stream, old) == 1
    elif how == "trimmed":
        await r.xtrim(stream, maxlen=0, approximate=False)
    elif how == "acked_without_a_claim":  # delivered, then acknowledged in a past Redis lost
        assert (await read_entry(r, k)) is not None
        assert await r.xack(stream, GROUP, old) == 1
    else:
        await r.delete(stream)
    v0 = await store.get(tid)
    assert await requeue_lost(store, r, k, tid) == Code("REQUEUED")
    v = await check(store, r, k, tid, "QUEUED", stage=0, job_id=v0["job_id"])
    fresh = await r.hget(k.task(tid), "entry")
    assert [e for e, _ in await r.xrange(stream)][-1] == fresh
    assert fresh != old or how == "stream_gone"  # a stream made anew may give the same id again
    assert v["updated"] > v0["updated"]
    assert await r.hget(k.metrics(APP), "lost_deliveries") == "1"
    assert [g["name"] for g in await r.xinfo_groups(stream)] == [GROUP]
    assert await r.sismember(k.apps(), APP)
    run = await take(store, r, k, tid, executor="ex2")  # the fresh hint is delivered
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    assert await requeue_lost(store, r, k, tid) == Code("SKIP")  # RUNNING now


@pytest.mark.parametrize(
    "case", ["undelivered", "group_gone", "pending", "other_entry", "other_job", "not_queued"]
)
async def test_a_queued_task_whose_hint_is_there_is_left_alone(
    store: Store, r: Any, k: Keys, case: str
) -> None:
    """Refused, with nothing written: the hint waits undelivered on the stream (also when the
    group is gone: executors make it again at 0 and read it), or is pending on a consumer;
    the caller's fence (entry, job id, QUEUED) no longer matches."""
    tid = await create(store)
    h = await r.hgetall(k.task(tid))
    job, entry = h["job_id"], h["entry"]
    expected = "UNDELIVERED"
    if case == "group_gone":
        await r.xgroup_destroy(k.stream(APP), GROUP)
    elif case == "pending":  # delivered, not claimed yet
        assert await read_entry(r, k) is not None
        expected = "PENDING"
    elif case in ("other_entry", "other_job"):
        await r.xdel(k.stream(APP), entry)  # gone, but the caller's fence does not match
        entry, job = ("1-1", job) if case == "other_entry" else (entry, "other")
        expected = "SKIP"
    elif case == "not_queued":
        await take(store, r, k, tid)
        expected = "SKIP"
    before = await snapshot(r, k, tid)
    groups = await r.xinfo_groups(k.stream(APP))
    assert await store.scripts.run(calls.requeue_lost(k, tid, job, entry)) == Code(expected)
    assert await snapshot(r, k, tid) == before
    assert await r.xinfo_groups(k.stream(APP)) == groups
    assert await r.hget(k.metrics(APP), "lost_deliveries") is None


async def test_a_queued_task_without_a_recorded_hint_gets_one(store: Store, r: Any, k: Keys) -> None:
    """Queued by an older version, which kept no entry: a fresh hint whose id is kept; the old
    hint, if it is still there, is claimed STALE after the fresh one."""
    tid = await create(store)
    await r.hdel(k.task(tid), "entry")
    job = await r.hget(k.task(tid), "job_id")
    assert await store.scripts.run(calls.requeue_lost(k, tid, job, "")) == Code("HINTED")
    entries = [e for e, _ in await r.xrange(k.stream(APP))]
    assert len(entries) == 2 and await r.hget(k.task(tid), "entry") == entries[1]
    await check(store, r, k, tid, "QUEUED")
    assert await r.hget(k.metrics(APP), "lost_deliveries") is None
    await take(store, r, k, tid)
    second = await read_entry(r, k)
    assert second is not None
    assert await claim(store, k, tid, second[0], job, "ex1", "l2") == Claim("STALE", {})


async def test_the_reconcile_role_takes_back_only_the_runs_no_live_executor_runs(
    store: Store, r: Any, k: Keys
) -> None:
    """Scheduler.orphans over every RUNNING task: ex1 reported after its claims, holding p.2,
    settled up to p.3 (p.4: a claim in flight); ex2 left the registry; ex3 is declared dead."""
    runs = {}
    for name, executor, lease in [
        ("orphan", "ex1", "p.1"), ("held", "ex1", "p.2"), ("in_flight", "ex1", "p.4"),
        ("unregistered", "ex2", "x.1"), ("dead", "ex3", "y.1"),
    ]:  # fmt: skip
        tid = await create(store, id=name)
        runs[tid] = await take(store, r, k, tid, executor=executor, lease=lease)
    await report(store, k, "ex1", settled=3, held=["p.2"])
    await r.zrem(k.executors(), "ex2")
    assert (await mark_dead(store, k, "ex3")).code == "DEAD"
    sec, usec = await r.time()
    scheduler = Scheduler(store)
    assert await scheduler.orphans(k, sec + usec / 1e6) == 2
    for tid in ("orphan", "unregistered"):
        await check(store, r, k, tid, "QUEUED", executor_id=None)
    for tid in ("held", "in_flight", "dead"):
        await check(store, r, k, tid, "RUNNING")
    assert await scheduler.orphans(k, sec + usec / 1e6) == 0  # nothing more to take
    assert await r.hget(k.metrics(APP), "orphans") == "2"


async def test_the_reconcile_role_walks_the_queued_tasks_a_bounded_number_per_pass(
    r: Any, redis_url: str, namespace: str, k: Keys
) -> None:
    """Five tasks queued in one step (one score: the walk goes on by id) and one after, all past
    the grace period (dead_seconds); the hints of the five are gone.  With 2 a pass, the walk
    goes through them from its cursor, 2, 2 and 1, then starts from the oldest again."""
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace, ping_interval=0.01, dead_after=1))
    await store.create_many(
        [parse_task({"id": f"a{i}", "app": APP, "commands": [call()]}) for i in range(5)], ""
    )
    await r.xtrim(k.stream(APP), maxlen=0, approximate=False)
    await create(store, id="b")  # its hint is there
    scores = {tid: s for tid, s in await r.zrange(k.idx_status("QUEUED"), 0, -1, withscores=True)}
    assert len({scores[f"a{i}"] for i in range(5)}) == 1 and scores["b"] > scores["a0"]
    sec, usec = await r.time()
    now = sec + usec / 1e6 + 0.05  # every task past the grace period; the fresh hints are not
    await wait_for(lambda: _later_than(r, now), what="the grace period to pass")
    scheduler = Scheduler(store)
    scheduler.reconcile_batch = 2
    got = [await scheduler.lost_deliveries(k, now) for _ in range(5)]
    assert got == [2, 2, 1, 0, 0]
    assert await r.hget(k.metrics(APP), "lost_deliveries") == "5"
    assert not await r.exists(k.reconcile_cursor())  # the last pass went to the end
    for tid in [f"a{i}" for i in range(5)] + ["b"]:
        await check(store, r, k, tid, "QUEUED")
    hinted = {f["t"] for _, f in await r.xrange(k.stream(APP))}
    assert hinted == {"a0", "a1", "a2", "a3", "a4", "b"}


async def _later_than(r: Any, t: float) -> bool:
    sec, usec = await r.time()
    return bool(sec + usec / 1e6 > t)


# =========================================================================== cancel


@pytest.mark.parametrize("status", NON_TERMINAL)
async def test_cancel_from_each_non_terminal_status(store: Store, r: Any, k: Keys, status: str) -> None:
    tid, run = await make(store, r, k, status)
    res = await cancel(store, tid)
    assert res == {"id": tid, "status": "CANCELED", "changed": True, "error": None}
    v = await check(store, r, k, tid, "CANCELED", exit_code=130, executor_id=None, locked=False)
    assert v["error"]["code"] == "CANCELED"
    assert v["next_run"] is None and v["wait_deadline"] is None and v["exec_deadline"] is None
    assert await r.zscore(k.due(), member(APP, tid)) is None
    assert await r.zscore(k.deadlines(), member(APP, tid)) is None
    assert not await r.sismember(k.running("ex1"), member(APP, tid))
    ctl = [json.loads(m) for m in await r.lrange(k.control("ex1"), 0, -1)]
    assert ctl == ([{"cancel": tid, "job_id": run.job}] if status == "RUNNING" and run else [])
    assert await wake(store, k, tid) == Wake("NOT_DUE", None)


@pytest.mark.parametrize("status", NON_TERMINAL)
async def test_cancel_dry_run_changes_nothing(store: Store, r: Any, k: Keys, status: str) -> None:
    tid, _ = await make(store, r, k, status)
    before = await snapshot(r, k, tid)
    res = await cancel(store, tid, dry_run=True)
    assert res == {"id": tid, "status": "CANCELED", "changed": True, "error": None}
    assert await snapshot(r, k, tid) == before
    assert await r.llen(k.control("ex1")) == 0


@pytest.mark.parametrize("status", TERMINAL)
@pytest.mark.parametrize("dry_run", [False, True])
async def test_cancel_of_a_terminal_task_is_refused(
    store: Store, r: Any, k: Keys, status: str, dry_run: bool
) -> None:
    tid, _ = await make(store, r, k, status)
    before = await snapshot(r, k, tid)
    res = await cancel(store, tid, dry_run=dry_run)
    assert res["status"] == status and res["changed"] is False and res["error"]
    assert "INVALID_TRANSITION" in res["error"]
    assert await snapshot(r, k, tid) == before


async def test_cancel_of_an_unknown_task(store: Store) -> None:
    assert await cancel(store, "nope") == {
        "id": "nope",
        "status": None,
        "changed": False,
        "error": "TASK_NOT_FOUND",
    }


# =========================================================================== refused


@pytest.mark.parametrize("status", NON_TERMINAL)
async def test_create_replace_over_a_non_terminal_task_is_refused(
    store: Store, r: Any, k: Keys, status: str
) -> None:
    tid, _ = await make(store, r, k, status)
    before = await snapshot(r, k, tid)
    with pytest.raises(RpcError) as e:
        await create(store, "replace", id=tid, commands=[call("new")])
    assert e.value.code == INVALID_TRANSITION
    assert e.value.data["from"] == status and "to" in e.value.data
    assert await snapshot(r, k, tid) == before


@pytest.mark.parametrize("status", ["QUEUED", "FINISHED"])
async def test_create_over_an_existing_task(store: Store, r: Any, k: Keys, status: str) -> None:
    tid, _ = await make(store, r, k, status)
    before = await snapshot(r, k, tid)
    with pytest.raises(RpcError) as e:
        await create(store, "error", id=tid, commands=[call("new")])
    assert e.value.code == TASK_EXISTS
    assert await snapshot(r, k, tid) == before
    await create(store, "ignore", id=tid, commands=[call("new")])
    assert await snapshot(r, k, tid) == before


@pytest.mark.parametrize(
    ("status", "commands"),
    [
        ("FINISHED", [call()]),
        ("FAILED", [call(), message()]),  # a message stage ahead, but the run is over
        ("CANCELED", [call(), message()]),
        ("QUEUED", [call(), call()]),  # no message stage at all
        ("WAITING", [call(), timer(60), call()]),
        ("PASSED", [message(), call()]),  # the only message stage is behind
    ],
)
async def test_send_without_a_message_stage_ahead_is_refused(
    store: Store, r: Any, k: Keys, status: str, commands: list[Any]
) -> None:
    if status == "PASSED":
        tid = await create(store, commands=commands)
        await store.send(tid, "taken")
        await check(store, r, k, tid, "QUEUED", stage=1, results=["taken"])
    elif status == "WAITING":
        tid = await create(store, commands=commands)
        run = await take(store, r, k, tid)
        assert (await commit(store, k, tid, run, 0, "a"))[0] == "WAITING"
    else:
        tid, _ = await make(store, r, k, status, commands=commands)
    before = await snapshot(r, k, tid)
    with pytest.raises(RpcError) as e:
        await store.send(tid, "no")
    assert e.value.code == NOT_WAITING_FOR_MESSAGE
    assert await snapshot(r, k, tid) == before


async def test_send_more_messages_than_message_stages_ahead(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), message(), call(), message()])
    await store.send(tid, 1)
    await store.send(tid, 2)
    before = await snapshot(r, k, tid)
    assert before["inbox"] == ["1", "2"]
    with pytest.raises(RpcError) as e:
        await store.send(tid, 3)
    assert e.value.code == NOT_WAITING_FOR_MESSAGE
    assert await snapshot(r, k, tid) == before


async def test_send_to_an_unknown_task(store: Store) -> None:
    with pytest.raises(RpcError) as e:
        await store.send("nope", 1)
    assert e.value.code == 1001


# =========================================================================== fencing


@pytest.mark.parametrize(
    ("script", "stale"),
    [(s, w) for s in ("commit", "fail") for w in ("job", "lease", "old_stage", "future_stage")]
    + [("handback", "job"), ("handback", "lease")],  # handback is fenced by job id and lease only
)
async def test_stale_write_is_dropped(store: Store, r: Any, k: Keys, script: str, stale: str) -> None:
    tid = await create(store, commands=[call(), call(), call()], max_retries=3)
    run = await take(store, r, k, tid)
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    bad, stage = run, 1
    if stale == "job":
        bad = Lease(uuid.uuid4().hex, run.lease, run.executor)
    elif stale == "lease":
        bad = Lease(run.job, uuid.uuid4().hex, run.executor)
    else:
        stage = 0 if stale == "old_stage" else 2
    before = await snapshot(r, k, tid)
    if script == "commit":
        res = await commit(store, k, tid, bad, stage, "stale")
    elif script == "fail":
        res = await fail(store, k, tid, bad, stage)
    else:
        res = await handback(store, k, tid, bad)
    # an old stage of the same run and lease can only be a replayed commit: named so, not applied
    assert res[0] == ("REPLAY" if (script, stale) == ("commit", "old_stage") else "STALE")
    if script == "commit":
        assert res[1] == (1 if stale == "old_stage" else None)
    assert await snapshot(r, k, tid) == before
    # the holder of the run is unaffected
    assert await commit(store, k, tid, run, 1, "b") == Commit("RUN", 2, [])


@pytest.mark.parametrize("after", ["reap", "cancel", "expire", "handback", "reclaimed"])
async def test_old_executor_is_fenced_off(store: Store, r: Any, k: Keys, after: str) -> None:
    tid = await create(store, commands=[call(), call()], max_retries=3, max_exec_timeout=1)
    old = await take(store, r, k, tid, executor="old")
    if after in ("reap", "reclaimed"):
        assert await reap(store, k, tid, "old") == Code("QUEUED")
        if after == "reclaimed":
            await take(store, r, k, tid, executor="new")
    elif after == "handback":  # a second claim of the same run by another process of ours
        assert await handback(store, k, tid, old) == Code("QUEUED")
        await take(store, r, k, tid, executor="new")
    elif after == "cancel":
        assert (await cancel(store, tid))["changed"]
    else:

        async def expired() -> Code | None:
            res = await expire(store, k, tid)
            return None if res == Code("NOT_DUE") else res

        assert await wait_for(expired, timeout=2.5, what="execution deadline") == Code("FAILED")
    before = await snapshot(r, k, tid)
    assert await commit(store, k, tid, old, 0, "late") == Commit("STALE", None, [])
    assert await fail(store, k, tid, old, 0) == Fail("STALE", None)
    assert await handback(store, k, tid, old) == Code("STALE")
    assert await snapshot(r, k, tid) == before


# =========================================================================== bookkeeping


async def test_index_scores_follow_updated(store: Store, r: Any, k: Keys) -> None:
    tid = await create(store, commands=[call(), call(), call()], tags=["t1"], group="g1")
    run = await take(store, r, k, tid)
    h0 = await r.hgetall(k.task(tid))
    await wait_for(lambda: time.time() > float(h0["updated"]) + 0.01, timeout=1, what="clock to move on")
    assert await commit(store, k, tid, run, 0, "a") == Commit("RUN", 1, [])
    updated = float((await r.hgetall(k.task(tid)))["updated"])
    assert updated > float(h0["updated"])
    # RUNNING has no status index; the other indexes of a RUNNING task follow its updated, and a
    # list of the RUNNING tasks orders by it (stagewise.manager.query.Running)
    for key in (k.idx_tag("t1"), k.idx_group("g1")):
        assert await r.zscore(key, tid) == pytest.approx(updated, abs=1e-6), key
    [view] = (await store.list_tasks(Filters(status="RUNNING"), "desc", 10, None, False))["items"]
    assert view["id"] == tid and view["updated"] == pytest.approx(updated, abs=1e-6)
    assert await commit(store, k, tid, run, 1, "b") == Commit("RUN", 2, [])
    assert await commit(store, k, tid, run, 2, "c") == Commit("FINISHED", 3, [])
    updated = float((await r.hgetall(k.task(tid)))["updated"])
    for key in (k.idx_status("FINISHED"), k.idx_app_status(APP, "FINISHED"), k.idx_tag("t1")):
        assert await r.zscore(key, tid) == pytest.approx(updated, abs=1e-6), key


async def test_each_priority_has_its_own_stream_with_a_group(store: Store, r: Any, k: Keys) -> None:
    low = await create(store, priority=0)
    high = await create(store, priority=9)
    assert await r.smembers(k.apps()) == {APP, f"{APP}:9"}
    got = await r.xreadgroup(GROUP, "ex1", {k.stream(APP, 9): ">"}, count=10)
    assert [f["t"] for _, items in got for _, f in items] == [high]
    entry = await read_entry(r, k)
    assert entry is not None and entry[1]["t"] == low


# --------------------------------------------------------------------------- many runs per call


def test_run_many_joins_neighbouring_claims_and_commits_of_one_partition() -> None:
    """runner.merge: neighbours of a MANY script on one partition become one call (KEYS and ARGV
    after the prefix laid end to end); another script or partition starts a new one."""
    from stagewise.storage.runner import merge

    k0, k1 = Keys("ns", 0), Keys("ns", 1)
    c = [
        calls.claim(k0, k0.stream(APP), "1-0", "a", "j", "ex", "l1"),
        calls.claim(k0, k0.stream(APP), "2-0", "b", "j", "ex", "l2"),
        calls.claim(k1, k1.stream(APP), "3-0", "c", "j", "ex", "l3"),
        calls.commit(k1, "c", "j", "l3", 0, "null", "ok"),
        calls.commit(k1, "d", "j", "l4", 0, "null", "ok"),
        calls.handback(k1, "d", "j", "l4"),
    ]
    merged, groups = merge(c)
    assert groups == [2, 1, 2, 1]
    assert [m.script for m in merged] == ["claim", "claim", "commit", "handback"]
    assert merged[0].keys == c[0].keys + c[1].keys
    assert merged[0].args == c[0].args + c[1].args[1:]
    assert (len(c[0].keys), len(c[0].args)) == (5, 8)  # the callers' own calls are left as they were


async def test_claims_and_commits_sent_together_each_get_their_own_answer(
    store: Store, r: Any, k: Keys
) -> None:
    """Three claims (and a replay of one with a stale job id) in one run_many: each is decided on its
    own; then their commits in one run_many.  The shared keys written once per batch (indexes, running
    set, deadlines, metric counters) end as after one call per run."""
    ids = [await create(store) for _ in range(3)]
    await register(store, k, "ex1")
    got = await r.xreadgroup(GROUP, "ex1", {k.stream(APP): ">"}, count=10)
    entries = got[0][1]
    assert [f["t"] for _, f in entries] == ids
    before = await r.hgetall(k.metrics(APP))
    claims = [
        calls.claim(k, k.stream(APP), eid, f["t"], f["j"], "ex1", f"lease-{i}")
        for i, (eid, f) in enumerate(entries)
    ]
    stale = calls.claim(k, k.stream(APP), entries[0][0], ids[0], "not-the-job", "ex1", "lease-x")
    res = await store.scripts.run_many([*claims, stale])
    assert [x.code for x in res] == ["OK", "OK", "OK", "STALE"]
    assert await r.xpending(k.stream(APP), GROUP) == {"pending": 0, "min": None, "max": None, "consumers": []}
    assert sorted(await r.smembers(k.running("ex1"))) == sorted(member(APP, t) for t in ids)
    assert sorted(await r.zrange(k.deadlines(), 0, -1)) == sorted(member(APP, t) for t in ids)
    assert await r.zcard(k.idx_status("QUEUED")) == 0
    commits = [
        calls.commit(k, f["t"], f["j"], f"lease-{i}", 0, json.dumps(i), "ok", "demo.echo")
        for i, (_, f) in enumerate(entries)
    ]
    res = await store.scripts.run_many(commits)
    assert [x.code for x in res] == ["FINISHED"] * 3
    for i, t in enumerate(ids):
        h = await r.hgetall(k.task(t))
        assert (h["status"], h["r.0"]) == ("FINISHED", json.dumps(i))
        assert len(await r.lrange(k.attempts(t), 0, -1)) == 1
    assert sorted(await r.zrange(k.idx_status("FINISHED"), 0, -1)) == sorted(ids)
    assert await r.zcard(k.deadlines()) == 0
    assert await r.scard(k.running("ex1")) == 0
    after = await r.hgetall(k.metrics(APP))
    assert int(after["e|FINISHED"]) - int(before.get("e|FINISHED", 0)) == 3
    hist = sum(int(v) for f, v in after.items() if f.startswith("d|") and f.endswith("|ok|demo.echo"))
    assert (
        hist - sum(int(v) for f, v in before.items() if f.startswith("d|") and f.endswith("|ok|demo.echo"))
        == 3
    )
    # a replay of the batch (its reply lost): the same answers, nothing written twice
    res = await store.scripts.run_many(commits)
    assert [x.code for x in res] == ["STALE"] * 3
    assert int((await r.hgetall(k.metrics(APP)))["e|FINISHED"]) == int(after["e|FINISHED"])
