"""The client commands (``task ...``, ``executors``, ``group``, ``notifications``, ``info``): one
handler each, ``async (client, args, out) -> exit code``, called by `run_client` with an
`AsyncClient` for the manager that `parser.resolve` found."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from stagewise import config
from stagewise.cli.parser import resolve
from stagewise.cli.render import (
    STATUS_STYLE,
    Out,
    age,
    apps_table,
    batch_table,
    clock,
    command_summary,
    error_text,
    kv,
    seconds,
    short_json,
    status_text,
    table,
    task_details,
    task_table,
    text,
    waiting_for,
    watch_panel,
)
from stagewise.client import AsyncClient, StagewiseError
from stagewise.status import Status

Handler = Callable[[Any, argparse.Namespace, Out], Awaitable[int]]


class CliError(Exception):
    """A usage or input problem: printed as ``error: ...``, exit code 1."""


def _read_json(source: str, what: str) -> Any:
    try:
        if source == "-":
            raw = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                raw = f.read()
    except OSError as e:
        raise CliError(f"cannot read {what} {source!r}: {e.strerror or e}") from None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise CliError(f"{what} {'(stdin)' if source == '-' else source!r} is not JSON: {e}") from None


async def task_create(c: Any, a: argparse.Namespace, out: Out) -> int:
    doc = _read_json(a.file, "task file")
    if isinstance(doc, list):
        if a.on_conflict:
            raise CliError("--on-conflict applies to a single task, not to a list")
        many = await c.create_many(doc, group=a.group)
        if a.wait:
            return await _wait_all(c, many["ids"], a.interval, out)
        if out.as_json:
            out.json(many)
        else:
            out.print(text(f"created {len(many['ids'])} tasks in group {many['group']}"))
            for tid in many["ids"]:
                out.print(text(tid))
        return 0
    if not isinstance(doc, dict):
        raise CliError("a task document must be a JSON object (or a list of them)")
    if a.group:
        doc = {**doc, "group": a.group}
    view = await c.create(doc, on_conflict=a.on_conflict)
    if a.wait:  # follow it to its end, like `task watch`; the exit code is its outcome
        return await follow(c, view["id"], a.interval, out)
    if out.as_json:
        out.json(view)
    else:
        out.print(task_table([view]))
    return 0


async def task_get(c: Any, a: argparse.Namespace, out: Out) -> int:
    view = await c.get(a.id, include_results=a.results)
    if out.as_json:
        out.json(view)
    else:
        out.print(task_details(view))
    return 0


async def task_status(c: Any, a: argparse.Namespace, out: Out) -> int:
    st = await c.status(a.id)
    if out.as_json:
        out.json(st)
    else:
        out.print(
            kv(
                [
                    ("id", st["id"]),
                    ("status", status_text(st["status"])),
                    ("stage", f"{st['stage']}/{st['stages']}"),
                ]
            )
        )
    return 0


def _filter_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(a, k) for k in ("status", "app", "tags", "group", "since", "cleaned", "parent")}


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
    out.print(task_table(page["items"]))
    n = len(page["items"])
    more = f"; more with --cursor {page['next_cursor']}" if page.get("next_cursor") else ""
    out.print(text(f"{n} task{'s' if n != 1 else ''}{more}", "dim"))
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
        out.print(task_table([view]))
    return 0


async def task_attempts(c: Any, a: argparse.Namespace, out: Out) -> int:
    rows = await c.attempts(a.id)
    if out.as_json:
        out.json(rows)
        return 0
    out.print(text(f"attempts of {a.id}: {len(rows)}", "bold"))
    t = table("JOB", "STAGE", "EXECUTOR", "STARTED", "TOOK", "OUTCOME", "ERROR")
    for r in rows:
        started, ended = r.get("started"), r.get("ended")
        took = (
            f"{ended - started:.3f}s"
            if isinstance(started, int | float) and isinstance(ended, int | float)
            else "-"
        )
        t.add_row(
            text(r.get("job_id")),
            text(r.get("stage")),
            text(r.get("executor_id") or "-"),
            text(clock(started)),
            text(took),
            text(r.get("outcome"), "green" if r.get("outcome") == "ok" else "yellow"),
            text(error_text(r.get("error")), "red"),
        )
    out.print(t)
    for r in rows:  # each handler traceback once, under the table
        err = r.get("error")
        if isinstance(err, dict) and err.get("traceback"):
            out.print(text(f"\ntraceback of job {r.get('job_id')} stage {r.get('stage')}:", "bold"))
            out.print(text(err["traceback"].rstrip(), "red"))
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
    out.print(batch_table(results, dry_run))
    changed = sum(1 for r in results if r.get("changed"))
    if dry_run:
        out.print(text(f"dry run: {changed} of {len(results)} would change; add --yes to apply", "yellow"))
    else:
        out.print(text(f"{changed} of {len(results)} changed"))


async def task_clean(c: Any, a: argparse.Namespace, out: Out) -> int:
    results = await c.clean(older_than=a.older_than, dry_run=not a.yes)
    _print_batch(out, results, dry_run=not a.yes)
    return 0


# `task watch` exit codes
WATCH_EXIT: dict[str, int] = {Status.FINISHED: 0, Status.FAILED: 1, Status.CANCELED: 2}


async def task_watch(c: Any, a: argparse.Namespace, out: Out) -> int:
    """Follow a task until it ends.  Exit code 0 FINISHED, 1 FAILED, 2 CANCELED."""
    return await follow(c, a.id, a.interval, out)


async def follow(c: Any, task_id: str, interval: float, out: Out) -> int:
    """`task watch` and `task create --wait`: a live progress line (with a timer's countdown,
    or how to send the message a task waits for), one line per stage as its result arrives
    (with how long its attempt took), then the final state.  Exit code by outcome: 0
    FINISHED, 1 FAILED, 2 CANCELED."""
    from rich.live import Live

    view = await c.get(task_id)
    if out.as_json:  # no live view: wait, then print the final view
        while view["status"] not in WATCH_EXIT:
            await c.wait(task_id, interval=interval)
            view = await c.get(task_id)
        out.json(view)
        return WATCH_EXIT[view["status"]]
    shown = 0  # stage lines printed for the current run
    job = view.get("job_id")
    hinted: tuple[Any, ...] | None = None  # the wait last told about
    # A live progress line on a terminal; piped output gets the stage lines and the final state.
    live = (
        Live(watch_panel(view), console=out.console, refresh_per_second=8)
        if out.console.is_terminal
        else None
    )
    with live if live is not None else contextlib.nullcontext():
        while True:
            if view.get("job_id") != job or int(view.get("stage") or 0) < shown:
                job, shown = view.get("job_id"), 0
                out.print(text(f"new run {job or ''}: stages start again", "yellow"))
            results = view.get("results") or []
            commands = view.get("commands") or []
            if len(results) > shown:
                took = await _stage_times(c, task_id, job)
                for i in range(shown, len(results)):
                    cmd = command_summary(commands[i]) if i < len(commands) else "?"
                    line = f"  stage {i} {cmd} -> {short_json(results[i])}"
                    out.print(text(line + (f"  ({seconds(took[i])})" if i in took else "")))
                shown = len(results)
            wait = (job, view["stage"], view["status"])
            if view["status"] == Status.WAITING and wait != hinted and live is None:
                hinted = wait  # piped: say once what the task waits for
                out.print(text(f"  stage {view['stage']} {waiting_for(view)}", "cyan"))
            if live is not None:
                live.update(watch_panel(view))
            if view["status"] in WATCH_EXIT:
                break
            seen = (view["status"], view["stage"])
            while True:
                await asyncio.sleep(interval)
                st = await c.status(task_id)
                if (st["status"], st["stage"]) != seen:
                    break
                if live is not None:
                    if view.get("children") and st["status"] == Status.WAITING:
                        view = await c.get(task_id)  # its children's progress moves on
                    live.update(watch_panel(view))  # the countdown moves on
            view = await c.get(task_id)
    if live is None:
        out.print(watch_panel(view))
    status = view["status"]
    line = f"{view['id']} {status}"
    if view.get("error"):
        line += f": {error_text(view['error'])}"
    out.print(text(line, STATUS_STYLE.get(status, "")))
    return WATCH_EXIT[status]


async def _stage_times(c: Any, task_id: str, job: Any) -> dict[int, float]:
    """Seconds each stage's committed attempt of run `job` took, by stage (from tasks.attempts;
    stages resolved without an executor, timers and messages, have none)."""
    took: dict[int, float] = {}
    for att in await c.attempts(task_id):
        if att.get("job_id") == job and att.get("outcome") in ("ok", "skipped"):
            started, ended = att.get("started"), att.get("ended")
            if isinstance(started, int | float) and isinstance(ended, int | float):
                took[int(att["stage"])] = max(0.0, ended - started)
    return took


async def _wait_all(c: Any, ids: list[str], interval: float, out: Out) -> int:
    """`task create --wait` of a list: each task to its end; exit code 1 if one FAILED, else 2
    if one was CANCELED, else 0."""
    ends = [(await c.wait(tid, interval=interval))["status"] for tid in ids]
    counts = {s: ends.count(s) for s in WATCH_EXIT}
    if out.as_json:
        out.json({"ids": ids, "by_status": counts})
    else:
        out.print(text(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no tasks"))
    if counts[Status.FAILED]:
        return 1
    return 2 if counts[Status.CANCELED] else 0


async def cmd_apps(c: Any, a: argparse.Namespace, out: Out) -> int:
    """Each app at a glance (apps.list), like `rq info`; with --watch, redrawn every interval
    until Ctrl-C.  An app with queued work and no live executor is flagged: nothing will run it.
    `apps pause APP [--until T]` / `apps resume APP`: apps.pause / apps.resume."""
    if getattr(a, "apps_cmd", None) == "pause":
        return _paused(out, await c.pause_app(a.app, a.until), "app", a.app)
    if getattr(a, "apps_cmd", None) == "resume":
        return _paused(out, await c.resume_app(a.app), "app", a.app)
    if out.as_json:
        out.json(await c.apps())
        return 0
    if not a.watch:
        out.print(apps_table(await c.apps()))
        return 0
    from rich.live import Live

    with Live(apps_table(await c.apps()), console=out.console, refresh_per_second=4) as live:
        while True:
            await asyncio.sleep(a.interval)
            live.update(apps_table(await c.apps()))


def _paused(out: Out, res: dict[str, Any], what: str, name: str) -> int:
    """The reply of a pause or resume: JSON, or one line."""
    if out.as_json:
        out.json(res)
    elif res.get("paused_until"):
        out.print(text(f"{what} {name} paused until {clock(res['paused_until'])}"))
    else:
        out.print(text(f"{what} {name} not paused"))
    return 0


async def cmd_limits(c: Any, a: argparse.Namespace, out: Out) -> int:
    """`limits get KEY` (limits.get), `limits pause KEY --until T`, `limits resume KEY`."""
    if a.limits_cmd == "pause":
        return _paused(out, await c.pause_limit(a.key, a.until), "key", a.key)
    if a.limits_cmd == "resume":
        return _paused(out, await c.resume_limit(a.key), "key", a.key)
    info = await c.limit(a.key)
    if out.as_json:
        out.json(info)
        return 0
    paused = info.get("paused_until")
    out.print(
        kv(
            [
                ("key", text(info.get("key"), "bold")),
                ("running", text(info.get("running"))),
                ("held", text(info.get("held"), "yellow" if info.get("held") else "")),
                ("paused", text(f"until {clock(paused)}" if paused else "-")),
            ]
        )
    )
    return 0


async def cmd_executors(c: Any, a: argparse.Namespace, out: Out) -> int:
    rows = await c.executors()
    if out.as_json:
        out.json(rows)
        return 0
    if not rows:
        out.print(text("no live executors", "dim"))
        return 0
    t = table(
        "ID", "APP", "HOST", "PID", "STARTED", "LAST PING", "RUNNING", ids=[str(r.get("id")) for r in rows]
    )
    now = time.time()
    for r in rows:
        t.add_row(
            text(r.get("id")),
            text(r.get("app")),
            text(r.get("host")),
            text(r.get("pid")),
            text(age(r.get("started"), now)),
            text(age(r.get("last_ping"), now)),
            text(r.get("running")),
        )
    out.print(t)
    return 0


async def cmd_group(c: Any, a: argparse.Namespace, out: Out) -> int:
    g = await c.group(a.name)
    if out.as_json:
        out.json(g)
        return 0
    out.print(text(f"group {g.get('group')}: {g.get('total')} tasks", "bold"))
    t = table("STATUS", "TASKS")
    for status, n in sorted((g.get("by_status") or {}).items()):
        t.add_row(status_text(status), text(n))
    out.print(t)
    return 0


async def cmd_notifications(c: Any, a: argparse.Namespace, out: Out) -> int:
    if a.ack:
        acked = await c.ack(a.ack)
        if out.as_json:
            out.json(acked)
        else:
            out.print(text(f"acked {acked.get('acked')}"))
        return 0
    rows = await c.notifications(task_id=a.task_id, since=a.since, max_results=a.max_results)
    if out.as_json:
        out.json(rows)
        return 0
    if not rows:
        out.print(text("no notifications", "dim"))
        return 0
    t = table("ID", "TASK", "JOB", "STATUS", "CREATED", "ERROR", ids=[str(r.get("id")) for r in rows])
    for r in rows:
        t.add_row(
            text(r.get("id")),
            text(r.get("task_id")),
            text(r.get("job_id")),
            status_text(r.get("status")),
            text(clock(r.get("created"))),
            text(error_text(r.get("error")), "red"),
        )
    out.print(t)
    for r in rows:  # each handler traceback once, under the table
        err = r.get("error")
        if isinstance(err, dict) and err.get("traceback"):
            out.print(text(f"\ntraceback of job {r.get('job_id')} stage {r.get('stage')}:", "bold"))
            out.print(text(err["traceback"].rstrip(), "red"))
    return 0


async def cmd_info(c: Any, a: argparse.Namespace, out: Out) -> int:
    info = await c.info()
    if out.as_json:
        out.json(info)
    else:
        out.print(kv([(k, text(v)) for k, v in info.items()]))
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
    "apps": cmd_apps,
    "limits": cmd_limits,
    "executors": cmd_executors,
    "group": cmd_group,
    "notifications": cmd_notifications,
    "info": cmd_info,
}


def run_client(args: argparse.Namespace) -> int:
    """Run a client command against the manager; its exit code.  An error is one line on stderr
    and exit code 1."""
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
