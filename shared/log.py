"""structlog, configured once per process: JSON lines on stdout.

Call sites bind task id, job id, stage and app (``log.bind(task_id=..., job_id=...)``), so
every line about a task can be found by grepping its id.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


def _import_structlog() -> Any:
    """structlog, imported with `rich` hidden.  structlog loads rich, when it is installed,
    for console renderers and pretty tracebacks that these JSON lines never use; the CLI
    needs rich for its tables, but in a daemon it cost ~5 MB of RSS and ~50 ms of start-up
    (rich with pygments and attrs).  A None entry in sys.modules makes `import rich` fail
    inside structlog, which then goes without it; the entry is removed right after, so
    the CLI's own `import rich` works as usual."""
    hide = "rich" not in sys.modules
    if hide:
        sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog as module
    finally:
        if hide:
            del sys.modules["rich"]
    return module


structlog = _import_structlog()
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
