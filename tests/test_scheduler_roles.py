"""The scheduler's roles (manager/scheduler.py) run independently of each other.

No daemons: each test runs a `Scheduler` in-process against the session's Redis, with a short
tick, and creates the tasks it needs through the `Store` (no executor: a woken task stays
QUEUED in its stream).  What is checked:

- due work keeps flowing while a large retention clean is in its step: a task whose `run_at`
  comes is woken (IDLE -> QUEUED) while the clean has done half its work and not returned.
  The scheduler's old single loop ran the clean inline, so nothing was woken until it
  returned: these tests fail there;
- `run` ends after `stop` only once every role has finished the step it is in;
- a role that raises (a bug, or a lost Redis connection) is logged with its name and goes on
  at its next interval, and the other roles, and `run`, go on too.

A real clean of 10,000 tasks takes about 0.15 s, no longer than the few round trips of a due
step on a busy machine, so a test that merely raced the two would be flaky.  Instead
`CleanWatch` pauses the clean half-way, between two halves of its real scripts, for as long as
the test needs; it sits below `Store.clean`, so the old loop is held to account the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aredis

from stagewise import log
from stagewise.config import Settings
from stagewise.manager.scheduler import Scheduler
from stagewise.manager.store import Store
from stagewise.models import parse_task
from stagewise.status import Status
from tests.helpers import wait_for

APP = "demo"
# Store.clean reads at most 10,000 ids per status index and partition: this many CANCELED tasks
# in one partition make a single clean step of 10,000 scripts.
OLD_TASKS = 10_000
CHUNK = 2_000  # tasks per create_many / cancel batch while filling the store
TICK = 0.02


def make_store(r: Any, redis_url: str, namespace: str, **settings: Any) -> Store:
    settings.setdefault("tick", TICK)
    return Store(r, Settings(redis_url=redis_url, namespace=namespace, **settings))


async def server_time(r: Any) -> float:
    sec, usec = await r.time()
    return float(sec + usec / 1e6)


def one_stage(**doc: Any) -> dict[str, Any]:
    return {"app": APP, "commands": [{"method": "demo.echo", "params": {}}], **doc}


async def old_canceled_tasks(store: Store, n: int, older_than: float) -> list[str]:
    """`n` CANCELED tasks, quickly: created disabled (IDLE, never streamed), then canceled,
    both in batches of one pipelined script per task; returns once they are all more than
    `older_than` seconds old, i.e. due for a clean with clean_after = older_than."""
    tasks = [parse_task(one_stage(id=f"old-{i}", enabled=False)) for i in range(n)]
    ids = [t.id for t in tasks]
    for i in range(0, n, CHUNK):
        await store.create_many(tasks[i : i + CHUNK], "")
        done = await store.batch("cancel", ids[i : i + CHUNK], False)
        assert all(b["status"] == Status.CANCELED for b in done), done[:3]
    ready = await server_time(store.r) + older_than

    async def old_enough() -> bool:
        return await server_time(store.r) > ready

    await wait_for(old_enough, what="the old tasks to pass clean_after")
    return ids


async def due_task(store: Store, delay: float = 0.1) -> str:
    """An IDLE task whose run_at comes `delay` s from now (one already past would be queued by
    the create itself, not by the scheduler)."""
    task = parse_task(one_stage(run_at=await server_time(store.r) + delay))
    h = await store.create(task)
    assert h["status"] == Status.IDLE, h
    return task.id


def queued(store: Store, tid: str) -> Callable[[], Awaitable[bool]]:
    """A wait_for predicate: `tid` is QUEUED."""

    async def pred() -> bool:
        h = await store.raw(tid)
        return bool(h) and h["status"] == Status.QUEUED

    return pred


async def cleaned(store: Store, ids: list[str]) -> int:
    """How many of `ids` are marked cleaned."""
    pipe = store.r.pipeline(transaction=False)
    for i in ids:
        pipe.hget(store.keys(i).task(i), "cleaned")
    return sum(1 for c in await pipe.execute() if c == "1")


class CleanWatch:
    """Watches the scheduler's clean step from below: wraps `store.clean` (counts the calls
    entered and returned, keeps their results in order) and `store.scripts.run_many` (a batch
    of clean.lua calls, the one Store.clean sends, runs in two halves with a pause between).
    With `hold`, the pause lasts until the test sets `release`: the clean is then really half
    done and still in its step.  `halfway` is set when a clean reaches the pause."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch, hold: bool) -> None:
        self.entered = 0
        self.returned = 0
        self.results: list[list[dict[str, Any]]] = []
        self.halfway = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        real_clean, real_run_many = store.clean, store.scripts.run_many

        async def clean(older_than: float, dry_run: bool, now: float) -> list[dict[str, Any]]:
            self.entered += 1
            try:
                self.results.append(await real_clean(older_than, dry_run, now))
                return self.results[-1]
            finally:
                self.returned += 1

        async def run_many(calls: Sequence[Any], raise_on_error: bool = True, **kw: Any) -> list[Any]:
            if len(calls) < 2 or any(c.script != "clean" for c in calls):
                return await real_run_many(calls, raise_on_error, **kw)
            half = len(calls) // 2
            first = await real_run_many(calls[:half], raise_on_error, **kw)
            self.halfway.set()
            await self.release.wait()
            return first + await real_run_many(calls[half:], raise_on_error, **kw)

        monkeypatch.setattr(store, "clean", clean)
        monkeypatch.setattr(store.scripts, "run_many", run_many)

    @property
    def underway(self) -> bool:
        return self.entered > self.returned


@asynccontextmanager
async def running(sched: Scheduler) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[None]]]:
    """`sched.run(stop)` as a task; at the end stop is set and run must return within 30 s."""
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    try:
        yield stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


# --------------------------------------------------------------------------- tests


async def test_due_work_is_woken_while_a_large_clean_is_in_its_step(
    r: Any, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 old tasks to clean in one step, paused half-way: tasks whose run_at comes
    meanwhile are woken, then the clean finishes every one of the old tasks."""
    store = make_store(r, redis_url, namespace, clean_after=0.25)
    old = await old_canceled_tasks(store, OLD_TASKS, older_than=0.25)
    watch = CleanWatch(store, monkeypatch, hold=True)
    sched = Scheduler(store)
    async with running(sched):
        try:
            await wait_for(watch.halfway.is_set, timeout=30, what="the clean to reach half-way")
            assert await cleaned(store, old) == OLD_TASKS // 2
            # Two tasks come due while the clean is paused; the due role wakes them.
            due = [await due_task(store), await due_task(store, delay=0.2)]
            for tid in due:
                await wait_for(queued(store, tid), timeout=10, what=f"{tid} woken during the clean")
            assert watch.underway and "clean" in sched.busy
            assert await cleaned(store, old) == OLD_TASKS // 2  # the clean did not move meanwhile
        finally:
            watch.release.set()
        await wait_for(lambda: watch.returned, timeout=30, what="the clean to end")
    # The clean was the large one it set out to be: every old task cleaned in that one step.
    assert sum(1 for b in watch.results[0] if b["changed"]) == OLD_TASKS
    assert await cleaned(store, old) == OLD_TASKS
    assert sched.stats.get("woken", 0) == 2


async def test_stop_waits_for_the_clean_step_that_due_work_did_not_wait_for(
    r: Any, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a clean paused half-way, the tick roles go on stepping; after stop every other
    role ends, but run returns only once the clean has finished its step (all old tasks)."""
    store = make_store(r, redis_url, namespace, clean_after=0.05)
    old = await old_canceled_tasks(store, 100, older_than=0.05)
    watch = CleanWatch(store, monkeypatch, hold=True)
    sched = Scheduler(store)
    async with running(sched) as (stop, task):
        try:
            await wait_for(watch.halfway.is_set, what="the clean to reach half-way")
            steps = dict(sched.steps)
            await wait_for(
                lambda: all(sched.steps[n] > steps[n] + 2 for n in ("due", "deadlines", "ended")),
                what="more steps of the tick roles during the clean",
            )
            stop.set()
            await wait_for(lambda: sched.busy == {"clean"}, what="every role but the clean to end its step")
            assert not task.done()
            assert sched.steps["clean"] == 0 and await cleaned(store, old) == 50
        finally:
            watch.release.set()
        await asyncio.wait_for(task, 10)
    assert sched.steps["clean"] == 1 and not sched.busy
    assert await cleaned(store, old) == 100


async def test_a_failing_role_does_not_stop_the_others(
    r: Any, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`due` crashes on every step (a bug) and `reap` loses Redis on every step; the clean
    role, and run itself, go on, and both failing roles are tried again at each interval."""

    async def crash(self: Scheduler, *args: Any) -> None:
        raise RuntimeError("boom")

    async def lost(self: Scheduler, *args: Any) -> None:
        raise aredis.ConnectionError("connection lost")

    monkeypatch.setattr(Scheduler, "due", crash)
    monkeypatch.setattr(Scheduler, "reap", lost)
    store = make_store(r, redis_url, namespace, clean_after=0.001, ping_interval=0.04)
    old = await old_canceled_tasks(store, 3, older_than=0.001)
    with log.capture() as logs:
        sched = Scheduler(store)
        async with running(sched) as (_, task):

            async def all_cleaned() -> bool:
                return await cleaned(store, old) == len(old)

            await wait_for(all_cleaned, what="the clean role to clean the old tasks")
            await wait_for(lambda: sched.steps["due"] >= 3 and sched.steps["reap"] >= 3, what="retries")
            assert not task.done()
    crashed = [e for e in logs if e["event"] == "tick_crashed"]
    failed = [e for e in logs if e["event"] == "tick_failed"]
    assert crashed and all(e["scheduler_role"] == "due" and e.get("exc_info") for e in crashed), crashed[:2]
    assert failed and all(e["scheduler_role"] == "reap" for e in failed), failed[:2]
    assert "connection lost" in failed[0]["error"]
    assert any(e["event"] == "cleaned" for e in logs)


async def test_a_crashing_clean_does_not_stop_due_work(
    r: Any, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clean crashes on every step; due work is woken all the same."""
    store = make_store(r, redis_url, namespace, clean_after=0.001)
    calls = 0

    async def broken(older_than: float, dry_run: bool, now: float) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        raise RuntimeError("clean bug")

    monkeypatch.setattr(store, "clean", broken)
    with log.capture() as logs:
        sched = Scheduler(store)
        async with running(sched) as (_, task):
            await wait_for(lambda: calls >= 3, what="clean retries")
            tid = await due_task(store)
            await wait_for(queued(store, tid), what=f"{tid} woken")
            assert not task.done()
    assert any(e["event"] == "tick_crashed" and e["scheduler_role"] == "clean" for e in logs)


async def test_a_task_whose_follow_up_fails_does_not_block_the_others(
    r: Any, redis_url: str, namespace: str
) -> None:
    """The `ended` role acts on each ended task in turn: one whose data makes it fail (here a
    cron expression that no longer parses) is logged and dropped, the ones after it go on."""
    store = make_store(r, redis_url, namespace)
    first = parse_task({"app": "a", "cron": "* * * * *", "commands": [{"method": "m"}]})
    second = parse_task({"app": "a", "cron": "* * * * *", "commands": [{"method": "m"}]})
    k = store.keys(first.id)
    for t in (first, second):
        await store.create(t)
        await r.hset(store.keys(t.id).task(t.id), "status", "FINISHED")
    await r.hset(k.task(first.id), "cron", "not a cron")
    await r.zadd(k.ended(), {f"a/{first.id}": 1, f"a/{second.id}": 2})
    sched = Scheduler(store)
    with log.capture() as logs:
        assert await sched.ended(k, await sched.server_time()) == 2
    assert [e["member"] for e in logs if e["event"] == "follow_failed"] == [f"a/{first.id}"]
    assert [e["task_id"] for e in logs if e["event"] == "cron_rescheduled"] == [second.id]
    assert await r.zcard(k.ended()) == 0


async def test_a_bulk_create_of_parents_is_spawned_at_once_not_a_batch_per_tick(
    r: Any, redis_url: str, namespace: str
) -> None:
    """The spawn role with a tick of an hour: after its first step (at start, with nothing to
    do) it only steps again when woken.  A create_many of 3 batches of parents (SPAWN_BATCH
    each) that open with a children stage wakes it, and it starts every parent's children in
    that one step.  Without the wake-up nothing is spawned within the wait; with one batch per
    step only the first SPAWN_BATCH parents are."""
    from stagewise.manager.scheduler import SPAWN_BATCH

    store = make_store(r, redis_url, namespace, tick=3600.0)
    sched = Scheduler(store)
    n = 3 * SPAWN_BATCH
    child = {"app": APP, "commands": [{"method": "demo.echo", "params": {}}]}
    parents = [
        parse_task({"id": f"par-{i}", "app": APP, "commands": [{"children": {"tasks": [child, child]}}]})
        for i in range(n)
    ]
    async with running(sched):
        await wait_for(lambda: sched.steps["spawn"] >= 1, what="the spawn role's first step")
        await store.create_many(parents, "")

        async def spawned() -> bool:
            pipe = r.pipeline(transaction=False)
            for p in parents:
                pipe.exists(store.keys(f"{p.id}.0.1").task(f"{p.id}.0.1"))
            return all(await pipe.execute())

        await wait_for(spawned, timeout=20, what=f"the children of all {n} parents")
        assert sched.steps["spawn"] <= 3  # the first step, the woken one, and at most one more
