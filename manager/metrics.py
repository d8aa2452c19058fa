"""GET /metrics: Prometheus text exposition of what Redis holds, read at scrape time.

A scrape gathers every number first, asynchronously, with a few pipelined round trips over
all partitions (`gather`), then renders them through a custom prometheus_client Collector on
a registry made for that scrape (`render`): Collector.collect() is synchronous and must not
touch Redis, and a registry per scrape keeps concurrent scrapes apart.

Gauges (read from the indexes, streams and sorted sets the scripts maintain):
  stagewise_tasks{app,status}                      ZCARD i:as:<app>:<status>
  stagewise_queue_pending{app,priority}            delivered to an executor, not yet claimed
  stagewise_queue_lag{app,priority}                entries not yet delivered (XINFO GROUPS lag)
  stagewise_queue_oldest_age_seconds{app,priority} age of the oldest entry not yet delivered
  stagewise_due_entries                            members of the due ZSETs
  stagewise_due_overdue                            of those, with score <= now
  stagewise_due_lag_seconds                        now - the oldest overdue score (scheduler lag)
  stagewise_executors{app}                         executors whose last ping is within dead_after

Counters and histograms are aggregated at write time, by the scripts that decide (commit.lua,
fail.lua, and `fail()` in _lib.lua for every way a task can fail), into one hash per partition
and app, `{ns:p}:m:<app>` (`Keys.metrics`), with the fields:
  d|<le>|<outcome>|<method>   HINCRBY 1: stage attempts whose duration fell in bucket <le>
                              (not cumulative: the first of DURATION_BUCKETS >= duration, or +Inf)
  s|<outcome>|<method>        HINCRBYFLOAT seconds: the sum of those durations
  retries                     HINCRBY 1: failed attempts that will be retried
  f|<code>                    HINCRBY 1: tasks that ended FAILED, by error code
  created                     HINCRBY 1: tasks stored (create, create_many, replace)
  e|<status>                  HINCRBY 1: runs that ended FINISHED, FAILED or CANCELED
which this module reads as
  stagewise_stage_duration_seconds{app,method,outcome}  histogram
  stagewise_retries_total{app}
  stagewise_failures_total{app,code}
  stagewise_tasks_created_total{app}
  stagewise_tasks_ended_total{app,status}
and stagewise_build_info{version} is 1 with the manager's version.
Durations run from the stage's start (claim, or the previous commit) to its commit or failure,
on Redis's clock.  Attempts cut short by a dead executor or a hand-back are not observed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import stagewise
from stagewise import log as slog
from stagewise.faults import describe, unavailable_reason
from stagewise.keys import DURATION_BUCKETS, GROUP, Keys, parse_stream_name
from stagewise.manager.query import running_count
from stagewise.manager.store import Store
from stagewise.status import UNINDEXED, Status

BUCKETS = DURATION_BUCKETS  # defined once, in stagewise.keys, and given to the scripts from there
INF = "+Inf"


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: +Inf
    sum: float = 0.0

    def add_bucket(self, le: str, n: int) -> None:
        bound = math.inf if le == INF else float(le)
        i = next((j for j, b in enumerate(BUCKETS) if bound <= b), len(BUCKETS))
        self.counts[i] += n

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for b, n in zip((*map(_le, BUCKETS), INF), self.counts, strict=True):
            acc += n
            out.append((b, float(acc)))
        return out


def _le(b: float) -> str:
    return repr(b)


@dataclass
class Snapshot:
    """Every number of one scrape, summed over partitions (ages: the largest)."""

    now: float = 0.0
    tasks: dict[tuple[str, str], int] = field(default_factory=dict)  # (app, status)
    pending: dict[tuple[str, str], int] = field(default_factory=dict)  # (app, priority)
    lag: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_age: dict[tuple[str, str], float] = field(default_factory=dict)
    due_entries: int = 0
    due_overdue: int = 0
    due_lag: float = 0.0
    executors: dict[str, set[str]] = field(default_factory=dict)  # app -> executor ids
    stages: dict[tuple[str, str, str], Histogram] = field(default_factory=dict)  # (app, method, outcome)
    retries: dict[str, int] = field(default_factory=dict)  # app
    failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (app, code)
    created: dict[str, int] = field(default_factory=dict)  # app
    ended: dict[tuple[str, str], int] = field(default_factory=dict)  # (app, status)


def _add(d: dict[Any, int], key: Any, n: int) -> None:
    d[key] = d.get(key, 0) + n


async def gather(store: Store) -> Snapshot:
    """Reads the numbers of every partition in three pipelined round trips."""
    r, parts = store.r, store.parts
    snap = Snapshot()
    now = snap.now = await store.server_time()

    # 1: the names to look further at (stream names, executors) and the due ZSETs
    pipe = r.pipeline(transaction=False)
    for k in parts:
        pipe.smembers(k.apps())
        pipe.zrangebyscore(k.executors(), now - store.settings.dead_seconds, "+inf")
        pipe.zcard(k.due())
        pipe.zcount(k.due(), "-inf", now)
        pipe.zrangebyscore(k.due(), "-inf", now, start=0, num=1, withscores=True)
        pipe.zrange(k.deadlines(), 0, -1)  # the RUNNING tasks (they have no status index)
    got = await pipe.execute()
    streams: list[tuple[Keys, str]] = []
    live: list[tuple[Keys, str]] = []
    apps: list[tuple[Keys, str]] = []
    running: dict[str, Counter[str]] = {}
    for i, k in enumerate(parts):
        names, eids, entries, overdue, oldest, run = got[6 * i : 6 * i + 6]
        running[k.prefix] = running_count(run)
        streams += [(k, n) for n in sorted(names)]
        apps += [(k, a) for a in sorted({parse_stream_name(n)[0] for n in names})]
        live += [(k, e) for e in eids]
        snap.due_entries += entries
        snap.due_overdue += overdue
        if oldest:
            snap.due_lag = max(snap.due_lag, now - oldest[0][1])

    # 2: per app, stream and executor
    pipe = r.pipeline(transaction=False)
    for k, app in apps:
        for st in Status:
            if st not in UNINDEXED:
                pipe.zcard(k.idx_app_status(app, st))
        pipe.hgetall(k.metrics(app))
    for k, name in streams:
        pipe.xinfo_groups(k.stream_of(name))
    for k, eid in live:
        pipe.hget(k.executor(eid), "app")
    got = await pipe.execute(raise_on_error=False)
    pos = 0
    for k, app in apps:
        for st in Status:
            if st in UNINDEXED:
                _add(snap.tasks, (app, st.value), running[k.prefix][app])
                continue
            _add(snap.tasks, (app, st.value), _int(got[pos]))
            pos += 1
        h = got[pos]
        pos += 1
        if isinstance(h, dict):
            _aggregates(snap, app, h)
    delivered: list[tuple[Keys, str, str]] = []  # (partition, stream name, last delivered id)
    for k, name in streams:
        groups = got[pos]
        pos += 1
        app, prio = parse_stream_name(name)
        key = (app, str(prio))
        g = next((g for g in groups if g["name"] == GROUP), None) if isinstance(groups, list) else None
        _add(snap.pending, key, int(g["pending"]) if g else 0)
        lag = g.get("lag") if g else None
        _add(snap.lag, key, int(lag) if lag is not None else 0)
        snap.oldest_age.setdefault(key, 0.0)
        if g:
            delivered.append((k, name, g["last-delivered-id"]))
    for _, eid in live:
        app = got[pos]
        pos += 1
        snap.executors.setdefault(app if isinstance(app, str) else "", set()).add(eid)

    # 3: the oldest entry of each stream past the group's last delivered one
    if delivered:
        pipe = r.pipeline(transaction=False)
        for k, name, last in delivered:
            pipe.xrange(k.stream_of(name), f"({last}", "+", count=1)
        for (_, name, _), rows in zip(delivered, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(rows, list) and rows:
                app, prio = parse_stream_name(name)
                age = max(0.0, now - int(rows[0][0].split("-")[0]) / 1000)
                key = (app, str(prio))
                snap.oldest_age[key] = max(snap.oldest_age[key], age)
    return snap


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int | str) else 0


def _aggregates(snap: Snapshot, app: str, h: dict[str, str]) -> None:
    """Folds one `Keys.metrics` hash into the snapshot; fields it does not know are ignored."""
    for f, v in h.items():
        try:
            kind, _, rest = f.partition("|")
            if kind == "d":
                le, outcome, method = rest.split("|", 2)
                hist = snap.stages.setdefault((app, method, outcome), Histogram())
                hist.add_bucket(le, int(v))
            elif kind == "s":
                outcome, method = rest.split("|", 1)
                snap.stages.setdefault((app, method, outcome), Histogram()).sum += float(v)
            elif kind == "retries":
                _add(snap.retries, app, int(v))
            elif kind == "f":
                _add(snap.failures, (app, rest), int(v))
            elif kind == "created":
                _add(snap.created, app, int(v))
            elif kind == "e":
                _add(snap.ended, (app, rest), int(v))
        except ValueError:
            continue  # a malformed field must not fail the scrape


class SnapshotCollector(Collector):
    """Yields the metric families of one Snapshot (no I/O: collect() is synchronous)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        tasks = GaugeMetricFamily("stagewise_tasks", "Tasks by app and status.", labels=["app", "status"])
        for (app, status), n in sorted(s.tasks.items()):
            tasks.add_metric([app, status], n)
        yield tasks

        q = ["app", "priority"]
        pending = GaugeMetricFamily(
            "stagewise_queue_pending", "Stream entries delivered to an executor, not yet claimed.", labels=q
        )
        lag = GaugeMetricFamily("stagewise_queue_lag", "Stream entries not yet delivered.", labels=q)
        age = GaugeMetricFamily(
            "stagewise_queue_oldest_age_seconds",
            "Age of the oldest stream entry not yet delivered (0 when there is none).",
            labels=q,
        )
        for key in sorted(s.pending):
            pending.add_metric(list(key), s.pending[key])
            lag.add_metric(list(key), s.lag.get(key, 0))
            age.add_metric(list(key), s.oldest_age.get(key, 0.0))
        yield pending
        yield lag
        yield age

        yield GaugeMetricFamily(
            "stagewise_due_entries",
            "Entries of the due sorted sets (timers, retries, run_at).",
            s.due_entries,
        )
        yield GaugeMetricFamily(
            "stagewise_due_overdue", "Due entries whose time has come, not yet acted on.", s.due_overdue
        )
        yield GaugeMetricFamily(
            "stagewise_due_lag_seconds",
            "How late the oldest overdue due entry is (scheduler lag).",
            s.due_lag,
        )

        ex = GaugeMetricFamily(
            "stagewise_executors", "Executors whose last ping is within dead_after.", labels=["app"]
        )
        for app, ids in sorted(s.executors.items()):
            ex.add_metric([app], len(ids))
        yield ex

        hist = HistogramMetricFamily(
            "stagewise_stage_duration_seconds",
            "Duration of stage attempts, from claim or previous commit to commit or failure.",
            labels=["app", "method", "outcome"],
        )
        for (app, method, outcome), h in sorted(s.stages.items()):
            hist.add_metric([app, method, outcome], h.cumulative(), h.sum)
        yield hist

        yield _counter(
            "stagewise_retries", "Failed stage attempts that were scheduled for a retry.", ["app"], s.retries
        )
        yield _counter(
            "stagewise_failures", "Tasks that ended FAILED, by error code.", ["app", "code"], s.failures
        )
        yield _counter("stagewise_tasks_created", "Tasks stored.", ["app"], s.created)
        yield _counter(
            "stagewise_tasks_ended", "Runs that ended, by final status.", ["app", "status"], s.ended
        )

        info = InfoMetricFamily("stagewise_build", "The manager's version.")
        info.add_metric([], {"version": stagewise.__version__})
        yield info


def _counter(name: str, doc: str, labels: list[str], values: dict[Any, int]) -> CounterMetricFamily:
    """A counter family of `values`, keyed by a label value or a tuple of them, in label order."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family


def render(snap: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)


def metrics_handler(store: Store) -> Any:
    """The aiohttp handler of GET /metrics."""
    log = slog.get(role="metrics")

    async def handler(request: web.Request) -> web.Response:
        try:
            snap = await gather(store)
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is None:
                raise
            log.warning("scrape_failed", reason=reason, error=describe(e))
            return web.Response(
                status=503, text=f"redis unavailable: {reason}\n", headers={"Retry-After": "1"}
            )
        return web.Response(body=render(snap), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler
