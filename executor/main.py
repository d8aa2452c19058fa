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
import traceback

import uvloop

from stagewise import log, tracing
from stagewise.config import Settings, fail
from stagewise.executor.app import App
from stagewise.executor.prefork import supervise
from stagewise.executor.worker import Executor
from stagewise.storage.connection import connect_when_ready


def load_app(module_app: str) -> App:
    """The `App` that ``MODULE:APP`` names (``MODULE`` alone means ``MODULE:app``), imported as
    ``python -m`` would: modules in the current directory come first.  Whatever goes wrong (no
    name, no such module, an error while importing it, no such attribute, not an App) stops
    the process with one line that says what to fix, not a traceback."""
    mod_name, _, attr = module_app.strip().partition(":")
    if not mod_name:
        fail(
            f"stagewise: executor: no app given ({module_app!r}): name it as MODULE:APP, "
            "e.g. billing.tasks:app (in a unit: STAGEWISE_APP in its env file)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            fail(
                f"stagewise: executor: no module {e.name!r} (looked in {os.getcwd()} and the "
                "installed packages; run from the folder that holds it, or install it)"
            )
        fail(f"stagewise: executor: importing {mod_name} failed: {_where(e)}")
    except Exception as e:  # noqa: BLE001 - the app's own code failed to import: say where
        fail(f"stagewise: executor: importing {mod_name} failed: {_where(e)}")
    name = attr or "app"
    if not hasattr(module, name):
        fail(f"stagewise: executor: {mod_name} has no attribute {name!r} (MODULE:APP names an App)")
    app = getattr(module, name)
    if not isinstance(app, App):
        fail(f"stagewise: executor: {mod_name}:{name} is a {type(app).__name__}, not a stagewise.App")
    return app


def _where(e: BaseException) -> str:
    """An exception in one line: its class, its message and the last frame (file:line)."""
    tb = traceback.extract_tb(e.__traceback__)
    place = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    if isinstance(e, SyntaxError) and e.filename:
        place = f" ({e.filename}:{e.lineno})"
    return f"{type(e).__name__}: {e}".splitlines()[0] + place


def run(module_app: str, concurrency: int, settings: Settings, processes: int = 1) -> None:
    """Serve ``MODULE:APP`` with `concurrency` runs at a time until stopped; with `processes` > 1,
    that many executor processes, each with `concurrency` (stagewise.executor.prefork)."""
    app = load_app(module_app)
    if processes == 1:
        uvloop.run(_serve(app, concurrency, settings))
        return

    def child(index: int) -> int:
        uvloop.run(_serve(app, concurrency, settings))
        return 0

    sys.exit(supervise(processes, child))


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
    tracing.setup("stagewise-executor", log.get(role="executor"))  # when OTEL_* asks (SPEC §8)
    executor = Executor(app, settings, concurrency)
    r = await connect_when_ready(settings.redis_url, executor.max_connections, stop, log.get(role="executor"))
    if r is None:  # stopped while waiting
        log.get(role="executor").info("executor_stopped")
        return
    try:
        await executor.serve(stop, r)
    finally:
        tracing.shutdown()  # the spans still buffered go out before the process ends
