"""Redis's own time for claim.lua and commit.lua per run, without daemons.

    .venv/bin/python bench/script_cost.py [N] [BATCH] [--perf FILE] [--callgrind]
    (default 5000 one-stage noop tasks, 27 runs per call)

A private redis-server: N one-stage `bench.noop` tasks are created (store.create, as the manager
does), then this process plays one executor: it reads BATCH stream entries, claims them in one
call and commits them in one call (Scripts.run_many, as the executor's fetch role and batcher
do), until all are FINISHED.  INFO commandstats is read around every call, so each script's time
is what Redis measured for its EVALSHAs alone (the commands they ran included), split into the
commands inside and the rest (the Lua itself, the call set-up and the reply).  Nothing else runs
against the server, so the figures move far less between runs than a drain with an executor.
With --perf FILE, `perf record -g` is attached to the redis-server for the claims and commits
(not the creates) and writes FILE, for `perf report -i FILE`.  With --callgrind, the server runs
under valgrind's callgrind, counting instructions over the claims and commits only: a count that
does not move with the load other processes put on the cores (times here move by 10 %), so it
tells a small change from noise.  It runs about 50 times slower; N = 1000 is enough.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH)]

import run as benchrun  # noqa: E402


def grind_control(on_off: str, pid: int) -> None:
    """Turns callgrind's counting on or off in the server."""
    subprocess.run(["callgrind_control", "-i", on_off, str(pid)], check=True, capture_output=True)


async def stats(r: Any) -> Counter[str]:
    out: Counter[str] = Counter()
    for name, st in (await r.info("commandstats")).items():
        out[name.removeprefix("cmdstat_")] = st["usec"]
    return out


async def measure(port: int, n: int, batch: int, perf: str | None, pid: int, grind: bool) -> None:
    import redis.asyncio as aredis

    from stagewise.config import Settings
    from stagewise.keys import GROUP, Keys
    from stagewise.manager.store import Store
    from stagewise.models import parse_task
    from stagewise.storage import calls
    from stagewise.storage.runner import source

    r = aredis.Redis(port=port, decode_responses=True)
    await r.flushall()
    store = Store(r, Settings(redis_url=f"redis://127.0.0.1:{port}", namespace="sc"))
    k = Keys("sc", 0)
    for _ in range(n):
        await store.create(parse_task({"app": "bench", "commands": [{"method": "bench.noop"}]}))
    ex = "ex1"
    assert await store.scripts.run(calls.ping(k, ex, ["app", "bench", "host", "h", "pid", 1]))
    for name in ("claim", "commit"):  # loaded before the measure, not by its first call
        await r.script_load(source(name))
    rec = None
    if perf:
        rec = await asyncio.create_subprocess_exec("perf", "record", "-q", "-F", "4000", "-g", "-p", str(pid), "-o", perf)
        await asyncio.sleep(1)  # perf is attached
    if grind:
        await asyncio.to_thread(grind_control, "on", pid)
    cpu0 = await r.info("cpu")
    usec: dict[str, Counter[str]] = {"claim": Counter(), "commit": Counter()}
    done = 0
    while done < n:
        got = await r.xreadgroup(GROUP, ex, {k.stream("bench"): ">"}, count=batch)
        [(_, entries)] = got
        runs = []
        claims = []
        for entry_id, f in entries:
            lease = uuid.uuid4().hex
            runs.append((f["t"], f["j"], lease))
            claims.append(calls.claim(k, k.stream("bench"), entry_id, f["t"], f["j"], ex, lease))
        s0 = await stats(r)
        res = await store.scripts.run_many(claims)
        s1 = await stats(r)
        assert all(c.code == "OK" for c in res), res[:2]
        commits = [calls.commit(k, t, j, lease, 0, "null", "ok", "bench.noop") for t, j, lease in runs]
        res2 = await store.scripts.run_many(commits)
        s2 = await stats(r)
        assert all(c.code == "FINISHED" for c in res2), res2[:2]
        usec["claim"].update(s1 - s0)
        usec["commit"].update(s2 - s1)
        done += len(entries)
    cpu1 = await r.info("cpu")
    if grind:
        await asyncio.to_thread(grind_control, "off", pid)
    if rec:
        rec.send_signal(signal.SIGINT)
        await asyncio.wait_for(rec.wait(), 30)
    used = sum(cpu1[f] - cpu0[f] for f in ("used_cpu_user", "used_cpu_sys"))
    print(f"{n} tasks, {batch} runs per call; Redis CPU over the loop {used * 1e6 / n:.1f} us per task "
          "(with this script's INFO calls)")
    for script, c in usec.items():
        ev = c["evalsha"] / n
        inner = {x: v / n for x, v in c.items() if x not in ("evalsha", "info") and v}
        print(f"  {script}: EVALSHA {ev:.2f} us per run, of which commands {sum(inner.values()):.2f} "
              f"({', '.join(f'{x} {v:.2f}' for x, v in sorted(inner.items(), key=lambda x: -x[1]))}), "
              f"Lua and the rest {ev - sum(inner.values()):.2f}")
    await r.aclose()


def main() -> None:
    argv = sys.argv[1:]
    perf = None
    if "--perf" in argv:
        i = argv.index("--perf")
        perf = argv[i + 1]
        del argv[i : i + 2]
    args = [a for a in argv if not a.startswith("--")]
    n = int(args[0]) if args else 5000
    batch = int(args[1]) if len(args) > 1 else 27
    grind = "--callgrind" in argv
    benchrun.OUT.mkdir(exist_ok=True)
    red = benchrun.Redis()
    out = benchrun.OUT / "script_cost.callgrind"
    grinder = None
    if grind:  # not daemonized, so that callgrind_control reaches the server itself
        out.unlink(missing_ok=True)
        argv = red.argv[:]
        argv[argv.index("--daemonize") + 1] = "no"
        grinder = subprocess.Popen(
            ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]
        )
        red.pid = grinder.pid
        deadline = time.monotonic() + 30
        while benchrun.redis_cmd(red.port, "PING").strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server under valgrind did not start")
            time.sleep(0.2)
    else:
        red.start()
    pid = int(red.pid or 0)
    try:
        asyncio.run(measure(red.port, n, batch, perf, pid, grind))
    finally:
        red.stop()
    if grinder:
        grinder.wait(60)
        ir = next(int(ln.split()[1]) for ln in out.read_text().splitlines() if ln.startswith("totals:"))
        print(f"instructions Redis ran over the claims and commits (callgrind): {ir / n / 1000:.1f} thousand per task")


if __name__ == "__main__":
    main()
