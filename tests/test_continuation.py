"""Stages 2..n of a task run in the run that claimed it: commit.lua answers RUN with the next
call stage, the task stays RUNNING under the same job id and lease, and the executor goes on in
the same slot, with no claim (no new lease, no new attempt, run_started unchanged).  A task that
leaves RUNNING between stages (a timer, a message it waits for) is claimed again when it resumes.
Real manager and executor processes on a real Redis; each stage records what its task's hash said
while it ran (tests/continue_app.py)."""

from __future__ import annotations

import json
from typing import Any

from stagewise.keys import Keys
from tests.continue_app import facts_key, gate_key
from tests.helpers import TERMINAL, task_until, wait_for

APP = "tests.continue_app:app"


def step(i: Any) -> dict[str, Any]:
    return {"method": "cont.step", "params": {"i": i}}


async def facts(r: Any, ns: str, tid: str) -> list[dict[str, str]]:
    return [json.loads(x) for x in await r.lrange(facts_key(ns, tid), 0, -1)]


async def test_a_three_stage_task_runs_its_later_stages_in_the_run_that_claimed_it(
    daemons: Any, r: Any, namespace: str
) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=4)
    task = {
        "id": "c1",
        "app": "cont",
        "commands": [step(0), step("{{ results.0 }}"), step("{{ results.-1 }}")],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await task_until(m, "c1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED" and v["results"] == [1, 2, 3]  # templates fed by the earlier stages
    seen = await facts(r, namespace, "c1")
    assert [f["stage"] for f in seen] == ["0", "1", "2"]
    # one run: the lease, the attempt and the run's start that the claim (or push) wrote hold
    # through every stage; a claim of stage 1 or 2 would have written new ones
    first = {k: seen[0][k] for k in ("lease", "run_started", "attempt", "executor_id")}
    assert first["attempt"] == "1" and first["lease"]
    for f in seen[1:]:
        assert {k: f[k] for k in first} == first, seen
    attempts = await m.rpc("tasks.attempts", {"id": "c1"})
    assert [(a["stage"], a["outcome"], a["executor_id"]) for a in attempts] == [
        (s, "ok", first["executor_id"]) for s in range(3)
    ]


async def test_many_claimed_three_stage_tasks_each_run_in_one_run(
    daemons: Any, r: Any, namespace: str
) -> None:
    """Created before any executor runs, so none is pushed: every one is claimed off the app
    stream, by claims batched with the commits of the others' stages; each task's three stages
    still share one run (lease, start, attempt), and no two tasks share a lease."""
    m = await daemons.manager()
    n = 40
    task = {"app": "cont", "commands": [step(0), step("{{ results.0 }}"), step("{{ results.1 }}")]}
    for i in range(n):
        await m.rpc("tasks.create", {"task": {**task, "id": f"m{i}"}})
    await daemons.executor(APP, concurrency=8)
    leases = set()
    for i in range(n):
        v = await task_until(m, f"m{i}", lambda v: v["status"] in TERMINAL, within=30)
        assert v["status"] == "FINISHED" and v["results"] == [1, 2, 3]
        seen = await facts(r, namespace, f"m{i}")
        runs = {(f["lease"], f["run_started"], f["attempt"]) for f in seen}
        assert len(seen) == 3 and len(runs) == 1 and seen[0]["attempt"] == "1", seen
        leases.add(seen[0]["lease"])
    assert len(leases) == n


async def test_a_stage_after_a_timer_is_claimed_again(daemons: Any, r: Any, namespace: str) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=4)
    task = {"id": "t1", "app": "cont", "commands": [step(0), {"timer": 0.3}, step("{{ results.0 }}")]}
    await m.rpc("tasks.create", {"task": task})
    v = await task_until(m, "t1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED" and v["results"] == [1, None, 2]
    before, after = await facts(r, namespace, "t1")
    # the task went WAITING at the timer and let go of its run: the stage after it is a new
    # run, claimed under a new lease, as a second attempt
    assert (before["stage"], after["stage"]) == ("0", "2")
    assert after["lease"] != before["lease"] and after["run_started"] != before["run_started"]
    assert (before["attempt"], after["attempt"]) == ("1", "2")


async def test_a_message_stage_with_its_message_waiting_is_passed_in_the_same_run(
    daemons: Any, r: Any, namespace: str
) -> None:
    """A message stage whose message is already in the task's inbox (sent while stage 0 ran) is
    resolved inside the commit (its result is the message) and the next call stage goes on in
    the same run."""
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=4)
    gate = {"method": "cont.gate", "params": {"i": 0}}
    doc = {"app": "cont", "commands": [gate, {"message": {"timeout": 30}}, step("{{ results.0 }}")]}
    await m.rpc("tasks.create", {"task": {**doc, "id": "g1"}})
    await wait_for(lambda: _facts_len(r, namespace, "g1", 1), timeout=15, what="stage 0 running")
    await m.rpc("tasks.send", {"id": "g1", "data": "hi"})  # waits in the inbox meanwhile
    await r.rpush(gate_key(namespace, "g1"), "go")
    v = await task_until(m, "g1", lambda v: v["status"] in TERMINAL, within=15)
    assert v["status"] == "FINISHED" and v["results"] == [1, "hi", 2], v
    a, b = await facts(r, namespace, "g1")
    assert (a["lease"], a["attempt"]) == (b["lease"], b["attempt"]) == (a["lease"], "1")


async def _facts_len(r: Any, ns: str, tid: str, n: int) -> bool:
    return len(await facts(r, ns, tid)) >= n


async def test_sigkill_during_a_continued_stage_is_reaped_and_finished_elsewhere(
    daemons: Any, r: Any, namespace: str
) -> None:
    m = await daemons.manager()
    first = await daemons.executor(APP, concurrency=4)
    gate = {"method": "cont.gate", "params": {"i": "{{ results.0 }}"}}
    task = {"id": "k1", "app": "cont", "commands": [step(0), gate, step("{{ results.1 }}")]}
    await m.rpc("tasks.create", {"task": task})
    # stage 1 running in the run that ran stage 0 (continued, not claimed)
    await wait_for(lambda: _facts_len(r, namespace, "k1", 2), timeout=15, what="stage 1 running")
    s0, s1 = await facts(r, namespace, "k1")
    assert s1["lease"] == s0["lease"] and s1["stage"] == "1"
    eid = s0["executor_id"]
    assert await r.sismember(Keys(namespace, 0).running(eid), "cont/k1")
    first.kill()
    await first.wait_exit()
    await r.rpush(gate_key(namespace, "k1"), "go")  # the second run of stage 1 goes through
    await daemons.executor(APP, concurrency=4)
    v = await task_until(m, "k1", lambda v: v["status"] in TERMINAL, within=30)
    assert v["status"] == "FINISHED" and v["results"] == [1, 2, 3], v
    attempts = await m.rpc("tasks.attempts", {"id": "k1"})
    assert [(a["stage"], a["outcome"]) for a in attempts] == [(0, "ok"), (1, "lost"), (1, "ok"), (2, "ok")]
    assert attempts[1]["executor_id"] == eid and attempts[2]["executor_id"] != eid
    later = (await facts(r, namespace, "k1"))[2:]
    assert [f["stage"] for f in later] == ["1", "2"]
    assert later[0]["lease"] != s0["lease"] and later[0]["lease"] == later[1]["lease"]
