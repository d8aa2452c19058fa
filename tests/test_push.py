"""Push delivery to idle executors (offer.lua, create.lua's push, withdraw.lua): real manager and
executor processes on a real Redis.  An executor with a free slot offers it; a task created
meanwhile is claimed in its name by create.lua and reaches it on its pushed stream, with the
same fencing, hand-back and recovery as a claimed run."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from stagewise.keys import Keys
from tests.helpers import TERMINAL, Proc, task_until, wait_for
from tests.limits_app import max_key, running_key

LIM = "tests.limits_app:app"


def sleeper(tid: str, seconds: float) -> dict[str, Any]:
    return {"id": tid, "app": "demo", "commands": [{"method": "demo.sleep", "params": {"seconds": seconds}}]}


async def offers(r: Any, ns: str, app: str = "demo") -> list[str]:
    return list(await r.lrange(Keys(ns, 0).idle(app), 0, -1))


async def an_offer(r: Any, ns: str, app: str = "demo") -> str:
    """The first offer on the app's idle list, once there is one: '<executor> <lease>'."""

    async def probe() -> str | None:
        got = await offers(r, ns, app)
        return got[0] if got else None

    return await wait_for(probe, timeout=15, what=f"an offer of an executor of {app}")


async def test_a_task_created_for_an_idle_executor_runs_under_its_offered_lease(
    daemons: Any, r: Any, namespace: str
) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=4)
    eid, lease = (await an_offer(r, namespace)).split(" ")
    created = await m.rpc("tasks.create", {"task": sleeper("p1", 1.0)})
    # claimed in the create's own step: RUNNING already, in the offering executor's name
    assert created["status"] == "RUNNING", created
    h = await r.hmget(Keys(namespace, 0).task("p1"), "executor_id", "lease", "entry", "attempt")
    assert h == [eid, lease, "", "1"]
    assert await r.sismember(Keys(namespace, 0).running(eid), "demo/p1")
    v = await task_until(m, "p1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED" and v["results"] == [1.0]
    assert [a["outcome"] for a in await m.rpc("tasks.attempts", {"id": "p1"})] == ["ok"]
    # the app stream never had an entry for it: nothing was read or claimed from there
    assert await r.xlen(Keys(namespace, 0).stream("demo")) == 0
    # the executor offers again once idle, and the pushed stream holds no run it has started
    await wait_for(lambda: _offer_other_than(r, namespace, lease), timeout=10, what="a new offer")
    pushed = Keys(namespace, 0).pushed(eid)
    await wait_for(lambda: _xlen_is(r, pushed, 0), timeout=5, what="the pushed entry acknowledged")


async def _offers_n(r: Any, ns: str, n: int) -> list[str] | None:
    got = await offers(r, ns)
    return got if len(got) == n else None


async def test_two_tasks_created_back_to_back_are_both_pushed(daemons: Any, r: Any, namespace: str) -> None:
    """An idle executor keeps two offers out (slots allowing), so the task created right after a
    push still finds one before the executor has made its next offer."""
    m = await daemons.manager()
    await daemons.executor(concurrency=4)
    out = await wait_for(lambda: _offers_n(r, namespace, 2), timeout=15, what="two offers")
    first = await m.rpc("tasks.create", {"task": sleeper("bb-1", 0.5)})
    second = await m.rpc("tasks.create", {"task": sleeper("bb-2", 0.5)})
    assert [first["status"], second["status"]] == ["RUNNING", "RUNNING"]
    leases = await asyncio.gather(*(r.hget(Keys(namespace, 0).task(t), "lease") for t in ("bb-1", "bb-2")))
    assert [o.split(" ")[1] for o in out] == leases  # in the order offered
    for t in ("bb-1", "bb-2"):
        v = await task_until(m, t, lambda v: v["status"] in TERMINAL, within=15)
        assert v["status"] == "FINISHED"


async def _offer_other_than(r: Any, ns: str, lease: str) -> bool:
    got = await offers(r, ns)
    return bool(got) and not any(o.endswith(" " + lease) for o in got)


async def _xlen_is(r: Any, key: str, n: int) -> bool:
    return await r.xlen(key) == n


async def test_tasks_one_at_a_time_are_each_pushed_and_never_read_from_the_app_stream(
    daemons: Any, r: Any, namespace: str
) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=2)
    for i in range(20):
        _, lease = (await an_offer(r, namespace)).split(" ")
        task = {
            "id": f"c{i}",
            "app": "demo",
            "commands": [{"method": "demo.add", "params": {"a": i, "b": 1}}],
        }
        got = await m.rpc("tasks.create", {"task": task})
        assert got["status"] == "RUNNING", got
        v = await task_until(m, f"c{i}", lambda v: v["status"] in TERMINAL, within=10)
        assert v["status"] == "FINISHED" and v["results"] == [i + 1]
        # the executor offers afresh (a new lease) once the pushed run has started
        await wait_for(
            lambda lease=lease: _offer_other_than(r, namespace, lease), timeout=10, what="a new offer"
        )
    # nothing was ever put on, read from or claimed off the app stream
    stream = Keys(namespace, 0).stream("demo")
    assert await r.xlen(stream) == 0
    groups = await r.xinfo_groups(stream)
    assert [g["last-delivered-id"] for g in groups] == ["0-0"]


async def test_a_task_with_limits_is_not_pushed(daemons: Any, r: Any, namespace: str) -> None:
    m = await daemons.manager()
    await daemons.executor(LIM, concurrency=4)
    await an_offer(r, namespace, "lim")
    task = {
        "id": "lim-1",
        "app": "lim",
        "commands": [{"method": "lim.work", "params": {"key": "k1", "ms": 10}}],
        "limits": [{"key": "k1", "concurrency": 1}],
    }
    created = await m.rpc("tasks.create", {"task": task})
    assert created["status"] == "QUEUED"  # on its stream: it must get a permit first
    v = await task_until(m, "lim-1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED"
    # the offer was not taken by it: the run came from a claim, the offer stood until then
    assert await r.hget(Keys(namespace, 0).task("lim-1"), "entry") != ""


async def test_a_paused_app_is_not_pushed(daemons: Any, r: Any, namespace: str) -> None:
    m = await daemons.manager()
    await daemons.executor(concurrency=4)
    before = await wait_for(lambda: _offers_n(r, namespace, 2), timeout=15, what="two offers")
    await m.rpc("apps.pause", {"app": "demo"})
    created = await m.rpc("tasks.create", {"task": sleeper("paused-1", 0.1)})
    assert created["status"] == "QUEUED"
    assert await offers(r, namespace) == before  # the offers stand
    await m.rpc("apps.resume", {"app": "demo"})
    v = await task_until(m, "paused-1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED"


async def _killed_with_a_push(daemons: Any, r: Any, namespace: str, stop_first: bool) -> None:
    m = await daemons.manager()
    ex = await daemons.executor(concurrency=4)
    eid, lease = (await an_offer(r, namespace)).split(" ")
    if stop_first:  # alive, heartbeat and all, when the create pushes to it; killed before it reads
        os.kill(ex.pid, signal.SIGSTOP)
    else:  # dead already, not yet declared dead: the create pushes to it all the same
        ex.kill()
        await ex.wait_exit()
    created = await m.rpc("tasks.create", {"task": sleeper("k1", 0.2)})
    assert created["status"] == "RUNNING" and created["executor_id"] == eid
    if stop_first:
        ex.kill()
        await ex.wait_exit()
    # a second executor takes it once the first is declared dead and its runs reaped
    await daemons.executor(concurrency=4)
    v = await task_until(m, "k1", lambda v: v["status"] in TERMINAL, within=20)
    assert v["status"] == "FINISHED" and v["results"] == [0.2]
    attempts = await m.rpc("tasks.attempts", {"id": "k1"})
    assert [a["outcome"] for a in attempts] == ["lost", "ok"]
    assert attempts[0]["executor_id"] == eid and attempts[1]["executor_id"] != eid
    # the dead executor's offers and pushed stream went with it
    await wait_for(lambda: _gone(r, namespace, eid), timeout=10, what="the dead executor's keys")


async def _gone(r: Any, ns: str, eid: str) -> bool:
    return not any(o.startswith(eid + " ") for o in await offers(r, ns)) and not await r.exists(
        Keys(ns, 0).pushed(eid)
    )


async def test_sigkill_after_the_offer_the_pushed_task_is_reaped_and_run_elsewhere(
    daemons: Any, r: Any, namespace: str
) -> None:
    await _killed_with_a_push(daemons, r, namespace, stop_first=False)


async def test_sigkill_after_the_push_before_the_read_the_task_is_reaped_and_run_elsewhere(
    daemons: Any, r: Any, namespace: str
) -> None:
    await _killed_with_a_push(daemons, r, namespace, stop_first=True)


async def test_sigterm_withdraws_an_outstanding_offer(daemons: Any, r: Any, namespace: str) -> None:
    await daemons.manager()
    ex = await daemons.executor(concurrency=2)
    eid, _ = (await an_offer(r, namespace)).split(" ")
    ex.terminate()
    assert await ex.wait_exit(10) == 0
    assert await offers(r, namespace) == []
    assert not await r.exists(Keys(namespace, 0).pushed(eid))
    log = ex.log_path.read_text()
    assert '"executor_stopped"' in log and "_failed" not in log, log[-2000:]


async def test_sigterm_with_a_pushed_run_not_yet_read_hands_it_back(
    daemons: Any, r: Any, namespace: str
) -> None:
    m = await daemons.manager()
    ex = await daemons.executor(concurrency=2, STAGEWISE_GRACE="0.5")
    eid, _ = (await an_offer(r, namespace)).split(" ")
    os.kill(ex.pid, signal.SIGSTOP)
    created = await m.rpc("tasks.create", {"task": sleeper("t1", 60)})
    assert created["status"] == "RUNNING" and created["executor_id"] == eid
    ex.terminate()  # pending until it runs again: it stops with the pushed run in its stream
    os.kill(ex.pid, signal.SIGCONT)
    assert await ex.wait_exit(15) == 0
    v = await m.rpc("tasks.get", {"id": "t1"})
    assert v["status"] == "QUEUED", v  # handed back, not left RUNNING in its name
    attempts = await m.rpc("tasks.attempts", {"id": "t1"})
    assert [a["outcome"] for a in attempts] == ["handed_back"]
    assert await offers(r, namespace) == [] and not await r.exists(Keys(namespace, 0).pushed(eid))


async def test_concurrency_is_never_exceeded_with_offers_and_reads_racing(
    daemons: Any, r: Any, namespace: str
) -> None:
    """Bursts of tasks, each after the executor went idle and offered: the pushed run and the
    claimed ones share the slots, counted by the handlers themselves."""
    m = await daemons.manager()
    ex: Proc = await daemons.executor(LIM, concurrency=2)
    ids: list[str] = []
    for burst in range(4):
        await an_offer(r, namespace, "lim")
        batch = [f"b{burst}-{i}" for i in range(5)]
        await asyncio.gather(
            *(
                m.rpc(
                    "tasks.create",
                    {
                        "task": {
                            "id": t,
                            "app": "lim",
                            "commands": [{"method": "lim.work", "params": {"key": "all", "ms": 100}}],
                        }
                    },
                )
                for t in batch
            )
        )
        ids += batch
        for t in batch:
            v = await task_until(m, t, lambda v: v["status"] in TERMINAL, within=20)
            assert v["status"] == "FINISHED", v
    assert int(await r.get(max_key(namespace, "all"))) == 2
    assert int(await r.get(running_key(namespace, "all"))) == 0
    assert ex.alive


async def test_a_pushed_run_whose_read_reply_was_lost_is_read_again(
    daemons: Any, r: Any, namespace: str
) -> None:
    """A pushed run delivered to the executor's consumer whose reply never reached it (here: read
    under its consumer name by the test, as a reply lost with a connection would leave it): the
    run is pending on the executor in its pushed stream, RUNNING in its name, and the executor
    reads it again from there (its sweep of what is pending on it) and runs it."""
    m = await daemons.manager()
    ex = await daemons.executor(concurrency=4)
    eid, lease = (await an_offer(r, namespace)).split(" ")
    pushed = Keys(namespace, 0).pushed(eid)
    os.kill(ex.pid, signal.SIGSTOP)  # well within its 3 s dead-after
    try:
        # its blocking read (1 s at most) over, so that the push is not served to it
        await wait_for(lambda: _no_blocked_read(r), timeout=3, interval=0.02, what="its read to time out")
        created = await m.rpc("tasks.create", {"task": sleeper("lost-1", 0.1)})
        assert created["status"] == "RUNNING" and created["executor_id"] == eid
        got = await r.xreadgroup("executors", eid, {pushed: ">"})
        assert got and got[0][1][0][1]["lease"] == lease  # delivered to it, the reply "lost"
    finally:
        os.kill(ex.pid, signal.SIGCONT)
    # a claim after the offer (a task with limits is never pushed) takes a later lease counter,
    # and its reply is settled: the heartbeat's reports must still keep `settled` below the
    # offer, or the manager's reconcile (orphan.lua) would take the unread run back as not held
    limited = {**sleeper("lost-2", 0), "limits": [{"key": "x", "concurrency": 5}]}
    assert (await m.rpc("tasks.create", {"task": limited}))["status"] == "QUEUED"
    await task_until(m, "lost-2", lambda v: v["status"] in TERMINAL, within=15)
    v = await task_until(m, "lost-1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED" and v["results"] == [0.1]
    attempts = await m.rpc("tasks.attempts", {"id": "lost-1"})
    assert [(a["outcome"], a["executor_id"]) for a in attempts] == [("ok", eid)]
    assert ex.alive


async def _no_blocked_read(r: Any) -> bool:
    return not [c for c in await r.client_list() if c["cmd"] == "xreadgroup" and "b" in c["flags"]]


async def test_acknowledgements_go_with_offers_made_two_in_one_partition(r: Any, namespace: str) -> None:
    """The fetch role's `offer`, in-process on a real Redis: two pushed runs started (their
    entries owed an acknowledgement) and no offer out, so it makes two offers in the one
    partition.  The acknowledgements go with the first of them: the pushed stream ends empty,
    nothing pending.  (Taking the owed list once per offer rather than once per partition lost
    it at the second offer, and the entries stayed pending.)"""
    from stagewise import log as slog
    from stagewise.executor.fetch import Fetcher
    from stagewise.keys import GROUP
    from stagewise.storage.runner import Scripts

    k, eid = Keys(namespace, 0), "ex-acks"
    await r.zadd(k.executors(), {eid: time.time()})  # registered: offer.lua answers OK
    pushed = k.pushed(eid)
    await r.xgroup_create(pushed, GROUP, "0", mkstream=True)
    ids = [await r.xadd(pushed, {"t": f"t{i}", "lease": f"old.{i}"}) for i in range(2)]
    await r.xreadgroup(GROUP, eid, {pushed: ">"})  # delivered to us: pending until acknowledged

    async def nothing(*_: Any) -> None:
        return None

    fetcher = Fetcher(
        r=r,
        scripts=Scripts(r),
        app="demo",
        executor_id=eid,
        parts=[k],
        split=False,
        slots=asyncio.Semaphore(0),
        quiet=asyncio.Event(),
        runner=None,  # type: ignore[arg-type]  # offer starts no run
        refused=nothing,
        rejoin=nothing,
        log=slog.get(role="test"),
        limits=None,  # type: ignore[arg-type]  # nor asks for permits
    )
    fetcher.acks = {0: list(ids)}
    assert await fetcher.offer(4) == 2  # two of the four free slots held for the offers
    assert len(await offers(r, namespace)) == 2
    assert (await r.xpending(pushed, GROUP))["pending"] == 0
    assert await r.xlen(pushed) == 0
    assert fetcher.acks == {}
