#!/usr/bin/env python
"""`make bench`: stagewise beside the peer task queues, measured by the peer harness in the same run.

    .venv/bin/python bench/run.py [--reps N] [--budget S]     (full run, under 15 minutes)
    QUICK=1 .venv/bin/python bench/run.py                      (best config per peer, under 3 minutes)
    .venv/bin/python bench/run.py --render                     (rewrite RESULTS.md from bench/out/*.jsonl)

Steps: build the peer venvs under bench/.venv-peers with the harness's setup-venvs.sh when missing (not
counted in the time budget), start a private redis-server on a free port (BENCH_REDIS_PORT), then for each
repetition run every system x workload x config through the unmodified harness (`timeout 540
<venv python> /work/shared/bench/peers/bench.py PEER WORKLOAD CONFIG REP bench/out/results.jsonl`;
stagewise is peer `stagewise`, module bench/peer_stagewise.py via PYTHONPATH), plus two stagewise-only
measurements (JSON-RPC batch enqueue, Redis commands by origin under MONITOR), stop redis-server, and write
bench/RESULTS.md. Peers: every one the harness has (arq, saq, taskiq list and stream, rq, Celery, Dramatiq,
streaq, docket, BullMQ's Python port, and DBOS when a private Postgres can be started here: Debian's
postgresql package, run as user postgres on BENCH_PG_PORT; otherwise DBOS is skipped and RESULTS.md says
why). Only the standard library is used here; the extra measurements run in a child process with
the project's venv (`run.py --extra ...`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HARNESS = Path(os.environ.get("BENCH_HARNESS", "/work/shared/bench/peers"))
PEER_VENVS = BENCH / ".venv-peers"
OUT = BENCH / "out"
RESULTS_JSONL = OUT / "results.jsonl"  # harness records, this run only (an older file is moved aside)
MANAGER_JSONL = OUT / "manager.jsonl"  # manager CPU per stagewise run (written by peer_stagewise.teardown)
EXTRAS_JSONL = OUT / "extras.jsonl"  # stagewise-only measurements
HTTP_JSONL = OUT / "http.jsonl"  # harness runs of stagewise with tasks created over JSON-RPC/HTTP
FANOUT_JSONL = OUT / "fanout.jsonl"  # bench/fanout.py: 100 parents x 10 children, stagewise and BullMQ flows
FANOUT_TIMEOUT = 600
META_JSON = OUT / "meta.json"
LOGS = OUT / "logs"
RESULTS_MD = BENCH / "RESULTS.md"
SW_BIN = ROOT / ".venv" / "bin"  # the dev venv: this script's extras (MONITOR, batch) and bench/fanout.py
# The harness runs stagewise as users install it: the wheel of this checkout, installed (not editable)
# in a venv of its own with its dependencies only. The dev venv has the OpenTelemetry SDK (dev extra),
# which redis-py imports whenever it is installed (~30 ms and ~3.5 MB more per executor start).
# Rebuilt when the package's sources change (SW_STAMP holds the hash of the ones it was built from).
SW_VENV = BENCH / ".venv-stagewise"
SW_RUN_BIN = SW_VENV / "bin"
SW_STAMP = SW_VENV / ".stamp"

PEERS = [
    "arq",
    "saq",
    "taskiq-list",
    "taskiq-stream",
    "rq",
    "celery",
    "dramatiq",
    "streaq",
    "docket",
    "bullmq",
]
PEERS += ["dbos"]
VENV_OF = {"taskiq-list": "taskiq", "taskiq-stream": "taskiq"}  # else venv-<peer>
# DBOS keeps its state in Postgres, not Redis: it runs only where a private Postgres can be started
# (Debian's postgresql package: initdb and pg_ctl under /usr/lib/postgresql/<v>/bin).
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5491"))
PG_URL = f"postgresql://postgres@127.0.0.1:{PG_PORT}"
SYSTEMS = ["stagewise", *PEERS]
WORKLOADS = ["enqueue", "noop", "latency", "chain"]
RUN_TIMEOUT = 540
FULL_BUDGET = 14 * 60  # s: no new harness run starts after this (the last one may run over a little)
QUICK_BUDGET = 170
INFLIGHT, INFLIGHT_FALLBACK = 100, 60
# QUICK: one config per peer, the one that measured fastest in the harness's own RESULTS.md (noop / chain),
# and the runs that take a minute or more and are far from the top are left out.
QUICK_CONFIG = {
    "arq": "tuned",
    "saq": "tuned",
    "taskiq-list": "default",
    "taskiq-stream": "default",
    "rq": "tuned",
    "celery": "default",
    "dramatiq": "default",
    "streaq": "tuned",
    "docket": "tuned",
    "bullmq": "tuned",
    "dbos": "tuned",
}
QUICK_SKIP = {
    ("arq", "latency"): "about 110 s: arq polls every 0.5 s, p50 about 500 ms",
    ("rq", "noop"): "about 30 s at about 180 jobs/s",
    ("rq", "chain"): "about 25 s at about 45 chains/s",
}
# Left out of a full run too: runs that cannot finish within the harness's own 300 s timeout here.
FULL_SKIP = {
    "dbos": (
        "default",
        "queue defaults (poll 1 s): about 9 jobs/s here, so 5,000 jobs outlast the harness's 300 s "
        "timeout (measured: 2,696 of 5,000 in 300 s); its tuned config is run",
    ),
}
EXTRA_N_NOOP, EXTRA_N_CHAIN = 2000, 500  # MONITOR measurement
N_ENQ = 5000  # as the harness's N_ENQ

_child_pgid: int | None = None


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ utils
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_cmd(port: int, *args: str) -> str:
    """One command with redis-cli (the raw reply)."""
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    ).stdout


def peer_python(system: str) -> Path:
    if system == "stagewise":
        return SW_RUN_BIN / "python"
    return PEER_VENVS / f"venv-{VENV_OF.get(system, system)}" / "bin" / "python"


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def append(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


class Redis:
    """The private redis-server (Debian's), stopped by the pid in its pidfile."""

    def __init__(self) -> None:
        self.port = free_port()
        self.pidfile = OUT / "redis.pid"
        self.logfile = OUT / "redis.log"
        self.pid: int | None = None
        self.argv = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.logfile),
        ]

    def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        subprocess.run(self.argv, check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.pidfile.exists() and self.pidfile.read_text().strip():
                self.pid = int(self.pidfile.read_text())
            if self.pid and redis_cmd(self.port, "PING").strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port} (log {self.logfile})")

    def info(self) -> dict[str, str]:
        out = {}
        for line in redis_cmd(self.port, "INFO", "server").splitlines():
            k, sep, v = line.strip().partition(":")
            if sep:
                out[k] = v
        return out

    def stop(self) -> None:
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(200):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid = None


class Postgres:
    """A private Postgres for the dbos peer (Debian's postgresql package), in bench/out/pg, torn down after
    the run.  `unavailable` says why it cannot be started here (then dbos is skipped, and the results say
    so)."""

    def __init__(self) -> None:
        self.dir = OUT / "pg"
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        self.bin = bins[-1].parent if bins else None
        self.started = False
        self.unavailable = ""
        if self.bin is None:
            self.unavailable = "no Postgres server here (Debian's postgresql package is not installed)"
        elif os.geteuid() == 0 and not shutil.which("runuser"):
            self.unavailable = "running as root without runuser: Postgres refuses to run as root"
        elif socket.socket().connect_ex(("127.0.0.1", PG_PORT)) == 0:
            self.unavailable = f"port {PG_PORT} is taken (set BENCH_PG_PORT)"

    def _as_pg(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def start(self) -> bool:
        if self.unavailable or self.bin is None:
            return False
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        try:
            subprocess.run(
                self._as_pg(
                    str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"
                ),
                check=True,
                capture_output=True,
            )
            opts = (
                f"-p {PG_PORT} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c synchronous_commit=off -c max_connections=200"
            )
            subprocess.run(
                self._as_pg(
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.dir / "data"),
                    "-l",
                    str(self.dir / "pg.log"),
                    "-o",
                    opts,
                    "-w",
                    "start",
                ),
                check=True,
                capture_output=True,
                timeout=60,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            err = getattr(e, "stderr", b"") or b""
            self.unavailable = f"Postgres did not start: {e} {err.decode(errors='replace')[-200:]}".strip()
            return False
        self.started = True
        return True

    def stop(self) -> None:
        if self.started and self.bin is not None:
            subprocess.run(
                self._as_pg(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "stop"),
                capture_output=True,
                timeout=60,
            )
            self.started = False


def run_group(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs argv in its own session / process group, so that whatever it leaves behind (a worker, the
    stagewise manager) can be stopped by that group's id."""
    global _child_pgid
    p = subprocess.Popen(
        argv,
        cwd=HARNESS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _child_pgid = p.pid
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p.pid)
        out, err = p.communicate()
    finally:
        kill_group(p.pid)  # leftovers only: the group is empty after a clean run
        _child_pgid = None
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.5 if sig == signal.SIGTERM else 0)


# ---------------------------------------------------------------------------------------------- orchestration
def ensure_venvs() -> float:
    """Builds the peer venvs with the harness's script when one is missing; returns the seconds spent."""
    missing = [
        p
        for p in sorted({VENV_OF.get(s, s) for s in PEERS})
        if not (PEER_VENVS / f"venv-{p}" / ".ok").exists()
    ]
    if not missing:
        return 0.0
    log(f"building peer venvs under {PEER_VENVS} (missing: {', '.join(missing)}); takes a few minutes ...")
    t = time.monotonic()
    subprocess.run(["bash", str(HARNESS / "setup-venvs.sh"), str(PEER_VENVS)], check=True)
    log(f"peer venvs ready in {time.monotonic() - t:.0f} s (not counted in the bench time)")
    return time.monotonic() - t


def package_stamp() -> str:
    """A hash of what goes into the wheel: the package's folders (byte code left out) and its metadata."""
    import hashlib

    h = hashlib.sha256()
    files = [ROOT / "pyproject.toml", ROOT / "MANIFEST.in", ROOT / "README.md", ROOT / "LICENSE"]
    for d in ("shared", "manager", "executor"):
        files += sorted(f for f in (ROOT / d).rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def ensure_sw_venv() -> float:
    """bench/.venv-stagewise with the wheel of this checkout (built here, installed non-editable, no
    extras) and psutil (the harness's own need); rebuilt when the sources changed. Returns the seconds
    spent (not counted in the bench time)."""
    stamp = package_stamp()
    if SW_STAMP.exists() and SW_STAMP.read_text() == stamp:
        return 0.0
    t = time.monotonic()
    log(f"building {SW_VENV} (the checkout's wheel, non-editable) ...")
    shutil.rmtree(SW_VENV, ignore_errors=True)
    wheels = OUT / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run(
        [
            str(SW_BIN / "python"),
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = wheels.glob("stagewise-*.whl")
    base = subprocess.run(
        [str(SW_BIN / "python"), "-c", "import sys; print(sys._base_executable)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([base, "-m", "venv", str(SW_VENV)], check=True)
    subprocess.run([str(SW_RUN_BIN / "pip"), "install", "-q", str(wheel), "psutil"], check=True)
    SW_STAMP.write_text(stamp)
    log(f"{SW_VENV} ready in {time.monotonic() - t:.0f} s")
    return time.monotonic() - t


def plan(
    quick: bool, configs: dict[str, list[str]], systems: list[str] = SYSTEMS
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(system, workload, config) for one repetition, and the runs left out (QUICK).  Two passes, each
    in the harness's order (stagewise first): every system's enqueue and its best-known config (both of
    stagewise's) first, then the other configs; so when the time budget runs out, what it cuts is the
    slower configs of the peers, never a peer."""
    first, rest, skipped = [], [], []
    for s in systems:
        for w in WORKLOADS:
            if quick and (s, w) in QUICK_SKIP:
                skipped.append(f"{s} {w}: {QUICK_SKIP[(s, w)]}")
                continue
            if w == "enqueue":
                first.append((s, w, "default"))
                continue
            best = configs[s] if s not in QUICK_CONFIG else [c for c in configs[s] if c == QUICK_CONFIG[s]]
            first += [(s, w, c) for c in best or configs[s][:1]]
            if not quick:
                for c in configs[s]:
                    if (s, w, c) in first:
                        continue
                    if FULL_SKIP.get(s, ("", ""))[0] == c:
                        said = any(x.startswith(f"{s} ") and c in x for x in skipped)
                        skipped.append(f"{s} {w} {c}" + ("" if said else f": {FULL_SKIP[s][1]}"))
                        continue
                    rest.append((s, w, c))
    return first + rest, skipped


def harness_env(redis: Redis, system: str, inflight: int, via: str = "redis") -> dict[str, str]:
    env = dict(os.environ, BENCH_REDIS_PORT=str(redis.port), BENCH_LOGS=str(LOGS), BENCH_PG_URL=PG_URL)
    env.pop("BENCH_CONFIG", None)
    env.pop("PYTHONPATH", None)
    if system == "stagewise":
        env.update(
            PYTHONPATH=str(BENCH),
            STAGEWISE_BENCH_SIDE=str(MANAGER_JSONL),
            STAGEWISE_BENCH_INFLIGHT=str(inflight),
            STAGEWISE_BENCH_VIA=via,
        )
    return env


def one_run(
    redis: Redis,
    system: str,
    workload: str,
    config: str,
    rep: int,
    inflight: int,
    out: Path = RESULTS_JSONL,
    via: str = "redis",
) -> dict[str, Any]:
    argv = [
        "timeout",
        str(RUN_TIMEOUT),
        str(peer_python(system)),
        str(HARNESS / "bench.py"),
        system,
        workload,
        config,
        str(rep),
        str(out),
    ]
    p = run_group(argv, harness_env(redis, system, inflight, via), RUN_TIMEOUT + 30)
    recs = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    if recs:
        return recs[-1]
    rec = dict(
        peer=system,
        workload=workload,
        config="-" if workload == "enqueue" else config,
        rep=rep,
        ok=False,
        error=f"harness rc={p.returncode}: {(p.stderr or p.stdout)[-400:]}",
    )
    append(out, rec)
    return rec


def describe(rec: dict[str, Any]) -> str:
    if not rec.get("ok"):
        return f"FAILED: {rec.get('error', '')[:200]}"
    v = rec["value"]
    return f"{v:,.2f} {rec['unit']}" if rec["unit"].startswith("ms") else f"{v:,.0f} {rec['unit']}"


def extra(redis: Redis, kind: str, config: str, inflight: int) -> None:
    env = dict(
        harness_env(redis, "stagewise", inflight),
        BENCH_CONFIG=config,
        PYTHONPATH=os.pathsep.join([str(HARNESS), str(BENCH)]),
    )
    p = run_group([str(SW_BIN / "python"), str(Path(__file__).resolve()), "--extra", kind], env, 300)
    if p.returncode != 0:
        append(EXTRAS_JSONL, dict(kind=kind, config=config, ok=False, error=p.stderr[-600:]))
        log(f"  extra {kind} {config}: FAILED rc={p.returncode}: {p.stderr[-300:]}")
    else:
        log(f"  extra {kind} {config}: {' | '.join(p.stdout.split(chr(10)))[-300:]}")


def orchestrate(args: argparse.Namespace) -> int:
    OUT.mkdir(exist_ok=True)
    venv_s = ensure_venvs() + ensure_sw_venv()
    t0 = time.monotonic()
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    for f in (RESULTS_JSONL, MANAGER_JSONL, EXTRAS_JSONL, HTTP_JSONL, FANOUT_JSONL):  # keep older runs aside
        if f.exists():
            f.rename(f.with_name(f"{f.stem}-{stamp}-old.jsonl"))
    if LOGS.exists():
        shutil.rmtree(LOGS)
    LOGS.mkdir()
    budget = args.budget or (QUICK_BUDGET if args.quick else FULL_BUDGET)
    reps = args.reps or 1
    redis = Redis()
    pg = Postgres()
    meta: dict[str, Any] = dict(
        quick=args.quick,
        reps=reps,
        budget_s=budget,
        started=started.isoformat(timespec="seconds"),
        venv_build_s=round(venv_s, 1),
        argv=sys.argv,
        skipped_budget=[],
        inflight=INFLIGHT,
        inflight_failures=[],
        machine=machine(),
        git=git_rev(),
    )

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        redis.start()
        info = redis.info()
        meta["redis"] = dict(version=info.get("redis_version"), port=redis.port, argv=redis.argv)
        log(f"redis-server {info.get('redis_version')} on port {redis.port}; results -> {RESULTS_JSONL}")
        systems = list(SYSTEMS)
        if pg.start():
            log(f"postgres on port {PG_PORT} for dbos")
        else:
            systems.remove("dbos")
            meta["skipped_unavailable"] = [f"dbos: {pg.unavailable}"]
            log(f"!! dbos skipped: {pg.unavailable}")
        configs = {}
        for s in systems:
            p = run_group(
                [str(peer_python(s)), str(HARNESS / "bench.py"), "--configs", s],
                harness_env(redis, s, INFLIGHT),
                60,
            )
            configs[s] = p.stdout.split() or ["default", "tuned"]
        runs, skipped = plan(args.quick, configs, systems)
        meta["skipped_quick"] = skipped
        inflight = INFLIGHT
        last_sw = max(i for i, run in enumerate(runs) if run[0] == "stagewise")
        log(f"{len(runs)} harness runs per repetition, {reps} repetition(s), budget {budget} s")
        for rep in range(1, reps + 1):
            for i, (s, w, c) in enumerate(runs):
                if time.monotonic() - t0 > budget:
                    meta["skipped_budget"].append(f"rep {rep}: {s} {w} {c}")
                    continue
                t = time.monotonic()
                rec = one_run(redis, s, w, c, rep, inflight)
                if (
                    s == "stagewise"
                    and inflight != INFLIGHT_FALLBACK
                    and "tasks.create failed" in str(rec.get("error"))
                ):  # the manager refused some of 100 concurrent requests: go on with fewer, say so
                    meta["inflight_failures"].append(f"{w} {c} rep {rep}: {rec.get('error')}")
                    inflight = meta["inflight"] = INFLIGHT_FALLBACK
                    log(f"!! {describe(rec)}; again, and from now on, with {inflight} requests in flight")
                    rec = one_run(redis, s, w, c, rep, inflight)
                log(
                    f"[{time.monotonic() - t0:5.0f}s] rep {rep} {i + 1:2}/{len(runs)} {s:13} {w:8} {c:8} "
                    f"{describe(rec)}  ({time.monotonic() - t:.1f} s)"
                )
                if rep == 1 and i == last_sw:  # stagewise-only figures, right after its harness runs
                    extra(redis, "batch", "default", inflight)
                    for w_http in ("enqueue", "latency"):  # the same harness runs, tasks sent over HTTP
                        rec = one_run(
                            redis, "stagewise", w_http, "tuned", 1, inflight, HTTP_JSONL, via="http"
                        )
                        log(f"  extra http {w_http}: {describe(rec)}")
                    for cfg in configs["stagewise"]:
                        extra(redis, "monitor", cfg, inflight)
                    extra(redis, "limits", "tuned", inflight)
        if meta["skipped_budget"]:
            log(f"!! time budget reached: {len(meta['skipped_budget'])} runs skipped")
        fanout(reps, meta)
    finally:
        redis.stop()
        pg.stop()
        meta["elapsed_s"] = round(time.monotonic() - t0, 1)
        meta["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        META_JSON.write_text(json.dumps(meta, indent=1))
    render()
    log(
        f"done in {meta['elapsed_s']:.0f} s (peer venv build {venv_s:.0f} s not included); wrote {RESULTS_MD}"
    )
    return 0


def fanout(reps: int, meta: dict[str, Any]) -> None:
    """bench/fanout.py (its own private redis-servers): stagewise's fan-out beside BullMQ's flows, when
    the BullMQ venv is there (the harness's setup-venvs.sh builds it with the others)."""
    t = time.monotonic()
    argv = [str(SW_BIN / "python"), str(BENCH / "fanout.py"), "--reps", str(reps)]
    argv += ["--json", str(FANOUT_JSONL)]
    p = run_group(argv, dict(os.environ, PYTHONPATH=str(ROOT)), FANOUT_TIMEOUT)
    (LOGS / "fanout.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        meta["fanout_error"] = (p.stderr or p.stdout)[-400:]
    log(f"fan-out: {'ok' if p.returncode == 0 else 'FAILED'} ({time.monotonic() - t:.0f} s)")


# ------------------------------------------------------------------------------------------------ extras
def extra_main(kind: str) -> None:
    """Child process (project venv, cwd = harness dir, PYTHONPATH = harness + bench): one stagewise-only
    measurement, appended to extras.jsonl."""
    import asyncio

    import uvloop

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)  # as the harness runs an async peer
    {"batch": _extra_batch, "monitor": _extra_monitor, "limits": _extra_limits}[kind](runner.run)


EXTRA_N_LIMITS, EXTRA_N_HANDOFF = 3000, 300  # noop tasks per throughput run; tasks in the handoff run


def _extra_limits(call: Any) -> None:
    """Flow control's cost (SPEC §2a): noop throughput with every task under one limit key of high
    concurrency (10000: never reached, so only the cost of asking shows) against the same tasks
    without limits; then release latency: EXTRA_N_HANDOFF tasks of 5 ms under a key of
    concurrency 1, the time from one handler's end (written before it returns) to the next
    handler's start, p50 / p99.  Tasks are queued first, then the executor is started and
    timed until the last handler ran (the tuned configuration)."""
    import peer_stagewise as sw
    import redis

    r = redis.Redis.from_url(sw.REDIS_URL)
    argv, _desc = sw.CONFIGS["tuned"]

    def drain(tasks: Any, n: int, name: str) -> float:
        r.flushall()
        call(sw.setup())
        try:
            call(tasks)
            elog = open(LOGS / f"limits-executor-{name}.log", "wb")  # noqa: SIM115
            t = time.perf_counter()
            ex = subprocess.Popen(
                [str(SW_BIN / argv[0]), *argv[1:]], cwd=HARNESS, stdout=elog, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + 240
            while r.llen("bench:done") < n:
                if time.monotonic() > deadline or ex.poll() is not None:
                    raise RuntimeError(f"limits run {name}: {r.llen('bench:done')}/{n} done, rc={ex.poll()}")
                time.sleep(0.005)
            wall = time.perf_counter() - t
            ex.send_signal(signal.SIGTERM)
            ex.wait(30)
            elog.close()
        finally:
            call(sw.teardown())
        return wall

    def many(task: dict[str, Any], n: int) -> Any:
        return sw.bounded_gather((sw._create(task) for _ in range(n)), limit=sw.INFLIGHT)

    limit = [{"key": "bench", "concurrency": 10000}]
    for name, task in (("none", sw.NOOP_TASK), ("one key", {**sw.NOOP_TASK, "limits": limit})):
        drain(many(task, 300), 300, name + " warm-up")
        wall = drain(many(task, EXTRA_N_LIMITS), EXTRA_N_LIMITS, name)
        rec = dict(kind="limits", config="tuned", ok=True, value=EXTRA_N_LIMITS / wall, unit="jobs/s",
                   wall_s=wall, limits=name, how=f"{EXTRA_N_LIMITS} noop tasks queued, then drained; limits: {name}")  # fmt: skip
        append(EXTRAS_JSONL, rec)
        print(f"noop throughput, limits {name}: {rec['value']:,.0f} jobs/s")

    task = {"app": "bench", "commands": [{"method": "bench.mark", "params": {"ms": 5}}],
            "limits": [{"key": "one", "concurrency": 1}]}  # fmt: skip
    drain(many(task, EXTRA_N_HANDOFF), EXTRA_N_HANDOFF, "handoff")
    marks = [m.decode().split() for m in r.lrange(sw.MARKS, 0, -1)]
    gaps = []
    for (k1, t1), (k2, t2) in zip(marks, marks[1:], strict=False):
        if k1 == "e" and k2 == "s":  # one handler's end, the next one's start
            gaps.append((float(t2) - float(t1)) * 1000)
    gaps.sort()
    p50, p99 = gaps[len(gaps) // 2], gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
    rec = dict(kind="limits", config="tuned", ok=True, value=p50, unit="ms p50", p99_ms=p99, n=len(gaps),
               how="concurrency 1: a handler's end to the next held task's handler start")  # fmt: skip
    append(EXTRAS_JSONL, rec)
    print(f"release latency (handler end -> next held handler start): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def _extra_batch(call: Any) -> None:
    """Like the harness's enqueue workload, but N_ENQ tasks in JSON-RPC batches of 100 requests per POST."""
    import peer_stagewise as sw
    import redis

    r = redis.Redis.from_url(sw.REDIS_URL)
    for inflight in (1, 8):
        r.flushall()
        call(sw.setup())
        try:
            call(sw.enqueue_batches(200, 100, inflight))  # warm-up
            c0 = r.info()["total_commands_processed"]
            t = time.perf_counter()
            call(sw.enqueue_batches(N_ENQ, 100, inflight))
            wall = time.perf_counter() - t
            c1 = r.info()["total_commands_processed"]
        finally:
            call(sw.teardown())
        r.flushall()
        rec = dict(
            kind="batch",
            config="-",
            ok=True,
            value=N_ENQ / wall,
            unit="jobs/s",
            wall_s=wall,
            redis_cmds=(c1 - c0 - 1) / N_ENQ,
            batch=100,
            inflight=inflight,
            how=f"JSON-RPC batch of 100 tasks.create per POST, {inflight} POST(s) in flight",
        )
        append(EXTRAS_JSONL, rec)
        print(f"batch of 100, {inflight} in flight: {rec['value']:,.0f} jobs/s")


_MON = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]*)"(.*)$')


def _extra_monitor(call: Any) -> None:
    """Drains noop and chain tasks with MONITOR on, and counts the commands Redis received by origin:
    the executor's own (top-level) commands, the commands run inside Lua scripts, the manager's, the bench
    handler's RPUSH. MONITOR slows Redis down, so only the counts are used, not the times."""
    import hashlib

    import peer_stagewise as sw
    import psutil
    import redis

    from stagewise.storage.runner import NAMES, source

    shas = {}
    for n in NAMES:
        try:
            shas[hashlib.sha1(source(n).encode()).hexdigest()] = n
        except FileNotFoundError:
            pass
    port = int(os.environ["BENCH_REDIS_PORT"])
    r = redis.Redis.from_url(sw.REDIS_URL)
    argv, _desc = sw.CONFIGS[sw.CONFIG]
    for workload, n, stages in (("noop", EXTRA_N_NOOP, 1), ("chain", EXTRA_N_CHAIN, 3)):
        r.flushall()
        call(sw.setup())
        mon_path = LOGS / f"monitor-{workload}-{sw.CONFIG}.txt"
        try:
            sw.INFLIGHT = min(sw.INFLIGHT, 50)  # not timed here: stay clear of the manager's pool limit
            call(sw.enqueue_noop(n) if workload == "noop" else sw.enqueue_chains(n))
            with open(mon_path, "w") as mf:
                mon = subprocess.Popen(["redis-cli", "-p", str(port), "monitor"], stdout=mf)
                time.sleep(0.3)
                elog = open(LOGS / f"monitor-executor-{workload}-{sw.CONFIG}.log", "wb")  # noqa: SIM115
                ex = subprocess.Popen(
                    [str(SW_BIN / argv[0]), *argv[1:]], cwd=HARNESS, stdout=elog, stderr=subprocess.STDOUT
                )
                deadline = time.monotonic() + 120
                while r.llen("bench:done") < n:
                    if time.monotonic() > deadline or ex.poll() is not None:
                        raise RuntimeError(f"monitor run: {r.llen('bench:done')}/{n} done, rc={ex.poll()}")
                    time.sleep(0.02)
                ex_ports = {c.laddr.port for c in psutil.Process(ex.pid).net_connections("tcp")}
                mgr_ports = {c.laddr.port for c in psutil.Process(sw._mgr.pid).net_connections("tcp")}
                ex.send_signal(signal.SIGTERM)
                ex.wait(30)
                elog.close()
                time.sleep(0.3)
                mon.terminate()
                mon.wait()
        finally:
            call(sw.teardown())
        r.flushall()
        by: dict[str, Counter[str]] = defaultdict(Counter)
        for line in open(mon_path, errors="replace"):
            m = _MON.match(line)
            if not m:
                continue
            who, cmd, rest = m[1], m[2].upper(), m[3]
            if cmd == "EVALSHA":
                cmd = f"EVALSHA {shas.get(rest.split(chr(34))[1], '?')}"
            port_s = who.rsplit(":", 1)[-1]
            if who == "lua":
                origin = "lua"
            elif port_s.isdigit() and int(port_s) in ex_ports:
                origin = "bench_handler" if '"bench:done"' in rest else "executor"
            elif port_s.isdigit() and int(port_s) in mgr_ports:
                origin = "manager"
            else:
                origin = "other"
            by[origin][cmd] += 1
        total_stages = n * stages
        rec = dict(
            kind="monitor",
            config=sw.CONFIG,
            workload=workload,
            ok=True,
            tasks=n,
            stages=total_stages,
            concurrency=argv[-1],
            per_stage={o: sum(c.values()) / total_stages for o, c in by.items()},
            by_command={o: dict(c.most_common()) for o, c in by.items()},
        )
        append(EXTRAS_JSONL, rec)
        print(f"{workload}: executor {rec['per_stage'].get('executor', 0):.2f} cmds/stage")
        mon_path.unlink()


# ------------------------------------------------------------------------------------------------ report
def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f0(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def f2(x: float | None) -> str:
    return "–" if x is None else f"{x:,.2f}"


def f3(x: float | None) -> str:
    return "–" if x is None else f"{x:,.3f}"


def ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def name(s: str) -> str:
    return f"**{s}** ◀" if s == "stagewise" else s


class Row:
    def __init__(self, recs: list[dict[str, Any]]) -> None:
        self.recs = recs
        self.peer, self.config = recs[0]["peer"], recs[0]["config"]
        self.n = len(recs)
        vals = [r["value"] for r in recs]
        self.value, self.lo, self.hi = med(vals), min(vals), max(vals)

    def m(self, key: str) -> float | None:
        return med([r.get(key) for r in self.recs])

    def s(self, key: str) -> str:
        return str(self.recs[0].get(key, ""))

    def rng(self, fmt: Any) -> str:
        return "–" if self.n < 2 else f"{fmt(self.lo)} – {fmt(self.hi)}"


def rows_of(recs: list[dict[str, Any]], workload: str) -> list[Row]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        if r.get("workload") == workload and r.get("ok") and r.get("rep", 0) > 0:
            groups[(r["peer"], r["config"])].append(r)
    order = {s: i for i, s in enumerate(SYSTEMS)}
    return sorted((Row(g) for g in groups.values()), key=lambda x: (order.get(x.peer, 99), x.config))


def best(rows: list[Row], lower: bool) -> Row | None:
    if not rows:
        return None
    return min(rows, key=lambda x: x.value) if lower else max(rows, key=lambda x: x.value)


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


def machine() -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    mem = next((int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    osname = "?"
    if Path("/etc/os-release").exists():
        osname = next(
            (
                ln.split("=", 1)[1].strip().strip('"')
                for ln in open("/etc/os-release")
                if ln.startswith("PRETTY_NAME")
            ),
            "?",
        )
    deb = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else ""
    return (
        f"{os.cpu_count()} vCPU ({cpu}), {mem / 2**20:.0f} GiB RAM; {osname}"
        f"{f' ({deb})' if deb else ''}, kernel {platform.release()}; Python {platform.python_version()}"
    )


def scan_logs() -> list[str]:
    """Warnings, errors and tracebacks in the stagewise daemons' logs."""
    seen: dict[tuple[str, str], list[Any]] = {}
    for f in sorted(LOGS.glob("*.log")):
        if not (
            f.name.startswith("stagewise-") or f.name.startswith("manager-") or f.name.startswith("monitor-")
        ):
            continue
        for line in open(f, errors="replace"):
            level = ""
            if line.startswith("{"):
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    d = {}
                level, event = str(d.get("level", "")), str(d.get("event", ""))
            else:
                event = line.strip()[:80]
                level = "error" if "Traceback" in line or "Error" in line else ""
            if level in ("warning", "error", "critical", "exception"):
                key = (level, event)
                if key not in seen:
                    seen[key] = [0, f.name, line.strip()[:400]]
                seen[key][0] += 1
    return [f"- {lvl} `{ev}` x{c} (first in `{fn}`): `{ex}`" for (lvl, ev), (c, fn, ex) in seen.items()]


def render() -> None:
    recs = jsonl(RESULTS_JSONL)
    mgr = jsonl(MANAGER_JSONL)
    extras = jsonl(EXTRAS_JSONL)
    http = jsonl(HTTP_JSONL)
    meta = json.loads(META_JSON.read_text()) if META_JSON.exists() else {}
    L: list[str] = []
    w = L.append
    quick = meta.get("quick")
    tables = {wl: rows_of(recs, wl) for wl in WORKLOADS}
    peers_of = {wl: [x for x in rows if x.peer != "stagewise"] for wl, rows in tables.items()}
    sw_of = {wl: [x for x in rows if x.peer == "stagewise"] for wl, rows in tables.items()}
    lower = {"latency"}

    w(f"# stagewise vs. peer task queues{' (QUICK run)' if quick else ''}")
    w("")
    w(
        f"Generated by `bench/run.py` from `bench/out/results.jsonl` (harness records), "
        f"`bench/out/manager.jsonl` "
        f"and `bench/out/extras.jsonl`. Run {meta.get('started', '?')} – {meta.get('finished', '?')} UTC, "
        f"{meta.get('elapsed_s', 0):.0f} s wall (peer venv build not included: "
        f"{meta.get('venv_build_s', 0):.0f} s). "
        "Every figure below was measured in that run, on one machine, with the peers and stagewise taking "
        "turns on the same private Redis."
    )
    w("")
    if quick:
        w(
            "**QUICK run** (`QUICK=1`), reduced to fit in 3 minutes: one repetition; both stagewise "
            "configs but "
            "one worker config per peer, the one that was fastest in the harness's own RESULTS.md ("
            + ", ".join(f"{p} {c}" for p, c in QUICK_CONFIG.items())
            + "); and these runs left out: "
            + "; ".join(meta.get("skipped_quick", []))
            + ". `make bench` runs every config."
        )
        w("")
    if not quick and meta.get("skipped_quick"):
        w("**Left out**: " + "; ".join(meta["skipped_quick"]) + ".")
        w("")
    if meta.get("skipped_unavailable"):
        w("**Not run here**: " + "; ".join(meta["skipped_unavailable"]) + ".")
        w("")
    if meta.get("skipped_budget"):
        w(
            f"**Time budget reached**: {len(meta['skipped_budget'])} runs were not started: "
            + "; ".join(meta["skipped_budget"])
            + "."
        )
        w("")
    if meta.get("inflight_failures"):
        w(
            f"**stagewise enqueue: {INFLIGHT} concurrent requests failed, so {INFLIGHT_FALLBACK} were "
            f"used from "
            f"then on.** The run `{meta['inflight_failures'][0]}` failed (JSON-RPC internal error from the "
            "manager; see *Problems seen in stagewise*) and was repeated with "
            f"{INFLIGHT_FALLBACK} requests in flight, as were the stagewise runs after it. The `how` column "
            "gives the figure each row used."
        )
        w("")
    # ---------------------------------------------------------------- summary
    w("## Summary")
    w("")
    w(
        "stagewise's better config against the fastest peer run (any peer, any config). Ratio = stagewise / "
        "fastest peer for throughput; for latency, fastest peer p50 / stagewise p50 (above 1 = stagewise "
        "is faster)."
    )
    w("")
    w("| workload | stagewise (config) | fastest peer (config) | ratio | target | met? |")
    w("|---|---|---|---:|---|---|")
    target = {
        "enqueue": ("none (reported)", None),
        "noop": ("≥ 2x fastest peer", 2.0),
        "latency": ("p50 ≤ fastest peer's", 1.0),
        "chain": ("≥ 2x fastest peer", 2.0),
    }
    unit = {"enqueue": "jobs/s", "noop": "jobs/s", "latency": "ms p50", "chain": "chains/s"}
    fmt = {"latency": f2}
    for wl in WORKLOADS:
        s, p = best(sw_of[wl], wl in lower), best(peers_of[wl], wl in lower)
        if not s or not p:
            w(
                f"| {wl} | {'–' if not s else fmt.get(wl, f0)(s.value)} | {'–' if not p else p.peer} | – | "
                f"{target[wl][0]} | not measured |"
            )
            continue
        rt = p.value / s.value if wl in lower else s.value / p.value
        goal = target[wl][1]
        met = "–" if goal is None else ("met" if rt >= goal else "**missed**")
        fm = fmt.get(wl, f0)
        w(
            f"| {wl} | {fm(s.value)} {unit[wl]} ({s.config}) | {p.peer} {fm(p.value)} {unit[wl]} "
            f"({p.config}) | "
            f"{rt:.2f}x | {target[wl][0]} | {met} |"
        )
    mons = [e for e in extras if e.get("kind") == "monitor" and e.get("ok")]
    if mons:
        worst = max(mons, key=lambda e: e["per_stage"].get("executor", 0))
        v = worst["per_stage"].get("executor", 0)
        w(
            f"| Redis round trips per stage, executor side | at most {v:.2f} commands/stage "
            f"({worst['workload']}, {worst['config']}; MONITOR count, see below) | – | – | ≤ 3 | "
            f"{'met' if v <= 3 else '**missed**'} |"
        )
    rss_ok, rss_txt = [], []
    for wl in ("noop", "latency", "chain"):
        s, p = (
            best(sw_of[wl], wl in lower),
            (min(peers_of[wl], key=lambda x: x.m("peak_rss_mb") or 1e9) if peers_of[wl] else None),
        )
        if s and p:
            a, b = s.m("peak_rss_mb"), p.m("peak_rss_mb")
            rss_ok.append(a <= b)
            rss_txt.append(f"{wl}: {a:.0f} vs {p.peer} {p.config} {b:.0f}")
    if rss_ok:
        w(
            f"| executor peak RSS (MB) | {'; '.join(rss_txt)} | smallest peer | – | ≤ smallest peer's | "
            f"{'met' if all(rss_ok) else '**missed**'} |"
        )
    w("")
    w(
        "Other per-stage costs of stagewise are in *stagewise per stage* below. The machine is noisy "
        "(the harness's RESULTS.md saw max − min up to about 50% of the median for the same run): compare "
        "ratios within one run, and treat gaps smaller than that as noise."
    )
    w("")

    # ---------------------------------------------------------------- setup
    w("## Setup")
    w("")
    w(
        f"- **Machine:** {meta.get('machine') or machine()}. "
        "Harness, worker, manager and Redis share these cores."
    )
    rd = meta.get("redis", {})
    w(
        f"- **Redis:** `redis-server` {rd.get('version', '?')} (Debian's), private instance: "
        f"`{' '.join(a if a else repr(a) for a in rd.get('argv', []))}`; stopped at the end by the pid "
        f"in the pidfile. "
        "The harness runs FLUSHALL before and after every measurement."
    )
    vers = {}
    for r in recs:
        vers.setdefault(r["peer"], (r.get("version", "?"), r.get("redis_py", "?")))
    w("- **Versions:** " + "; ".join(f"{p} {v} (redis-py {rp})" for p, (v, rp) in vers.items()) + ".")
    w(
        f"- **stagewise:** this checkout (`git describe --always --dirty` at the start: "
        f"{meta.get('git', '?')}), `.venv` (Python 3.11, uvloop). The manager "
        "(`stagewise manager`, JSON-RPC on a free loopback port) is started by `peer_stagewise.setup()` "
        "after the "
        "harness's first FLUSHALL and stopped by `teardown()`, so it runs during every measurement; its "
        "CPU is "
        "not in the harness's worker figures (not in the worker's process tree) and is given separately "
        "below. "
        "Namespace `bench`, one partition, default ping interval and manager tick (0.1 s)."
    )
    w(
        "- **Workloads** (fixed in the harness): enqueue 5,000 jobs; noop 5,000 pre-enqueued jobs "
        "drained by one "
        "freshly spawned worker command, timed from spawn; latency 200 sequential jobs (+20 warm-up), "
        "enqueue → "
        "handler ran; chain 1,000 chains of 3 steps. For stagewise a noop is a one-stage task and a "
        "chain is ONE "
        "three-stage task whose stages pass the value on with `{{ results.N }}` templates."
    )
    w(
        "- **stagewise enqueue (noop, latency, chain too):** `stagewise.manager.inproc.RedisClient.create`, "
        "one task per call, "
        f"{INFLIGHT} calls in flight like the peers' async clients"
        f"{f' ({INFLIGHT_FALLBACK} after the failure above)' if meta.get('inflight_failures') else ''}: "
        "the manager's own `tasks.create` (same validation) run in the producer's process, one create.lua "
        "call on Redis per task, which is how the peers' clients work too (they write to Redis themselves). "
        "The rows marked *over HTTP* are the same harness runs with every task sent as JSON-RPC "
        "`tasks.create` to the manager (POST /rpc, aiohttp client), the path for producers that are not "
        "Python or cannot reach Redis."
    )
    w(
        f"- **Repetitions:** {meta.get('reps', 1)}, interleaved (rep 1 of everything, then rep 2, ...); "
        "order per rep: stagewise, then the peers in the harness's order; per system: enqueue, noop, "
        "latency, "
        "chain; per workload: each config. Tables show the median over reps and (min – max) when reps > 1."
    )
    w("")
    w("### Exact commands")
    w("")
    w("```sh")
    w(
        "make bench                 # = .venv/bin/python bench/run.py $(BENCH_ARGS)"
        if not quick
        else "QUICK=1 make bench         # = QUICK=1 .venv/bin/python bench/run.py"
    )
    w(f"# peer venvs (once): bash {HARNESS}/setup-venvs.sh {PEER_VENVS}")
    w(f"# per run, cwd {HARNESS}, BENCH_REDIS_PORT={rd.get('port', 'P')} BENCH_LOGS={LOGS}:")
    w(
        f"timeout {RUN_TIMEOUT} {PEER_VENVS}/venv-<peer>/bin/python bench.py PEER WORKLOAD CONFIG REP "
        f"{RESULTS_JSONL}"
    )
    w(
        f"PYTHONPATH={BENCH} timeout {RUN_TIMEOUT} {SW_RUN_BIN}/python bench.py stagewise WORKLOAD CONFIG REP "
        f"{RESULTS_JSONL}"
    )
    w(
        f"# stagewise-only figures: {SW_BIN}/python bench/run.py --extra batch|monitor  "
        f"(BENCH_CONFIG=default|tuned)"
    )
    w("```")
    w("")

    # ---------------------------------------------------------------- tables
    w("## Results")
    w("")
    w(
        'Medians over reps. "ratio" = value / fastest peer\'s value (latency: fastest peer p50 / p50, so '
        "above 1 is "
        "faster). Worker CPU, Redis commands and Redis CPU are per job (per chain in the chain table) "
        "over the "
        "whole run (worker spawn → last completion, the harness's `all_*` fields; includes worker "
        "startup). Redis "
        "commands count every command Redis executed, including the ones run inside Lua scripts and, for "
        "stagewise, the manager's scheduler polling; the harness's own LLEN polls and INFOs are subtracted. "
        "Peak RSS is the worker command's process tree (for stagewise: the executor; the manager is not "
        "included)."
    )
    w("")
    # enqueue
    rows, p = tables["enqueue"], best(peers_of["enqueue"], False)
    w("### enqueue (5,000 jobs from the client)")
    w("")
    w("| system | reps | jobs/s | (min – max) | ratio | redis cmds/job | how |")
    w("|---|---:|---:|---:|---:|---:|---|")
    for x in rows:
        w(
            f"| {name(x.peer)} | {x.n} | {f0(x.value)} | {x.rng(f0)} | "
            f"{ratio(x.value / p.value if p else None)} | "
            f"{f2(x.m('redis_cmds'))} | {x.s('how')} |"
        )
    for e in [e for e in extras if e.get("kind") == "batch" and e.get("ok")]:
        w(
            f"| {name('stagewise')} (JSON-RPC batch of 100) | 1 | {f0(e['value'])} | – | "
            f"{ratio(e['value'] / p.value if p else None)} | {f2(e['redis_cmds'])} | {e['how']} "
            f"(stagewise-only, "
            "measured by run.py like the harness's enqueue, not a harness run) |"
        )
    for e in [e for e in http if e.get("workload") == "enqueue" and e.get("ok")]:
        w(
            f"| {name('stagewise')} (over HTTP) | 1 | {f0(e['value'])} | – | "
            f"{ratio(e['value'] / p.value if p else None)} | {f2(e.get('redis_cmds'))} | {e.get('how')} |"
        )
    w("")
    lims = [e for e in extras if e.get("kind") == "limits" and e.get("ok")]
    if lims:  # stagewise-only: what a limit key costs (flow control, SPEC §2a)
        w("### flow control (stagewise only: the cost of a limit key)")
        w("")
        w("| measurement | value | how |")
        w("|---|---:|---|")
        for e in lims:
            if e["unit"] == "jobs/s":
                w(f"| noop throughput, limits: {e['limits']} | {f0(e['value'])} jobs/s | {e['how']} |")
            else:
                w(f"| release latency | p50 {f2(e['value'])} ms, p99 {f2(e['p99_ms'])} ms | {e['how']} |")
        w("")
    # noop
    rows, p = tables["noop"], best(peers_of["noop"], False)
    w("### noop (5,000 pre-enqueued jobs, one worker command, timed from its spawn)")
    w("")
    w(
        "| system | config | reps | jobs/s (wall) | (min – max) | ratio | steady jobs/s | startup s | "
        "worker CPU ms/job "
        "| redis cmds/job | redis CPU ms/job | peak RSS MB | procs | config description |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in rows:
        w(
            f"| {name(x.peer)} | {x.config} | {x.n} | {f0(x.value)} | {x.rng(f0)} | "
            f"{ratio(x.value / p.value if p else None)} | {f0(x.m('steady'))} | {f2(x.m('startup_s'))} | "
            f"{f3(x.m('all_worker_cpu_ms'))} | {f2(x.m('all_redis_cmds'))} | {f3(x.m('all_redis_cpu_ms'))} | "
            f"{f0(x.m('peak_rss_mb'))} | {f0(x.m('procs'))} | {x.s('config_desc')} |"
        )
    w("")
    # latency
    rows, p = tables["latency"], best(peers_of["latency"], True)
    w("### latency (200 sequential jobs, enqueue → handler ran)")
    w("")
    w(
        "| system | config | reps | p50 ms | (min – max) | ratio (fastest peer p50 / p50) | p99 ms | "
        "mean ms | max ms | "
        "peak RSS MB | procs |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        w(
            f"| {name(x.peer)} | {x.config} | {x.n} | {f2(x.value)} | {x.rng(f2)} | "
            f"{ratio(p.value / x.value if p else None)} | {f2(x.m('p99'))} | {f2(x.m('mean'))} | "
            f"{f2(x.m('max'))} | "
            f"{f0(x.m('peak_rss_mb'))} | {f0(x.m('procs'))} |"
        )
    for e in [e for e in http if e.get("workload") == "latency" and e.get("ok")]:
        w(
            f"| {name('stagewise')} (created over HTTP) | tuned | 1 | {f2(e['value'])} | – | "
            f"{ratio(p.value / e['value'] if p else None)} | {f2(e.get('p99'))} | {f2(e.get('mean'))} | "
            f"{f2(e.get('max'))} | {f0(e.get('peak_rss_mb'))} | {f0(e.get('procs'))} |"
        )
    w("")
    # chain
    rows, p = tables["chain"], best(peers_of["chain"], False)
    w("### chain (1,000 chains of 3 steps)")
    w("")
    w(
        "| system | config | reps | chains/s (wall) | (min – max) | ratio | steady chains/s | first "
        "chain done s | "
        "worker CPU ms/chain | redis cmds/chain | redis CPU ms/chain | peak RSS MB | how |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in rows:
        w(
            f"| {name(x.peer)} | {x.config} | {x.n} | {f0(x.value)} | {x.rng(f0)} | "
            f"{ratio(x.value / p.value if p else None)} | {f0(x.m('steady'))} | {f2(x.m('startup_s'))} | "
            f"{f3(x.m('all_worker_cpu_ms'))} | {f2(x.m('all_redis_cmds'))} | {f3(x.m('all_redis_cpu_ms'))} | "
            f"{f0(x.m('peak_rss_mb'))} | {x.s('how')} |"
        )
    w("")

    # ---------------------------------------------------------------- stagewise per stage
    w("## stagewise per stage")
    w("")
    w(
        "From the harness records above (whole run, worker spawn → last completion), divided by the "
        "stages per "
        "task (noop 1, chain 3). Redis commands include those run inside the Lua scripts and the manager's; "
        "manager CPU is measured by `peer_stagewise` from the end of the enqueue to teardown (the drain)."
    )
    w("")
    w(
        "| workload | config | executor CPU ms/stage | Redis cmds/stage | Redis CPU ms/stage | manager "
        "CPU ms/stage "
        "| peak executor RSS MB |"
    )
    w("|---|---|---:|---:|---:|---:|---:|")
    for wl, k in (("noop", 1), ("chain", 3)):
        for x in sw_of[wl]:
            mc = med(
                [
                    m.get("manager_cpu_ms_drain")
                    for m in mgr
                    if m.get("workload") == wl and m.get("config") == x.config and m.get("rep", 0) > 0
                ]
            )
            div = lambda v, k=k: None if v is None else v / k  # noqa: E731
            w(
                f"| {wl} | {x.config} | {f3(div(x.m('all_worker_cpu_ms')))} | "
                f"{f2(div(x.m('all_redis_cmds')))} | "
                f"{f3(div(x.m('all_redis_cpu_ms')))} | {f3(div(mc))} | {f0(x.m('peak_rss_mb'))} |"
            )
    for x in sw_of["latency"]:
        w(f"| latency | {x.config} | – | – | – | – | {f0(x.m('peak_rss_mb'))} |")
    w("")
    if mons:
        w("### Redis commands by origin (MONITOR)")
        w("")
        w(
            f"A separate stagewise-only run per config ({EXTRA_N_NOOP:,} noop tasks, then {EXTRA_N_CHAIN:,} "
            "chains, pre-enqueued, drained by a fresh executor) with `redis-cli monitor` attached. Each "
            "command is "
            "attributed by its client connection: the executor's connections (without the bench handler's "
            "`RPUSH bench:done`), commands run inside Lua scripts (`lua`), the manager's. Counts per stage, "
            "including executor startup and shutdown. Executor commands are an upper bound on its round "
            "trips: "
            "the claims of one XREADGROUP batch go in one pipeline (one round trip for the batch)."
        )
        w("")
        w(
            "| workload | config | executor cmds/stage | inside Lua/stage | manager/stage | bench "
            "handler/stage "
            "| executor commands (count) | inside Lua, per stage |"
        )
        w("|---|---|---:|---:|---:|---:|---|---|")
        for e in mons:
            ps, st = e["per_stage"], e["stages"]
            cmds = ", ".join(f"{c} {v:,}" for c, v in e["by_command"].get("executor", {}).items())
            lua = ", ".join(f"{c} {v / st:.1f}" for c, v in e["by_command"].get("lua", {}).items())
            w(
                f"| {e['workload']} | {e['config']} (concurrency {e['concurrency']}) | "
                f"{f2(ps.get('executor'))} | {f2(ps.get('lua'))} | {f2(ps.get('manager'))} | "
                f"{f2(ps.get('bench_handler'))} | {cmds} | {lua} |"
            )
        w("")
        w(
            "`HELLO` is the handshake of each new connection: the executor's pool and the bench "
            "handler's client, which is in the executor's process and opens a connection per "
            "handler running at once.  Script calls go out as bare `EVALSHA`s (`Scripts.run_many`), "
            "with no `SCRIPT EXISTS` before them."
        )
        w("")

    # ---------------------------------------------------------------- fan-out
    fan = jsonl(FANOUT_JSONL)
    if fan or meta.get("fanout_error"):
        w("## Fan-out: 100 parents x 10 noop children")
        w("")
        w(
            "Measured by `bench/fanout.py` (`.venv/bin/python bench/fanout.py --reps N`), after the harness, "
            "each system on a private redis-server of its own: every parent created in one bulk call, each "
            "starts 10 noop children and goes on with their results once all ended. stagewise: the manager "
            "and one executor (`--concurrency 64`), a `children` stage with a `map`, one `tasks.create_many`; "
            "times are the parents' `created` and `updated` (Redis's clock). BullMQ (Python port): one "
            "Worker (concurrency 100, uvloop), a flow per parent whose handler reads `getChildrenValues()`, "
            "one `FlowProducer.addBulk()`; a parent's time is its handler's end against the addBulk call's "
            "start. The harness has no fan-out workload, hence this separate script. Medians over reps."
        )
        w("")
        if meta.get("fanout_error"):
            w(f"The fan-out run failed: `{meta['fanout_error']}`")
            w("")
        systems = list(dict.fromkeys(r["system"] for r in fan))
        if systems:
            w("| system | reps | all parents done | children/s | parent create -> finished p50 | p95 | max |")
            w("|---|---|---|---|---|---|---|")
            for sysname in systems:
                mine = [r for r in fan if r["system"] == sysname]

                def m(key: str, mine: list[dict[str, Any]] = mine) -> float:
                    return statistics.median(r[key] for r in mine)

                w(
                    f"| {sysname} | {len(mine)} | {m('total_s'):.2f} s | {m('children_per_s'):.0f} | "
                    f"{m('parent_p50_s'):.2f} s | {m('parent_p95_s'):.2f} s | {m('parent_max_s'):.2f} s |"
                )
            w("")

    # ---------------------------------------------------------------- problems
    w("## Problems seen in stagewise")
    w("")
    fails = [r for r in recs if r.get("peer") == "stagewise" and not r.get("ok")]
    fails += [e for e in extras if not e.get("ok")]
    problems = [
        f"- failed run: `{json.dumps({k: r.get(k) for k in ('workload', 'config', 'rep', 'kind')})}`: "
        f"`{str(r.get('error'))[:400]}`"
        for r in fails
    ]
    problems += scan_logs()
    w(
        "\n".join(problems)
        if problems
        else "None: every stagewise run finished, and its logs have no warning or error line."
    )
    others = [r for r in recs if r.get("peer") != "stagewise" and not r.get("ok")]
    if others:
        w("")
        w(
            "Failed peer runs: "
            + "; ".join(
                f"{r['peer']} {r['workload']} {r['config']} rep {r.get('rep')}: {str(r.get('error'))[:200]}"
                for r in others
            )
        )
    w("")
    scale = BENCH / "SCALE.md"
    if scale.exists():  # the scale figures, measured by bench/scale.py (too long for make bench)
        w("## Scale figures (bench/SCALE.md, copied)")
        w("")
        w(
            "Measured by `.venv/bin/python bench/scale.py`, a separate run (about 7 minutes, most of it "
            "loading 2,000,000 tasks), not by `make bench`; its date and checkout are in its first lines. "
            "Copied here whole, headings one level down."
        )
        w("")
        for line in scale.read_text().splitlines()[1:]:
            w("#" + line if line.startswith("#") else line)
        w("")
    profile = BENCH / "PROFILE.md"
    if profile.exists():  # the executor's profile before and after, from bench/profile.py runs
        w("## Executor profile (bench/PROFILE.md, copied)")
        w("")
        for line in profile.read_text().splitlines()[1:]:
            w("#" + line if line.startswith("#") else line)
    RESULTS_MD.write_text("\n".join(L))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"))
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 1)")
    ap.add_argument("--budget", type=float, default=0, help="seconds after which no new run starts")
    ap.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from bench/out")
    ap.add_argument("--extra", choices=["batch", "monitor", "limits"], help=argparse.SUPPRESS)
    ap.add_argument(
        "--only-extra", choices=["limits"], help="run just this stagewise-only measurement (its own Redis)"
    )
    args = ap.parse_args()
    if args.extra:
        extra_main(args.extra)
        return 0
    if args.only_extra:
        OUT.mkdir(exist_ok=True)
        LOGS.mkdir(exist_ok=True)
        redis = Redis()
        try:
            redis.start()
            extra(redis, args.only_extra, "tuned", INFLIGHT)
        finally:
            redis.stop()
        return 0
    if args.render:
        render()
        return 0
    try:
        return orchestrate(args)
    except KeyboardInterrupt:
        return 130
    finally:
        if _child_pgid:
            kill_group(_child_pgid)


if __name__ == "__main__":
    sys.exit(main())
