"""JSON-RPC 2.0 over HTTP (SPEC §7): envelope checks, params decoding, dispatch.

Every method declares its params as a msgspec Struct; decoding it is the whole validation, so
a bad request fails before anything touches Redis and the error names the field.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

import msgspec
from msgspec import Meta, Struct

import stagewise
from stagewise import errors, faults
from stagewise import log as slog
from stagewise.errors import RpcError
from stagewise.faults import describe, unavailable_reason
from stagewise.manager.query import Filters
from stagewise.manager.store import Store, view
from stagewise.models import AppName, Tag, TaskId, convert, parse_task
from stagewise.status import HTTP_CODE, Status

MAX_BATCH = 100
# apps.pause without `until`: paused until apps.resume, stored as this far time (and shown so)
PAUSE_FOREVER = 253402300799.0  # 9999-12-31T23:59:59Z
# Deeper JSON is refused as a parse error: the decoders recurse, and how deep they get depends on
# the stack they start from, so a request just under msgspec's limit could fail later (storing the
# task, encoding a reply) with an internal error instead.
MAX_JSON_DEPTH = 256

# The trace context of the HTTP request being served (stagewise.tracing.caller of its
# `traceparent` and `tracestate` headers), for tasks.create and tasks.create_many to store:
# set by the HTTP layer around the request's dispatch, which runs in a task of its own, so
# concurrent requests never see each other's.  The methods take their params only.
CALLER_TRACE: ContextVar[str | None] = ContextVar("stagewise_caller_trace", default=None)


class CreateParams(Struct, forbid_unknown_fields=True):
    task: Any
    on_conflict: Literal["error", "ignore", "replace"] = "error"


class GetParams(Struct, forbid_unknown_fields=True):
    id: TaskId
    include_results: bool = True


class IdParams(Struct, forbid_unknown_fields=True):
    id: TaskId


class SendParams(Struct, forbid_unknown_fields=True):
    id: TaskId
    data: Any = None


class FilterParams(Struct, forbid_unknown_fields=True):
    """The filters of tasks.list (also accepted by the batch methods)."""

    status: Status | None = None
    app: AppName | None = None
    tags: Annotated[list[Tag], Meta(max_length=32)] | None = None
    group: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    since: float | str | None = None
    cleaned: bool | None = None
    # fan-out (SPEC §3a)
    parent: TaskId | None = None

    def filters(self) -> Filters:
        return Filters(
            status=self.status,
            app=self.app,
            tags=tuple(self.tags or ()),
            group=self.group,
            since=parse_since(self.since),
            cleaned=self.cleaned,
            parent=self.parent,
        )


class ListParams(FilterParams, forbid_unknown_fields=True):
    sort: Literal["desc", "asc"] = "desc"
    max_results: Annotated[int, Meta(ge=1, le=1000)] = 100
    cursor: Annotated[str, Meta(max_length=4096)] | None = None
    include_results: bool = False


class BatchParams(FilterParams, forbid_unknown_fields=True):
    ids: Annotated[list[TaskId], Meta(min_length=1, max_length=1000)] | None = None
    dry_run: bool = True
    max_results: Annotated[int, Meta(ge=1, le=10_000)] = 1000  # cap when selecting by filters


class RestartParams(BatchParams, forbid_unknown_fields=True):
    from_: Literal["first", "current"] = msgspec.field(default="first", name="from")


class CleanParams(Struct, forbid_unknown_fields=True):
    older_than: Annotated[float, Meta(ge=0)] = 7 * 86400.0
    dry_run: bool = True


class CreateManyParams(Struct, forbid_unknown_fields=True):
    tasks: Annotated[list[Any], Meta(min_length=1, max_length=1000)]
    group: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    on_conflict: Literal["error", "ignore", "replace"] = "error"


class GroupParams(Struct, forbid_unknown_fields=True):
    group: Annotated[str, Meta(min_length=1, max_length=128)]


class NotificationsParams(Struct, forbid_unknown_fields=True):
    task_id: TaskId | None = None
    since: float | str | None = None
    max_results: Annotated[int, Meta(ge=1, le=1000)] = 100


class AckParams(Struct, forbid_unknown_fields=True):
    ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(min_length=1, max_length=1000)]


class NoParams(Struct, forbid_unknown_fields=True):
    pass


# flow control (SPEC §2a)
Until = Annotated[float, Meta(ge=0, le=253402300799.0)]
LimitKey = Annotated[str, Meta(pattern=r"^[^|\s\x00-\x1f]{1,200}$")]


class AppPauseParams(Struct, forbid_unknown_fields=True):
    app: AppName
    until: Until | None = None


class AppParams(Struct, forbid_unknown_fields=True):
    app: AppName


class LimitKeyParams(Struct, forbid_unknown_fields=True):
    key: LimitKey


class LimitListParams(Struct, forbid_unknown_fields=True):
    max_results: Annotated[int, Meta(ge=1, le=1000)] = 100


class LimitPauseParams(Struct, forbid_unknown_fields=True):
    key: LimitKey
    until: Until


MAX_SINCE = 253402300799.0  # 9999-12-31T23:59:59Z


def parse_since(value: float | str | None, field: str = "since") -> float | None:
    """UNIX seconds, or an ISO 8601 time (UTC when it names no zone); a time before 1970 is 0.
    Not a number ("nan", "inf") or after year 9999 is invalid: Redis refuses such scores and ids."""
    if value is None:
        return None
    bad = errors.invalid_params(field, "expected UNIX seconds (up to year 9999) or an ISO 8601 time")
    try:
        t = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(str(value))
            t = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError, OSError):
            raise bad from None
    except OverflowError:  # an integer too large for a float
        raise bad from None
    if not t <= MAX_SINCE:  # also NaN
        raise bad
    return max(t, 0.0)


def package_version() -> str:
    """stagewise's installed version (system.info): `stagewise.__version__`."""
    return stagewise.__version__


Handler = Callable[[Any], Awaitable[Any]]


class Api:
    """The methods; each takes its decoded params Struct."""

    def __init__(self, store: Store, version: str | None = None) -> None:
        self.store = store
        self.version = version or package_version()
        self.methods: dict[str, tuple[type[Struct], Handler]] = {
            "tasks.create": (CreateParams, self.create),
            "tasks.create_many": (CreateManyParams, self.create_many),
            "tasks.get": (GetParams, self.get),
            "tasks.list": (ListParams, self.list),
            "tasks.status": (IdParams, self.status),
            "tasks.send": (SendParams, self.send),
            "tasks.cancel": (BatchParams, self.cancel),
            "tasks.unlock": (BatchParams, self.unlock),
            "tasks.restart": (RestartParams, self.restart),
            "tasks.delete": (BatchParams, self.delete),
            "tasks.clean": (CleanParams, self.clean),
            "tasks.attempts": (IdParams, self.attempts),
            "groups.get": (GroupParams, self.group),
            "executors.list": (NoParams, self.executors),
            "notifications.list": (NotificationsParams, self.notifications),
            "notifications.ack": (AckParams, self.ack),
            "system.info": (NoParams, self.info),
            "apps.list": (NoParams, self.apps),
            "apps.pause": (AppPauseParams, self.pause_app),
            "apps.resume": (AppParams, self.resume_app),
            "limits.get": (LimitKeyParams, self.limit_get),
            "limits.list": (LimitListParams, self.limit_list),
            "limits.pause": (LimitPauseParams, self.limit_pause),
            "limits.resume": (LimitKeyParams, self.limit_resume),
            "stats.history": (NoParams, self.stats),
            "rpc.discover": (NoParams, self.discover),
        }
        self._openrpc: dict[str, Any] | None = None

    async def create(self, p: CreateParams) -> Any:
        task = parse_task(p.task)
        return view(await self.store.create(task, p.on_conflict, trace=CALLER_TRACE.get()))

    async def get(self, p: GetParams) -> Any:
        return await self.store.get(p.id, p.include_results)

    async def list(self, p: ListParams) -> Any:
        return await self.store.list_tasks(p.filters(), p.sort, p.max_results, p.cursor, p.include_results)

    async def create_many(self, p: CreateManyParams) -> Any:
        group = p.group or uuid.uuid4().hex
        tasks = []
        for n, raw in enumerate(p.tasks):
            if isinstance(raw, dict):
                if raw.get("group") not in (None, group):
                    raise errors.invalid_params(f"tasks[{n}].group", "differs from the batch's group")
                raw = {**raw, "group": group}
            task = parse_task(raw, f"tasks[{n}]")
            if task.debounce is not None:
                # a debounced create may answer with another task (SPEC §2a), which a batch
                # stored whole or not at all has no way to say
                raise errors.invalid_params(
                    f"tasks[{n}].debounce", "not taken by tasks.create_many: use tasks.create"
                )
            tasks.append(task)
        ids = [t.id for t in tasks]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise errors.invalid_params("tasks", f"id {dup!r} appears twice")
        ids = await self.store.create_many(tasks, group, p.on_conflict, CALLER_TRACE.get())
        return {"group": group, "ids": ids}

    async def _batch(self, op: str, p: BatchParams, **extra: Any) -> Any:
        f = p.filters()
        if p.ids is not None:
            if f != Filters():
                raise errors.invalid_params("ids", "give ids or filters, not both")
            ids = list(dict.fromkeys(p.ids))
        else:
            if f == Filters():
                raise errors.invalid_params("ids", "give ids or at least one filter")
            ids = await self.store.select(f, p.max_results)
        return await self.store.batch(op, ids, p.dry_run, **extra)

    async def cancel(self, p: BatchParams) -> Any:
        return await self._batch("cancel", p)

    async def unlock(self, p: BatchParams) -> Any:
        return await self._batch("unlock", p)

    async def restart(self, p: RestartParams) -> Any:
        return await self._batch("restart", p, from_=p.from_)

    async def delete(self, p: BatchParams) -> Any:
        return await self._batch("delete", p)

    async def clean(self, p: CleanParams) -> Any:
        return await self.store.clean(p.older_than, p.dry_run, time.time())

    async def group(self, p: GroupParams) -> Any:
        return await self.store.group(p.group)

    async def notifications(self, p: NotificationsParams) -> Any:
        return await self.store.notifications(p.task_id, parse_since(p.since), p.max_results)

    async def ack(self, p: AckParams) -> Any:
        return {"acked": await self.store.ack(p.ids)}

    async def status(self, p: IdParams) -> Any:
        v = await self.store.get(p.id, include_results=False)
        return {
            "id": p.id,
            "status": v["status"],
            "stage": v["stage"],
            "stages": v["stages"],
            "http_code": HTTP_CODE[Status(v["status"])],
        }

    async def send(self, p: SendParams) -> Any:
        await self.store.send(p.id, p.data)
        return await self.store.get(p.id)

    async def attempts(self, p: IdParams) -> Any:
        return await self.store.attempts(p.id)

    async def executors(self, p: NoParams) -> Any:
        return await self.store.executors()

    async def info(self, p: NoParams) -> Any:
        server = await self.store.r.info("server")
        s = self.store.settings
        return {
            "version": self.version,
            "redis_version": server.get("redis_version"),
            "namespace": s.namespace,
            "partitions": s.partitions,
        }

    async def apps(self, p: NoParams) -> Any:
        return await self.store.apps(await self.store.server_time())  # the indexes' clock

    # flow control (SPEC §2a)
    async def pause_app(self, p: AppPauseParams) -> Any:
        return await self.store.pause_app(p.app, p.until if p.until is not None else PAUSE_FOREVER)

    async def resume_app(self, p: AppParams) -> Any:
        return await self.store.pause_app(p.app, None)

    async def limit_get(self, p: LimitKeyParams) -> Any:
        return await self.store.limits.get(p.key, await self.store.server_time())

    async def limit_list(self, p: LimitListParams) -> Any:
        return await self.store.limits.seen(await self.store.server_time(), p.max_results)

    async def limit_pause(self, p: LimitPauseParams) -> Any:
        return {"key": p.key, "paused_until": await self.store.limits.pause(p.key, p.until)}

    async def limit_resume(self, p: LimitKeyParams) -> Any:
        return {"key": p.key, "paused_until": await self.store.limits.pause(p.key, None)}

    async def stats(self, p: NoParams) -> Any:
        from stagewise.manager.stats import history

        return await history(self.store)

    async def discover(self, p: NoParams) -> Any:
        """rpc.discover: the OpenRPC document (SPEC §8), made once from the method table."""
        if self._openrpc is None:
            from stagewise.manager.openrpc import document

            self._openrpc = document(self.methods, self.version)
        return self._openrpc


def schema_methods() -> dict[str, tuple[type[Struct], Handler]]:
    """The method table, for its params types only (the OpenRPC document without a Redis)."""
    return Api(cast(Any, None)).methods


class Dispatcher:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.log = slog.get(role="rpc")

    async def handle_body(self, body: bytes) -> Any:
        """The response document for a request body, or None when nothing is to be answered."""
        try:
            doc = msgspec.json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
            return _error(None, RpcError(errors.PARSE_ERROR, f"Parse error: {e}"))
        if _nested_deeper(body, doc, MAX_JSON_DEPTH):
            return _error(
                None, RpcError(errors.PARSE_ERROR, f"Parse error: nested deeper than {MAX_JSON_DEPTH} levels")
            )
        if isinstance(doc, list):
            if not doc:
                return _error(None, RpcError(errors.INVALID_REQUEST, "Invalid Request: empty batch"))
            if len(doc) > MAX_BATCH:
                return _error(
                    None,
                    RpcError(
                        errors.LIMIT_EXCEEDED,
                        f"a batch holds at most {MAX_BATCH} requests",
                        {"field": "batch", "reason": f"more than {MAX_BATCH} requests"},
                    ),
                )
            # Once a request found Redis unreachable, the ones after it are answered the same
            # without being run: each would wait out its own socket timeout, and the batch
            # would answer long after SPEC §7's 5 s.
            down: list[RpcError] = []
            out = [r for r in [await self.handle_one(d, down) for d in doc] if r is not None]
            return out or None
        return await self.handle_one(doc)

    async def handle_one(self, req: Any, down: list[RpcError] | None = None) -> Any:
        """The reply to one request (None for a notification).  `down`, in a batch: holds the
        1006 of an earlier request that found Redis unreachable or a durability wait not met
        (each later write would wait it out again); a valid request is then
        answered that without being run, and the first such 1006 is put there."""
        if not isinstance(req, dict):
            return _error(None, _bad_request("request", "must be an object"))
        rid = req.get("id")
        has_id = "id" in req
        if has_id and not (
            rid is None
            or isinstance(rid, str)
            or (isinstance(rid, int | float) and not isinstance(rid, bool))
        ):
            return _error(None, _bad_request("id", "must be a string, a number or null"))
        if req.get("jsonrpc") != "2.0":
            return _error(rid, _bad_request("jsonrpc", 'must be "2.0"'))
        method = req.get("method")
        if not isinstance(method, str):
            return _error(rid, _bad_request("method", "must be a string"))
        extra = set(req) - {"jsonrpc", "method", "params", "id"}
        if extra:
            return _error(rid, _bad_request(sorted(extra)[0], "unknown member of a request"))
        if down:
            return _error(rid, down[0]) if has_id else None
        try:
            result = await self.call(method, req.get("params"))
        except RpcError as e:
            return _error(rid, e) if has_id else None
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is None:
                self.log.exception("rpc_internal_error", method=method)
                return _error(rid, RpcError(errors.INTERNAL_ERROR)) if has_id else None
            # Redis cannot serve it now: 1006, never -32603 (SPEC §7); one line, no traceback
            self.log.warning("rpc_unavailable", method=method, reason=reason, error=describe(e))
            unavailable = errors.unavailable(reason)
            # a wait not met will not be met by the next request within the 5 s either
            if down is not None and (reason == faults.UNREACHABLE or isinstance(e, faults.DurabilityNotMet)):
                down.append(unavailable)
            return _error(rid, unavailable) if has_id else None
        return {"jsonrpc": "2.0", "id": rid, "result": result} if has_id else None

    async def call(self, method: str, params: Any) -> Any:
        entry = self.api.methods.get(method)
        if entry is None:
            raise RpcError(errors.METHOD_NOT_FOUND, f"Method not found: {method}", {"method": method})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise errors.invalid_params("params", "must be an object (by-name parameters)")
        struct, handler = entry
        decoded = convert(params, struct, "")
        return await handler(decoded)


def _nested_deeper(body: bytes, doc: Any, limit: int) -> bool:
    if body.count(b"[") + body.count(b"{") <= limit:  # cheap: most bodies cannot nest that deep
        return False
    stack = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in children if isinstance(v, dict | list))
    return False


def _bad_request(field: str, reason: str) -> RpcError:
    return RpcError(
        errors.INVALID_REQUEST, f"Invalid Request: {field}: {reason}", {"field": field, "reason": reason}
    )


def _error(rid: Any, e: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": e.to_dict()}
