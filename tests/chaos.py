"""Chaos run: many three-stage tasks while executors are SIGKILLed at random and restarted,
and the manager is SIGKILLed and restarted; then every task must be FINISHED with exactly the
expected results, and no stage committed twice.

With --redis-faults, Redis itself (an append-only file, appendfsync everysec) has trouble too,
one fault every few seconds in turn: SIGKILL and a restart from its AOF a second later, SIGSTOP
for a few seconds (past the executors' dead threshold), and maxmemory reached (noeviction) for
a few seconds.  Creates refused meanwhile (1006) are sent again with on_conflict "ignore" until
acknowledged; stage executions are counted in a second Redis that no fault touches.

    python -m tests.chaos --tasks 2000 --duration 300      (make chaos CHAOS_ARGS="...")
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

from tests.chaos_app import exec_key
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
    redis_faults: dict[str, int] = field(default_factory=dict)  # kind -> how many
    redis_recovery_s: list[float] = field(default_factory=list)  # Redis fault end -> a task ended
    answers: dict[str, int] = field(default_factory=dict)  # create errors the API answered
    chaos_s: float = 0.0
    drain_s: float = 0.0

    def ok(self) -> bool:
        return (
            self.acknowledged == self.tasks
            and self.finished == self.tasks
            and not self.failed
            and not self.lost
            and not self.stuck
            and not self.wrong_results
            and not self.double_committed
            and not self.answers.get("-32603")
        )

    def lines(self) -> str:
        rec = sorted(self.recovery_s)
        rec_txt = (
            f"median {statistics.median(rec):.2f} s, max {rec[-1]:.2f} s over {len(rec)} kills"
            if rec
            else "no runs were in flight at the kills"
        )
        lines = [
            f"chaos: {self.tasks} tasks x 3 stages, {self.chaos_s:.0f} s of kills, drained in {self.drain_s:.1f} s",
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
    summary = Summary(tasks=tasks)
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
        ids = [f"c{i}" for i in range(tasks)]
        # smaller batches, more often, with Redis faults: creates land in the faults too
        per = 5 if faulty is not None else 25
        batches = [ids[i : i + per] for i in range(0, tasks, per)]
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
                unacked = await _create(m, unacked[:100], ids, answers, strict=faulty is None) + unacked[100:]
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
            if not batches and not unacked and not manager_at and await _all_terminal(r, namespace, tasks):
                break
        summary.chaos_s = time.monotonic() - t0
        stop_faults.set()
        if faults is not None:
            await faults  # the fault under way is lifted: Redis is up, memory is free
        t1 = time.monotonic()
        while unacked and time.monotonic() - t1 < drain_timeout:
            unacked = await _create(m, unacked[:100], ids, answers, strict=False) + unacked[100:]
            await asyncio.sleep(0.2)  # pacing of the retries
        try:
            await wait_for(
                lambda: _all_terminal(r, namespace, tasks),
                timeout=drain_timeout,
                interval=0.2,
                what="every task to end",
            )
        except AssertionError:
            pass
        summary.drain_s = time.monotonic() - t1
        summary.acknowledged = tasks - len(unacked)
        summary.answers = dict(answers)
        await _check(cr, m, namespace, [t for t in ids if t not in unacked], summary, kills)
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


async def _create(m: Any, batch: list[str], ids: list[str], answers: Counter[str], strict: bool) -> list[str]:
    """Send the creates of `batch` (on_conflict "ignore": one answered 1006 may have been
    applied); the ids not acknowledged.  `strict`: every create must be acknowledged."""
    reqs = []
    for tid in batch:
        n = int(tid[1:])
        step = {"method": "chaos.step", "params": {"value": "", "min_ms": 100, "max_ms": 500}}
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
                        "kws": {"v": n * 10},
                        "commands": [
                            {**step, "params": {**step["params"], "value": "{{ kws.v }}"}},
                            {**step, "params": {**step["params"], "value": "{{ results.0 }}"}},
                            {**step, "params": {**step["params"], "value": "{{ results.1 }}"}},
                        ],
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
        tid = ids[x["id"]]
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
    cr: aredis.Redis, m: Any, namespace: str, ids: list[str], s: Summary, kills: list[tuple[float, int]]
) -> None:
    executions = await cr.hgetall(exec_key(namespace))
    s.stage_executions = sum(int(v) for v in executions.values())
    s.repeated_executions = s.stage_executions - sum(1 for _ in executions)
    lost_marks: list[tuple[str, float]] = []
    for n, tid in enumerate(ids):
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
        if v["status"] == "FINISHED" and v["results"] != [n * 10 + 1, n * 10 + 2, n * 10 + 3]:
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
    for t_kill, pid in kills:  # a killed executor's runs were re-queued when the reaper saw it
        ends = [end for eid, end in lost_marks if f"-{pid}-" in eid and end >= t_kill]
        if ends:
            s.recovery_s.append(min(ends) - t_kill)


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
                    drain_timeout=max(120.0, a.tasks / 10),
                    seed=a.seed,
                    echo=True,
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
