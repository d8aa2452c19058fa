"""Every Redis command one noop task costs, end to end, by where it comes from.

    .venv/bin/python bench/commands.py [N] [--chain] [--cpu]     (default N = 2000 one-stage noop tasks)

A private redis-server, the manager (peer_stagewise.setup, as in the harness) and `redis-cli monitor`
for the whole run: N tasks are created the way the harness creates them (RedisClient.create,
100 in flight), then one executor (`--concurrency 64`, log level warning) drains them. Each line
MONITOR shows is put in a bucket: a top-level command by the process that sent it (producer,
executor, manager, the bench handler's RPUSH), a command run inside a script by that script (Redis
runs a script without interleaving, so its commands follow its EVALSHA line). Printed per task, for
the create phase and the drain phase (the drain is what the harness's `redis_cmds` column counts).
MONITOR slows Redis down: only the counts are used, never the times.  With --cpu, no MONITOR: the
drain's INFO commandstats (calls and microseconds per task, by command; a script's time includes
the commands it ran) and Redis's CPU per task (used_cpu_user + used_cpu_sys).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HARNESS = Path(os.environ.get("BENCH_HARNESS", "/work/shared/bench/peers"))
sys.path[:0] = [str(BENCH), str(HARNESS)]

import run as benchrun  # noqa: E402

_MON = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]*)"(.*)$')


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    chain = "--chain" in sys.argv
    cpu = "--cpu" in sys.argv
    n = int(args[0]) if args else 2000
    benchrun.OUT.mkdir(exist_ok=True)
    benchrun.LOGS.mkdir(parents=True, exist_ok=True)
    red = benchrun.Redis()
    red.start()
    try:
        env = benchrun.harness_env(red, "stagewise", 50)
        env.update(BENCH_CONFIG="tuned", PYTHONPATH=os.pathsep.join([str(HARNESS), str(BENCH)]))
        os.environ.update(env)
        measure(red.port, n, chain, env, cpu)
    finally:
        red.stop()


def measure(port: int, n: int, chain: bool, env: dict[str, str], cpu: bool = False) -> None:
    import peer_stagewise as sw
    import psutil
    import redis

    from stagewise.storage.runner import NAMES, source

    env = dict(os.environ)  # with the settings peer_stagewise put there
    shas = {hashlib.sha1(source(x).encode()).hexdigest(): x for x in NAMES}
    r = redis.Redis(port=port)
    r.flushall()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(sw.setup())
    mon_path = benchrun.LOGS / "commands-monitor.txt"
    mark = b"bench:phase:drain"
    try:
        sw.INFLIGHT = 50
        with open(mon_path, "w") as mf:
            mon = subprocess.Popen(["redis-cli", "-p", str(port), "monitor"] if not cpu else ["sleep", "3600"], stdout=mf)
            time.sleep(0.3)
            c0 = r.info("stats")["total_commands_processed"]
            loop.run_until_complete(sw.enqueue_chains(n) if chain else sw.enqueue_noop(n))
            c1 = r.info("stats")["total_commands_processed"]
            r.get(mark)  # the line between the two phases
            if cpu:
                r.config_resetstat()
                c1 = r.info("stats")["total_commands_processed"]
            cpu0 = r.info("cpu")
            argv = [str(benchrun.SW_BIN / "stagewise"), "executor", "peer_stagewise:app", "--concurrency", "64"]
            elog = open(benchrun.LOGS / "commands-executor.log", "wb")  # noqa: SIM115
            ex = subprocess.Popen(argv, cwd=HARNESS, env=env, stdout=elog, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while r.llen("bench:done") < n:
                if time.monotonic() > deadline or ex.poll() is not None:
                    raise RuntimeError(f"{r.llen('bench:done')}/{n} done, rc={ex.poll()}")
                time.sleep(0.02)
            c2 = r.info("stats")["total_commands_processed"]
            cpu1 = r.info("cpu")
            stats = r.info("commandstats")
            ex_ports = {c.laddr.port for c in psutil.Process(ex.pid).net_connections("tcp")}
            mgr_ports = {c.laddr.port for c in psutil.Process(sw._mgr.pid).net_connections("tcp")}
            me_ports = {c.laddr.port for c in psutil.Process().net_connections("tcp")}
            ex.send_signal(signal.SIGTERM)
            ex.wait(30)
            time.sleep(0.2)
            mon.terminate()
            mon.wait()
    finally:
        loop.run_until_complete(sw.teardown())
    if cpu:
        used = sum(cpu1[f] - cpu0[f] for f in ("used_cpu_user", "used_cpu_sys"))
        print(f"drain of {n}: Redis CPU {used * 1e6 / n:.1f} us per task; INFO commandstats per task:")
        for name, st in sorted(stats.items(), key=lambda x: -x[1]["usec"]):
            print(f"  {name.removeprefix('cmdstat_'):16} calls {st['calls'] / n:6.3f}  usec {st['usec'] / n:7.2f}")
        mon_path.unlink()
        return
    phases: dict[str, dict[str, Counter[str]]] = {"create": defaultdict(Counter), "drain": defaultdict(Counter)}
    phase, script = "create", "?"
    for line in open(mon_path, errors="replace"):
        m = _MON.match(line)
        if not m:
            continue
        who, cmd, rest = m[1], m[2].upper(), m[3]
        if cmd == "GET" and mark.decode() in rest:
            phase = "drain"
            continue
        if who == "lua":
            phases[phase][f"in {script}.lua"][cmd] += 1
            continue
        if cmd == "EVALSHA":
            script = shas.get(rest.split('"')[1], "?")
            cmd = f"EVALSHA {script}"
        p = who.rsplit(":", 1)[-1]
        pn = int(p) if p.isdigit() else -1
        if pn in ex_ports:
            origin = "bench handler" if '"bench:done"' in rest else "executor"
        elif pn in mgr_ports:
            origin = "manager"
        elif pn in me_ports:
            origin = "producer" if phase == "create" else "bench polls"
        else:
            origin = "other"
        phases[phase][origin][cmd] += 1
    mon_path.unlink()
    print(f"{n} {'three-stage chains' if chain else 'noop tasks'}; INFO total_commands_processed per task: "
          f"create {(c1 - c0 - 1) / n:.2f}, drain {(c2 - c1 - 2) / n:.2f} (incl. the bench polls)")
    for ph, by in phases.items():
        total = sum(sum(c.values()) for o, c in by.items() if o != "bench polls")
        print(f"\n## {ph}: {total / n:.2f} commands per task (bench polls left out)")
        for origin, c in sorted(by.items(), key=lambda x: -sum(x[1].values())):
            if origin == "bench polls":
                continue
            print(f"  {origin}: {sum(c.values()) / n:.2f}")
            for cmd, k in c.most_common():
                print(f"      {cmd:28} {k / n:6.3f}")


if __name__ == "__main__":
    main()
