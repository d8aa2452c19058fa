"""``stagewise``: the command line.  ``stagewise manager`` and ``stagewise executor MODULE:APP``
run the daemons (SPEC §9); the other commands (``task ...``, ``executors``, ``group``,
``notifications``, ``info``) talk to a manager through `stagewise.client`.

Client commands take ``--url`` (default: $STAGEWISE_URL, else ``http://`` + STAGEWISE_HTTP),
``--token`` (default: $STAGEWISE_API_TOKEN, else the first of STAGEWISE_API_TOKENS) and ``--json``
(print the raw JSON result instead of tables), before or after the command name.  An error prints
one line (``error 1001 TASK_NOT_FOUND: ...``) to stderr and exits 1.

    parser    the arguments, their value types, the manager's url and token (`resolve`)
    render    tables, panels and JSON output
    commands  one handler per client command, and `run_client`
"""

from __future__ import annotations

import argparse
import sys

from stagewise import config, log
from stagewise.cli.parser import build_parser


def main(argv: list[str] | None = None) -> None:
    """The ``stagewise`` console entry point (and ``python -m stagewise``)."""
    args = build_parser().parse_args(argv)
    if args.cmd in ("manager", "executor"):
        _daemon(args)
        return
    from stagewise.cli.commands import run_client

    sys.exit(run_client(args))


def _daemon(args: argparse.Namespace) -> None:
    """`stagewise manager` / `stagewise executor`: the configuration and the logging, then the
    daemon's own `run`, which is the process from there on."""
    try:
        settings = config.load(args.config)
    except (config.ConfigError, OSError) as e:
        config.fail(f"stagewise: configuration error: {e}")
    log.configure(settings.log_level, role=args.cmd)
    # Imported here, not at the top: the client commands never load a daemon.
    if args.cmd == "manager":
        from stagewise.manager.main import run as run_manager

        run_manager(settings, insecure=args.insecure)
    else:
        if args.concurrency < 1:
            config.fail("stagewise: --concurrency must be >= 1")
        if args.processes < 1:
            config.fail("stagewise: --processes must be >= 1")
        from stagewise.executor.main import run as run_executor

        run_executor(args.app, args.concurrency, settings, args.processes)
