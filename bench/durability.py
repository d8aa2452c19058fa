"""The loss window and the create throughput of each STAGEWISE_DURABILITY setting.

    .venv/bin/python bench/durability.py [--seconds 4] [--producers 8]

Each scenario starts its own redis-server(s) and a manager (logs at warning), runs
`--producers` clients that call tasks.create one after the other for `--seconds`, then makes
the fault happen while they go on, lets Redis recover, and counts the creates that were
acknowledged (answered with a task) against those Redis has afterwards.  Throughput is the
acknowledged creates per second before the fault.  Scenarios:

- `async, AOF everysec, SIGKILL`: Redis killed and restarted from its AOF (a process crash:
  the kernel still had every write, fsynced or not).
- `async, AOF everysec, OS crash`: the same, but the AOF loses its last ~1 s before the restart
  (redis-check-aof --truncate-to-timestamp; the AOF carries timestamps): what an OS crash or a
  power cut costs when the last fsync was up to a second before it.
- `async, AOF always, SIGKILL`: every write fsynced before Redis answers.  (An OS crash cannot
  lose more here: what was acknowledged was on disk.)
- `async|replica, Sentinel failover to a lagging replica`: master, one replica, one sentinel;
  the replica is stopped (SIGSTOP) for 0.8 s while the load goes on, the master is SIGKILLed at
  its end and the replica resumed, so the sentinel promotes a replica that lacks the last
  writes.  The same load with the replica in sync gives the throughput with WAIT.

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from stagewise.keys import Keys  # noqa: E402
from tests.helpers import Daemons, ManagerProc, RpcError, free_port, wait_for  # noqa: E402

NS = "dur"
QUIET = {"STAGEWISE_LOG_LEVEL": "warning"}


def start_redis(port: int, dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not on PATH (make redis)"
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(dir), *extra]
    with open(dir / f"redis-{port}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    c = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            if c.ping():
                c.close()
                return proc
        except redis.BusyLoadingError:
            pass
        except redis.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((dir / f"redis-{port}.log").read_text()[-2000:])
        time.sleep(0.02)  # poll interval inside a deadline loop


def truncate_aof(dir: Path, cut: int) -> None:
    """Drops what the AOF logged after second `cut` (its #TS annotations say when)."""
    manifest = dir / "appendonlydir" / "appendonly.aof.manifest"
    subprocess.run(
        ["redis-check-aof", "--truncate-to-timestamp", str(cut), str(manifest)],
        check=True,
        capture_output=True,
        input=b"y\n",
    )


def start_sentinel(dir: Path, port: int, master: int) -> subprocess.Popen[bytes]:
    conf = dir / "sentinel.conf"  # the sentinel rewrites its file: one of its own, writable
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor mymaster 127.0.0.1 {master} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n"
    )
    exe = shutil.which("redis-server")
    assert exe
    with open(dir / "sentinel.log", "ab") as log:
        return subprocess.Popen(
            [exe, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait()


@dataclass
class Load:
    """`producers` clients creating tasks one after the other until stopped."""

    m: ManagerProc
    acked: list[tuple[float, str]] = field(default_factory=list)  # (answer time, id)
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    async def one(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            tid = uuid.uuid4().hex[:12]
            try:
                await self.m.rpc(
                    "tasks.create", {"task": {"id": tid, "app": "idle", "commands": [{"method": "m.x"}]}}
                )
            except RpcError as e:
                if e.code != 1006:
                    self.errors.append(repr(e))
                self.refused += 1
                await asyncio.sleep(0.05)  # a client's back-off
                continue
            except Exception as e:  # noqa: BLE001 - counted, reported
                self.errors.append(repr(e))
                await asyncio.sleep(0.05)
                continue
            self.acked.append((time.time(), tid))

    def rate(self, until: float, since: float) -> float:
        n = sum(1 for t, _ in self.acked if since <= t < until)
        return n / (until - since)


def present(port: int, ids: list[str]) -> int:
    c = redis.Redis(port=port, socket_timeout=10)
    try:
        pipe = c.pipeline(transaction=False)
        for tid in ids:
            pipe.exists(Keys(NS, 0).task(tid))
        return sum(pipe.execute())
    finally:
        c.close()


@dataclass
class Row:
    setting: str
    fault: str
    acked: int
    present: int
    rate: float

    def line(self) -> str:
        lost = self.acked - self.present
        return f"| {self.setting} | {self.fault} | {self.acked} | {self.present} | {lost} | {self.rate:.0f} |"


async def with_load(m: ManagerProc, producers: int, seconds: float, fault: Any) -> tuple[Load, float]:
    """Runs the load for `seconds`, then `fault()` while it goes on, then stops it after 1 s
    more.  (load, rate before the fault)."""
    load = Load(m)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.one(stop)) for _ in range(producers)]
    t0 = time.time()
    await asyncio.sleep(seconds)  # the steady phase of a benchmark, not a wait for a state
    t1 = time.time()
    await fault()
    await asyncio.sleep(1.0)  # the load goes on against the fault
    stop.set()
    await asyncio.gather(*tasks)
    return load, load.rate(t1, t0 + 0.5)


async def restart_scenario(args: argparse.Namespace, fsync: str, truncate: bool) -> Row:
    dir = Path(tempfile.mkdtemp(prefix="stagewise-dur-"))
    port = free_port()
    conf = ["--appendonly", "yes", "--appendfsync", fsync, "--aof-timestamp-enabled", "yes"]
    proc = start_redis(port, dir, *conf)
    d = Daemons(f"redis://127.0.0.1:{port}/0", NS, dir)
    killed_at: list[float] = []
    try:
        m = await d.manager(**QUIET)

        async def fault() -> None:
            if truncate:  # kill just after a second starts: the truncation drops ~1.0 s
                await asyncio.sleep(1 - math.modf(time.time())[0] + 0.02)
            killed_at.append(time.time())
            kill(proc)

        load, rate = await with_load(m, args.producers, args.seconds, fault)
        if truncate:
            truncate_aof(dir, int(killed_at[0]) - 2)  # keeps the seconds before the last one
        proc = start_redis(port, dir, *conf)
        ids = [tid for _, tid in load.acked]
        got = present(port, ids)
        assert not load.errors, load.errors[:3]
        fault_name = "OS crash (AOF's last ~1 s dropped)" if truncate else "Redis SIGKILL, restart from AOF"
        return Row(f"async, appendfsync {fsync}", fault_name, len(ids), got, rate)
    finally:
        await d.aclose()
        kill(proc)
        shutil.rmtree(dir, ignore_errors=True)


async def failover_scenario(args: argparse.Namespace, durability: str) -> list[Row]:
    dir = Path(tempfile.mkdtemp(prefix="stagewise-dur-"))
    a, b, s = free_port(), free_port(), free_port()
    procs = {"a": start_redis(a, dir, "--appendonly", "yes")}
    procs["b"] = start_redis(b, dir, "--appendonly", "yes", "--replicaof", "127.0.0.1", str(a))
    procs["s"] = start_sentinel(dir, s, a)

    def sentinel_master() -> int | None:
        c = redis.Redis(port=s, socket_timeout=1, decode_responses=True)
        try:
            got = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
            return int(got[1]) if got else None
        except redis.RedisError:
            return None
        finally:
            c.close()

    def replica_known() -> bool:
        c = redis.Redis(port=s, socket_timeout=1, decode_responses=True)
        try:
            rows = c.execute_command("SENTINEL", "REPLICAS", "mymaster")
        except redis.RedisError:
            return False
        finally:
            c.close()
        return any("ok" in str(r) for r in rows or [])

    d = Daemons(f"redis+sentinel://127.0.0.1:{s}/mymaster", NS, dir)
    try:
        await wait_for(replica_known, timeout=20, interval=0.1, what="the sentinel to see the replica")
        m = await d.manager(STAGEWISE_DURABILITY=durability, **QUIET)
        # in sync: the throughput with the wait, no fault
        steady, rate = await with_load(m, args.producers, args.seconds, _nothing)
        rows = [Row(durability, "none (replica in sync)", len(steady.acked), len(steady.acked), rate)]

        async def fault() -> None:
            os.kill(procs["b"].pid, signal.SIGSTOP)
            await asyncio.sleep(0.8)  # the replica lags this long: the fault being measured
            kill(procs["a"])
            os.kill(procs["b"].pid, signal.SIGCONT)

        load, rate = await with_load(m, args.producers, 1.0, fault)
        await wait_for(lambda: sentinel_master() == b, timeout=30, interval=0.1, what="the promotion")
        ids = [tid for _, tid in load.acked]
        got = present(b, ids)
        rows.append(Row(durability, "Sentinel failover to a replica 0.8 s behind", len(ids), got, rate))
        return rows
    finally:
        await d.aclose()
        for p in procs.values():
            kill(p)
        shutil.rmtree(dir, ignore_errors=True)


async def _nothing() -> None:
    return None


async def main(args: argparse.Namespace) -> None:
    rows = [
        await restart_scenario(args, "everysec", truncate=False),
        await restart_scenario(args, "everysec", truncate=True),
        await restart_scenario(args, "always", truncate=False),
        *await failover_scenario(args, "async"),
        *await failover_scenario(args, "replica"),
    ]
    print(f"\n{args.producers} producers, tasks.create over HTTP, one manager, Redis {redis_version()}\n")
    print("| STAGEWISE_DURABILITY, Redis | fault | acknowledged | present after | lost | creates/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(r.line())


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="bench/durability.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0, help="of load before each fault")
    p.add_argument("--producers", type=int, default=8)
    asyncio.run(main(p.parse_args()))
