"""Pure scheduling policy: no I/O, ``now`` and randomness passed in, tested with tables."""

from __future__ import annotations

import random
from datetime import UTC, datetime

# croniter is imported where cron is used (the manager, validation), not at module load:
# the executor needs only next_retry_delay, and croniter with dateutil costs it ~5 MB.

MAX_RETRY_DELAY = 3600.0
JITTER = 0.2


def next_retry_delay(retry: int, backoff: float, rand: float | None = None) -> float:
    """Delay before retry number ``retry`` (1-based): backoff x 2^(retry-1), jittered by
    +-20 % and capped at an hour (SPEC §2).  ``rand`` in [0, 1) replaces the random draw."""
    if rand is None:
        rand = random.random()
    base = backoff * 2 ** max(retry - 1, 0)
    return min(max(base * (1 - JITTER + 2 * JITTER * rand), 0.0), MAX_RETRY_DELAY)


def retry_delay(
    retries: int, max_retries: int, backoff: float, final: bool = False, rand: float | None = None
) -> float | None:
    """The retry decision for a failed attempt: the delay before the next try, or None when
    the run fails now (no retries left, or `final`: the run's time budget is spent).
    `retries` counts the retries made so far in this run."""
    if final or retries >= max_retries:
        return None
    return next_retry_delay(retries + 1, backoff, rand)


def cron_valid(expr: str) -> bool:
    from croniter import croniter

    return len(expr.split()) == 5 and croniter.is_valid(expr)


def next_cron(expr: str, tz: str, after: float) -> float:
    """The first fire time of ``expr`` in zone ``tz`` strictly after ``after`` (UNIX s).
    Computed from the previous scheduled fire, not from the clock, so fires never drift."""
    from zoneinfo import ZoneInfo  # here, like croniter: the executor imports this module, never calls it

    from croniter import croniter

    start = datetime.fromtimestamp(after, UTC).astimezone(ZoneInfo(tz))
    return float(croniter(expr, start).get_next(float))


def catch_up_cron(expr: str, tz: str, last_queued: float, now: float) -> float:
    """When a cron task that was queued at `last_queued` runs next: the first fire after it.
    If that fire has passed already (the run outlasted the period, or the manager was down),
    it is due now, once: every fire missed in between collapses into that one run, because
    the run after it counts from its own queueing time."""
    nxt = next_cron(expr, tz, last_queued)
    return nxt if nxt > now else now
