"""The manager's HTTP server (aiohttp): POST /rpc and the views of SPEC §8."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from aiohttp import web

from stagewise import errors, tracing
from stagewise import log as slog
from stagewise.errors import RpcError
from stagewise.faults import describe, unavailable_reason
from stagewise.manager import dashboard
from stagewise.manager.metrics import metrics_handler
from stagewise.manager.rpc import CALLER_TRACE, Dispatcher, NoParams
from stagewise.manager.store import Store
from stagewise.status import HTTP_CODE, Status
from stagewise.storage.connection import SOCKET_TIMEOUT


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )


LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def _foreign(request: web.Request, loopback_only: bool) -> str | None:
    """Why a request that a web page made the user's browser send is refused, or None.

    Without tokens, the only thing between a page on some other site and this API is the
    browser: a page may POST a "simple" (text/plain) request to http://127.0.0.1:8765/rpc.
    Browsers name the sending page in `Origin`, so a request whose Origin is not this server
    is refused (clients and curl send no Origin).  A page may also rename itself to us (DNS
    rebinding: evil.example resolving to 127.0.0.1), so a manager listening on loopback only
    answers requests addressed to a loopback name."""
    host = request.host.lower()
    if loopback_only:
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
        if name not in LOOPBACK_NAMES and not name.startswith("127."):
            return f"this manager listens on loopback; Host {request.host!r} is not a loopback name"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() not in (f"http://{host}", f"https://{host}"):
        return f"cross-site request from Origin {origin!r}"
    return None


# /healthz answers within this many seconds whatever Redis does: above the socket timeout, so
# that a Redis that does not answer is normally reported by the client's own timeout.
HEALTH_TIMEOUT = SOCKET_TIMEOUT + 1.0


def _unavailable(e: Exception) -> web.Response | None:
    """503 with the JSON-RPC error object of 1006 when `e` says Redis cannot serve now (the
    reason as the API gives it, stagewise.faults), else None."""
    reason = unavailable_reason(e)
    if reason is None:
        return None
    return _json(errors.unavailable(reason).to_dict(), 503, {"Retry-After": "1"})


def make_app(store: Store, dispatcher: Dispatcher) -> web.Application:
    limit = store.settings.body_limit
    log = slog.get(role="http")

    async def rpc(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > limit:
            return _too_large(limit)
        body = bytearray()
        async for chunk in request.content.iter_any():  # chunked bodies arrive in pieces
            body += chunk
            if len(body) > limit:
                return _too_large(limit)
        # A W3C trace context sent with the request joins the runs it creates to the caller's
        # trace (stagewise.tracing): kept whether or not this manager traces, since the
        # executors make the spans of the stages.
        trace = tracing.caller(request.headers.get("traceparent"), request.headers.get("tracestate"))
        token = CALLER_TRACE.set(trace) if trace is not None else None
        try:
            out = await dispatcher.handle_body(bytes(body))
        finally:
            if token is not None:
                CALLER_TRACE.reset(token)
        if out is None:
            return web.Response(status=204)
        return _json(out)

    async def task_view(request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        try:
            return _json(await store.get(tid))
        except RpcError as e:
            return _json(e.to_dict(), 404 if e.code == errors.TASK_NOT_FOUND else 400)
        except Exception as e:
            if (reply := _unavailable(e)) is None:
                raise
            return reply

    async def task_status(request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        try:
            h = await store.raw(tid) if len(tid) <= 128 else None
        except Exception as e:
            if (reply := _unavailable(e)) is None:
                raise
            return reply
        if h is None:
            return _json({"error": "not found", "id": tid}, 404)
        status = Status(h["status"])
        return _json(
            {"status": status, "stage": int(h["stage"]), "stages": int(h["stages"])}, HTTP_CODE[status]
        )

    async def openrpc(request: web.Request) -> web.Response:
        # the same document as the method rpc.discover, behind the same token check
        return _json(await dispatcher.api.discover(NoParams()))

    tokens = [t.encode() for t in store.settings.api_tokens]
    inflight = asyncio.Semaphore(store.settings.max_inflight)  # served at once
    waiting = [0]  # requests waiting for a slot
    serving = [0]  # requests holding a slot

    unhealthy: list[str | None] = [None]  # the reason last reported, to log changes only

    async def healthz(request: web.Request) -> web.Response:
        """200 when Redis answers and takes a write in every partition (Store.check_writable),
        else 503 with the reason (SPEC §8), within HEALTH_TIMEOUT.  The body names no address
        and no error text: the probe is open to all; the log has the error."""
        # the request counts show how close the manager is to shedding load (503 past
        # 4 x STAGEWISE_MAX_INFLIGHT waiting); they reveal nothing about any task
        load = {"serving": serving[0], "waiting": waiting[0], "max_inflight": store.settings.max_inflight}
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await store.check_writable(durable=True)
        except Exception as e:  # any failure is "unhealthy", not a 500
            reason = unavailable_reason(e) or "redis error"
            if reason != unhealthy[0]:
                log.warning("health_failed", reason=reason, error=describe(e))
                unhealthy[0] = reason
            return _json({"ok": False, "reason": reason, "requests": load}, 503, {"Retry-After": "1"})
        if unhealthy[0] is not None:
            log.info("health_ok", was=unhealthy[0])
            unhealthy[0] = None
        return _json({"ok": True, "requests": load})

    # Tokens are what stops a foreign page once they are set (it cannot read or send them),
    # and a reverse proxy in front may rewrite Host or Origin: the checks are for the
    # token-less manager, which the refusal to listen openly keeps on loopback by default.
    open_api = not store.settings.api_tokens
    loopback_only = store.settings.host.strip("[]") in LOOPBACK_NAMES

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz":  # probes stay open: they reveal nothing
            return await handler(request)
        why = _foreign(request, loopback_only) if open_api else None
        if why:
            return _json({"error": why}, 403)
        if tokens and not _authorized(request.headers.get("Authorization", ""), tokens):
            return _json({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})
        if waiting[0] >= 4 * store.settings.max_inflight:  # shed load rather than queue without bound
            return _json({"error": "too many requests in flight"}, 503, {"Retry-After": "1"})
        waiting[0] += 1
        try:
            await inflight.acquire()
        finally:
            waiting[0] -= 1
        serving[0] += 1
        try:
            return await handler(request)
        finally:
            serving[0] -= 1
            inflight.release()

    app = web.Application(client_max_size=limit, middlewares=[guard])
    app.router.add_post("/rpc", rpc)
    app.router.add_get("/tasks/{id}", task_view)
    app.router.add_get("/tasks/{id}/status", task_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openrpc.json", openrpc)
    app.router.add_get("/metrics", metrics_handler(store))
    dashboard.setup(app)  # GET /: the web dashboard (its shell is public, its data is not)
    return app


def _authorized(header: str, tokens: list[bytes]) -> bool:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    ok = False
    for t in tokens:  # compare against every token, in constant time each: no early exit
        ok |= hmac.compare_digest(given.strip().encode(), t)
    return ok


def _too_large(limit: int) -> web.Response:
    err = RpcError(
        errors.INVALID_REQUEST,
        f"request body exceeds {limit} bytes",
        {"field": "body", "reason": f"larger than {limit} bytes"},
    )
    return _json({"jsonrpc": "2.0", "id": None, "error": err.to_dict()}, 413)
