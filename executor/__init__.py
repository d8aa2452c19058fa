"""The stagewise executor: ``from stagewise.executor import App`` to write an app.

The rest is the daemon that serves an app, one role per module:
  app.py      App and Ctx: what an app's author writes, and what a handler learns of its call
  worker.py   Executor: start, the roles (heartbeat, fetch, control, runs), two-phase shutdown
  fetch.py    Fetcher: reads the app's streams and claims what it read
  run.py      Runner: a claimed run, stage after stage, each result committed or the attempt failed
  call.py     the stage call: method, condition, params, timeout, result encoding; no Redis
  batcher.py  Batcher: the commits of concurrent runs, one pipeline per loop turn
"""

from stagewise.executor.app import App, Ctx

__all__ = ["App", "Ctx"]
