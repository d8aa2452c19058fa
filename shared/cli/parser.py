"""The `stagewise` command's arguments: the parser, the value types of its options (durations,
``--since``, statuses) and where a client command finds its manager (`resolve`)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import stagewise
from stagewise import config
from stagewise.status import Status

# --status choices: the statuses of SPEC §6, named in stagewise.status only
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
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


def until(text: str) -> float:
    """``--until``: UNIX seconds (``1718000000``), a time from now (``90s``, ``15m``, ``2h``, ``1d``)
    or an ISO 8601 time (local time when it names no zone)."""
    m = _DURATION.match(text)
    if m and m.group(2):
        return time.time() + duration(text)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (UNIX seconds, 15m / 2h from now, or ISO 8601)"
        ) from None


def _status(text: str) -> str:
    s = text.upper()
    if s not in STATUSES:
        raise argparse.ArgumentTypeError(f"unknown status {text!r} (one of {', '.join(STATUSES)})")
    return s


class _Version(argparse.Action):
    """``--version``: argparse's own version action wants the string when the parser is built,
    and reading the installed version (importlib.metadata) would cost every start ~10 ms."""

    def __init__(
        self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None
    ) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(f"stagewise {stagewise.__version__}\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagewise", description="durable multi-stage tasks over Redis Streams")
    p.add_argument("--config", help="TOML file with the STAGEWISE_* settings")
    p.add_argument("--version", action=_Version, help="print the version and exit")
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
    ex.add_argument("--concurrency", type=int, default=8, help="runs at a time per process (default 8)")
    ex.add_argument(
        "--processes",
        type=int,
        default=1,
        help="executor processes, each with its own event loop and registration (default 1)",
    )

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
    g.add_argument("--parent", help="children of this task (fan-out)")
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
    c.add_argument(
        "--wait",
        action="store_true",
        help="follow it to its end like `task watch`; exit code 0 FINISHED, 1 FAILED, 2 CANCELED",
    )
    c.add_argument("--interval", type=float, default=0.3, help="seconds between polls with --wait")

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

    c = sub.add_parser(
        "apps", parents=[common], help="each app at a glance: queued, running, failing, lag, paused"
    )
    c.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    c.add_argument("--interval", type=float, default=2.0, help="seconds between redraws (default 2)")
    asub = c.add_subparsers(dest="apps_cmd", metavar="APPS_COMMAND")  # none: the overview
    a = asub.add_parser("pause", parents=[common], help="stop claims of an app's tasks (executors stay)")
    a.add_argument("app")
    a.add_argument(
        "--until", type=until, help="UNIX s, 15m / 2h from now, or ISO 8601 (default: until resume)"
    )
    a = asub.add_parser("resume", parents=[common], help="claims of an app's tasks go on")
    a.add_argument("app")

    c = sub.add_parser("limits", help="flow control: a limit key's running and held tasks, its pause")
    lsub = c.add_subparsers(dest="limits_cmd", required=True, metavar="LIMITS_COMMAND")
    a = lsub.add_parser("get", parents=[common], help="tasks running under a key and held back by it")
    a.add_argument("key")
    a = lsub.add_parser("pause", parents=[common], help="no task of the key is claimed until --until")
    a.add_argument("key")
    a.add_argument("--until", type=until, required=True, help="UNIX s, 15m / 2h from now, or ISO 8601")
    a = lsub.add_parser("resume", parents=[common], help="tasks of the key are claimed again")
    a.add_argument("key")
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
