"""Where the harness's create-to-done latency goes, one task at a time, in three parts.

    .venv/bin/python bench/latency_parts.py [N]        (default N = 300, after 20 warm-up tasks)

A private redis-server, the manager and one executor (`--concurrency 8`) serving the app defined
below: a one-stage task whose handler pushes the wall-clock time it started at onto a list, as
the harness's handler pushes `1`.  Tasks are created the way the harness creates them
(`RedisClient.create`: the manager's `tasks.create` in this process, create.lua on Redis), then
the list is popped (BLPOP), so the total is the harness's latency.  The parts, as medians:

  create              RedisClient.create called -> returned
  created -> handler  create returned -> the handler started (negative if it started first)
  handler -> client   the handler started -> our BLPOP returned (its RPUSH, the pop's wake-up)

and, first, the same create for an app that no executor serves (nothing wakes on its XADD).
Then the executor's side of "create -> handler" (the executor writes the times it reached each
point to a file; this module installs the probes when the executor imports it):

  created -> read     create called -> the executor's XREADGROUP returned the entry
  read -> claim sent  the entry in hand -> claim.lua's EVALSHA handed to the socket
  claim round trip    claim.lua sent -> its reply decoded
  claim -> handler    the reply in hand -> the handler started (run start, templates, params)

and, for a task pushed to the executor (create.lua claimed it under the executor's offer: push
delivery, executor/fetch.py), instead of the claim's parts:

  created -> pushed   create called -> the executor's read returned the pushed run
  pushed -> handler   the run in hand -> the handler started

All clocks are `time.time()` on one machine.  STAGEWISE_LOG_LEVEL is passed on (default info).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from stagewise.executor import App

ROOT = Path(__file__).resolve().parent.parent
DONE = "latency-parts:done"

app = App("latparts")
_r: Any = None
PROBE = "LATPARTS_PROBE"  # the file the executor appends "<point> <time.time()>" lines to


def _install_probes(path: str) -> None:
    """In the executor: wraps the fetch role's read and claim to note when each returned."""
    from stagewise.executor.fetch import Fetcher

    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the executor's whole life
    read, claim_all = Fetcher.read, Fetcher._claim_all

    async def timed_read(self: Fetcher, free: int) -> Any:
        got = await read(self, free)
        if got:
            out.write(f"read {time.time()!r}\n")
        elif self._pushed:
            out.write(f"pushed {time.time()!r}\n")
        return got


    async def timed_claim_all(self: Fetcher, claims: Any) -> Any:
        out.write(f"claim_sent {time.time()!r}\n")
        got = await claim_all(self, claims)
        out.write(f"claim_back {time.time()!r}\n")
        return got

    Fetcher.read, Fetcher._claim_all = timed_read, timed_claim_all  # type: ignore[method-assign]


if __name__ != "__main__" and os.environ.get(PROBE):
    _install_probes(os.environ[PROBE])


@app.method("latparts.noop")
async def noop() -> None:
    global _r
    started = time.time()
    if _r is None:
        import redis.asyncio as aredis

        _r = aredis.Redis.from_url(os.environ["STAGEWISE_REDIS_URL"])
    await _r.rpush(DONE, repr(started))


async def main(n: int) -> None:
    import statistics
    import tempfile

    import redis.asyncio as aredis

    from stagewise.manager.inproc import RedisClient
    from tests.helpers import Daemons, RedisServer

    srv = RedisServer.start()
    try:
        d = Daemons(srv.url, "latparts", Path(tempfile.mkdtemp(prefix="latparts-")))
        try:
            await d.manager()
            client = RedisClient(redis_url=srv.url, namespace="latparts")
            alone: list[float] = []  # a create while nothing else runs: no executor serves this app
            for i in range(n + 20):
                t0 = time.time()
                await client.create({"app": "latparts-nobody", "commands": [{"method": "nobody.x"}]})
                if i >= 20:
                    alone.append(time.time() - t0)
            level = os.environ.get("STAGEWISE_LOG_LEVEL", "info")
            pythonpath = f"{ROOT}{os.pathsep}{ROOT / 'bench'}"
            probe = d.log_dir / "probe.txt"
            await d.executor(
                "latency_parts:app",
                concurrency=8,
                PYTHONPATH=pythonpath,
                STAGEWISE_LOG_LEVEL=level,
                **{PROBE: str(probe)},
            )
            pop = aredis.Redis.from_url(srv.url)
            task = {"app": "latparts", "commands": [{"method": "latparts.noop"}]}
            rows: list[tuple[float, float, float, float]] = []
            spans: list[tuple[float, float, float]] = []  # (t0, handler started, t2) of each task
            for i in range(n + 20):
                t0 = time.time()
                await client.create(task)
                t1 = time.time()
                got = await pop.blpop([DONE], timeout=30)
                t2 = time.time()
                if got is None:
                    raise SystemExit(f"task {i} not done within 30 s")
                started = float(got[1])
                if i >= 20:
                    rows.append((t1 - t0, started - t1, t2 - started, t2 - t0))
                    spans.append((t0, started, t2))
            await pop.aclose()
            await client.close()
        finally:
            await d.aclose()
    finally:
        srv.stop()
    parts = executor_parts(probe, spans)
    print(f"{n} tasks, one at a time (ms)")
    xs = sorted(x * 1000 for x in alone)
    print(
        f"  {'create, nothing else':20s} p50 {statistics.median(xs):6.3f}   p10 {xs[n // 10]:6.3f}   p90 {xs[9 * n // 10]:6.3f}"
    )
    for name, col in (("create", 0), ("created -> handler", 1), ("handler -> client", 2), ("total", 3)):
        xs = sorted(r[col] * 1000 for r in rows)
        print(
            f"  {name:20s} p50 {statistics.median(xs):6.3f}   p10 {xs[len(xs) // 10]:6.3f}   p90 {xs[9 * len(xs) // 10]:6.3f}"
        )
    print(
        f"the executor's side ({len(parts['claim round trip'])} tasks claimed, "
        f"{len(parts['created -> pushed'])} pushed, with all points seen)"
    )
    for name, xs in parts.items():
        xs = sorted(x * 1000 for x in xs)
        if xs:
            print(
                f"  {name:20s} p50 {statistics.median(xs):6.3f}   p10 {xs[len(xs) // 10]:6.3f}   p90 {xs[9 * len(xs) // 10]:6.3f}"
            )


def executor_parts(probe: Path, spans: list[tuple[float, float, float]]) -> dict[str, list[float]]:
    """The executor's points of each task, in seconds: the tasks run one at a time, so the points
    between a task's create and its handler's start are that task's."""
    points = [(name, float(t)) for name, t in (line.split() for line in probe.read_text().splitlines())]
    out: dict[str, list[float]] = {
        "created -> read": [],
        "read -> claim sent": [],
        "claim round trip": [],
        "claim -> handler": [],
        "created -> pushed": [],
        "pushed -> handler": [],
    }
    for t0, started, _ in spans:
        seen = {name: t for name, t in points if t0 <= t <= started}
        if "pushed" in seen:
            out["created -> pushed"].append(seen["pushed"] - t0)
            out["pushed -> handler"].append(started - seen["pushed"])
            continue
        if len(seen) < 3:
            continue
        out["created -> read"].append(seen["read"] - t0)
        out["read -> claim sent"].append(seen["claim_sent"] - seen["read"])
        out["claim round trip"].append(seen["claim_back"] - seen["claim_sent"])
        out["claim -> handler"].append(started - seen["claim_back"])
    return out


if __name__ == "__main__":
    import asyncio

    sys.path.insert(0, str(ROOT))
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
