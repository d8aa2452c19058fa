"""Fan-out (SPEC §3a): 100 parents x 10 noop children, stagewise beside BullMQ's flows.

    .venv/bin/python bench/fanout.py [--parents 100] [--children 10] [--reps 3]

Each system gets a private redis-server and the same work: every parent is created at once (one
bulk call), each starts its children, and goes on once all of them ended, with their results.
Measured per repetition: the time from the bulk create to the last parent finished, children/s
(children / that time), and each parent's create -> finished time (median, p95, max).

  stagewise  the manager and one executor (`--concurrency 64`) serving the app below; a parent is
             `[{"children": {"map": "{{ kws.xs }}", "task": noop child}}]`, created with one
             tasks.create_many; times are the parents' own `created` and `updated` (Redis's clock)
  bullmq     BullMQ's Python port (bench/.venv-peers/venv-bullmq, as `make bench` builds it), one
             Worker (concurrency 100, uvloop) on one queue; a parent is a flow whose handler reads
             getChildrenValues(); FlowProducer.addBulk() of all parents; a parent's finish is the
             time its handler ended, against the addBulk call's start
`make bench` (bench/run.py) runs it after the harness and puts its table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stagewise.executor import App

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BULLMQ_PY = BENCH / ".venv-peers" / "venv-bullmq" / "bin" / "python"

app = App("fan")


@app.method("fan.noop")
async def noop(i: int) -> int:
    return i


def summary(
    system: str, parents: int, children: int, total: float, per_parent: list[float]
) -> dict[str, Any]:
    per = sorted(per_parent)
    return {
        "system": system,
        "parents": parents,
        "children": children,
        "total_s": total,
        "children_per_s": parents * children / total,
        "parent_p50_s": statistics.median(per),
        "parent_p95_s": per[max(0, int(len(per) * 0.95) - 1)],
        "parent_max_s": per[-1],
    }


async def run_stagewise(parents: int, children: int) -> dict[str, Any]:
    import redis.asyncio as aredis

    from tests.helpers import Daemons, RedisServer, wait_for

    srv = RedisServer.start()
    r = aredis.Redis.from_url(srv.url, decode_responses=True)
    try:
        d = Daemons(srv.url, "fan", Path(tempfile.mkdtemp(prefix="fanout-bench-")))
        try:
            env = {"STAGEWISE_LOG_LEVEL": "warning"}
            m = await d.manager(**env)
            await d.executor("fanout:app", concurrency=64, PYTHONPATH=f"{ROOT}{os.pathsep}{BENCH}", **env)
            await wait_for(lambda: m.rpc("executors.list"), timeout=15, what="the executor")
            child = {"app": "fan", "commands": [{"method": "fan.noop", "params": {"i": "{{ kws.item }}"}}]}
            docs = [
                {
                    "id": f"p{n}",
                    "app": "fan",
                    "tags": ["parent"],
                    "kws": {"xs": list(range(children))},
                    "commands": [{"children": {"map": "{{ kws.xs }}", "task": child}}],
                }
                for n in range(parents)
            ]
            await m.rpc("tasks.create_many", {"tasks": docs})

            async def all_finished() -> list[dict[str, Any]] | None:
                query = {
                    "tags": ["parent"],
                    "status": "FINISHED",
                    "max_results": 1000,
                    "include_results": True,
                }
                got = (await m.rpc("tasks.list", query))["items"]
                return got if len(got) == parents else None

            views = await wait_for(all_finished, timeout=600, interval=0.05, what="every parent FINISHED")
            bad = [v["id"] for v in views if [c["result"] for c in v["results"][0]] != list(range(children))]
            assert not bad, f"wrong results: {bad[:5]}"
            start = min(v["created"] for v in views)
            total = max(v["updated"] for v in views) - start
            return summary(
                "stagewise", parents, children, total, [v["updated"] - v["created"] for v in views]
            )
        finally:
            await d.aclose()
    finally:
        await r.aclose()
        srv.stop()


BULLMQ_SCRIPT = r"""
import asyncio, json, sys, time
import uvloop
from bullmq import FlowProducer, Worker

PARENTS, CHILDREN, URL = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
QUEUE = "fan"

async def main():
    done = {}
    finished = asyncio.Event()

    async def process(job, token):
        if job.name == "parent":
            values = await job.getChildrenValues()
            done[job.data["p"]] = (time.time(), len(values))
            if len(done) == PARENTS:
                finished.set()
            return len(values)
        return job.data["i"]

    worker = Worker(QUEUE, process, {"connection": URL, "concurrency": 100})
    flows = FlowProducer({"connection": URL})
    flow = lambda p: {"name": "parent", "queueName": QUEUE, "data": {"p": p},
                      "children": [{"name": "noop", "queueName": QUEUE, "data": {"i": i}} for i in range(CHILDREN)]}
    t0 = time.time()
    await flows.addBulk([flow(p) for p in range(PARENTS)])
    await asyncio.wait_for(finished.wait(), 600)
    ends = [t - t0 for t, _ in done.values()]
    assert all(n == CHILDREN for _, n in done.values())
    await worker.close()
    await flows.close()
    print(json.dumps({"total": max(ends), "per_parent": ends}))

uvloop.run(main())
"""


def run_bullmq(parents: int, children: int) -> dict[str, Any] | None:
    from tests.helpers import RedisServer

    if not BULLMQ_PY.exists():
        print(f"bullmq: skipped, no {BULLMQ_PY} (`make bench` builds it)", file=sys.stderr)
        return None
    srv = RedisServer.start()
    try:
        out = subprocess.run(
            [str(BULLMQ_PY), "-c", BULLMQ_SCRIPT, str(parents), str(children), srv.url],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        return summary("bullmq", parents, children, rec["total"], rec["per_parent"])
    finally:
        srv.stop()


def table(rows: list[dict[str, Any]]) -> str:
    def med(system: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["system"] == system)

    systems = list(dict.fromkeys(r["system"] for r in rows))
    lines = [
        "| system | reps | all parents done | children/s | parent create -> finished p50 | p95 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in systems:
        n = sum(1 for r in rows if r["system"] == s)
        lines.append(
            f"| {s} | {n} | {med(s, 'total_s'):.2f} s | {med(s, 'children_per_s'):.0f} | "
            f"{med(s, 'parent_p50_s'):.2f} s | {med(s, 'parent_p95_s'):.2f} s | {med(s, 'parent_max_s'):.2f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/fanout.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--parents", type=int, default=100)
    p.add_argument("--children", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", type=Path, help="append one JSON line per measurement to this file")
    a = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for rep in range(a.reps):
        for system in ("stagewise", "bullmq"):
            t0 = time.monotonic()
            rec = (
                asyncio.run(run_stagewise(a.parents, a.children))
                if system == "stagewise"
                else run_bullmq(a.parents, a.children)
            )
            if rec is None:
                continue
            rec["rep"] = rep + 1
            rows.append(rec)
            print(f"{system} rep {rep + 1}: {json.dumps(rec)} ({time.monotonic() - t0:.0f} s)", flush=True)
            if a.json:
                with a.json.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT)]
    sys.exit(main())
