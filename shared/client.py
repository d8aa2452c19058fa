"""Python client for the manager's JSON-RPC 2.0 entrypoint (SPEC §7).

    async with AsyncClient("http://127.0.0.1:8765") as c:
        view = await c.create({"app": "demo", "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}]})
        done = await c.wait(view["id"], timeout=60)

    with Client("http://127.0.0.1:8765") as c:  # the same methods, blocking
        print(c.get(view["id"])["results"])

One method per RPC method, keyword arguments named as in the spec (`from` is `from_`); arguments
left at ``None`` are not sent, so the server's defaults apply.  Results are the decoded JSON (the
TypedDicts below document their shape).  A JSON-RPC error raises a `StagewiseError` subclass chosen
by its code (`TaskNotFound`, `InvalidParams`, ...) carrying `.code`, `.message` and `.data`.

`Client` is the blocking twin of `AsyncClient`: it runs an `AsyncClient` on a private event loop in
a background thread, so it works from any thread, inside or outside a running event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, TypedDict, TypeVar

import aiohttp

__all__ = [
    "DEFAULT_URL",
    "TERMINAL",
    "AsyncClient",
    "RedisClient",
    "Client",
    "StagewiseError",
    "TransportError",
    "Unauthorized",
    "ParseError",
    "InvalidRequest",
    "MethodNotFound",
    "InvalidParams",
    "InternalError",
    "TaskNotFound",
    "TaskExists",
    "InvalidTransition",
    "NotWaitingForMessage",
    "LimitExceeded",
    "TaskView",
    "TaskStatus",
    "TaskPage",
    "BatchResult",
    "Attempt",
    "GroupInfo",
    "CreateManyResult",
    "ExecutorInfo",
    "Notification",
    "AckResult",
    "SystemInfo",
]

DEFAULT_URL = "http://127.0.0.1:8765"
TERMINAL: frozenset[str] = frozenset({"FINISHED", "FAILED", "CANCELED"})

OnConflict = Literal["error", "ignore", "replace"]
Sort = Literal["desc", "asc"]
RestartFrom = Literal["first", "current"]
Since = float | int | str | datetime


# --------------------------------------------------------------------------- result shapes


class TaskView(TypedDict, total=False):
    """tasks.get / tasks.create / tasks.send / tasks.list items: the task document plus its state."""

    id: str
    app: str
    commands: list[dict[str, Any]]
    kws: dict[str, Any]
    tags: list[str]
    group: str | None
    description: str | None
    meta: dict[str, Any]
    run_at: float | None
    cron: str | None
    tz: str
    priority: int
    max_exec_timeout: float
    max_retries: int
    retry_backoff: float
    restart_policy: str
    next_task: str | None
    notify: bool
    system: bool
    enabled: bool
    status: str
    stage: int
    stages: int
    results: list[Any]  # only when include_results
    job_id: str | None
    attempt: int
    retries: int
    executor_id: str | None
    created: float | None
    updated: float | None
    queued_at: float | None
    next_run: float | None
    wait_deadline: float | None
    exec_deadline: float | None
    exit_code: int | None
    error: dict[str, Any] | None  # {code, message, stage, type?}
    cleaned: bool
    locked: bool


class TaskStatus(TypedDict):
    """tasks.status"""

    id: str
    status: str
    stage: int
    stages: int
    http_code: int


class TaskPage(TypedDict):
    """tasks.list"""

    items: list[TaskView]
    next_cursor: str | None


class BatchResult(TypedDict):
    """One item of tasks.cancel / unlock / restart / delete / clean."""

    id: str
    status: str | None
    changed: bool
    error: str | None


class Attempt(TypedDict, total=False):
    """tasks.attempts"""

    job_id: str
    stage: int
    executor_id: str | None
    started: float | None
    ended: float | None
    outcome: str
    error: dict[str, Any] | None


class CreateManyResult(TypedDict):
    group: str
    ids: list[str]


class GroupInfo(TypedDict):
    group: str
    total: int
    by_status: dict[str, int]


class ExecutorInfo(TypedDict, total=False):
    id: str
    app: str
    host: str
    pid: int
    started: float
    last_ping: float
    running: int


class Notification(TypedDict, total=False):
    id: str
    task_id: str
    job_id: str
    status: str
    created: float
    error: dict[str, Any] | None


class AckResult(TypedDict):
    acked: int


class SystemInfo(TypedDict):
    version: str
    redis_version: str
    namespace: str
    partitions: int


# --------------------------------------------------------------------------- errors


class StagewiseError(Exception):
    """A JSON-RPC error object from the manager (or a transport failure, see `TransportError`)."""

    code: int = 0
    name: str = "ERROR"

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{self.code} {self.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.data!r})"


class TransportError(StagewiseError):
    """No JSON-RPC answer: the manager could not be reached, or answered something else.
    `code` is the HTTP status, or 0 when there was no HTTP response."""

    name = "TRANSPORT_ERROR"


class Unauthorized(TransportError):
    """HTTP 401: tokens are configured on the manager and ours is missing or wrong."""

    code = 401
    name = "UNAUTHORIZED"


class ParseError(StagewiseError):
    code, name = -32700, "PARSE_ERROR"


class InvalidRequest(StagewiseError):
    code, name = -32600, "INVALID_REQUEST"


class MethodNotFound(StagewiseError):
    code, name = -32601, "METHOD_NOT_FOUND"


class InvalidParams(StagewiseError):
    """`data` is ``{field, reason}``."""

    code, name = -32602, "INVALID_PARAMS"


class InternalError(StagewiseError):
    code, name = -32603, "INTERNAL_ERROR"


class TaskNotFound(StagewiseError):
    code, name = 1001, "TASK_NOT_FOUND"


class TaskExists(StagewiseError):
    code, name = 1002, "TASK_EXISTS"


class InvalidTransition(StagewiseError):
    """`data` is ``{from, to}``."""

    code, name = 1003, "INVALID_TRANSITION"


class NotWaitingForMessage(StagewiseError):
    code, name = 1004, "NOT_WAITING_FOR_MESSAGE"


class LimitExceeded(StagewiseError):
    code, name = 1005, "LIMIT_EXCEEDED"


ERRORS: dict[int, type[StagewiseError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        TaskNotFound,
        TaskExists,
        InvalidTransition,
        NotWaitingForMessage,
        LimitExceeded,
    )
}


def error_from(obj: Any) -> StagewiseError:
    """The exception for a JSON-RPC error object ``{code, message, data?}``."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("code"), int):
        return TransportError(0, f"malformed JSON-RPC error: {obj!r}")
    code = obj["code"]
    return ERRORS.get(code, StagewiseError)(code, str(obj.get("message", "")), obj.get("data"))


# --------------------------------------------------------------------------- helpers


def _params(**kw: Any) -> dict[str, Any]:
    """The arguments that were given (not None), with python names mapped to RPC names."""
    out: dict[str, Any] = {}
    for name, value in kw.items():
        if value is None:
            continue
        if name == "from_":
            name = "from"
        if isinstance(value, datetime):
            value = value.timestamp()
        elif name in ("ids", "tags", "tasks") and not isinstance(value, builtins.list):
            value = builtins.list(value)
        out[name] = value
    return out


def _filters(
    status: str | None,
    app: str | None,
    tags: Sequence[str] | None,
    group: str | None,
    since: Since | None,
    cleaned: bool | None,
) -> dict[str, Any]:
    return _params(status=status, app=app, tags=tags, group=group, since=since, cleaned=cleaned)


# --------------------------------------------------------------------------- async client


class AsyncClient:
    """Async client; use as ``async with AsyncClient(url) as c`` (or call `close()`).

    `url` is the manager's base URL (``/rpc`` is appended), `token` a bearer token (needed when the
    manager has STAGEWISE_API_TOKENS), `timeout` the total seconds for one HTTP request.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._own_session = True
        return self._session

    async def _post(self, body: Any) -> Any:
        """POST one request document (or batch) to /rpc; the decoded reply (None for 204)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body, separators=(",", ":"))
        try:
            async with self._http().post(f"{self.url}/rpc", data=data, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise TransportError(0, f"{self.url}: no answer within {self.timeout}s") from None
        except aiohttp.ClientError as e:
            raise TransportError(0, f"cannot reach {self.url}: {e or type(e).__name__}") from None
        if status == 401:
            raise Unauthorized(401, "HTTP 401 Unauthorized: a valid bearer token is required")
        if status == 204 or (not raw and status < 300):
            return None
        try:
            reply = json.loads(raw)
        except ValueError:
            text = raw[:200].decode(errors="replace")
            raise TransportError(status, f"HTTP {status}, not a JSON-RPC reply: {text!r}") from None
        if isinstance(reply, dict) and "error" in reply and reply.get("id") is None:
            raise error_from(reply["error"])  # the request as a whole was refused
        return reply

    async def call(self, method: str, /, **params: Any) -> Any:
        """Call any RPC method with by-name params; its result, or raise a StagewiseError."""
        rid = next(self._ids)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params:
            body["params"] = params
        reply = await self._post(body)
        if not isinstance(reply, dict) or (reply.get("id") != rid and "error" not in reply):
            raise TransportError(0, f"{method}: malformed reply {reply!r}")
        if "error" in reply:
            raise error_from(reply["error"])
        return reply.get("result")

    async def batch(
        self, calls: Iterable[tuple[str, Mapping[str, Any] | None]], raise_errors: bool = False
    ) -> builtins.list[Any]:
        """Send ``[(method, params), ...]`` as one JSON-RPC batch.  The results in call order; a
        failed call's slot holds its StagewiseError (or, with raise_errors, the first is raised)."""
        first = next(self._ids)
        reqs: builtins.list[dict[str, Any]] = []
        for n, (method, params) in enumerate(calls):
            req: dict[str, Any] = {"jsonrpc": "2.0", "id": first + n, "method": method}
            if params:
                req["params"] = dict(params)
            reqs.append(req)
        if not reqs:
            return []
        self._ids = itertools.count(first + len(reqs))
        reply = await self._post(reqs)
        if isinstance(reply, dict) and "error" in reply:
            raise error_from(reply["error"])
        if not isinstance(reply, builtins.list):
            raise TransportError(0, f"batch: malformed reply {reply!r}")
        by_id = {r.get("id"): r for r in reply if isinstance(r, dict)}
        out: builtins.list[Any] = []
        for req in reqs:
            r = by_id.get(req["id"])
            if r is None:
                out.append(TransportError(0, f"{req['method']}: no reply in the batch"))
            elif "error" in r:
                out.append(error_from(r["error"]))
            else:
                out.append(r.get("result"))
        if raise_errors:
            for item in out:
                if isinstance(item, StagewiseError):
                    raise item
        return out

    # ------------------------------------------------------------------ tasks

    async def create(self, task: Mapping[str, Any], *, on_conflict: OnConflict | None = None) -> TaskView:
        """tasks.create: the new task's view.  on_conflict: "error" (default), "ignore", "replace"."""
        result: TaskView = await self.call(
            "tasks.create", **_params(task=dict(task), on_conflict=on_conflict)
        )
        return result

    async def create_many(
        self, tasks: Iterable[Mapping[str, Any]], *, group: str | None = None
    ) -> CreateManyResult:
        """tasks.create_many: up to 1000 tasks in one group; ``{group, ids}``."""
        docs = [dict(t) for t in tasks]
        result: CreateManyResult = await self.call("tasks.create_many", **_params(tasks=docs, group=group))
        return result

    async def get(self, id: str, *, include_results: bool | None = None) -> TaskView:
        """tasks.get (results included unless include_results=False)."""
        result: TaskView = await self.call("tasks.get", **_params(id=id, include_results=include_results))
        return result

    async def status(self, id: str) -> TaskStatus:
        """tasks.status: ``{id, status, stage, stages, http_code}``."""
        result: TaskStatus = await self.call("tasks.status", id=id)
        return result

    async def send(self, id: str, data: Any) -> TaskView:
        """tasks.send: deliver `data` to the task's (next) message stage."""
        result: TaskView = await self.call("tasks.send", id=id, data=data)
        return result

    async def attempts(self, id: str) -> builtins.list[Attempt]:
        """tasks.attempts: every attempt of every run of the task."""
        result: builtins.list[Attempt] = await self.call("tasks.attempts", id=id)
        return result

    async def _batch_op(
        self, method: str, ids: Iterable[str] | None, **kw: Any
    ) -> builtins.list[BatchResult]:
        result: builtins.list[BatchResult] = await self.call(method, **_params(ids=ids, **kw))
        return result

    async def cancel(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        status: str | None = None,
        app: str | None = None,
        tags: Sequence[str] | None = None,
        group: str | None = None,
        since: Since | None = None,
        cleaned: bool | None = None,
        max_results: int | None = None,
    ) -> builtins.list[BatchResult]:
        """tasks.cancel on `ids` or on the tasks matching the filters.  A dry run by default:
        pass dry_run=False to apply."""
        f = _filters(status, app, tags, group, since, cleaned)
        return await self._batch_op("tasks.cancel", ids, dry_run=dry_run, max_results=max_results, **f)

    async def unlock(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        status: str | None = None,
        app: str | None = None,
        tags: Sequence[str] | None = None,
        group: str | None = None,
        since: Since | None = None,
        cleaned: bool | None = None,
        max_results: int | None = None,
    ) -> builtins.list[BatchResult]:
        """tasks.unlock: force-release leases (RUNNING -> SUSPENDED).  Dry run by default."""
        f = _filters(status, app, tags, group, since, cleaned)
        return await self._batch_op("tasks.unlock", ids, dry_run=dry_run, max_results=max_results, **f)

    async def restart(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        from_: RestartFrom | None = None,
        status: str | None = None,
        app: str | None = None,
        tags: Sequence[str] | None = None,
        group: str | None = None,
        since: Since | None = None,
        cleaned: bool | None = None,
        max_results: int | None = None,
    ) -> builtins.list[BatchResult]:
        """tasks.restart terminal tasks (a fresh run); from_="first" (default) or "current".
        Dry run by default."""
        f = _filters(status, app, tags, group, since, cleaned)
        return await self._batch_op(
            "tasks.restart", ids, dry_run=dry_run, from_=from_, max_results=max_results, **f
        )

    async def delete(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        status: str | None = None,
        app: str | None = None,
        tags: Sequence[str] | None = None,
        group: str | None = None,
        since: Since | None = None,
        cleaned: bool | None = None,
        max_results: int | None = None,
    ) -> builtins.list[BatchResult]:
        """tasks.delete terminal tasks (never `system` ones).  Dry run by default."""
        f = _filters(status, app, tags, group, since, cleaned)
        return await self._batch_op("tasks.delete", ids, dry_run=dry_run, max_results=max_results, **f)

    async def clean(
        self, *, older_than: float | None = None, dry_run: bool = True
    ) -> builtins.list[BatchResult]:
        """tasks.clean: drop results and kws of terminal tasks last updated more than `older_than`
        seconds ago (server default: 7 days).  Dry run by default."""
        result: builtins.list[BatchResult] = await self.call(
            "tasks.clean", **_params(older_than=older_than, dry_run=dry_run)
        )
        return result

    async def wait(
        self,
        id: str,
        statuses: Iterable[str] = TERMINAL,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for the whole polling loop
        interval: float = 0.2,
    ) -> TaskStatus:
        """Poll tasks.status until the task's status is one of `statuses` (default: terminal);
        return that status.  TimeoutError after `timeout` seconds (None: wait forever)."""
        want = {str(s) for s in statuses}
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = await self.status(id)
            if st["status"] in want:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {id!r} is {st['status']} after {timeout}s, not in {sorted(want)}")
            pause = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
            await asyncio.sleep(pause)

    # ------------------------------------------------------------------ other objects

    async def group(self, group: str) -> GroupInfo:
        """groups.get: ``{group, total, by_status}``."""
        result: GroupInfo = await self.call("groups.get", group=group)
        return result

    async def executors(self) -> builtins.list[ExecutorInfo]:
        """executors.list: the live executors."""
        result: builtins.list[ExecutorInfo] = await self.call("executors.list")
        return result

    async def notifications(
        self, *, task_id: str | None = None, since: Since | None = None, max_results: int | None = None
    ) -> builtins.list[Notification]:
        """notifications.list (tasks created with notify=true)."""
        result: builtins.list[Notification] = await self.call(
            "notifications.list", **_params(task_id=task_id, since=since, max_results=max_results)
        )
        return result

    async def ack(self, ids: Iterable[str]) -> AckResult:
        """notifications.ack: ``{acked: n}``."""
        result: AckResult = await self.call("notifications.ack", ids=builtins.list(ids))
        return result

    async def info(self) -> SystemInfo:
        """system.info: ``{version, redis_version, namespace, partitions}``."""
        result: SystemInfo = await self.call("system.info")
        return result

    # ``list`` last: inside the class body the name shadows the builtin (hence builtins.list above)

    async def list(
        self,
        *,
        status: str | None = None,
        app: str | None = None,
        tags: Sequence[str] | None = None,
        group: str | None = None,
        since: Since | None = None,
        cleaned: bool | None = None,
        sort: Sort | None = None,
        max_results: int | None = None,
        cursor: str | None = None,
        include_results: bool | None = None,
    ) -> TaskPage:
        """tasks.list: one page ``{items, next_cursor}`` (most recently updated first by default).
        `since` is UNIX seconds, a datetime or an ISO 8601 string; `tags` must all match."""
        f = _filters(status, app, tags, group, since, cleaned)
        params = _params(sort=sort, max_results=max_results, cursor=cursor, include_results=include_results)
        result: TaskPage = await self.call("tasks.list", **f, **params)
        return result

    async def list_all(
        self,
        *,
        status: str | None = None,
        app: str | None = None,
        tags: Sequence[str] | None = None,
        group: str | None = None,
        since: Since | None = None,
        cleaned: bool | None = None,
        sort: Sort | None = None,
        max_results: int | None = None,
        cursor: str | None = None,
        include_results: bool | None = None,
    ) -> AsyncIterator[TaskView]:
        """Every task matching the filters, following `next_cursor` (`max_results` is the page size)."""
        while True:
            page = await self.list(
                status=status,
                app=app,
                tags=tags,
                group=group,
                since=since,
                cleaned=cleaned,
                sort=sort,
                max_results=max_results,
                cursor=cursor,
                include_results=include_results,
            )
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if not cursor:
                return


# --------------------------------------------------------------------------- in-process client


class RedisClient(AsyncClient):
    """An `AsyncClient` that needs no manager: every call runs in this process, through the
    manager's own method table (`stagewise.manager.rpc.Dispatcher`) against Redis, with the same
    validation, the same scripts and the same errors as over HTTP.

        async with RedisClient("redis://127.0.0.1:6379/0", namespace="stagewise") as c:
            await c.create({"app": "demo", "commands": [{"method": "demo.echo"}]})

    For producers that can reach Redis: it saves the HTTP hop and the manager's work (a
    create is one script call).  It has no token check: whoever can write to Redis is
    trusted already.  Settings not given come from the environment (STAGEWISE_REDIS_URL,
    STAGEWISE_NAMESPACE, STAGEWISE_PARTITIONS), as for the daemons.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        partitions: int | None = None,
        max_connections: int = 64,
    ) -> None:
        super().__init__()
        self.url = "redis-direct"
        self._settings = (redis_url, namespace, partitions)
        self._max_connections = max_connections
        self._dispatcher: Any = None
        self._redis: Any = None

    async def _rpc(self) -> Any:
        if self._dispatcher is None:
            # Imported here so that HTTP-only users of this module never load the manager's code.
            import dataclasses

            from stagewise import config
            from stagewise.manager.rpc import Api, Dispatcher
            from stagewise.manager.store import Store
            from stagewise.storage.connection import connect

            url, namespace, partitions = self._settings
            settings = config.load()
            settings = dataclasses.replace(
                settings,
                redis_url=url or settings.redis_url,
                namespace=namespace or settings.namespace,
                partitions=partitions or settings.partitions,
            )
            self._redis = await connect(settings.redis_url, max_connections=self._max_connections)
            self._dispatcher = Dispatcher(Api(Store(self._redis, settings)))
        return self._dispatcher

    async def _post(self, body: Any) -> Any:
        d = await self._rpc()
        if isinstance(body, builtins.list):  # the batch rules (size limit, ...) of the HTTP path
            return await d.handle_body(json.dumps(body).encode())
        return await d.handle_one(body)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = self._dispatcher = None


# --------------------------------------------------------------------------- sync client

P = ParamSpec("P")
T = TypeVar("T")


def _sync(
    fn: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    """The blocking twin of an AsyncClient method (same signature, same docstring)."""

    @functools.wraps(fn)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(fn(self._client, *args, **kwargs))

    return method


def _sync_iter(
    fn: Callable[Concatenate[AsyncClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """The blocking twin of an AsyncClient async generator: a plain iterator."""

    @functools.wraps(fn)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        it = fn(self._client, *args, **kwargs)
        try:
            while True:
                try:
                    yield self._run(_anext(it))
                except StopAsyncIteration:
                    return
        finally:
            self._run(_aclose(it))

    return method


async def _anext(it: AsyncIterator[T]) -> T:
    return await it.__anext__()


async def _aclose(it: AsyncIterator[Any]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


class Client:
    """Blocking client with the methods of `AsyncClient`; use as ``with Client(url) as c``.

    Calls run on a private event loop in a daemon thread owned by this client; `close()` stops it.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stagewise-client", daemon=True)
        self._thread.start()
        self._client = AsyncClient(url, token, timeout)

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def token(self) -> str | None:
        return self._client.token

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this Client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    call = _sync(AsyncClient.call)
    batch = _sync(AsyncClient.batch)
    create = _sync(AsyncClient.create)
    create_many = _sync(AsyncClient.create_many)
    get = _sync(AsyncClient.get)
    status = _sync(AsyncClient.status)
    send = _sync(AsyncClient.send)
    attempts = _sync(AsyncClient.attempts)
    cancel = _sync(AsyncClient.cancel)
    unlock = _sync(AsyncClient.unlock)
    restart = _sync(AsyncClient.restart)
    delete = _sync(AsyncClient.delete)
    clean = _sync(AsyncClient.clean)
    wait = _sync(AsyncClient.wait)
    group = _sync(AsyncClient.group)
    executors = _sync(AsyncClient.executors)
    notifications = _sync(AsyncClient.notifications)
    ack = _sync(AsyncClient.ack)
    info = _sync(AsyncClient.info)
    list = _sync(AsyncClient.list)
    list_all = _sync_iter(AsyncClient.list_all)
