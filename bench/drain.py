"""One executor drains N queued noop tasks: its rate, peak RSS, CPU per task and log lines.

    .venv/bin/python bench/drain.py [--level warning|info] [--n 5000] [--runs 1] BIN [BIN ...]
    .venv/bin/python bench/drain.py --harness BIN [BIN ...]

BIN: a venv's bin (an installed stagewise, e.g. bench/.venv-stagewise/bin).  Each BIN is run in
turn, --runs times.  A private redis-server; before each run N noop tasks of the harness's peer
module are created (RedisClient.create, 16 at a time), then `BIN/stagewise executor
peer_stagewise:app --concurrency 64` is started with STAGEWISE_LOG_LEVEL=--level, its stdout to a
file, and timed from spawn until the handlers' N RPUSHes land.  RSS is read from /proc every 2 ms
(the peak is of those samples), CPU (user+sys) just before SIGTERM.

--harness: instead, bench/run.py's one_run of the harness (noop, tuned) with BIN as the stagewise
venv; prints the harness's own rate and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HARNESS = Path(os.environ.get("BENCH_HARNESS", "/work/shared/bench/peers"))
sys.path.insert(0, str(BENCH))

import run as benchrun  # noqa: E402


async def _fill(url: str, n: int) -> None:
    from stagewise.manager.inproc import RedisClient

    c = RedisClient(url, namespace="bench")
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            await c.create({"app": "bench", "commands": [{"method": "bench.noop"}]})

    await asyncio.gather(*(one() for _ in range(n)))
    await c.close()


def _rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
    except (FileNotFoundError, IndexError):  # exited, or a zombie without VmRSS
        return 0


def drain(bin_: Path, port: int, level: str, n: int) -> str:
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis(port=port)
    r.flushall()
    asyncio.run(_fill(url, n))
    env = dict(
        os.environ,
        BENCH_REDIS_PORT=str(port),
        STAGEWISE_REDIS_URL=url,
        STAGEWISE_NAMESPACE="bench",
        STAGEWISE_LOG_LEVEL=level,
        PYTHONPATH=os.pathsep.join([str(HARNESS), str(BENCH)]),
    )
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [str(bin_ / "stagewise"), "executor", "peer_stagewise:app", "--concurrency", "64"],
            cwd=HARNESS,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        peak = 0
        try:
            while r.llen("bench:done") < n:
                peak = max(peak, _rss_kb(p.pid))
                if p.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit(f"{bin_}: the executor did not drain (rc={p.poll()})")
                time.sleep(0.002)
            took = time.perf_counter() - t0
            stat = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        finally:
            p.terminate()
            p.wait(30)
        out.seek(0)
        lines = sum(1 for _ in out)
    return (
        f"{bin_}: level {level}: {n / took:,.0f} tasks/s ({took:.2f} s), peak RSS {peak / 1024:.1f} MB, "
        f"executor CPU {cpu * 1e6 / n:.0f} us/task, {lines} log lines"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bins", nargs="+", type=Path)
    ap.add_argument("--level", default="warning")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--harness", action="store_true")
    args = ap.parse_args()
    benchrun.OUT.mkdir(exist_ok=True)
    red = benchrun.Redis()
    red.start()
    try:
        for _ in range(args.runs):
            for b in args.bins:
                if not args.harness:
                    print(drain(b.resolve(), red.port, args.level, args.n), flush=True)
                    continue
                benchrun.SW_RUN_BIN = b.resolve()
                rec = benchrun.one_run(
                    red, "stagewise", "noop", "tuned", 1, 100, out=benchrun.OUT / "drain.jsonl"
                )
                ok = rec.get("ok", True) and "value" in rec
                print(
                    f"{b}: harness noop tuned: {rec['value']:,.0f} jobs/s, peak RSS {rec['peak_rss_mb']:.1f} MB"
                    if ok
                    else f"{b}: harness run failed: {rec.get('error', '')[:300]}",
                    flush=True,
                )
    finally:
        red.stop()


if __name__ == "__main__":
    main()
