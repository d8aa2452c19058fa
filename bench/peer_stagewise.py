"""stagewise peer for the harness in /work/shared/bench/peers (loaded as `peer_stagewise` from PYTHONPATH).

Worker: `stagewise executor peer_stagewise:app --concurrency N` (the executor daemon; it imports this module
from PYTHONPATH). The manager daemon (`stagewise manager`) is started by setup() and stopped by teardown(),
so it runs during the whole measurement; its CPU is not in the harness's worker figures (it is not in the
worker's process tree) and is recorded on the side (see _side_record) when STAGEWISE_BENCH_SIDE names a file.

Enqueue: `tasks.create`, one task per call, 100 calls in flight (STAGEWISE_BENCH_INFLIGHT overrides;
bench/run.py sets it), by the way STAGEWISE_BENCH_VIA names:
  redis (default)  stagewise.manager.inproc.RedisClient: the manager's method table run in this process, one
                   create.lua call per task straight on Redis (how a Python producer that can reach Redis
                   creates tasks)
  http             JSON-RPC over HTTP (POST /rpc to the manager, aiohttp client)
A noop is a one-stage task; a chain is ONE task of three `bench.step` stages passing the value along through
`{{ results.N }}` templates (native multi-stage task).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import redis.asyncio as aredis
from common import DONE, REDIS_URL, bounded_gather

from stagewise.executor import App

NAMESPACE = "bench"


def _config() -> str:
    """The harness sets BENCH_CONFIG in the worker's environment only; in the harness process itself
    (`bench.py PEER WORKLOAD CONFIG REP [OUT]`) the config is argv[3]."""
    if os.environ.get("BENCH_CONFIG"):
        return os.environ["BENCH_CONFIG"]
    if len(sys.argv) >= 5 and os.path.basename(sys.argv[0]) == "bench.py":
        return sys.argv[3]
    return "default"


CONFIG = _config()
TUNED = CONFIG == "tuned"
LOG_LEVEL = "warning" if TUNED else "info"
# The daemons read their settings from the environment. The harness builds the worker's environment from
# its own os.environ after importing this module, so these reach the executor (and the manager, below).
# The log level must be set here, in the harness process: the executor configures logging before it
# imports the app module.
os.environ["STAGEWISE_REDIS_URL"] = REDIS_URL
os.environ["STAGEWISE_NAMESPACE"] = NAMESPACE
os.environ["STAGEWISE_LOG_LEVEL"] = LOG_LEVEL

# ---------------------------------------------------------------------------------------- executor app
app = App("bench")
_r: aredis.Redis | None = None


def rds() -> aredis.Redis:
    global _r
    if _r is None:
        _r = aredis.Redis.from_url(REDIS_URL, max_connections=4096)  # redis-py's async default is 100
    return _r


@app.method("bench.noop")
async def noop() -> None:
    await rds().rpush(DONE, 1)


@app.method("bench.step")
async def step(i: int, last: bool = False) -> int:
    if last:
        await rds().rpush(DONE, 1)
    return i + 1


@app.method("bench.mark")
async def mark(ms: float = 5.0) -> None:
    """Flow control's release latency (bench/run.py, extra limits): the handler's own start and
    end times (end written before it returns, so before its slot can be freed)."""
    await rds().rpush(MARKS, f"s {time.time()!r}")
    await asyncio.sleep(ms / 1000)
    await rds().rpush(MARKS, f"e {time.time()!r}")
    await rds().rpush(DONE, 1)


MARKS = "bench:marks"


# ---------------------------------------------------------------------------------------- harness API
ASYNC = True
DIST = "stagewise"
TUNED_CONCURRENCY = int(os.environ.get("STAGEWISE_BENCH_CONCURRENCY", "64"))  # override: for sweeps only
# Requests in flight while enqueueing (the peers use 100).
INFLIGHT = int(os.environ.get("STAGEWISE_BENCH_INFLIGHT", "100"))
VIA = os.environ.get("STAGEWISE_BENCH_VIA", "redis")
_w = ["stagewise", "executor", "peer_stagewise:app", "--concurrency"]
CONFIGS = {
    "default": (_w + ["8"], "--concurrency 8 (CLI default), log level info, uvloop, 1 process"),
    "tuned": (
        _w + [str(TUNED_CONCURRENCY)],
        f"--concurrency {TUNED_CONCURRENCY}, STAGEWISE_LOG_LEVEL=warning, uvloop, 1 process",
    ),
}
ENQUEUE_HOW = (
    f"JSON-RPC tasks.create over HTTP x N, {INFLIGHT} concurrent"
    if VIA == "http"
    else f"RedisClient.create (tasks.create in-process, create.lua on Redis) x N, {INFLIGHT} concurrent"
)
CHAIN_HOW = "native: one 3-stage task, results passed by {{ results.N }} templates"

NOOP_TASK = {"app": "bench", "commands": [{"method": "bench.noop"}]}
CHAIN_TASK = {
    "app": "bench",
    "commands": [
        {"method": "bench.step", "params": {"i": 0}},
        {"method": "bench.step", "params": {"i": "{{ results.0 }}"}},
        {"method": "bench.step", "params": {"i": "{{ results.1 }}", "last": True}},
    ],
}

_mgr: subprocess.Popen[bytes] | None = None
_mgr_log: Any = None
_session: Any = None  # aiohttp.ClientSession
_direct: Any = None  # stagewise.manager.inproc.RedisClient when VIA == "redis"
_url = ""
_ids = 0
_cpu_after_enqueue: float | None = None
_n = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_name() -> str:
    a = sys.argv
    if len(a) >= 5 and os.path.basename(a[0]) == "bench.py":
        return f"{a[1]}-{a[2]}-{a[3]}-{a[4]}"
    return f"run-{os.getpid()}"


def _mgr_cpu() -> float | None:
    try:
        import psutil

        t = psutil.Process(_mgr.pid).cpu_times() if _mgr else None
        return t.user + t.system if t else None
    except Exception:  # noqa: BLE001 - a side figure only
        return None


def _start_manager() -> int:
    """`<venv>/bin/stagewise manager` on a free loopback port (returned), logging to BENCH_LOGS."""
    global _mgr, _mgr_log
    port = _free_port()
    env = dict(os.environ, STAGEWISE_HTTP=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1")
    logs = os.environ.get("BENCH_LOGS", "/tmp/peerbench/logs")
    os.makedirs(logs, exist_ok=True)
    _mgr_log = open(os.path.join(logs, f"manager-{_run_name()}.log"), "wb")  # noqa: SIM115
    exe = os.path.join(os.path.dirname(sys.executable), "stagewise")
    _mgr = subprocess.Popen([exe, "manager"], env=env, stdout=_mgr_log, stderr=subprocess.STDOUT)
    return port


async def setup() -> None:
    """Start the manager on a free loopback port, wait until /healthz answers 200 (at most 30 s)."""
    global _session, _url
    import aiohttp

    port = _start_manager()
    _url = f"http://127.0.0.1:{port}"
    _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128))
    deadline = time.monotonic() + 30
    while True:
        if _mgr.poll() is not None:
            raise RuntimeError(f"manager exited rc={_mgr.returncode} (log {_mgr_log.name})")
        try:
            async with _session.get(_url + "/healthz") as resp:
                if resp.status == 200:
                    break
        except (OSError, aiohttp.ClientError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("manager did not answer /healthz with 200 within 30 s")
        await asyncio.sleep(0.05)
    _url += "/rpc"
    if VIA == "redis":
        from stagewise.manager.inproc import RedisClient

        global _direct
        _direct = RedisClient(REDIS_URL, namespace=NAMESPACE, max_connections=INFLIGHT + 8)


def _req(task: dict[str, Any]) -> dict[str, Any]:
    global _ids
    _ids += 1
    return {"jsonrpc": "2.0", "id": _ids, "method": "tasks.create", "params": {"task": task}}


async def _post(doc: Any) -> Any:
    async with _session.post(
        _url, data=json.dumps(doc, separators=(",", ":")), headers={"Content-Type": "application/json"}
    ) as resp:
        body = await resp.read()
    if resp.status != 200:
        raise RuntimeError(f"POST /rpc: HTTP {resp.status}: {body[:300]!r}")
    out = json.loads(body)
    for item in out if isinstance(out, list) else [out]:
        if "error" in item:
            raise RuntimeError(f"tasks.create failed: {item['error']}")
    return out


async def _create(task: dict[str, Any]) -> None:
    if _direct is not None:
        await _direct.create(task)
    else:
        await _post(_req(task))


def _enqueued(n: int) -> None:
    global _cpu_after_enqueue, _n
    _cpu_after_enqueue, _n = _mgr_cpu(), n


async def enqueue_noop(n: int) -> None:
    await bounded_gather((_create(NOOP_TASK) for _ in range(n)), limit=INFLIGHT)
    _enqueued(n)


async def enqueue_one() -> None:
    await _create(NOOP_TASK)


async def enqueue_chains(n: int) -> None:
    await bounded_gather((_create(CHAIN_TASK) for _ in range(n)), limit=INFLIGHT)
    _enqueued(n)


async def enqueue_batches(n: int, size: int = 100, inflight: int = 4) -> None:
    """Not used by the harness: n one-stage tasks as JSON-RPC batches of `size` requests per POST."""
    sizes = [min(size, n - i) for i in range(0, n, size)]
    await bounded_gather((_post([_req(NOOP_TASK) for _ in range(s)]) for s in sizes), limit=inflight)


def _side_record(cpu_end: float | None) -> None:
    """Manager CPU from the end of the enqueue to teardown (the drain, for noop / chain), on the side."""
    path = os.environ.get("STAGEWISE_BENCH_SIDE")
    a = sys.argv
    if not path or len(a) < 5 or os.path.basename(a[0]) != "bench.py":
        return
    rec = dict(peer=a[1], workload=a[2], config=a[3], rep=int(a[4]), manager_cpu_s_total=cpu_end)
    if cpu_end is not None and _cpu_after_enqueue is not None and _n:
        rec["manager_cpu_ms_drain"] = (cpu_end - _cpu_after_enqueue) * 1000 / _n
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


async def teardown() -> None:
    global _mgr, _session, _direct
    cpu_end = _mgr_cpu()
    if _direct is not None:
        await _direct.close()
        _direct = None
    if _session is not None:
        await _session.close()
        _session = None
    if _mgr is not None:
        if _mgr.poll() is None:
            _mgr.send_signal(signal.SIGTERM)
        try:
            _mgr.wait(20)
        except subprocess.TimeoutExpired:
            _mgr.kill()
            _mgr.wait()
        rc = _mgr.returncode
        _mgr = None
        _mgr_log.close()
        _side_record(cpu_end)
        if rc not in (0, -signal.SIGTERM):
            raise RuntimeError(f"manager exited rc={rc}")
