"""Chaos run: many three-stage tasks while executors are SIGKILLed at random and restarted,
and the manager is SIGKILLed and restarted; then every task must be FINISHED with exactly the
expected results, and no stage committed twice.  With --limited N, N more three-stage tasks run
under concurrency-limited keys (flow control, SPEC §2a); their handlers record their own spans
in Redis (a SIGKILLed one ends at its kill), and the most that overlapped per key must not pass
the key's limit.

    python -m tests.chaos --tasks 2000 --limited 500 --duration 300      (make chaos CHAOS_ARGS="...")

The fan-out workload (--workload fanout) creates parents instead, each with a children stage
(a map over --children items) then a stage that reads the join's result: every parent must be
FINISHED with exactly the expected result list, joined once (SPEC §3a).

    python -m tests.chaos --workload fanout --tasks 200 --children 10 --duration 120

With --redis-faults, Redis itself (an append-only file, appendfsync everysec) has trouble too,
one fault every few seconds in turn: SIGKILL and a restart from its AOF a second later, SIGSTOP
for a few seconds (past the executors' dead threshold), and maxmemory reached (noeviction) for
a few seconds.  Creates refused meanwhile (1006) are sent again with on_conflict "ignore" until
acknowledged; stage executions are counted in a second Redis that no fault touches.

    python -m tests.chaos --redis-faults                   (make chaos CHAOS_ARGS="--redis-faults")

The pytest test (tests/test_chaos.py) runs a bounded version of the same function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio as aredis

from tests.chaos_app import exec_key, open_key, spans_key
from tests.helpers import Daemons, Proc, RedisServer, free_port, wait_for
from tests.redis_faults_table import Standalone

# The Redis faults of --redis-faults, in turn: (kind, shortest, longest) seconds it lasts.
REDIS_FAULTS = (("sigkill+aof", 0.5, 1.5), ("sigstop", 2.0, 5.0), ("oom", 2.0, 4.0))

APP = "tests.chaos_app:app"


@dataclass
class Summary:
    tasks: int
    acknowledged: int = 0  # creates the API acknowledged (after retries of refused ones)
    finished: int = 0
    failed: int = 0
    lost: int = 0  # acknowledged, then missing
    stuck: int = 0  # not terminal at the end
    wrong_results: int = 0
    double_committed: int = 0  # stages with more than one committed attempt in a run
    stage_executions: int = 0
    repeated_executions: int = 0
    executor_kills: int = 0
    manager_kills: int = 0
    recovery_s: list[float] = field(default_factory=list)  # executor SIGKILL -> its runs re-queued
    limited: int = 0  # of `tasks`, those under a limit key
    limit: int = 0  # the concurrency of each limit key
    max_overlap: dict[str, int] = field(default_factory=dict)  # limit key -> most spans at once
    redis_faults: dict[str, int] = field(default_factory=dict)  # kind -> how many
    redis_recovery_s: list[float] = field(default_factory=list)  # Redis fault end -> a task ended
    answers: dict[str, int] = field(default_factory=dict)  # create errors the API answered
    chaos_s: float = 0.0
    drain_s: float = 0.0
    # fan-out workload: `tasks` are the parents
    workload: str = "stages"
    children: int = 0  # per parent
    children_finished: int = 0
    double_counted_joins: int = 0  # a join whose count is not its number of children

    def ok(self) -> bool:
        return (
            self.acknowledged == self.tasks
            and self.finished == self.tasks
            and not self.failed
            and not self.lost
            and not self.stuck
            and not self.wrong_results
            and not self.double_committed
            and not self.double_counted_joins
            and self.children_finished == (self.tasks - self.limited) * self.children
            and all(n <= self.limit for n in self.max_overlap.values())
            and not self.answers.get("-32603")
        )

    def lines(self) -> str:
        rec = sorted(self.recovery_s)
        rec_txt = (
            f"median {statistics.median(rec):.2f} s, max {rec[-1]:.2f} s over {len(rec)} kills"
            if rec
            else "no runs were in flight at the kills"
        )
        shape = (
            f"{self.tasks - self.limited} parents x {self.children} children"
            + (f" and {self.limited} limited tasks x 3 stages" if self.limited else "")
            if self.workload == "fanout"
            else f"{self.tasks} tasks x 3 stages"
        )
        lines = [
            f"chaos: {shape}, {self.chaos_s:.0f} s of kills, drained in {self.drain_s:.1f} s",
            f"  executor SIGKILLs {self.executor_kills}, manager SIGKILLs {self.manager_kills}",
        ]
        if self.redis_faults:
            faults = ", ".join(f"{k} {v}" for k, v in sorted(self.redis_faults.items()))
            lines.append(f"  Redis faults: {faults}")
        lines += [
            f"  acknowledged {self.acknowledged}, finished {self.finished}, failed {self.failed}, "
            f"lost {self.lost}, stuck {self.stuck}, wrong results {self.wrong_results}",
            f"  double-committed stages {self.double_committed}",
            f"  stage executions started {self.stage_executions} (repeated {self.repeated_executions})",
            f"  recovery from an executor SIGKILL (kill -> its runs re-queued): {rec_txt}",
        ]
        if self.workload == "fanout":
            lines.append(
                f"  children finished {self.children_finished} of {(self.tasks - self.limited) * self.children}, "
                f"double-counted joins {self.double_counted_joins}"
            )
        if self.limited:
            lines.append(
                f"  limited: {self.limited} tasks over {len(self.max_overlap)} keys of concurrency "
                f"{self.limit}; most running at once per key: "
                + ", ".join(f"{k} {n}" for k, n in sorted(self.max_overlap.items()))
            )
        if self.redis_faults:
            rr = sorted(self.redis_recovery_s)
            rr_txt = (
                f"median {statistics.median(rr):.2f} s, max {rr[-1]:.2f} s over {len(rr)} faults"
                if rr
                else "-"
            )
            lines.append(f"  recovery from a Redis fault (fault end -> a task ended): {rr_txt}")
            answers = ", ".join(f"{k} x{v}" for k, v in sorted(self.answers.items())) or "none"
            lines.append(f"  create errors answered: {answers}")
        return "\n".join(lines)


async def run_chaos(
    redis_url: str,
    namespace: str,
    log_dir: Path,
    tasks: int = 300,
    duration: float = 25.0,
    kill_min: float = 1.0,
    kill_max: float = 3.0,
    executors: int = 2,
    concurrency: int = 16,
    manager_kills: int = 2,
    drain_timeout: float = 120.0,
    seed: int | None = None,
    echo: bool = False,
    workload: str = "stages",
    children: int = 10,
    limited: int = 0,
    limit_keys: int = 3,
    limit: int = 2,
    faulty: Standalone | None = None,
    counter_url: str | None = None,
    redis_every: tuple[float, float] = (6.0, 12.0),
) -> Summary:
    """With `faulty` (the Redis at `redis_url`), Redis faults every `redis_every` seconds too;
    `counter_url` is where the chaos app counts executions (one no fault touches)."""
    rnd = random.Random(seed)
    d = Daemons(redis_url, namespace, log_dir)
    opts: dict[str, Any] = {"decode_responses": True, "socket_timeout": 2, "socket_connect_timeout": 2}
    r = aredis.Redis.from_url(redis_url, **opts)
    cr = aredis.Redis.from_url(counter_url, decode_responses=True) if counter_url else r
    fan = workload == "fanout"
    summary = Summary(
        tasks=tasks + limited,
        limited=limited,
        limit=limit,
        workload=workload,
        children=children if fan else 0,
    )
    lim = (limit_keys, limit)
    total = tasks * (1 + summary.children) + limited  # every task that must end: parents, children, limited
    http = f"127.0.0.1:{free_port()}"
    # A stage killed many times in a row is what chaos is made of here, not a poison task.
    menv = {"STAGEWISE_HTTP": http, "STAGEWISE_MAX_INTERRUPTIONS": 1000, "STAGEWISE_LOG_LEVEL": "warning"}
    eenv: dict[str, Any] = {"STAGEWISE_LOG_LEVEL": "warning"}
    if counter_url:
        eenv["CHAOS_COUNTER_URL"] = counter_url
    kills: list[tuple[float, int]] = []  # (time, pid)
    answers: Counter[str] = Counter()
    unacked: list[str] = []
    stop_faults = asyncio.Event()
    faults: asyncio.Task[None] | None = None
    try:
        m = await d.manager(**menv)
        live: list[Proc] = [await d.executor(APP, concurrency, **eenv) for _ in range(executors)]
        ids = [f"{'f' if fan else 'c'}{i}" for i in range(tasks)] + [f"l{i}" for i in range(limited)]
        rnd.shuffle(ids)  # limited and plain work arrive mixed
        # smaller batches, more often, with Redis faults: creates land in the faults too
        per = 5 if faulty is not None else 25
        batches = [ids[i : i + per] for i in range(0, len(ids), per)]
        if faulty is not None:
            faults = asyncio.create_task(
                _redis_faults(faulty, r, namespace, rnd, redis_every, stop_faults, summary)
            )
        # Work arrives through the first 70 % of the run, so kills keep landing on live work.
        feed_at = [duration * 0.7 * n / len(batches) for n in range(len(batches))]
        t0 = time.monotonic()
        manager_at = [duration * f + rnd.uniform(-0.05, 0.05) * duration for f in (0.25, 0.55)][
            :manager_kills
        ]
        next_kill = t0 + rnd.uniform(kill_min, kill_max)
        while time.monotonic() - t0 < duration:
            now = time.monotonic()
            while feed_at and now - t0 >= feed_at[0]:
                feed_at.pop(0)
                unacked += batches.pop(0)
            if unacked:  # at most 100 a request: a fault may have held many back
                unacked = (
                    await _create(m, unacked[:100], lim, summary.children, answers, strict=faulty is None)
                    + unacked[100:]
                )
            if manager_at and now - t0 >= manager_at[0]:
                manager_at.pop(0)
                m.kill()
                await m.wait_exit(10)
                summary.manager_kills += 1
                m = await d.manager(**menv)
            if now >= next_kill:
                victim = rnd.choice(live)
                victim.kill()
                kills.append((time.time(), victim.pid))
                await victim.wait_exit(10)
                summary.executor_kills += 1
                live.remove(victim)
                live.append(await d.executor(APP, concurrency, **eenv))
                next_kill = now + rnd.uniform(kill_min, kill_max)
            await asyncio.sleep(0.05)  # pacing of the kill schedule, not synchronisation
            if not batches and not unacked and not manager_at and await _all_terminal(r, namespace, total):
                break
        summary.chaos_s = time.monotonic() - t0
        stop_faults.set()
        if faults is not None:
            await faults  # the fault under way is lifted: Redis is up, memory is free
        t1 = time.monotonic()
        while unacked and time.monotonic() - t1 < drain_timeout:
            unacked = (
                await _create(m, unacked[:100], lim, summary.children, answers, strict=False) + unacked[100:]
            )
            await asyncio.sleep(0.2)  # pacing of the retries
        try:
            await wait_for(
                lambda: _all_terminal(r, namespace, total),
                timeout=drain_timeout,
                interval=0.2,
                what="every task to end",
            )
        except AssertionError:
            pass
        summary.drain_s = time.monotonic() - t1
        summary.acknowledged = len(ids) - len(unacked)
        summary.answers = dict(answers)
        await _check(r, cr, m, namespace, [t for t in ids if t not in unacked], summary, kills)
        if echo:
            print(summary.lines(), flush=True)
        return summary
    finally:
        stop_faults.set()
        if faults is not None:
            await asyncio.gather(faults, return_exceptions=True)
        await d.aclose()
        await r.aclose()
        if cr is not r:
            await cr.aclose()


def _fanout_task(tid: str, n: int, children: int) -> dict[str, Any]:
    """A parent: its children add 1 to their item, then a stage adds 1 to the last child's."""
    step = {"method": "chaos.step", "params": {"value": "{{ kws.item }}", "min_ms": 50, "max_ms": 300}}
    last = {"method": "chaos.step", "params": {"value": f"{{{{ results.0.{children - 1}.result }}}}"}}
    return {
        "id": tid,
        "app": "chaos",
        "kws": {"xs": [n * 1000 + i for i in range(children)]},
        "commands": [
            {"children": {"map": "{{ kws.xs }}", "task": {"app": "chaos", "commands": [step]}}},
            last,
        ],
    }


def _fanout_expected(tid: str, n: int, children: int) -> list[Any]:
    joined = [
        {"id": f"{tid}.0.{i}", "status": "FINISHED", "result": n * 1000 + i + 1, "error": None}
        for i in range(children)
    ]
    return [joined, n * 1000 + children + 1]


def _number(tid: str) -> int:
    """c<i> and f<i> -> i, l<i> -> 1_000_000 + i: each task's kws.v is ten times its number."""
    return int(tid[1:]) + (1_000_000 if tid[0] == "l" else 0)


async def _redis_faults(
    faulty: Standalone,
    r: aredis.Redis,
    namespace: str,
    rnd: random.Random,
    every: tuple[float, float],
    stop: asyncio.Event,
    s: Summary,
) -> None:
    """One Redis fault every `every` seconds, the kinds of REDIS_FAULTS in turn, until `stop`;
    each one is lifted before this returns.  Records how long after each fault's end a task
    ended (work resumed)."""
    n = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rnd.uniform(*every))
        if stop.is_set():
            return
        kind, lo, hi = REDIS_FAULTS[n % len(REDIS_FAULTS)]
        n += 1
        length = rnd.uniform(lo, hi)
        if kind == "sigkill+aof":
            faulty.kill()
            await asyncio.sleep(length)  # the length of the outage
            await asyncio.to_thread(faulty.start)
        elif kind == "sigstop":
            assert faulty.proc is not None
            faulty.proc.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(length)  # the length of the fault
            finally:
                faulty.proc.send_signal(signal.SIGCONT)
        else:
            c = faulty.admin()
            try:
                c.config_set("maxmemory-policy", "noeviction")
                c.config_set("maxmemory", "1")  # every write refused
                await asyncio.sleep(length)  # the length of the fault
                c.config_set("maxmemory", "0")
            finally:
                c.close()
        s.redis_faults[kind] = s.redis_faults.get(kind, 0) + 1
        end = time.monotonic()
        if await _resumed(r, namespace):
            s.redis_recovery_s.append(time.monotonic() - end)


async def _resumed(r: aredis.Redis, namespace: str, within: float = 30.0) -> bool:
    """Whether a task ends within `within` seconds (counted from the first count Redis
    answers after the fault)."""

    async def first() -> tuple[int] | None:  # a tuple: 0 tasks ended is an answer too
        n = await _ended(r, namespace)
        return None if n is None else (n,)

    try:
        (before,) = await wait_for(first, timeout=within, interval=0.05)

        async def more() -> bool:
            now = await _ended(r, namespace)
            return now is not None and now > before

        await wait_for(more, timeout=within, interval=0.05, what="a task to end")
    except AssertionError:
        return False
    return True


async def _ended(r: aredis.Redis, namespace: str) -> int | None:
    """How many tasks have ended (None while Redis does not answer)."""
    k = "{" + namespace + ":0}:i:s:"
    try:
        pipe = r.pipeline(transaction=False)
        for st in ("FINISHED", "FAILED", "CANCELED"):
            pipe.zcard(k + st)
        return int(sum(await pipe.execute()))
    except (redis.RedisError, OSError):
        return None


async def _create(
    m: Any, batch: list[str], lim: tuple[int, int], children: int, answers: Counter[str], strict: bool
) -> list[str]:
    """Send the creates of `batch` (on_conflict "ignore": one answered 1006 may have been
    applied); the ids not acknowledged.  `strict`: every create must be acknowledged."""
    reqs = []
    by_rid: dict[int, str] = {}
    for tid in batch:
        n = _number(tid)
        by_rid[n] = tid
        step: dict[str, Any] = {"method": "chaos.step", "params": {"value": "", "min_ms": 100, "max_ms": 500}}
        extra: dict[str, Any] = {}
        if children and tid[0] == "f":
            reqs.append(
                {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tasks.create",
                    "params": {"on_conflict": "ignore", "task": _fanout_task(tid, n, children)},
                }
            )
            continue
        if tid[0] == "l":  # under one of lim[0] keys of concurrency lim[1]
            key = f"k{n % lim[0]}"
            step = {"method": "chaos.limited", "params": {**step["params"], "key": key}}
            extra = {"limits": [{"key": "chaos:{{ kws.key }}", "concurrency": lim[1]}]}
        reqs.append(
            {
                "jsonrpc": "2.0",
                "id": n,
                "method": "tasks.create",
                "params": {
                    "on_conflict": "ignore",
                    "task": {
                        "id": tid,
                        "app": "chaos",
                        "kws": {"v": n * 10, "key": f"k{n % lim[0]}"},
                        "commands": [
                            {**step, "params": {**step["params"], "value": "{{ kws.v }}"}},
                            {**step, "params": {**step["params"], "value": "{{ results.0 }}"}},
                            {**step, "params": {**step["params"], "value": "{{ results.1 }}"}},
                        ],
                        **extra,
                    },
                },
            }
        )
    try:
        status, reply = await m.raw(json.dumps(reqs))
    except (TimeoutError, aiohttp.ClientError) as e:
        assert not strict, e
        answers[f"HTTP {type(e).__name__}"] += 1
        return batch
    if strict:
        assert status == 200 and all("result" in x for x in reply), reply
    if not isinstance(reply, list):
        answers[f"HTTP {status}"] += 1
        return batch
    left = []
    for x in reply:
        tid = by_rid[x["id"]]
        if "result" not in x:
            err = x["error"]
            reason = err.get("data", {}).get("reason") if isinstance(err.get("data"), dict) else None
            answers[f"{err['code']} {reason}" if reason else str(err["code"])] += 1
            left.append(tid)
    return left


async def _all_terminal(r: aredis.Redis, namespace: str, n: int) -> bool:
    ended = await _ended(r, namespace)
    return ended is not None and ended >= n


async def _check(
    r: aredis.Redis,
    cr: aredis.Redis,
    m: Any,
    namespace: str,
    ids: list[str],
    s: Summary,
    kills: list[tuple[float, int]],
) -> None:
    executions = await cr.hgetall(exec_key(namespace))
    s.stage_executions = sum(int(v) for v in executions.values())
    s.repeated_executions = s.stage_executions - sum(1 for _ in executions)
    lost_marks: list[tuple[str, float]] = []
    for tid in ids:
        n = _number(tid)
        try:
            v = await m.rpc("tasks.get", {"id": tid})
        except Exception:  # noqa: BLE001 - a missing task is what we count
            s.lost += 1
            continue
        if v["status"] == "FINISHED":
            s.finished += 1
        elif v["status"] == "FAILED":
            s.failed += 1
        else:
            s.stuck += 1
        if s.children and tid[0] == "f":
            if v["status"] == "FINISHED" and v["results"] != _fanout_expected(tid, n, s.children):
                s.wrong_results += 1
            lost_marks += await _check_family(r, m, namespace, tid, s)
        elif v["status"] == "FINISHED" and v["results"] != [n * 10 + 1, n * 10 + 2, n * 10 + 3]:
            s.wrong_results += 1
        attempts = await m.rpc("tasks.attempts", {"id": tid})
        ok: dict[tuple[str, int], int] = {}
        for a in attempts:
            if a["outcome"] == "ok":
                key = (a["job_id"], a["stage"])
                ok[key] = ok.get(key, 0) + 1
            elif a["outcome"] == "lost":
                lost_marks.append((a["executor_id"], a["ended"]))
        s.double_committed += sum(1 for c in ok.values() if c > 1)
    if s.limited:
        s.max_overlap = await _overlap(cr, namespace, kills)
    for t_kill, pid in kills:  # a killed executor's runs were re-queued when the reaper saw it
        ends = [end for eid, end in lost_marks if f"-{pid}-" in eid and end >= t_kill]
        if ends:
            s.recovery_s.append(min(ends) - t_kill)


async def _check_family(
    r: aredis.Redis, m: Any, namespace: str, tid: str, s: Summary
) -> list[tuple[str, float]]:
    """A parent's children: each FINISHED with one committed attempt per stage; the join
    counted each exactly once (its `ended` is its number of children).  Returns the children's
    lost-run marks (executor id, time), for the recovery figures."""
    lost_marks: list[tuple[str, float]] = []
    join = await r.hgetall("{" + namespace + ":0}:j:" + tid)
    if join.get("ended") != str(s.children) or join.get("closed") != "joined":
        s.double_counted_joins += 1
    for i in range(s.children):
        cid = f"{tid}.0.{i}"
        try:
            v = await m.rpc("tasks.get", {"id": cid})
        except Exception:  # noqa: BLE001 - a missing child is lost
            s.lost += 1
            continue
        if v["status"] == "FINISHED":
            s.children_finished += 1
        ok: dict[tuple[str, int], int] = {}
        for a in await m.rpc("tasks.attempts", {"id": cid}):
            if a["outcome"] == "ok":
                ok[(a["job_id"], a["stage"])] = ok.get((a["job_id"], a["stage"]), 0) + 1
            elif a["outcome"] == "lost":
                lost_marks.append((a["executor_id"], a["ended"]))
        s.double_committed += sum(1 for c in ok.values() if c > 1)
    return lost_marks


async def _overlap(r: aredis.Redis, namespace: str, kills: list[tuple[float, int]]) -> dict[str, int]:
    """The most executions of each limit key that ran at once, from the handlers' own spans: an
    execution cut short by a SIGKILL (left open) ended at the kill of its process."""
    killed = {pid: t for t, pid in kills}
    spans: list[tuple[str, float, float]] = []
    for raw in await r.lrange(spans_key(namespace), 0, -1):
        key, start, end = raw.split("|")
        spans.append((key, float(start), float(end)))
    for me, raw in (await r.hgetall(open_key(namespace))).items():
        key, start = raw.split("|")
        pid = int(me.split(":")[-2])
        spans.append((key, float(start), killed.get(pid, float("inf"))))  # never killed: still running
    most: dict[str, int] = {}
    for key in {k for k, _, _ in spans}:
        # an end sorts before a start at the same instant: back to back is not an overlap
        events = sorted(
            [(s, 1) for k, s, _ in spans if k == key] + [(e, -1) for k, _, e in spans if k == key]
        )
        n = top = 0
        for _, delta in events:
            n += delta
            top = max(top, n)
        most[key] = top
    return most


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of kills")
    p.add_argument("--kill-min", type=float, default=1.0)
    p.add_argument("--kill-max", type=float, default=3.0)
    p.add_argument("--executors", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--manager-kills", type=int, default=2)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workload", choices=("stages", "fanout"), default="stages")
    p.add_argument("--children", type=int, default=10, help="children per parent (fanout)")
    p.add_argument("--limited", type=int, default=0, help="tasks more, under concurrency-limited keys")
    p.add_argument("--limit-keys", type=int, default=3, help="how many limit keys the limited tasks share")
    p.add_argument("--limit", type=int, default=2, help="the concurrency of each limit key")
    p.add_argument(
        "--redis-faults",
        action="store_true",
        help="Redis faults too (SIGKILL + AOF restart, SIGSTOP, OOM), one every --redis-every seconds",
    )
    p.add_argument("--redis-every", type=float, nargs=2, default=(6.0, 12.0), metavar=("MIN", "MAX"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stagewise-chaos-") as tmp:
        faulty: Standalone | None = None
        counter: RedisServer | None = None
        if a.redis_faults:
            (Path(tmp) / "redis").mkdir()
            faulty = Standalone(Path(tmp) / "redis")
            faulty.start()
            counter = RedisServer.start()
            server, url = None, faulty.url
        else:
            server = RedisServer.start()
            url = server.url
        try:
            (Path(tmp) / "logs").mkdir()
            s = asyncio.run(
                run_chaos(
                    url,
                    "chaos" + uuid.uuid4().hex[:6],
                    Path(tmp) / "logs",
                    a.tasks,
                    a.duration,
                    a.kill_min,
                    a.kill_max,
                    a.executors,
                    a.concurrency,
                    a.manager_kills,
                    drain_timeout=max(120.0, a.tasks * (1 + a.children) / 10),
                    seed=a.seed,
                    echo=True,
                    workload=a.workload,
                    children=a.children,
                    limited=a.limited,
                    limit_keys=a.limit_keys,
                    limit=a.limit,
                    faulty=faulty,
                    counter_url=counter.url if counter else None,
                    redis_every=tuple(a.redis_every),
                )
            )
            print(json.dumps(asdict(s)), flush=True)
            return 0 if s.ok() else 1
        finally:
            for x in (server, faulty, counter):
                if x is not None:
                    x.stop()


if __name__ == "__main__":
    sys.exit(main())
