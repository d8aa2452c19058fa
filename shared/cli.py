"""``stagewise``: the command line.  ``stagewise manager`` and ``stagewise executor MODULE:APP``
run the daemons (SPEC §9); the other commands (``task ...``, ``executors``, ``group``,
``notifications``, ``info``) talk to a manager through `stagewise.client`.

Client commands take ``--url`` (default: $STAGEWISE_URL, else ``http://`` + STAGEWISE_HTTP),
``--token`` (default: $STAGEWISE_API_TOKEN, else the first of STAGEWISE_API_TOKENS) and ``--json``
(print the raw JSON result instead of tables), before or after the command name.  An error prints
one line (``error 1001 TASK_NOT_FOUND: ...``) to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stagewise import config, log


def _daemon(args: argparse.Namespace) -> None:
    """`stagewise manager` / `stagewise executor`: each daemon launches itself from its own
    package; here only the configuration and logging that every command shares."""
    try:
        settings = config.load(args.config)
    except (config.ConfigError, OSError) as e:
        raise SystemExit(f"stagewise: configuration error: {e}") from None
    log.configure(settings.log_level, role=args.cmd)
    # Imported here, not at the top: the client commands never load a daemon.
    if args.cmd == "manager":
        from stagewise.manager.main import run as run_manager

        run_manager(settings, insecure=args.insecure)
    else:
        if args.concurrency < 1:
            raise SystemExit("stagewise: --concurrency must be >= 1")
        from stagewise.executor.main import run as run_executor

        run_executor(args.app, args.concurrency, settings)


# --------------------------------------------------------------------------- argument parsing

STATUSES = ("IDLE", "QUEUED", "RUNNING", "WAITING", "SUSPENDED", "FINISHED", "FAILED", "CANCELED")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``15m``, ``2h``, ``7d`` or ``1w``."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 15m, 2h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def since(text: str) -> float | str:
    """``--since``: UNIX seconds (``1718000000``), an age (``15m``, ``2h``, ``7d``: that long ago) or
    an ISO 8601 time (passed to the server as is)."""
    try:
        return float(text)
    except ValueError:
        pass
    m = _DURATION.match(text)
    if m and m.group(2):
        return time.time() - duration(text)
    return text


def _status(text: str) -> str:
    s = text.upper()
    if s not in STATUSES:
        raise argparse.ArgumentTypeError(f"unknown status {text!r} (one of {', '.join(STATUSES)})")
    return s


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagewise", description="durable multi-stage tasks over Redis Streams")
    p.add_argument("--config", help="TOML file with the STAGEWISE_* settings")
    _client_options(p, argparse_default=False)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    mp = sub.add_parser("manager", help="run the manager daemon (JSON-RPC + scheduler)")
    mp.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without STAGEWISE_API_TOKENS",
    )
    ex = sub.add_parser("executor", help="run an executor daemon for one app")
    ex.add_argument("app", help="MODULE:APP, a stagewise.App instance")
    ex.add_argument("--concurrency", type=int, default=8)

    # Client options may also follow the command name: their sub-parser defaults are SUPPRESS, so a
    # value given before the command is not overwritten.
    common = argparse.ArgumentParser(add_help=False)
    _client_options(common, argparse_default=True)

    filters = argparse.ArgumentParser(add_help=False)
    g = filters.add_argument_group("filters")
    g.add_argument("--status", type=_status, help="a status (" + ", ".join(STATUSES) + ")")
    g.add_argument("--app", help="an app name")
    g.add_argument(
        "--tag", dest="tags", action="append", metavar="TAG", help="a tag (repeat: all must match)"
    )
    g.add_argument("--group", help="a group name")
    g.add_argument(
        "--since", type=since, help="updated since: UNIX seconds, an ISO 8601 time or an age (15m, 2h, 7d)"
    )
    g.add_argument(
        "--cleaned", action=argparse.BooleanOptionalAction, default=None, help="cleaned tasks only (or not)"
    )
    g.add_argument("--max", dest="max_results", type=int, metavar="N", help="at most N tasks (<= 1000)")

    task = sub.add_parser("task", help="create, inspect and operate on tasks")
    tsub = task.add_subparsers(dest="task_cmd", required=True, metavar="TASK_COMMAND")

    c = tsub.add_parser("create", parents=[common], help="create a task from a JSON file (- for stdin)")
    c.add_argument("file", metavar="FILE|-", help="a task document; a JSON list creates a group of tasks")
    c.add_argument("--on-conflict", choices=["error", "ignore", "replace"], help="when the id exists")
    c.add_argument("--group", help="group of a list of tasks (default: generated)")

    c = tsub.add_parser("get", parents=[common], help="a task's view and stage results")
    c.add_argument("id")
    c.add_argument("--no-results", dest="results", action="store_false", help="leave the results out")

    c = tsub.add_parser("status", parents=[common], help="a task's status")
    c.add_argument("id")

    c = tsub.add_parser("list", parents=[common, filters], help="list tasks (a table)")
    c.add_argument("--sort", choices=["desc", "asc"], help="by last update (default desc)")
    c.add_argument("--cursor", help="continue from a previous page's next cursor")
    c.add_argument("--all", action="store_true", help="follow cursors to the end (--max is the page size)")
    c.add_argument("--results", action="store_true", help="include results (shown with --json)")

    c = tsub.add_parser("watch", parents=[common], help="follow a task live until it ends")
    c.add_argument("id")
    c.add_argument("--interval", type=float, default=0.3, help="seconds between polls (default 0.3)")

    c = tsub.add_parser("send", parents=[common], help="send a message (JSON; - for stdin) to a task")
    c.add_argument("id")
    c.add_argument("data", metavar="JSON")

    c = tsub.add_parser("attempts", parents=[common], help="a task's attempts")
    c.add_argument("id")

    helps = {
        "cancel": "cancel tasks",
        "unlock": "force-release leases (RUNNING -> SUSPENDED)",
        "restart": "restart terminal tasks",
        "delete": "delete terminal tasks",
    }
    for name, text in helps.items():
        c = tsub.add_parser(name, parents=[common, filters], help=f"{text} (a dry run unless --yes)")
        c.add_argument("ids", nargs="*", metavar="ID", help="task ids (or select with the filters)")
        c.add_argument("--yes", action="store_true", help="apply (the default is a dry run)")
        if name == "restart":
            c.add_argument("--from", dest="from_", choices=["first", "current"], help="restart at this stage")

    c = tsub.add_parser(
        "clean", parents=[common], help="drop results of old terminal tasks (dry run unless --yes)"
    )
    c.add_argument("--older-than", type=duration, metavar="SECONDS", help="age (3600, 2h, 7d; default 7d)")
    c.add_argument("--yes", action="store_true", help="apply (the default is a dry run)")

    sub.add_parser("executors", parents=[common], help="the live executors")
    c = sub.add_parser("group", parents=[common], help="counts of a group's tasks by status")
    c.add_argument("name")
    c = sub.add_parser("notifications", parents=[common], help="list (or --ack) notifications")
    c.add_argument("--task", dest="task_id", help="of this task only")
    c.add_argument("--since", type=since, help="created since: UNIX seconds, ISO 8601 or an age (15m)")
    c.add_argument("--max", dest="max_results", type=int, metavar="N")
    c.add_argument("--ack", nargs="+", metavar="ID", help="acknowledge these notifications")
    sub.add_parser("info", parents=[common], help="manager and Redis versions, namespace")
    return p


def _client_options(p: argparse.ArgumentParser, argparse_default: bool) -> None:
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if argparse_default else {}
    p.add_argument(
        "--url", help="manager base URL (default $STAGEWISE_URL, else http://$STAGEWISE_HTTP)", **kw
    )
    p.add_argument(
        "--token", help="bearer token (default $STAGEWISE_API_TOKEN or STAGEWISE_API_TOKENS)", **kw
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON result", **kw)


def resolve(args: argparse.Namespace, env: dict[str, str] | None = None) -> tuple[str, str | None]:
    """(url, token) of the manager: options, then the environment, then the configuration."""
    env = dict(os.environ if env is None else env)
    url = args.url or env.get("STAGEWISE_URL") or None
    token = args.token or env.get("STAGEWISE_API_TOKEN") or None
    if url is None or token is None:
        settings = config.load(args.config, env)
        if url is None:
            host, port = settings.host, settings.port
            if host in ("", "0.0.0.0", "::", "[::]"):  # a listen-everywhere address: talk to localhost
                host = "127.0.0.1"
            url = f"http://{host}:{port}"
        if token is None and settings.api_tokens:
            token = settings.api_tokens[0]
    return url, token


# --------------------------------------------------------------------------- output

_STATUS_STYLE = {
    "IDLE": "dim",
    "QUEUED": "blue",
    "RUNNING": "cyan",
    "WAITING": "magenta",
    "SUSPENDED": "yellow",
    "FINISHED": "green",
    "FAILED": "bold red",
    "CANCELED": "yellow",
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


def _text(value: Any, style: str = "") -> Any:
    from rich.text import Text

    return Text("" if value is None else str(value), style=style)


def _status_text(status: Any) -> Any:
    return _text(status or "-", _STATUS_STYLE.get(str(status), ""))


def _age(ts: Any, now: float | None = None) -> str:
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


def _clock(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _short_json(value: Any, limit: int = 100) -> str:
    s = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _error_text(err: Any) -> str:
    if not err:
        return ""
    if isinstance(err, dict):
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    return str(err)


def _command_summary(cmd: Any) -> str:
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


def _table(*columns: str, ids: Sequence[str] = ()) -> Any:
    from rich.table import Table

    t = Table(header_style="bold", show_edge=False, pad_edge=False)
    for name in columns:
        if name in ("ID", "TASK"):  # ids are never cut or wrapped
            width = max((len(i) for i in ids), default=2)
            t.add_column(name, no_wrap=True, min_width=max(width, len(name)))
        else:
            t.add_column(name, overflow="fold")
    return t


def _kv(rows: Sequence[tuple[str, Any]]) -> Any:
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, v if hasattr(v, "__rich_console__") else _text(v))
    return t


def _task_table(items: Sequence[dict[str, Any]]) -> Any:
    t = _table("ID", "APP", "STATUS", "STAGE", "UPDATED", "ERROR", ids=[str(v.get("id")) for v in items])
    now = time.time()
    for v in items:
        err = v.get("error")
        t.add_row(
            _text(v.get("id")),
            _text(v.get("app")),
            _status_text(v.get("status")),
            _text(f"{v.get('stage')}/{v.get('stages')}"),
            _text(_age(v.get("updated"), now)),
            _text(err.get("code") if isinstance(err, dict) else err, "red"),
        )
    return t


def _batch_table(results: Sequence[dict[str, Any]], dry_run: bool) -> Any:
    t = _table("ID", "STATUS", "CHANGED", "ERROR", ids=[str(r.get("id")) for r in results])
    for r in results:
        changed = bool(r.get("changed"))
        t.add_row(
            _text(r.get("id")),
            _status_text(r.get("status")),
            _text(("would change" if dry_run else "yes") if changed else "no", "bold" if changed else "dim"),
            _text(r.get("error"), "red"),
        )
    return t


# --------------------------------------------------------------------------- commands

Handler = Callable[[Any, argparse.Namespace, Out], Awaitable[int]]


def _read_json(source: str, what: str) -> Any:
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise CliError(f"cannot read {what} {source!r}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise CliError(f"{what} {'(stdin)' if source == '-' else source!r} is not JSON: {e}") from None


class CliError(Exception):
    """A usage or input problem: printed as ``error: ...``, exit code 1."""


async def task_create(c: Any, a: argparse.Namespace, out: Out) -> int:
    doc = _read_json(a.file, "task file")
    if isinstance(doc, list):
        if a.on_conflict:
            raise CliError("--on-conflict applies to a single task, not to a list")
        many = await c.create_many(doc, group=a.group)
        if out.as_json:
            out.json(many)
        else:
            out.print(_text(f"created {len(many['ids'])} tasks in group {many['group']}"))
            for tid in many["ids"]:
                out.print(_text(tid))
        return 0
    if not isinstance(doc, dict):
        raise CliError("a task document must be a JSON object (or a list of them)")
    if a.group:
        doc = {**doc, "group": a.group}
    view = await c.create(doc, on_conflict=a.on_conflict)
    if out.as_json:
        out.json(view)
    else:
        out.print(_task_table([view]))
    return 0


def _task_details(v: dict[str, Any]) -> Any:
    from rich.console import Group

    rows: list[tuple[str, Any]] = [
        ("id", v.get("id")),
        ("app", v.get("app")),
        ("status", _status_text(v.get("status"))),
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
        ("created", _clock(v.get("created"))),
        ("updated", f"{_clock(v.get('updated'))} ({_age(v.get('updated'))})"),
    ]
    for key in ("next_run", "wait_deadline", "exec_deadline"):
        if v.get(key):
            rows.append((key, f"{_clock(v[key])} ({_age(v[key])})"))
    if v.get("error"):
        rows.append(("error", _text(_error_text(v["error"]), "red")))
    if v.get("cleaned"):
        rows.append(("cleaned", "yes"))
    parts: list[Any] = [_kv(rows), _text("")]
    commands = v.get("commands") or []
    results = v.get("results")
    if commands:
        t = _table("#", "COMMAND", "RESULT")
        stage = int(v.get("stage") or 0)
        for i, cmd in enumerate(commands):
            if results is not None and i < len(results):
                res = _text(_short_json(results[i]))
            elif i < stage:
                res = _text("done", "dim")
            elif i == stage and v.get("status") not in ("FINISHED", "FAILED", "CANCELED"):
                res = _status_text(v.get("status"))
            elif i == stage and v.get("error"):
                res = _text(_error_text(v["error"]), "red")
            else:
                res = _text("-", "dim")
            t.add_row(_text(i), _text(_command_summary(cmd)), res)
        parts.append(t)
    return Group(*parts)


async def task_get(c: Any, a: argparse.Namespace, out: Out) -> int:
    view = await c.get(a.id, include_results=a.results)
    if out.as_json:
        out.json(view)
    else:
        out.print(_task_details(view))
    return 0


async def task_status(c: Any, a: argparse.Namespace, out: Out) -> int:
    st = await c.status(a.id)
    if out.as_json:
        out.json(st)
    else:
        out.print(
            _kv(
                [
                    ("id", st["id"]),
                    ("status", _status_text(st["status"])),
                    ("stage", f"{st['stage']}/{st['stages']}"),
                ]
            )
        )
    return 0


def _filter_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(a, k) for k in ("status", "app", "tags", "group", "since", "cleaned")}


async def task_list(c: Any, a: argparse.Namespace, out: Out) -> int:
    kw = dict(_filter_kwargs(a), sort=a.sort, max_results=a.max_results, include_results=a.results or None)
    if a.all:
        items = [v async for v in c.list_all(cursor=a.cursor, **kw)]
        page: dict[str, Any] = {"items": items, "next_cursor": None}
    else:
        page = await c.list(cursor=a.cursor, **kw)
    if out.as_json:
        out.json(page)
        return 0
    out.print(_task_table(page["items"]))
    n = len(page["items"])
    more = f"; more with --cursor {page['next_cursor']}" if page.get("next_cursor") else ""
    out.print(_text(f"{n} task{'s' if n != 1 else ''}{more}", "dim"))
    return 0


async def task_send(c: Any, a: argparse.Namespace, out: Out) -> int:
    if a.data == "-":
        data = _read_json("-", "message")
    else:
        try:
            data = json.loads(a.data)
        except ValueError as e:
            raise CliError(f"the message is not JSON: {e} (quote strings: '\"text\"')") from None
    view = await c.send(a.id, data)
    if out.as_json:
        out.json(view)
    else:
        out.print(_task_table([view]))
    return 0


async def task_attempts(c: Any, a: argparse.Namespace, out: Out) -> int:
    rows = await c.attempts(a.id)
    if out.as_json:
        out.json(rows)
        return 0
    out.print(_text(f"attempts of {a.id}: {len(rows)}", "bold"))
    t = _table("JOB", "STAGE", "EXECUTOR", "STARTED", "TOOK", "OUTCOME", "ERROR")
    for r in rows:
        started, ended = r.get("started"), r.get("ended")
        took = (
            f"{ended - started:.3f}s"
            if isinstance(started, int | float) and isinstance(ended, int | float)
            else "-"
        )
        t.add_row(
            _text(r.get("job_id")),
            _text(r.get("stage")),
            _text(r.get("executor_id") or "-"),
            _text(_clock(started)),
            _text(took),
            _text(r.get("outcome"), "green" if r.get("outcome") == "ok" else "yellow"),
            _text(_error_text(r.get("error")), "red"),
        )
    out.print(t)
    return 0


def _batch_handler(method: str) -> Handler:
    async def run(c: Any, a: argparse.Namespace, out: Out) -> int:
        filters = _filter_kwargs(a)
        if not a.ids and all(v is None for v in filters.values()):
            raise CliError(
                f"task {method}: give task ids or at least one filter (--status, --app, --tag, ...)"
            )
        kw: dict[str, Any] = dict(filters, dry_run=not a.yes, max_results=a.max_results)
        if method == "restart":
            kw["from_"] = a.from_
        results = await getattr(c, method)(a.ids or None, **kw)
        _print_batch(out, results, dry_run=not a.yes)
        return 0

    return run


def _print_batch(out: Out, results: list[dict[str, Any]], dry_run: bool) -> None:
    if out.as_json:
        out.json(results)
        return
    out.print(_batch_table(results, dry_run))
    changed = sum(1 for r in results if r.get("changed"))
    if dry_run:
        out.print(_text(f"dry run: {changed} of {len(results)} would change; add --yes to apply", "yellow"))
    else:
        out.print(_text(f"{changed} of {len(results)} changed"))


async def task_clean(c: Any, a: argparse.Namespace, out: Out) -> int:
    results = await c.clean(older_than=a.older_than, dry_run=not a.yes)
    _print_batch(out, results, dry_run=not a.yes)
    return 0


WATCH_EXIT = {"FINISHED": 0, "FAILED": 1, "CANCELED": 2}


async def task_watch(c: Any, a: argparse.Namespace, out: Out) -> int:
    """Follow a task until it ends: progress bar, status, one line per stage as results arrive.
    Exit code 0 FINISHED, 1 FAILED, 2 CANCELED."""
    from rich.live import Live

    view = await c.get(a.id)
    if out.as_json:  # no live view: wait, then print the final view
        while view["status"] not in WATCH_EXIT:
            await c.wait(a.id, interval=a.interval)
            view = await c.get(a.id)
        out.json(view)
        return WATCH_EXIT[view["status"]]
    shown = 0  # stage lines printed for the current run
    job = view.get("job_id")
    # A live progress line on a terminal; piped output gets the stage lines and the final state.
    live = (
        Live(_watch_panel(view), console=out.console, refresh_per_second=8)
        if out.console.is_terminal
        else None
    )
    with live if live is not None else contextlib.nullcontext():
        while True:
            if view.get("job_id") != job or int(view.get("stage") or 0) < shown:
                job, shown = view.get("job_id"), 0
                out.print(_text(f"new run {job or ''}: stages start again", "yellow"))
            results = view.get("results") or []
            commands = view.get("commands") or []
            for i in range(shown, len(results)):
                cmd = _command_summary(commands[i]) if i < len(commands) else "?"
                out.print(_text(f"  stage {i} {cmd} -> {_short_json(results[i])}"))
            shown = max(shown, len(results))
            if live is not None:
                live.update(_watch_panel(view))
            if view["status"] in WATCH_EXIT:
                break
            seen = (view["status"], view["stage"])
            while True:
                await asyncio.sleep(a.interval)
                st = await c.status(a.id)
                if (st["status"], st["stage"]) != seen:
                    break
            view = await c.get(a.id)
    if live is None:
        out.print(_watch_panel(view))
    status = view["status"]
    line = f"{view['id']} {status}"
    if view.get("error"):
        line += f": {_error_text(view['error'])}"
    out.print(_text(line, _STATUS_STYLE.get(status, "")))
    return WATCH_EXIT[status]


def _watch_panel(v: dict[str, Any]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    stages = int(v.get("stages") or 0)
    done = stages if v.get("status") == "FINISHED" else min(int(v.get("stage") or 0), stages)
    t = Table.grid(padding=(0, 1))
    t.add_row(
        _text(v.get("id"), "bold"),
        ProgressBar(total=max(stages, 1), completed=done, width=30),
        _text(f"{done}/{stages}"),
        _status_text(v.get("status")),
        _text(_error_text(v.get("error")), "red"),
    )
    return t


async def cmd_executors(c: Any, a: argparse.Namespace, out: Out) -> int:
    rows = await c.executors()
    if out.as_json:
        out.json(rows)
        return 0
    if not rows:
        out.print(_text("no live executors", "dim"))
        return 0
    t = _table(
        "ID", "APP", "HOST", "PID", "STARTED", "LAST PING", "RUNNING", ids=[str(r.get("id")) for r in rows]
    )
    now = time.time()
    for r in rows:
        t.add_row(
            _text(r.get("id")),
            _text(r.get("app")),
            _text(r.get("host")),
            _text(r.get("pid")),
            _text(_age(r.get("started"), now)),
            _text(_age(r.get("last_ping"), now)),
            _text(r.get("running")),
        )
    out.print(t)
    return 0


async def cmd_group(c: Any, a: argparse.Namespace, out: Out) -> int:
    g = await c.group(a.name)
    if out.as_json:
        out.json(g)
        return 0
    out.print(_text(f"group {g.get('group')}: {g.get('total')} tasks", "bold"))
    t = _table("STATUS", "TASKS")
    for status, n in sorted((g.get("by_status") or {}).items()):
        t.add_row(_status_text(status), _text(n))
    out.print(t)
    return 0


async def cmd_notifications(c: Any, a: argparse.Namespace, out: Out) -> int:
    if a.ack:
        acked = await c.ack(a.ack)
        if out.as_json:
            out.json(acked)
        else:
            out.print(_text(f"acked {acked.get('acked')}"))
        return 0
    rows = await c.notifications(task_id=a.task_id, since=a.since, max_results=a.max_results)
    if out.as_json:
        out.json(rows)
        return 0
    if not rows:
        out.print(_text("no notifications", "dim"))
        return 0
    t = _table("ID", "TASK", "JOB", "STATUS", "CREATED", "ERROR", ids=[str(r.get("id")) for r in rows])
    for r in rows:
        t.add_row(
            _text(r.get("id")),
            _text(r.get("task_id")),
            _text(r.get("job_id")),
            _status_text(r.get("status")),
            _text(_clock(r.get("created"))),
            _text(_error_text(r.get("error")), "red"),
        )
    out.print(t)
    return 0


async def cmd_info(c: Any, a: argparse.Namespace, out: Out) -> int:
    info = await c.info()
    if out.as_json:
        out.json(info)
    else:
        out.print(_kv([(k, _text(v)) for k, v in info.items()]))
    return 0


TASK_COMMANDS: dict[str, Handler] = {
    "create": task_create,
    "get": task_get,
    "status": task_status,
    "list": task_list,
    "watch": task_watch,
    "send": task_send,
    "attempts": task_attempts,
    "cancel": _batch_handler("cancel"),
    "unlock": _batch_handler("unlock"),
    "restart": _batch_handler("restart"),
    "delete": _batch_handler("delete"),
    "clean": task_clean,
}
COMMANDS: dict[str, Handler] = {
    "executors": cmd_executors,
    "group": cmd_group,
    "notifications": cmd_notifications,
    "info": cmd_info,
}


def _run_client(args: argparse.Namespace) -> int:
    from stagewise.client import AsyncClient, StagewiseError

    handler = TASK_COMMANDS[args.task_cmd] if args.cmd == "task" else COMMANDS[args.cmd]
    try:
        url, token = resolve(args)
    except (config.ConfigError, OSError) as e:
        return _fail(f"error: configuration: {e}")
    out = Out(args.json)

    async def go() -> int:
        async with AsyncClient(url, token) as client:
            return await handler(client, args, out)

    try:
        return asyncio.run(go())
    except StagewiseError as e:
        if e.code:
            return _fail(f"error {e.code} {e.name}: {e.message}")
        return _fail(f"error: {e.message}")
    except CliError as e:
        return _fail(f"error: {e}")
    except TimeoutError as e:
        return _fail(f"error: {e or 'timed out'}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `stagewise task list | head`
        try:
            sys.stdout = open(os.devnull, "w")  # silence the flush at exit
        except OSError:
            pass
        return 0


def _fail(line: str) -> int:
    print(line.replace("\n", " "), file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    p = _build_parser()
    args = p.parse_args(argv)
    if args.cmd in ("manager", "executor"):
        _daemon(args)
        return
    sys.exit(_run_client(args))


if __name__ == "__main__":
    main()
