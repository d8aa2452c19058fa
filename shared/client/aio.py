"""`AsyncClient`: the manager's JSON-RPC 2.0 entrypoint (SPEC §7) over HTTP, with aiohttp.

One method per RPC method, keyword arguments named as in the spec (`from` is `from_`); arguments
left at ``None`` are not sent, so the server's defaults apply.  `Client` (stagewise.client.sync) is
its blocking twin, `stagewise.manager.inproc.RedisClient` the same methods without the HTTP hop.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

import aiohttp

from stagewise import status as _status
from stagewise.client.errors import StagewiseError, TransportError, Unauthorized, error_from
from stagewise.client.types import (
    AckResult,
    AppInfo,
    AppPause,
    Attempt,
    BatchResult,
    CreateManyResult,
    ExecutorInfo,
    Filters,
    GroupInfo,
    LimitInfo,
    LimitPause,
    Notification,
    OnConflict,
    RestartFrom,
    Since,
    Sort,
    SystemInfo,
    TaskPage,
    TaskStatus,
    TaskView,
)

DEFAULT_URL = "http://127.0.0.1:8765"
TERMINAL: frozenset[str] = frozenset(str(s) for s in _status.TERMINAL)

_FILTER_NAMES = frozenset(Filters.__annotations__)


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


def _filters(method: str, filters: Mapping[str, Any]) -> dict[str, Any]:
    """The filter keywords as RPC params.  They arrive as ``**filters``, which takes any name:
    a misspelt one is refused here with the TypeError a named parameter would have raised,
    rather than sent to the server or dropped."""
    unknown = filters.keys() - _FILTER_NAMES
    if unknown:
        raise TypeError(f"{method}() got an unexpected keyword argument {min(unknown)!r}")
    return _params(**filters)


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
        self, op: str, ids: Iterable[str] | None, filters: Filters, **params: Any
    ) -> builtins.list[BatchResult]:
        f = _filters(op, filters)
        result: builtins.list[BatchResult] = await self.call(f"tasks.{op}", **_params(ids=ids, **params), **f)
        return result

    # The batch operations select `ids`, or the tasks matching the filters (`Filters`: status,
    # app, tags, group, since, cleaned), at most `max_results` of them.

    async def cancel(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        max_results: int | None = None,
        **filters: Unpack[Filters],
    ) -> builtins.list[BatchResult]:
        """tasks.cancel on `ids` or on the tasks matching the filters.  A dry run by default:
        pass dry_run=False to apply."""
        return await self._batch_op("cancel", ids, filters, dry_run=dry_run, max_results=max_results)

    async def unlock(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        max_results: int | None = None,
        **filters: Unpack[Filters],
    ) -> builtins.list[BatchResult]:
        """tasks.unlock: force-release leases (RUNNING -> SUSPENDED).  Dry run by default."""
        return await self._batch_op("unlock", ids, filters, dry_run=dry_run, max_results=max_results)

    async def restart(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        from_: RestartFrom | None = None,
        max_results: int | None = None,
        **filters: Unpack[Filters],
    ) -> builtins.list[BatchResult]:
        """tasks.restart terminal tasks (a fresh run); from_="first" (default) or "current".
        Dry run by default."""
        return await self._batch_op(
            "restart", ids, filters, dry_run=dry_run, from_=from_, max_results=max_results
        )

    async def delete(
        self,
        ids: Iterable[str] | None = None,
        *,
        dry_run: bool = True,
        max_results: int | None = None,
        **filters: Unpack[Filters],
    ) -> builtins.list[BatchResult]:
        """tasks.delete terminal tasks (never `system` ones).  Dry run by default."""
        return await self._batch_op("delete", ids, filters, dry_run=dry_run, max_results=max_results)

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

    async def apps(self) -> builtins.list[AppInfo]:
        """apps.list: each app's queued / running / waiting tasks, failures in the last hour,
        live executors and lag."""
        result: builtins.list[AppInfo] = await self.call("apps.list")
        return result

    async def pause_app(self, app: str, until: float | None = None) -> AppPause:
        """apps.pause: no task of `app` is claimed until `until` (UNIX s) or resume_app."""
        result: AppPause = await self.call("apps.pause", **_params(app=app, until=until))
        return result

    async def resume_app(self, app: str) -> AppPause:
        """apps.resume"""
        result: AppPause = await self.call("apps.resume", app=app)
        return result

    async def limit(self, key: str) -> LimitInfo:
        """limits.get: ``{key, running, held, paused_until}``."""
        result: LimitInfo = await self.call("limits.get", key=key)
        return result

    async def pause_limit(self, key: str, until: float) -> LimitPause:
        """limits.pause: no task of the limit `key` is claimed until `until` (UNIX s)."""
        result: LimitPause = await self.call("limits.pause", key=key, until=until)
        return result

    async def resume_limit(self, key: str) -> LimitPause:
        """limits.resume"""
        result: LimitPause = await self.call("limits.resume", key=key)
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
        sort: Sort | None = None,
        max_results: int | None = None,
        cursor: str | None = None,
        include_results: bool | None = None,
        **filters: Unpack[Filters],
    ) -> TaskPage:
        """tasks.list: one page ``{items, next_cursor}`` (most recently updated first by default).
        `since` is UNIX seconds, a datetime or an ISO 8601 string; `tags` must all match."""
        f = _filters("list", filters)
        params = _params(sort=sort, max_results=max_results, cursor=cursor, include_results=include_results)
        result: TaskPage = await self.call("tasks.list", **f, **params)
        return result

    def list_all(
        self,
        *,
        sort: Sort | None = None,
        max_results: int | None = None,
        cursor: str | None = None,
        include_results: bool | None = None,
        **filters: Unpack[Filters],
    ) -> AsyncIterator[TaskView]:
        """Every task matching the filters, following `next_cursor` (`max_results` is the page size)."""
        _filters("list_all", filters)  # a misspelt filter fails here, not at the first page

        async def pages(cursor: str | None) -> AsyncIterator[TaskView]:
            while True:
                page = await self.list(
                    sort=sort,
                    max_results=max_results,
                    cursor=cursor,
                    include_results=include_results,
                    **filters,
                )
                for item in page["items"]:
                    yield item
                cursor = page["next_cursor"]
                if not cursor:
                    return

        return pages(cursor)
