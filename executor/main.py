"""`stagewise executor MODULE:APP`: the executor process from start to exit (SPEC §9).

The command line only loads the configuration and sets up logging; this module finds the app, puts
the event loop in place and turns signals into the executor's stop: the first SIGTERM (or SIGINT)
starts the graceful stop (stagewise.executor.worker.Executor.serve hands unfinished runs back), a
second one ends the process at once, for an operator who will not wait for the grace period.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys

import uvloop

from stagewise import log
from stagewise.config import Settings
from stagewise.executor.app import App
from stagewise.executor.worker import Executor


def load_app(module_app: str) -> App:
    """The `App` that ``MODULE:APP`` names (``MODULE`` alone means ``MODULE:app``), imported as
    ``python -m`` would: modules in the current directory come first.  A name that is not an
    App stops the process with one line."""
    mod_name, _, attr = module_app.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app = getattr(importlib.import_module(mod_name), attr or "app")
    if not isinstance(app, App):
        raise SystemExit(f"{module_app} is not a stagewise.App")
    return app


def run(module_app: str, concurrency: int, settings: Settings) -> None:
    """Serve ``MODULE:APP`` with `concurrency` runs at a time until stopped."""
    app = load_app(module_app)
    uvloop.run(_serve(app, concurrency, settings))


async def _serve(app: App, concurrency: int, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    hits = 0

    def on_term() -> None:  # first signal: graceful stop; second: stop at once
        nonlocal hits
        hits += 1
        if hits > 1:
            log.get().warning("executor_forced_stop")
            sys.stdout.flush()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_term)
    await Executor(app, settings, concurrency).serve(stop)
