"""Executor start-up: spawn -> first task done, median over N spawns, and its RSS after start.

    .venv/bin/python bench/startup.py [BIN] [N]     (BIN: a venv's bin, default bench/.venv-stagewise/bin)

A private redis-server; before each spawn one noop task of the harness's peer module is created
(RedisClient.create), then `BIN/stagewise executor peer_stagewise:app --concurrency 64` (log level
warning) is started and the time until the handler's RPUSH lands is taken; RSS is read from /proc
0.3 s later, and the executor is stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HARNESS = Path(os.environ.get("BENCH_HARNESS", "/work/shared/bench/peers"))
sys.path.insert(0, str(BENCH))

import run as benchrun  # noqa: E402


async def _create(url: str) -> None:
    from stagewise.manager.inproc import RedisClient

    c = RedisClient(url, namespace="bench")
    await c.create({"app": "bench", "commands": [{"method": "bench.noop"}]})
    await c.close()


def main() -> None:
    import redis

    bin_ = Path(sys.argv[1]) if len(sys.argv) > 1 else benchrun.SW_RUN_BIN
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    if len(sys.argv) <= 1:
        benchrun.OUT.mkdir(exist_ok=True)
        benchrun.ensure_sw_venv()
    benchrun.OUT.mkdir(exist_ok=True)
    red = benchrun.Redis()
    red.start()
    url = f"redis://127.0.0.1:{red.port}/0"
    env = dict(
        os.environ,
        BENCH_REDIS_PORT=str(red.port),
        STAGEWISE_REDIS_URL=url,
        STAGEWISE_NAMESPACE="bench",
        STAGEWISE_LOG_LEVEL="warning",
        PYTHONPATH=os.pathsep.join([str(HARNESS), str(BENCH)]),
        BENCH_CONFIG="tuned",
    )
    r = redis.Redis(port=red.port)
    took, rss = [], []
    try:
        for _ in range(n):
            r.delete("bench:done")
            asyncio.run(_create(url))
            t0 = time.perf_counter()
            p = subprocess.Popen(
                [str(bin_ / "stagewise"), "executor", "peer_stagewise:app", "--concurrency", "64"],
                cwd=HARNESS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            while not r.llen("bench:done"):
                if time.perf_counter() - t0 > 30 or p.poll() is not None:
                    raise SystemExit(f"no task done (rc={p.poll()})")
                time.sleep(0.001)
            took.append(time.perf_counter() - t0)
            time.sleep(0.3)
            status = Path(f"/proc/{p.pid}/status").read_text()
            rss.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    finally:
        red.stop()
    print(
        f"{bin_}: spawn -> first task done median {statistics.median(took) * 1000:.0f} ms "
        f"(min {min(took) * 1000:.0f}, max {max(took) * 1000:.0f}) over {n}; RSS {statistics.median(rss):.1f} MB"
    )


if __name__ == "__main__":
    main()
