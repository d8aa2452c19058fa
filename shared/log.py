"""structlog, configured once per process: JSON lines on stdout.

Call sites bind task id, job id, stage and app (``log.bind(task_id=..., job_id=...)``), so
every line about a task can be found by grepping its id.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_done = False


def configure(level: str = "info", role: str = "") -> None:
    global _done
    if _done:
        return
    _done = True
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    if role:
        structlog.contextvars.bind_contextvars(role=role)


def get(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)
