"""The daemons' log: JSON lines on stdout, configured once per process.

Call sites bind task id, job id, stage and app (``log.get(task_id=...).info("event", key=value)``),
so every line about a task can be found by grepping its id.  A line is one JSON object, its keys
in this order: the bound fields, the call's keyword fields, ``event``, ``role`` (the daemon's, set
by `configure`; a bound ``role`` wins), ``level``, ``timestamp`` (ISO 8601, UTC, ``Z``) and, for
`Logger.exception` or ``exc_info=``, ``exception`` (the formatted traceback).  A value JSON cannot
hold is written as its ``repr``.

This is the whole logger, rather than structlog: structlog's package imports its console
renderers, stdlib bridges and typing helpers (106 modules, ~5 MB of RSS and ~25 ms of start-up
for the executor), and the one processor chain the daemons ever used fits in `_emit`.  The lines
are the ones that chain wrote (merge the role, add the level, the timestamp, format exc_info,
json.dumps with a repr fallback).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

# STAGEWISE_LOG_LEVEL's names, any case (those of the logging module; an unknown name means info)
LEVELS = {
    "notset": 0,
    "debug": 10,
    "info": 20,
    "warn": 30,
    "warning": 30,
    "error": 40,
    "fatal": 50,
    "critical": 50,
}

# Before `configure` (a library user, a test driving manager parts in-process) nothing is filtered
# and lines go to whatever sys.stdout is at the time, as an unconfigured logger always did.
_min_level = 0
_out: IO[str] | None = None
_role: str | None = None
_done = False
# One line is one write: handlers run in threads too (sync stages), and their lines must not interleave.
_lock = threading.Lock()
# `capture` collects event dicts here instead of writing lines (tests).
_captured: list[dict[str, Any]] | None = None


def configure(level: str = "info", role: str = "") -> None:
    """The level (an unknown name means info) and the daemon's role, for the whole process; the
    first call wins (a daemon configures before it imports the app, which might call it again)."""
    global _done, _min_level, _out, _role
    if _done:
        return
    _done = True
    _min_level = LEVELS.get(level.lower(), LEVELS["info"])
    _out = sys.stdout
    _role = role or None


def get(**bound: Any) -> Logger:
    return Logger(bound)


def _fallback(obj: Any) -> Any:
    return repr(obj)


# One encoder for every line: json.dumps(d, default=...) builds a new one per call (about a
# fifth of a line's cost); the settings are json.dumps's own defaults, so the text is the same.
_encode = json.JSONEncoder(default=_fallback).encode


def _exc_info(v: Any) -> Any:
    """``exc_info=`` as an (type, value, traceback) triple: an exception, a triple, or anything
    true for the one being handled; None when there is none."""
    if isinstance(v, BaseException):
        return (type(v), v, v.__traceback__)
    if isinstance(v, tuple) and len(v) == 3 and isinstance(v[1], BaseException):
        return v
    if v:
        info = sys.exc_info()
        return None if info[1] is None else info
    return None


def _emit(level: str, context: dict[str, Any], event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    if args:  # printf-style arguments, a single mapping for %(name)s
        event = event % (args[0] if len(args) == 1 and isinstance(args[0], dict) and args[0] else args)
    d = {**context, **kw} if context else kw
    d["event"] = event
    if _captured is not None:
        d["log_level"] = level
        _captured.append(d)
        return
    if _role is not None:
        d.setdefault("role", _role)
    d["level"] = level
    d["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
    if "exc_info" in d:
        info = _exc_info(d.pop("exc_info"))
        if info is not None:
            import traceback  # only when there is a traceback to write

            d["exception"] = "".join(traceback.format_exception(*info)).removesuffix("\n")
    line = _encode(d) + "\n"
    out = _out or sys.stdout
    with _lock:
        out.write(line)
        out.flush()


def _at(level: str) -> Callable[..., None]:
    """The Logger method of one level: it returns before building anything when the level is
    below the configured one (and no test captures)."""
    n = LEVELS[level]

    def method(self: Logger, event: str, *args: Any, **kw: Any) -> None:
        if _min_level <= n or _captured is not None:
            _emit(level, self._context, event, args, kw)

    method.__name__ = level
    return method


class Logger:
    """Fields bound once (``bind``), a method per level; a call below the configured level returns
    before building anything."""

    __slots__ = ("_context",)

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context

    def bind(self, **fields: Any) -> Logger:
        return Logger({**self._context, **fields})

    debug = _at("debug")
    info = _at("info")
    warning = _at("warning")
    error = _at("error")
    critical = _at("critical")

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        """An error line with the exception being handled (or ``exc_info=``) as ``exception``."""
        kw.setdefault("exc_info", True)
        self.error(event, *args, **kw)

    warn = warning
    msg = info


@contextmanager
def capture() -> Iterator[list[dict[str, Any]]]:
    """Collect every event (any level) as a dict instead of writing it: the bound and keyword
    fields, ``event``, ``log_level``, and ``exc_info`` as given.  For tests."""
    global _captured
    saved, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = saved
