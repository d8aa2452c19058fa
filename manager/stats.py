"""The last hour, minute by minute, for the dashboard's home page (`stats.history`).

The exact counters (tasks created and ended, stage duration histograms) are cumulative in
the metrics hashes the scripts write; queue depth and lag are gauges.  Once a minute (the
`stats` role of the scheduler) a manager samples them into one hash, `{ns:0}:stats`, field
= the minute, value = a JSON snapshot; HSETNX makes the first manager of a minute the only
writer, and fields older than an hour are dropped.  `history` turns consecutive samples into
per-minute series: throughput and failures (counter deltas), queue depth and lag per app
(the gauges), stage duration p50 / p95 per method (quantiles of the histogram deltas).
"""

from __future__ import annotations

import json
import math
from typing import Any

from stagewise.keys import DURATION_BUCKETS
from stagewise.manager.metrics import gather
from stagewise.manager.store import Store
from stagewise.status import Status

WINDOW = 3600.0  # s of history kept and shown


def _key(store: Store) -> str:
    return store.parts[0].stats()


async def sample(store: Store, now: float) -> bool:
    """Stores this minute's snapshot unless another manager did; True when this one did."""
    every = store.settings.stats_every
    minute = int(now // every * every)
    snap = await gather(store)
    apps = {row["app"]: row for row in await store.apps(now)}
    doc: dict[str, Any] = {"t": minute, "apps": {}, "methods": {}}
    for app, row in apps.items():
        doc["apps"][app] = {
            "queued": row["queued"],
            "lag": row["lag"],
            "created": snap.created.get(app, 0),
            "finished": snap.ended.get((app, Status.FINISHED.value), 0),
            "failed": snap.ended.get((app, Status.FAILED.value), 0),
        }
    for (app, method, outcome), hist in snap.stages.items():
        if outcome == "ok":
            doc["methods"][f"{app}|{method}"] = hist.counts
    if not doc["apps"]:  # a namespace with no work yet: nothing to show, nothing written
        return False
    key = _key(store)
    written = bool(await store.r.hsetnx(key, str(minute), json.dumps(doc, separators=(",", ":"))))
    old = [f for f in await store.r.hkeys(key) if int(f) < now - WINDOW - every]
    if old:
        await store.r.hdel(key, *old)
    return written


def _delta(new: int, old: int) -> int:
    return max(new - old, 0)  # a counter that went back (Redis lost data): no negative rate


def _quantile(counts: list[int], q: float) -> float | None:
    """The upper bound of the bucket where the q-quantile of `counts` (per DURATION_BUCKETS,
    then +Inf) falls; None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    seen = 0
    for bound, n in zip((*DURATION_BUCKETS, math.inf), counts, strict=False):
        seen += n
        if seen >= q * total:
            return None if bound == math.inf else bound
    return None


async def history(store: Store) -> dict[str, Any]:
    """Per-minute series of the last hour: {t: [minute...], finished/failed/created: {app:
    [n per minute]}, queued/lag: {app: [...]}, p50/p95: {"app|method": [s or null]}}.  The
    rates need two samples: the first minute kept only anchors them."""
    raw = await store.r.hgetall(_key(store))
    samples = [json.loads(v) for _, v in sorted(raw.items(), key=lambda kv: int(kv[0]))]
    out: dict[str, Any] = {"every": store.settings.stats_every, "t": [], "created": {}, "finished": {},
                           "failed": {}, "queued": {}, "lag": {}, "p50": {}, "p95": {}}  # fmt: skip
    apps = sorted({a for s in samples for a in s["apps"]})
    methods = sorted({m for s in samples for m in s["methods"]})
    for prev, cur in zip(samples, samples[1:], strict=False):
        out["t"].append(cur["t"])
        for app in apps:
            a, b = prev["apps"].get(app, {}), cur["apps"].get(app, {})
            for name in ("created", "finished", "failed"):
                out[name].setdefault(app, []).append(_delta(b.get(name, 0), a.get(name, 0)))
            out["queued"].setdefault(app, []).append(b.get("queued"))
            out["lag"].setdefault(app, []).append(b.get("lag"))
        for m in methods:
            a_counts = prev["methods"].get(m) or [0] * (len(DURATION_BUCKETS) + 1)
            b_counts = cur["methods"].get(m) or a_counts
            counts = [_delta(y, x) for x, y in zip(a_counts, b_counts, strict=False)]
            out["p50"].setdefault(m, []).append(_quantile(counts, 0.5))
            out["p95"].setdefault(m, []).append(_quantile(counts, 0.95))
    return out
