"""``stagewise``: the command line.  ``stagewise manager`` and ``stagewise executor MODULE:APP``
run the daemons (SPEC §9)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys

import uvloop

from shared import config, log


def _executor(module_app: str, concurrency: int, settings: config.Settings) -> None:
    from executor.app import App
    from executor.worker import Executor

    mod_name, _, attr = module_app.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: the app module is found from the cwd
        sys.path.insert(0, os.getcwd())
    app = getattr(importlib.import_module(mod_name), attr or "app")
    if not isinstance(app, App):
        raise SystemExit(f"{module_app} is not an executor.App")

    async def main() -> None:
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

    uvloop.run(main())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="stagewise", description="durable multi-stage tasks over Redis Streams")
    p.add_argument("--config", help="TOML file with the STAGEWISE_* settings")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("manager", help="run the manager daemon (JSON-RPC + scheduler)")
    ex = sub.add_parser("executor", help="run an executor daemon for one app")
    ex.add_argument("app", help="MODULE:APP, an executor.App instance")
    ex.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    try:
        settings = config.load(args.config)
    except (config.ConfigError, OSError) as e:
        raise SystemExit(f"stagewise: configuration error: {e}") from None
    log.configure(settings.log_level, role=args.cmd)
    if args.cmd == "manager":
        from manager.main import serve

        uvloop.run(serve(settings))
    else:
        if args.concurrency < 1:
            raise SystemExit("stagewise: --concurrency must be >= 1")
        _executor(args.app, args.concurrency, settings)


if __name__ == "__main__":
    main()
