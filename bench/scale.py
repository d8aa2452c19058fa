"""Scale figures of stagewise: tasks.list over many stored tasks, Redis memory per task, the
manager's scheduling pass with few vs. many stored tasks, tasks.create_many rate, and
throughput with 1, 2 and 4 executor processes.

    .venv/bin/python bench/scale.py [--tasks 1000000] [--quick] [--out bench/SCALE.md]

Starts its own private redis-server (tests.helpers.RedisServer), manager and executor
processes (tests.helpers.Daemons), prints a table and writes bench/SCALE.md (method,
machine, command, figures).  --quick: 100,000 stored tasks and 5,000 tasks per memory run.

How the N stored tasks are made (section 1): every task goes through the real Lua scripts,
in pipelines of 1,000: create.lua (-> QUEUED, a hint on its app stream), XREADGROUP of the
hints by a registered loader "executor", claim.lua (-> RUNNING) and commit.lua with the
stage's result (-> FINISHED, attempt record appended).  That is the executor's Redis path
without its Python handler call, so each task holds what a finished task holds.  The
memory figures (section 2) come from tasks run by a real manager and executor processes.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stagewise.config import Settings  # noqa: E402
from stagewise.keys import GROUP, Keys  # noqa: E402
from stagewise.manager.query import CHUNK, SCAN_BUDGET  # noqa: E402
from stagewise.manager.scheduler import Scheduler  # noqa: E402
from stagewise.manager.store import Store  # noqa: E402
from stagewise.models import Task, parse_task  # noqa: E402
from stagewise.storage import calls  # noqa: E402
from stagewise.storage.connection import connect  # noqa: E402
from stagewise.storage.runner import source  # noqa: E402
from tests.helpers import Daemons, ManagerProc, Proc, RedisServer, wait_for  # noqa: E402

BATCH = 1000  # scripts per pipeline when loading
APPS = 10  # apps of the stored tasks (app0 .. app9)
TAGS = 100  # distinct tags (tag0 .. tag99), one per task
LOADERS = 2  # concurrent loading coroutines (each owns APPS / LOADERS apps)
FAR = 10 * 365 * 86400.0  # run_at of the IDLE tasks: ten years ahead
LOG = {"STAGEWISE_LOG_LEVEL": "warning"}
# Production heartbeat settings (tests.helpers defaults to 0.5 s pings for fast tests).
PROD = {"STAGEWISE_PING_INTERVAL": None, "STAGEWISE_DEAD_AFTER": None}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def fmt_n(n: float) -> str:
    return f"{n:,.0f}"


# --------------------------------------------------------------------------- loading


def create_call(store: Store, task: Task) -> calls.Call[dict[str, str]]:
    """create.lua for `task`, as Store.create calls it."""
    return calls.create(store.keys(task.id), task, "error")


def task_doc(j: int, app: str, run_at: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"s{j:07d}",
        "app": app,
        "tags": [f"tag{j % TAGS}"],
        "commands": [{"method": "demo.echo", "params": {"value": j}}],
    }
    if run_at is not None:
        doc["run_at"] = run_at
    return doc


async def load_finished(store: Store, n: int, progress: bool = True) -> None:
    """n FINISHED one-stage tasks through create.lua, claim.lua and commit.lua."""
    r, k, scripts = store.r, store.parts[0], store.scripts
    eid = "bench-loader-" + uuid.uuid4().hex[:8]
    sec, _ = await r.time()
    await r.zadd(k.executors(), {eid: sec + FAR})
    batches = list(range((n + BATCH - 1) // BATCH))
    done = [0]
    t0 = time.perf_counter()

    async def worker(w: int) -> None:
        mine = [b for b in batches if (b % APPS) % LOADERS == w]
        for b in mine:
            app = f"app{b % APPS}"
            stream = k.stream(app)
            tasks = [parse_task(task_doc(j, app)) for j in range(b * BATCH, min(n, (b + 1) * BATCH))]
            for h in await scripts.run_many([create_call(store, t) for t in tasks]):
                assert h["status"] == "QUEUED", h
            entries: list[tuple[str, dict[str, str]]] = []
            while len(entries) < len(tasks):
                got = await r.xreadgroup(GROUP, eid, {stream: ">"}, count=len(tasks) - len(entries))
                entries += got[0][1]
            leases = [uuid.uuid4().hex for _ in entries]
            claimed = await scripts.run_many(
                [
                    calls.claim(k, stream, mid, f["t"], f["j"], eid, lease)
                    for (mid, f), lease in zip(entries, leases, strict=True)
                ]
            )
            commits: list[calls.Call[calls.Commit]] = []
            for (_, f), lease, res in zip(entries, leases, claimed, strict=True):
                assert res.code == "OK", res
                value = int(f["t"][1:])  # demo.echo(value=j) of task s<j>
                commits.append(
                    calls.commit(k, f["t"], f["j"], lease, int(res.fields["stage"]), json.dumps(value), "ok")
                )
            for res in await scripts.run_many(commits):
                assert res.code == "FINISHED", res
            done[0] += len(tasks)
            if progress and (b // LOADERS) % 100 == 0:
                el = time.perf_counter() - t0
                print(f"    loaded {fmt_n(done[0])} finished tasks, {el:.0f} s", flush=True)

    await asyncio.gather(*(worker(w) for w in range(LOADERS)))
    # The loader leaves like a stopped executor: out of the registry and the groups, and the
    # streams trimmed as the manager would.
    await r.zrem(k.executors(), eid)
    await r.delete(k.executor(eid), k.running(eid))
    for a in range(min(APPS, len(batches))):
        await r.xgroup_delconsumer(k.stream(f"app{a}"), GROUP, eid)
    await Scheduler(store).trim(k)


async def load_idle(store: Store, n: int) -> None:
    """n IDLE one-stage tasks (run_at ten years ahead) through create.lua."""
    r, scripts = store.r, store.scripts
    sec, _ = await r.time()
    run_at = float(sec) + FAR
    for b in range(0, n, BATCH):
        batch = [
            create_call(store, parse_task(task_doc(j, "demo", run_at))) for j in range(b, min(n, b + BATCH))
        ]
        for h in await scripts.run_many(batch):
            assert h["status"] == "IDLE", h


# --------------------------------------------------------------------------- measurements


async def timed_rpc(m: ManagerProc, method: str, params: Any, reps: int) -> tuple[list[float], Any]:
    times, last = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        last = await m.rpc(method, params)
        times.append((time.perf_counter() - t0) * 1000)
    return times, last


async def bench_list(m: ManagerProc, reps: int) -> list[dict[str, Any]]:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("status=FINISHED", {"status": "FINISHED"}),
        ("tags=[tag7]", {"tags": ["tag7"]}),
        ("status=FINISHED, app=app3", {"status": "FINISHED", "app": "app3"}),
        ("app=app3 (8 app-status indexes merged)", {"app": "app3"}),
        ("no filter (8 status indexes merged)", {}),
        ("tags=[tag7], status=FINISHED", {"tags": ["tag7"], "status": "FINISHED"}),
        ("tags=[tag7], status=FAILED (no match)", {"tags": ["tag7"], "status": "FAILED"}),
        ("tags=[tag7, tag8] (no task has both)", {"tags": ["tag7", "tag8"]}),
    ]
    out = []
    for name, f in cases:
        params = {**f, "max_results": 100}
        await timed_rpc(m, "tasks.list", params, 3)  # warm up
        times, last = await timed_rpc(m, "tasks.list", params, reps)
        out.append(
            {"case": name, "items": len(last["items"]), "ms": times, "more": bool(last["next_cursor"])}
        )
    # 11th page: follow next_cursor 10 pages, then time the same 11th-page request
    for name, f in [
        ("status=FINISHED, page 11", {"status": "FINISHED"}),
        ("tags=[tag7], page 11", {"tags": ["tag7"]}),
    ]:
        params = {**f, "max_results": 100}
        for _ in range(10):
            res = await m.rpc("tasks.list", params)
            if res["next_cursor"] is None:
                break
            params = {**params, "cursor": res["next_cursor"]}
        times, last = await timed_rpc(m, "tasks.list", params, reps)
        out.append(
            {"case": name, "items": len(last["items"]), "ms": times, "more": bool(last["next_cursor"])}
        )
    return out


async def bench_tick(r: Any, url: str, namespace: str, passes: int) -> dict[str, Any]:
    settings = Settings(redis_url=url, namespace=namespace)
    sched = Scheduler(Store(r, settings))
    k = sched.parts[0]
    now = await sched.server_time()
    for _ in range(20):  # warm up
        await sched.due(k, now)
        await sched.deadlines(k, now)
        await sched.ended(k, now)
        await sched.reap(k, now)
    times: list[float] = []
    trims: list[float] = []
    before = int((await r.info("stats"))["total_commands_processed"])
    for _ in range(passes):
        t0 = time.perf_counter()
        await sched.due(k, now)
        await sched.deadlines(k, now)
        await sched.ended(k, now)
        await sched.reap(k, now)
        times.append((time.perf_counter() - t0) * 1e6)
    after = int((await r.info("stats"))["total_commands_processed"])
    for _ in range(20):
        t0 = time.perf_counter()
        await sched.trim(k)
        await sched.trim_notes(k, now)
        trims.append((time.perf_counter() - t0) * 1e6)
    return {
        "namespace": namespace,
        "tasks": await r.zcard(k.idx_status("IDLE")),
        "due": await r.zcard(k.due()),
        "us": times,
        "trim_us": trims,
        "cmds": (after - before - 1) / passes,  # the first INFO is counted, the second not
    }


def one_stage(i: int) -> dict[str, Any]:
    return {"app": "demo", "commands": [{"method": "demo.echo", "params": {"value": i}}]}


def three_stage(i: int) -> dict[str, Any]:
    return {
        "app": "demo",
        "commands": [
            {"method": "demo.echo", "params": {"value": i}},
            {"method": "demo.add", "params": {"a": "{{ results.0 }}", "b": 1}},
            {"method": "demo.echo", "params": {"value": "{{ results.1 }}"}},
        ],
    }


async def create_batches(m: ManagerProc, make: Any, total: int, start: int = 0) -> list[float]:
    """tasks.create_many in batches of 1,000; returns the ms of each call."""
    times = []
    for b in range(start, start + total, 1000):
        tasks = [make(i) for i in range(b, min(start + total, b + 1000))]
        t0 = time.perf_counter()
        await m.rpc("tasks.create_many", {"tasks": tasks})
        times.append((time.perf_counter() - t0) * 1000)
    return times


async def finished(r: Any, k: Keys) -> int:
    return int(await r.zcard(k.idx_status("FINISHED")))


async def stop(p: Proc) -> None:
    p.terminate()
    await p.wait_exit(40)


async def bench_memory(d: Daemons, r: Any, stages: int, k_tasks: int) -> dict[str, Any]:
    ns = f"mem{stages}"
    k = Keys(ns, 0)
    m = await d.manager(STAGEWISE_NAMESPACE=ns, **LOG, **PROD)
    ex = await d.executor("examples.app:app", 64, STAGEWISE_NAMESPACE=ns, **LOG, **PROD)
    await wait_for(lambda: r.zcard(k.executors()), timeout=20, what="executor registration")
    make = one_stage if stages == 1 else three_stage
    # one task first: the app stream, its group and the executor's state exist before `before`
    await m.rpc("tasks.create", {"task": {**make(0), "id": "warm"}})
    await wait_for(lambda: finished(r, k), timeout=20, what="warm-up task")
    await asyncio.sleep(2.5)  # a trim pass
    before = int((await r.info("memory"))["used_memory"])
    t0 = time.perf_counter()
    await create_batches(m, make, k_tasks, 1)
    await wait_for(
        lambda: _ge(r, k, k_tasks + 1),
        timeout=600,
        interval=0.1,
        what=f"{k_tasks} tasks to finish",
    )
    elapsed = time.perf_counter() - t0
    stream = k.stream("demo")
    await wait_for(lambda: _xlen_small(r, stream), timeout=30, interval=0.2, what="stream trimmed")
    after = int((await r.info("memory"))["used_memory"])
    # what one task holds
    ids = await r.zrange(k.idx_status("FINISHED"), -1, -1)
    tid = ids[0]
    doc = json.loads(await r.hget(k.task(tid), "doc"))
    indexes = [
        key
        for key in (k.idx_status("FINISHED"), k.idx_app_status("demo", "FINISHED"), k.idx_group(doc["group"]))
        if await r.zscore(key, tid) is not None
    ]
    out = {
        "stages": stages,
        "tasks": k_tasks,
        "before": before,
        "after": after,
        "per_task": (after - before) / k_tasks,
        "hash_fields": await r.hlen(k.task(tid)),
        "encoding": await r.object("encoding", k.task(tid)),
        "longest": max(len(v) for v in (await r.hgetall(k.task(tid))).values()),
        "hash_bytes": await r.memory_usage(k.task(tid), samples=0),
        "attempts": await r.llen(k.attempts(tid)),
        "attempts_bytes": await r.memory_usage(k.attempts(tid), samples=0),
        "indexes": [key.split(":", 2)[2].replace(doc["group"], "<group>") for key in indexes],
        "stream_len": await r.xlen(stream),
        "tasks_per_s": k_tasks / elapsed,
    }
    await stop(ex)
    await stop(m)
    return out


async def _ge(r: Any, k: Keys, n: int) -> bool:
    return await finished(r, k) >= n


async def _xlen_small(r: Any, stream: str) -> bool:
    return int(await r.xlen(stream)) <= 2


async def bench_create_many(d: Daemons, batches: int) -> dict[str, Any]:
    m = await d.manager(STAGEWISE_NAMESPACE="cm", **LOG, **PROD)
    await create_batches(m, one_stage, 1000, 10_000_000)  # warm up
    t0 = time.perf_counter()
    times = await create_batches(m, one_stage, batches * 1000)
    total = time.perf_counter() - t0
    await stop(m)
    return {"batches": batches, "tasks_per_s": batches * 1000 / total, "ms": times}


async def bench_throughput(d: Daemons, r: Any, procs: int, n: int) -> dict[str, Any]:
    ns = f"tp{procs}"
    k = Keys(ns, 0)
    m = await d.manager(STAGEWISE_NAMESPACE=ns, **LOG, **PROD)
    await create_batches(m, one_stage, n)
    assert await r.zcard(k.idx_status("QUEUED")) == n
    t0 = time.perf_counter()
    exs = [
        await d.executor("examples.app:app", 64, STAGEWISE_NAMESPACE=ns, **LOG, **PROD) for _ in range(procs)
    ]
    first = None
    while True:
        done = await finished(r, k)
        now = time.perf_counter()
        if done and first is None:
            first = now
        if done >= n:
            break
        if now - t0 > 600:
            raise RuntimeError(f"throughput P={procs}: only {done}/{n} finished after 600 s")
        await asyncio.sleep(0.05)
    end = time.perf_counter()
    for ex in exs:
        await stop(ex)
    await stop(m)
    assert first is not None
    return {
        "procs": procs,
        "tasks": n,
        "wall": end - t0,
        "tasks_per_s": n / (end - t0),
        "after_first": n / (end - first) if end > first else float("nan"),
        "startup": first - t0,
    }


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} vCPU ({cpu}), {mem:.0f} GiB RAM; {platform.platform()}; "
        f"Python {platform.python_version()}; {redis_v.split(' sha=')[0]}"
    )


def git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ms3(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} | {pct(xs, 0.9):.1f} | {max(xs):.1f}"


def report(res: dict[str, Any], args: argparse.Namespace, started: str, wall: float) -> str:
    n = res["n"]
    L: list[str] = []
    L.append("# stagewise at scale\n")
    L.append(
        f"Generated by `bench/scale.py` (run {started} UTC, {wall:.0f} s wall). "
        "Every figure below was measured in that run; the section numbers follow the script.\n"
    )
    L.append(
        f"Whole run {wall:.0f} s, of which loading the {fmt_n(n)} FINISHED and {fmt_n(res['idle_n'] + 1000)} "
        f"IDLE tasks took {res['load_s'] + res['idle_s']:.0f} s.\n"
    )
    L.append("## Setup\n")
    L.append(
        f"- **Machine:** {res['machine']}. Redis, the manager, the executors and this harness share the cores; "
        f"load average (1 min) at the start: {res['load']:.2f}."
    )
    L.append(
        "- **Command:** `"
        + " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/scale.py", *args.argv])
        + "`"
        f" (cwd {REPO}), checkout `{res['rev']}` (git describe --always --dirty). One private `redis-server` (tests.helpers.RedisServer: no persistence) for the "
        "whole run; each measurement has its own namespace (one partition). Daemons log at warning and use "
        "the default heartbeat (5 s ping, dead after 3)."
    )
    L.append(
        f"- **Stored tasks (sections 1, 3):** {fmt_n(n)} FINISHED one-stage tasks in namespace `big`, made "
        f"through the real scripts in pipelines of {BATCH}: `create.lua` (QUEUED, hint on the app stream), "
        "XREADGROUP by a registered loader executor, `claim.lua` (RUNNING, attempt 1), `commit.lua` with the "
        "stage's result (FINISHED, attempt record). That is the executor's Redis path without the Python "
        f"handler call. {APPS} apps (app0..app9, in runs of {BATCH}), {TAGS} tags (one per task, round robin), "
        "no group, so each task is in i:s:FINISHED, i:as:<app>:FINISHED and one i:t:<tag>. "
        f"Loading took {res['load_s']:.0f} s ({fmt_n(n / res['load_s'])} tasks/s); Redis used_memory grew by "
        f"{res['big_per_task']:.0f} bytes per task. For section 3, namespaces `idle1k` and `idle1m` hold "
        f"1,000 and {fmt_n(res['idle_n'])} IDLE one-stage tasks made by `create.lua` with run_at ten years "
        f"ahead (each is in the due zset); loading them took {res['idle_s']:.0f} s."
    )
    L.append("")
    L.append(f"## 1. tasks.list over {fmt_n(n)} stored FINISHED tasks\n")
    L.append(
        "A real manager process on namespace `big`; JSON-RPC `tasks.list` over one warm aiohttp connection "
        f"(tests.helpers ManagerProc.rpc), max_results 100, sort desc, without results; each case {args.reps} "
        "times after 3 warm-up calls, one at a time. Time = client-observed round trip (request, manager, "
        "Redis, JSON decode of the reply). Page 11: next_cursor followed 10 pages, then the 11th page "
        "requested repeatedly with the same cursor. Target: under 50 ms.\n"
    )
    L.append("| filter | items | p50 ms | p90 ms | max ms | < 50 ms (p90)? |")
    L.append("|---|---:|---:|---:|---:|---|")
    for c in res["list"]:
        ok = "yes" if pct(c["ms"], 0.9) < 50 else "**no**"
        L.append(f"| {c['case']} | {c['items']} | {ms3(c['ms'])} | {ok} |")
    L.append("")
    L.append("## 2. Redis memory per stored FINISHED task\n")
    L.append(
        "INFO memory `used_memory` before and after K tasks were created (tasks.create_many, batches of "
        "1,000) and run to FINISHED by a real manager and one executor process (`examples.app:app`, "
        "concurrency 64), measured once every task was FINISHED and the manager had trimmed the app "
        "stream. Per task = delta / K. The breakdown is of the most recently finished task "
        "(MEMORY USAGE, SAMPLES 0).\n"
    )
    L.append(
        "| task | K | bytes/task | hash fields | hash encoding | hash bytes | attempts | attempts bytes | indexes |"
    )
    L.append("|---|---:|---:|---:|---|---:|---:|---:|---|")
    for mrow in res["memory"]:
        L.append(
            f"| {mrow['stages']}-stage | {fmt_n(mrow['tasks'])} | {mrow['per_task']:.0f} | {mrow['hash_fields']} | "
            f"{mrow['encoding']} (longest value {mrow['longest']} B) | {mrow['hash_bytes']} | "
            f"{mrow['attempts']} | {mrow['attempts_bytes']} | {', '.join(mrow['indexes'])} |"
        )
    L.append(
        '\nOne-stage: `demo.echo(value=i)`; three-stage: `demo.echo(i)`, `demo.add("{{ results.0 }}", 1)`, '
        '`demo.echo("{{ results.1 }}")`. The hash holds the document (doc, kws, plan), the state fields '
        "the scripts keep and one `r.<stage>` field per result; the attempts list one JSON record per stage "
        "run; each task is in its status index, its app+status index and its group's index (create_many "
        "gives every batch a group). The rest of bytes/task beyond hash + attempts is those index entries "
        "and Redis's per-key overhead (keyspace dict entries)."
    )
    if any(mrow["encoding"] == "hashtable" for mrow in res["memory"]):
        L.append(
            "\nThe task hash is a `hashtable`, not a compact `listpack`: Redis keeps a hash as a listpack "
            "only while every value is at most `hash-max-listpack-value` (64 bytes by default) and it has at "
            "most 128 fields; the `doc` field (the whole task document as JSON) is longer than 64 bytes, so "
            "every field costs a dict entry and two separately allocated strings."
        )
    L.append("")
    L.append("## 3. Manager scheduling pass, 1,000 vs. 1,000,000 stored idle tasks\n")
    L.append(
        "In-process `stagewise.manager.scheduler.Scheduler(Store(client, settings))`; one pass = `due`, `deadlines`, "
        f"`ended`, `reap` on the namespace's partition when nothing is due; {args.passes} passes, no other "
        "client talking to Redis. Redis commands per pass from INFO stats total_commands_processed. "
        "`trim` + `trim_notes` (every 2 s in the manager) are timed separately (20 runs).\n"
    )
    L.append(
        "| namespace | IDLE tasks | due zset | pass p50 µs | p90 µs | max µs | cmds/pass | trim p50 µs |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in res["tick"]:
        L.append(
            f"| {t['namespace']} | {fmt_n(t['tasks'])} | {fmt_n(t['due'])} | {statistics.median(t['us']):.0f} | "
            f"{pct(t['us'], 0.9):.0f} | {max(t['us']):.0f} | {t['cmds']:.2f} | {statistics.median(t['trim_us']):.0f} |"
        )
    L.append("")
    cm = res["create_many"]
    L.append("## 4. tasks.create_many rate\n")
    L.append(
        f"{cm['batches']} sequential `tasks.create_many` calls of 1,000 one-stage `demo.echo` tasks over "
        "JSON-RPC against a real manager, no executor (after one warm-up batch).\n"
    )
    L.append("| batches | tasks/s | ms per batch p50 | p90 | max |")
    L.append("|---:|---:|---:|---:|---:|")
    L.append(f"| {cm['batches']} | {fmt_n(cm['tasks_per_s'])} | {ms3(cm['ms'])} |")
    L.append("")
    L.append("## 5. Throughput with 1, 2 and 4 executor processes\n")
    L.append(
        f"{fmt_n(res['tp_n'])} one-stage `demo.echo` tasks created with create_many (no executor running), then P "
        "`stagewise executor examples.app:app --concurrency 64` processes (STAGEWISE_LOG_LEVEL=warning) "
        "started at once; time from their spawn until the FINISHED index holds every task (ZCARD polled "
        'every 50 ms). The manager runs throughout. "after first" excludes executor start-up '
        "(process spawn, imports, registration): tasks / (last - first finished). The machine has "
        f"{os.cpu_count()} cores shared by Redis, the manager, the executors and the harness.\n"
    )
    L.append("| executors | tasks | wall s | tasks/s | tasks/s after first | start-up s |")
    L.append("|---:|---:|---:|---:|---:|---:|")
    for t in res["throughput"]:
        L.append(
            f"| {t['procs']} | {fmt_n(t['tasks'])} | {t['wall']:.2f} | {fmt_n(t['tasks_per_s'])} | "
            f"{fmt_n(t['after_first'])} | {t['startup']:.2f} |"
        )
    L.append("")
    slow = [c for c in res["list"] if pct(c["ms"], 0.9) >= 50]
    if slow:
        names = ", ".join(f"`{c['case']}` (p50 {statistics.median(c['ms']):.0f} ms)" for c in slow)
        res["notes"].append(
            f"Slow tasks.list path: {names}. A query with filters that no single index answers reads one "
            f"index (a tag's holds {fmt_n(n / TAGS)} entries here) {CHUNK} candidates per round trip and "
            "checks the other filters on fields fetched per candidate (HMGET each); when few or none match, "
            "one page walks that whole index, up to the scan budget of "
            f"{fmt_n(SCAN_BUDGET)} candidates, before it answers (with an empty page and a cursor when the "
            "budget runs out). Status alone, status+app, app alone and a single tag are served by indexes "
            "that answer the filter exactly or nearly, so they stay flat at any N."
        )
    cm_ms = statistics.median(res["create_many"]["ms"])
    cm_note = f"tasks.create_many: {cm_ms:.0f} ms per batch of 1,000, {cm_ms / 1000:.3f} ms per task"
    if "await self.create(t" in inspect.getsource(Store.create_many):
        cm_note += (
            ": in this checkout Store.create_many checks the ids in one pipeline, then awaits create.lua "
            "once per task (one round trip each, not pipelined), so a batch costs about as much as 1,000 "
            "sequential creates"
        )
    res["notes"].append(cm_note + ".")
    tp = res["throughput"]
    res["notes"].append(
        "Executors: "
        + ", ".join(f"{t['procs']} process(es) {fmt_n(t['tasks_per_s'])} tasks/s" for t in tp)
        + f". On {os.cpu_count()} cores Redis, the manager and the executors compete for CPU, so more executor "
        "processes do not add throughput here; 10,000 tasks take under 3 s, so these figures are noisy "
        "(executor start-up is a large share; see the start-up column)."
    )
    if res.get("notes"):
        L.append("## Notes\n")
        L += [f"- {x}" for x in res["notes"]]
        L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    t_start = time.perf_counter()
    res: dict[str, Any] = {"machine": machine(), "n": args.tasks, "notes": [], "load": os.getloadavg()[0]}
    res["rev"] = git_rev()
    server = RedisServer.start()
    r = await connect(server.url, 16)  # async: it asks the server whether it is a Redis Cluster
    try:
        for name in ("create", "claim", "commit"):
            await r.script_load(source(name))
        with tempfile.TemporaryDirectory() as tmp:
            d = Daemons(server.url, "scale", Path(tmp))
            try:
                print("2. memory per FINISHED task", flush=True)
                res["memory"] = [await bench_memory(d, r, s, args.mem_tasks) for s in (1, 3)]
                for mrow in res["memory"]:
                    print(
                        f"   {mrow['stages']}-stage: {mrow['per_task']:.0f} B/task ({mrow['tasks_per_s']:.0f} tasks/s)"
                    )
                print("4. tasks.create_many", flush=True)
                res["create_many"] = await bench_create_many(d, args.batches)
                print(f"   {res['create_many']['tasks_per_s']:.0f} tasks/s", flush=True)
                print("5. throughput", flush=True)
                res["tp_n"] = args.tp_tasks
                res["throughput"] = []
                for p in (1, 2, 4):
                    t = await bench_throughput(d, r, p, args.tp_tasks)
                    res["throughput"].append(t)
                    print(
                        f"   P={p}: {t['tasks_per_s']:.0f} tasks/s ({t['after_first']:.0f} after first)",
                        flush=True,
                    )

                print(f"loading {fmt_n(args.tasks)} FINISHED tasks", flush=True)
                big = Store(r, Settings(redis_url=server.url, namespace="big"))
                mem0 = int((await r.info("memory"))["used_memory"])
                t0 = time.perf_counter()
                await load_finished(big, args.tasks)
                res["load_s"] = time.perf_counter() - t0
                res["big_per_task"] = (int((await r.info("memory"))["used_memory"]) - mem0) / args.tasks
                assert await r.zcard(big.parts[0].idx_status("FINISHED")) == args.tasks
                print(f"   {res['load_s']:.0f} s, {res['big_per_task']:.0f} B/task", flush=True)
                print(f"loading 1,000 + {fmt_n(args.tasks)} IDLE tasks", flush=True)
                t0 = time.perf_counter()
                await load_idle(Store(r, Settings(redis_url=server.url, namespace="idle1k")), 1000)
                await load_idle(Store(r, Settings(redis_url=server.url, namespace="idle1m")), args.tasks)
                res["idle_s"] = time.perf_counter() - t0
                res["idle_n"] = args.tasks
                print(f"   {res['idle_s']:.0f} s", flush=True)

                print("3. scheduling pass", flush=True)
                res["tick"] = [
                    await bench_tick(r, server.url, ns, args.passes) for ns in ("idle1k", "idle1m")
                ]
                for t in res["tick"]:
                    print(
                        f"   {t['namespace']}: p50 {statistics.median(t['us']):.0f} us, {t['cmds']:.2f} cmds/pass",
                        flush=True,
                    )

                print("1. tasks.list", flush=True)
                m = await d.manager(STAGEWISE_NAMESPACE="big", **LOG, **PROD)
                res["list"] = await bench_list(m, args.reps)
                await stop(m)
            finally:
                await d.aclose()
    finally:
        await r.aclose()
        server.stop()
    wall = time.perf_counter() - t_start
    rev_end = git_rev()
    if rev_end != res["rev"]:
        res["notes"].append(
            f"The checkout changed during the run ({res['rev']} at the start, {rev_end} at the end): "
            "daemons started later (section 1's manager is the last) ran the newer code."
        )
    print()
    print(
        f"{'tasks.list (' + fmt_n(args.tasks) + ' stored)':44} {'items':>5} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}"
    )
    for c in res["list"]:
        print(
            f"  {c['case']:42} {c['items']:>5} {statistics.median(c['ms']):>8.1f} "
            f"{pct(c['ms'], 0.9):>8.1f} {max(c['ms']):>8.1f}"
        )
    for mrow in res["memory"]:
        print(f"memory, {mrow['stages']}-stage FINISHED task: {mrow['per_task']:.0f} bytes")
    for t in res["tick"]:
        print(
            f"scheduling pass, {t['namespace']} ({fmt_n(t['due'])} due entries): p50 "
            f"{statistics.median(t['us']):.0f} us, {t['cmds']:.2f} Redis cmds/pass"
        )
    print(f"tasks.create_many: {res['create_many']['tasks_per_s']:.0f} tasks/s")
    for t in res["throughput"]:
        print(
            f"throughput, {t['procs']} executor(s): {t['tasks_per_s']:.0f} tasks/s ({t['after_first']:.0f} after first)"
        )
    print(f"wall {wall:.0f} s")
    return report(res, args, started, wall)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=None, help="stored tasks for sections 1 and 3 (1,000,000)")
    ap.add_argument("--quick", action="store_true", help="100,000 stored tasks, 5,000 per memory run")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "SCALE.md"))
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if args.tasks is None:
        args.tasks = 100_000 if args.quick else 1_000_000
    args.mem_tasks = 5_000 if args.quick else 20_000
    args.tp_tasks = 10_000
    args.batches = 20
    args.reps = 50
    args.passes = 200
    return args


if __name__ == "__main__":
    a = parse_args()
    Path(a.out).write_text(asyncio.run(main(a)))
    print(f"wrote {a.out}")
