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
            await d.executor(
                "latency_parts:app", concurrency=8, PYTHONPATH=pythonpath, STAGEWISE_LOG_LEVEL=level
            )
            pop = aredis.Redis.from_url(srv.url)
            task = {"app": "latparts", "commands": [{"method": "latparts.noop"}]}
            rows: list[tuple[float, float, float, float]] = []
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
            await pop.aclose()
            await client.close()
        finally:
            await d.aclose()
    finally:
        srv.stop()
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


if __name__ == "__main__":
    import asyncio

    sys.path.insert(0, str(ROOT))
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
