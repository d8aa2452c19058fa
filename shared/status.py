"""Task statuses and the transition table of SPEC §6, kept as data.

The Lua scripts enforce the same table (each script checks the one `from` status it
accepts); this module is what Python code and the tests read.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    IDLE = "IDLE"  # not yet queued for this run
    QUEUED = "QUEUED"  # an entry for it is on the app stream
    RUNNING = "RUNNING"  # leased by an executor
    WAITING = "WAITING"  # timer, message or children stage
    SUSPENDED = "SUSPENDED"  # interrupted, will be re-queued
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


TERMINAL: frozenset[Status] = frozenset({Status.FINISHED, Status.FAILED, Status.CANCELED})
ACTIVE: frozenset[Status] = frozenset(Status) - TERMINAL

# Statuses without a status index (Keys.idx_status, Keys.idx_app_status).  The RUNNING tasks of
# a partition are exactly the members of its deadlines zset, which claim.lua and commit.lua write
# anyway; an index of them as well cost every run two inserts into small sorted sets, whose
# compact encoding parses every score on an insert, and two removals: about a sixth of Redis's
# work per task (bench/PROFILE.md).  tasks.list, apps.list and /metrics read them from there.
UNINDEXED: frozenset[Status] = frozenset({Status.RUNNING})

# (from, to) -> what causes it.  Anything not listed is refused with INVALID_TRANSITION.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (Status.IDLE, Status.QUEUED): "due (now >= run_at / next cron fire)",
    (Status.QUEUED, Status.RUNNING): "an executor claims it",
    (Status.RUNNING, Status.RUNNING): "stage committed, next stage starts",
    (Status.RUNNING, Status.WAITING): "timer, message or children stage reached",
    (Status.RUNNING, Status.FINISHED): "last stage committed",
    (Status.RUNNING, Status.SUSPENDED): "executor dead or stopping, unlock, retry pending",
    (Status.RUNNING, Status.FAILED): "failed attempt without retries left, execution deadline",
    (
        Status.WAITING,
        Status.QUEUED,
    ): "timer due, message received, message timeout (continue), children joined",
    (
        Status.WAITING,
        Status.FAILED,
    ): "message timeout (fail), a child failed (CHILD_FAILED), children not startable",
    (Status.WAITING, Status.FINISHED): "the timer, message or children of the last stage resolved",
    (Status.SUSPENDED, Status.QUEUED): "due",
    # a run due at a timer or message stage waits (or passes messages already sent) at once,
    # where an executor would only have handed it on (wake.lua, restart.lua)
    (Status.IDLE, Status.WAITING): "due at a timer or message stage",
    (Status.SUSPENDED, Status.WAITING): "retry due at a timer or message stage",
    (Status.IDLE, Status.FINISHED): "due with only messages already sent left",
    (Status.SUSPENDED, Status.FINISHED): "retry due with only messages already sent left",
    (Status.QUEUED, Status.SUSPENDED): "lost delivery detected",
    **{(s, Status.CANCELED): "tasks.cancel" for s in ACTIVE},
    **{(s, Status.IDLE): "restart, cron's next fire, next_task chaining" for s in TERMINAL},
}


def allowed(src: Status, dst: Status) -> bool:
    return (src, dst) in TRANSITIONS


# HTTP code of GET /tasks/{id}/status (SPEC §8).
HTTP_CODE: dict[Status, int] = {
    **{s: 202 for s in ACTIVE},
    Status.FINISHED: 201,
    Status.FAILED: 500,
    Status.CANCELED: 410,
}
