"""The manager daemon: JSON-RPC server + scheduler, until SIGTERM / SIGINT.

`run` is the process from start to exit (`stagewise manager`): the command line only loads the
configuration and sets up logging, then calls it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal

import uvloop
from aiohttp import web

from stagewise import log as slog
from stagewise import sdnotify, tracing  # sdnotify: systemd's protocol, no-ops without it
from stagewise.config import Settings, fail
from stagewise.manager.http import make_app
from stagewise.manager.rpc import Api, Dispatcher
from stagewise.manager.scheduler import Scheduler
from stagewise.manager.store import Store
from stagewise.storage.connection import connect_when_ready, is_cluster
from stagewise.storage.durability import Durability, check_server


def exposed_without_auth(settings: Settings) -> bool:
    """True when the HTTP address is reachable from other hosts and no token guards it."""
    if settings.api_tokens:
        return False
    host = settings.host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return True


def run(settings: Settings, insecure: bool) -> None:
    """Serve until SIGTERM / SIGINT.  An address other hosts can reach is refused without
    STAGEWISE_API_TOKENS unless `insecure` (--insecure): an open manager lets anyone run tasks."""
    if exposed_without_auth(settings) and not insecure:
        fail(
            f"stagewise: refusing to serve {settings.http} without STAGEWISE_API_TOKENS; "
            "set tokens, listen on a loopback address, or pass --insecure"
        )
    uvloop.run(serve(settings))


async def serve(settings: Settings) -> None:
    log = slog.get(role="manager")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Wait for Redis first: whether it is a single server or a Redis Cluster decides which
    # client to use (stagewise.storage.connection.connect).  HTTP handlers are bounded by max_inflight and use
    # one connection at a time; + scheduler.
    r = await connect_when_ready(settings.redis_url, settings.max_inflight + 16, stop, log)
    if r is None:  # stopped while waiting
        log.info("manager_stopped")
        return
    try:  # a Redis that cannot give STAGEWISE_DURABILITY: one line, exit 78
        for warning in await check_server(r, Durability.of(settings)):
            log.warning("durability_not_met", reason=warning)
    except ValueError as e:
        await r.aclose()
        fail(f"stagewise: {e}")
    tracing.setup("stagewise-manager", log)  # OpenTelemetry, when OTEL_* asks for it (SPEC §8)
    store = Store(r, settings)
    runner = web.AppRunner(make_app(store, Dispatcher(Api(store))), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    sched = Scheduler(store)
    loop_task = asyncio.create_task(sched.run(stop))
    log.info(
        "manager_started",
        http=settings.http,
        namespace=settings.namespace,
        partitions=settings.partitions,
        cluster=is_cluster(r),
        durability=settings.durability,
    )
    # --- systemd (shared/sdnotify.py; every call is a no-op without $NOTIFY_SOCKET) ---------------
    # READY=1 once HTTP serves and Redis answers; WATCHDOG=1 only while the loop turns (the pinger
    # is a task on it), the scheduler task lives and Redis takes writes: the check of GET /healthz.

    async def healthy() -> bool:
        if loop_task.done():
            return False
        await store.check_writable()  # raises when Redis is away or refuses writes
        return True

    watchdog = asyncio.create_task(sdnotify.watchdog(healthy, log), name="watchdog")
    if not stop.is_set():
        sdnotify.ready(f"serving {settings.http}, namespace {settings.namespace}")
    # --- end systemd ------------------------------------------------------------------------------
    await stop.wait()
    log.info("manager_stopping")
    sdnotify.stopping("stopping: finishing the scheduler step")
    watchdog.cancel()
    # The scheduler finishes the step it is in (each step is one atomic script), then stops.
    await loop_task
    await runner.cleanup()
    await r.aclose()
    tracing.shutdown()  # the spans still buffered go out before the process ends
    log.info("manager_stopped")
