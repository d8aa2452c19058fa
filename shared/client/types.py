"""The shapes of the client's arguments and results.

Results are the decoded JSON of the manager's replies; these TypedDicts only document their keys
(nothing is checked at run time).  `Filters` is the one definition of the task filters that
`list`, `list_all` and the batch operations take as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, TypedDict

OnConflict = Literal["error", "ignore", "replace"]
Sort = Literal["desc", "asc"]
RestartFrom = Literal["first", "current"]
Since = float | int | str | datetime


class Filters(TypedDict, total=False):
    """The task filters (SPEC §7, tasks.list): a task must match every one given."""

    status: str | None
    app: str | None
    tags: Sequence[str] | None  # all must match
    group: str | None
    since: Since | None  # updated since: UNIX seconds, a datetime or an ISO 8601 string
    cleaned: bool | None
    parent: str | None  # children of this task (fan-out)


class TaskView(TypedDict, total=False):
    """tasks.get / tasks.create / tasks.send / tasks.list items: the task document plus its state."""

    id: str
    app: str
    commands: list[dict[str, Any]]
    kws: dict[str, Any]
    tags: list[str]
    group: str | None
    description: str | None
    meta: dict[str, Any]
    run_at: float | None
    cron: str | None
    tz: str
    priority: int
    max_exec_timeout: float
    max_retries: int
    retry_backoff: float
    restart_policy: str
    next_task: str | None
    notify: bool
    system: bool
    enabled: bool
    status: str
    stage: int
    stages: int
    results: list[Any]  # only when include_results
    job_id: str | None
    attempt: int
    retries: int
    executor_id: str | None
    created: float | None
    updated: float | None
    queued_at: float | None
    next_run: float | None
    wait_deadline: float | None
    exec_deadline: float | None
    exit_code: int | None
    error: dict[str, Any] | None  # {code, message, stage, type?}
    cleaned: bool
    locked: bool
    # flow control (SPEC §2a)
    limits: list[dict[str, Any]]
    debounce: dict[str, Any] | None  # {key, period, max_wait?}
    blocked_by: str | None  # the limit key holding a QUEUED task back
    # fan-out (SPEC §3a)
    parent: ParentRef | None  # a child's parent run
    children: ChildrenProgress | None  # tasks.get of a parent: its latest children stage


class ParentRef(TypedDict):
    """TaskView.parent: the parent run that started a child."""

    id: str
    stage: int
    job_id: str | None


class ChildrenProgress(TypedDict):
    """TaskView.children (tasks.get): a parent's latest children stage."""

    stage: int
    total: int
    ended: int  # counted in the join
    on_failure: str
    by_status: dict[str, int]
    ids: list[str]


class TaskStatus(TypedDict):
    """tasks.status"""

    id: str
    status: str
    stage: int
    stages: int
    http_code: int


class TaskPage(TypedDict):
    """tasks.list"""

    items: list[TaskView]
    next_cursor: str | None


class BatchResult(TypedDict):
    """One item of tasks.cancel / unlock / restart / delete / clean."""

    id: str
    status: str | None
    changed: bool
    error: str | None


class Attempt(TypedDict, total=False):
    """tasks.attempts"""

    job_id: str
    stage: int
    executor_id: str | None
    started: float | None
    ended: float | None
    outcome: str
    error: dict[str, Any] | None


class CreateManyResult(TypedDict):
    group: str
    ids: list[str]


class GroupInfo(TypedDict):
    group: str
    total: int
    by_status: dict[str, int]


class ExecutorInfo(TypedDict, total=False):
    id: str
    app: str
    host: str
    pid: int
    started: float
    last_ping: float
    running: int


class Notification(TypedDict, total=False):
    id: str
    task_id: str
    job_id: str
    status: str
    created: float
    error: dict[str, Any] | None


class AckResult(TypedDict):
    acked: int


class AppInfo(TypedDict):
    """apps.list: one app's work at a glance."""

    app: str
    queued: int
    running: int
    waiting: int
    failed_last_hour: int
    paused_until: float | None
    executors: int  # live: pinged within dead_after
    lag: float | None  # seconds since the oldest QUEUED task was queued


class AppPause(TypedDict):
    """apps.pause / apps.resume"""

    app: str
    paused_until: float | None


class LimitInfo(TypedDict):
    """limits.get: a limit key's tasks RUNNING under it and held back by it, and its pause."""

    key: str
    running: int
    held: int
    paused_until: float | None


class LimitSeen(LimitInfo):
    """limits.list: a limit key as limits.get has it, and when a task last asked it for a slot."""

    seen: float


class LimitPause(TypedDict):
    """limits.pause / limits.resume"""

    key: str
    paused_until: float | None


class SystemInfo(TypedDict):
    version: str
    redis_version: str
    namespace: str
    partitions: int
