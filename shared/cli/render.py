"""What the client commands print: rich tables and panels, or raw JSON with ``--json``.

rich is imported inside the functions that draw, so a command that fails early (or prints JSON)
does not pay for it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from stagewise.status import TERMINAL, Status

STATUS_STYLE: dict[str, str] = {
    Status.IDLE: "dim",
    Status.QUEUED: "blue",
    Status.RUNNING: "cyan",
    Status.WAITING: "magenta",
    Status.SUSPENDED: "yellow",
    Status.FINISHED: "green",
    Status.FAILED: "bold red",
    Status.CANCELED: "yellow",
}


class Out:
    """Where results go: rich renderables, or raw JSON with --json."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console

        self.as_json = as_json
        wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
        # Piped output is not cut at 80 columns: scripts and tests see whole ids.
        self.console = Console(highlight=False, width=200 if wide else None)

    def json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def print(self, *things: Any) -> None:
        self.console.print(*things)


def text(value: Any, style: str = "") -> Any:
    from rich.text import Text

    return Text("" if value is None else str(value), style=style)


def status_text(status: Any) -> Any:
    return text(status or "-", STATUS_STYLE.get(str(status), ""))


def age(ts: Any, now: float | None = None) -> str:
    if not isinstance(ts, int | float):
        return "-"
    d = (time.time() if now is None else now) - ts
    future = d < 0
    d = abs(d)
    if d < 60:
        s = f"{d:.0f}s"
    elif d < 3600:
        s = f"{d / 60:.0f}m"
    elif d < 86400:
        s = f"{d / 3600:.1f}h"
    else:
        s = f"{d / 86400:.1f}d"
    return f"in {s}" if future else f"{s} ago"


def clock(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def short_json(value: Any, limit: int = 100) -> str:
    s = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def error_text(err: Any) -> str:
    if not err:
        return ""
    if isinstance(err, dict):
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    return str(err)


def command_summary(cmd: Any) -> str:
    if not isinstance(cmd, dict):
        return "?"
    if "method" in cmd:
        extra = " (if)" if cmd.get("if") is not None else ""
        return f"{cmd['method']}{extra}"
    if "timer" in cmd:
        return f"timer {cmd['timer']}s"
    if "message" in cmd:
        t = (cmd.get("message") or {}).get("timeout")
        return "message" + (f" (timeout {t}s)" if t else "")
    return "?"


def table(*columns: str, ids: Sequence[str] = ()) -> Any:
    from rich.table import Table

    t = Table(header_style="bold", show_edge=False, pad_edge=False)
    for name in columns:
        if name in ("ID", "TASK"):  # ids are never cut or wrapped
            width = max((len(i) for i in ids), default=2)
            t.add_column(name, no_wrap=True, min_width=max(width, len(name)))
        else:
            t.add_column(name, overflow="fold")
    return t


def kv(rows: Sequence[tuple[str, Any]]) -> Any:
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, v if hasattr(v, "__rich_console__") else text(v))
    return t


def task_table(items: Sequence[dict[str, Any]]) -> Any:
    """One row per task view (`task list`, `create`, `send`)."""
    t = table("ID", "APP", "STATUS", "STAGE", "UPDATED", "ERROR", ids=[str(v.get("id")) for v in items])
    now = time.time()
    for v in items:
        err = v.get("error")
        t.add_row(
            text(v.get("id")),
            text(v.get("app")),
            status_text(v.get("status")),
            text(f"{v.get('stage')}/{v.get('stages')}"),
            text(age(v.get("updated"), now)),
            text(err.get("code") if isinstance(err, dict) else err, "red"),
        )
    return t


def batch_table(results: Sequence[dict[str, Any]], dry_run: bool) -> Any:
    t = table("ID", "STATUS", "CHANGED", "ERROR", ids=[str(r.get("id")) for r in results])
    for r in results:
        changed = bool(r.get("changed"))
        t.add_row(
            text(r.get("id")),
            status_text(r.get("status")),
            text(("would change" if dry_run else "yes") if changed else "no", "bold" if changed else "dim"),
            text(r.get("error"), "red"),
        )
    return t


def task_details(v: dict[str, Any]) -> Any:
    """`task get`: the task's fields, then one row per stage with its result or state."""
    from rich.console import Group

    rows: list[tuple[str, Any]] = [
        ("id", v.get("id")),
        ("app", v.get("app")),
        ("status", status_text(v.get("status"))),
        ("stage", f"{v.get('stage')}/{v.get('stages')}"),
        ("job", v.get("job_id") or "-"),
        ("attempt / retries", f"{v.get('attempt')} / {v.get('retries')} (max {v.get('max_retries')})"),
    ]
    for key in ("group", "description", "cron", "next_task", "executor_id"):
        if v.get(key):
            rows.append((key, v[key]))
    if v.get("tags"):
        rows.append(("tags", ", ".join(map(str, v["tags"]))))
    rows += [
        ("created", clock(v.get("created"))),
        ("updated", f"{clock(v.get('updated'))} ({age(v.get('updated'))})"),
    ]
    for key in ("next_run", "wait_deadline", "exec_deadline"):
        if v.get(key):
            rows.append((key, f"{clock(v[key])} ({age(v[key])})"))
    if v.get("error"):
        rows.append(("error", text(error_text(v["error"]), "red")))
    if v.get("cleaned"):
        rows.append(("cleaned", "yes"))
    parts: list[Any] = [kv(rows), text("")]
    commands = v.get("commands") or []
    results = v.get("results")
    if commands:
        t = table("#", "COMMAND", "RESULT")
        stage = int(v.get("stage") or 0)
        for i, cmd in enumerate(commands):
            if results is not None and i < len(results):
                res = text(short_json(results[i]))
            elif i < stage:
                res = text("done", "dim")
            elif i == stage and v.get("status") not in TERMINAL:
                res = status_text(v.get("status"))
            elif i == stage and v.get("error"):
                res = text(error_text(v["error"]), "red")
            else:
                res = text("-", "dim")
            t.add_row(text(i), text(command_summary(cmd)), res)
        parts.append(t)
    tb = (v.get("error") or {}).get("traceback") if isinstance(v.get("error"), dict) else None
    if tb:
        parts += [
            text(""),
            text("traceback of the failed stage's handler:", "bold"),
            text(tb.rstrip(), "red"),
        ]
    return Group(*parts)


def seconds(d: float) -> str:
    """A duration as people read it: 12 ms, 3.4 s, 2m05s, 1h02m."""
    if d < 1:
        return f"{d * 1000:.0f} ms"
    if d < 60:
        return f"{d:.1f} s"
    if d < 3600:
        return f"{int(d // 60)}m{int(d % 60):02d}s"
    return f"{int(d // 3600)}h{int(d % 3600 // 60):02d}m"


def waiting_for(v: dict[str, Any], now: float | None = None) -> str:
    """What a WAITING task waits for, with the time left: a timer's countdown, or a message
    with the command that sends it (and its timeout); "" for a task that is not waiting."""
    if v.get("status") != "WAITING":
        return ""
    commands = v.get("commands") or []
    stage = int(v.get("stage") or 0)
    cmd = commands[stage] if stage < len(commands) else {}
    deadline = v.get("wait_deadline")
    left = (
        max(0.0, deadline - (time.time() if now is None else now))
        if isinstance(deadline, int | float)
        else None
    )
    if isinstance(cmd, dict) and "timer" in cmd:
        return f"timer: resumes in {seconds(left)}" if left is not None else "timer"
    hint = f"waiting for a message: stagewise task send {v.get('id')} '<JSON>'"
    if left is not None:
        on_timeout = (cmd.get("message") or {}).get("on_timeout", "continue") if isinstance(cmd, dict) else ""
        hint += f" (times out in {seconds(left)}, then {'fails' if on_timeout == 'fail' else 'goes on'})"
    return hint


def watch_panel(v: dict[str, Any]) -> Any:
    """`task watch`'s progress line: id, bar, stages done, status, error; under it, what a
    WAITING task waits for (a timer's countdown, or how to send the message)."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    stages = int(v.get("stages") or 0)
    done = stages if v.get("status") == "FINISHED" else min(int(v.get("stage") or 0), stages)
    t = Table.grid(padding=(0, 1))
    t.add_row(
        text(v.get("id"), "bold"),
        ProgressBar(total=max(stages, 1), completed=done, width=30),
        text(f"{done}/{stages}"),
        status_text(v.get("status")),
        text(error_text(v.get("error")), "red"),
    )
    waiting = waiting_for(v)
    if waiting:
        t.add_row(text(""), text(waiting, "cyan"))
    return t


def apps_table(rows: Sequence[dict[str, Any]]) -> Any:
    """`stagewise apps`: one line per app; a warning under an app that has queued work and no
    live executor."""
    from rich.console import Group

    if not rows:
        return text("no apps yet: none has had a task", "dim")
    t = table("APP", "QUEUED", "RUNNING", "WAITING", "FAILED 1H", "LAG", "EXECUTORS", "PAUSED")
    stranded = []
    for r in rows:
        lag = r.get("lag")
        paused = r.get("paused_until")
        t.add_row(
            text(r.get("app"), "bold"),
            text(r.get("queued")),
            text(r.get("running")),
            text(r.get("waiting")),
            text(r.get("failed_last_hour"), "red" if r.get("failed_last_hour") else ""),
            text(seconds(lag) if isinstance(lag, int | float) else "-"),
            text(r.get("executors"), "red" if not r.get("executors") else ""),
            text(f"until {clock(paused)}" if paused else "-"),
        )
        if r.get("queued") and not r.get("executors"):
            stranded.append(r.get("app"))
    if not stranded:
        return t
    notes = [text(f"{app}: queued work and no live executor (start: stagewise executor MODULE:APP)", "yellow")
             for app in stranded]  # fmt: skip
    return Group(t, *notes)
