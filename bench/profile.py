"""Profiles one executor draining one-stage tasks, with py-spy, and sorts its CPU samples by role.

    .venv/bin/python bench/profile.py [N]        (N tasks, default 30,000)

A private redis-server, the manager and N pre-created `demo.echo` tasks (examples/app.py); then
one executor (`--concurrency 64`, log level warning) is started with `py-spy record` attached
(raw stacks, 200 Hz) and timed until all N are FINISHED.  It prints the drain rate and where the
executor's samples went:

  start-up imports   a frame of importlib's loader on the stack
  redis-py           the sampled function is redis-py's (packing, reading, its timeouts, pool)
  stage call         under Executor.call: conditions, templates, params, the handler
  our RESP packing   shared/storage/runner.py (run_many's packing and reading loop)
  event loop         asyncio / uvloop themselves (callbacks, tasks, the C loop)
  bookkeeping        the rest: fetch, claim, run, commit batching, decoding

plus the executor's CPU time per task and the functions with the most samples (inclusive).  py-spy is not a dependency of the
project: `.venv/bin/pip install py-spy` first.  The raw profile is kept in
bench/out/profile-raw.txt.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis.asyncio as aredis  # noqa: E402

from tests.helpers import Daemons, RedisServer, wait_for  # noqa: E402

OUT = ROOT / "bench" / "out"
ROLES = ("start-up imports", "redis-py", "stage call", "our RESP packing", "event loop", "bookkeeping")
_FRAME = re.compile(r"(.*?) \((.+):\d+\)$")  # "function (file:line)"; file may be "<frozen ...>"


def _frame(f: str) -> tuple[str, str]:
    m = _FRAME.match(f)
    return (m.group(1), m.group(2)) if m else (f, "")


def role(frames: list[tuple[str, str]]) -> str:
    """The role one sampled stack (outermost first) is counted under; see the module doc."""
    leaf_fn, leaf_file = frames[-1]
    if any("importlib._bootstrap" in file for _, file in frames):
        return "start-up imports"
    if leaf_file.startswith("redis/") or "/redis/" in leaf_file:
        return "redis-py"
    if any(fn == "call" and file.endswith("executor/call.py") for fn, file in frames):
        return "stage call"
    if leaf_file.endswith("shared/storage/runner.py"):
        return "our RESP packing"
    if "asyncio/" in leaf_file or "uvloop" in leaf_file:
        return "event loop"
    return "bookkeeping"


def summarize(raw: Path, top: int = 20) -> str:
    by_role: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        by_role[role(frames)] += count
        for name in {
            f"{fn} ({file.split('site-packages/')[-1].split(str(ROOT) + '/')[-1]})" for fn, file in frames
        }:
            inclusive[name] += count
    lines = [f"{total} samples", "", "| role | share of samples |", "|---|---:|"]
    lines += [f"| {r} | {by_role[r] * 100 / max(total, 1):.1f} % |" for r in ROLES]
    lines += ["", f"Top {top} functions (inclusive):", ""]
    lines += [f"  {v * 100 / max(total, 1):5.1f} %  {k}" for k, v in inclusive.most_common(top)]
    return "\n".join(lines)


async def main(n: int) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    OUT.mkdir(parents=True, exist_ok=True)
    raw = OUT / "profile-raw.txt"
    server = RedisServer.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            d = Daemons(server.url, "prof" + uuid.uuid4().hex[:6], Path(tmp))
            quiet = {"STAGEWISE_LOG_LEVEL": "warning"}
            m = await d.manager(**quiet)
            task = {"app": "demo", "commands": [{"method": "demo.echo", "params": {"value": 1}}]}
            for i in range(0, n, 1000):
                await m.rpc("tasks.create_many", {"tasks": [task] * min(1000, n - i)})
            r = aredis.Redis.from_url(server.url, decode_responses=True)
            finished = "{" + d.namespace + ":0}:i:s:FINISHED"
            t0 = time.perf_counter()
            ex = await d.executor("examples.app:app", 64, **quiet)
            prof = await asyncio.create_subprocess_exec(
                *[spy, "record", "-o", str(raw), "-f", "raw", "-r", "200", "-p", str(ex.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

            async def drained() -> bool:
                return bool(await r.zcard(finished) >= n)

            await wait_for(drained, timeout=600, interval=0.05, what=f"{n} tasks FINISHED")
            dt = time.perf_counter() - t0
            cpu = psutil.Process(ex.pid).cpu_times()
            prof.send_signal(signal.SIGINT)
            await asyncio.wait_for(prof.wait(), 30)
            await r.aclose()
            await d.aclose()
    finally:
        server.stop()
    print(f"{n} one-stage tasks drained by one executor (concurrency 64) in {dt:.2f} s = {n / dt:,.0f}/s")
    print(f"executor CPU {(cpu.user + cpu.system) * 1000 / n:.3f} ms per task (user+sys, start-up included)")
    print("(timed from the executor's spawn; py-spy attached, which slows it somewhat)\n")
    print(summarize(raw))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30_000))
