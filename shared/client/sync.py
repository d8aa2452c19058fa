"""`Client`: the blocking twin of `AsyncClient`, with the same methods and docstrings.

It runs an `AsyncClient` on a private event loop in a daemon thread owned by the client, so it works
from any thread, inside or outside a running event loop (a notebook, a Django view, a script).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from stagewise.client.aio import DEFAULT_URL, AsyncClient

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
    """The blocking twin of an AsyncClient method that returns an async iterator: a plain iterator."""

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
    apps = _sync(AsyncClient.apps)
    pause_app = _sync(AsyncClient.pause_app)
    resume_app = _sync(AsyncClient.resume_app)
    limit = _sync(AsyncClient.limit)
    pause_limit = _sync(AsyncClient.pause_limit)
    resume_limit = _sync(AsyncClient.resume_limit)
    executors = _sync(AsyncClient.executors)
    notifications = _sync(AsyncClient.notifications)
    ack = _sync(AsyncClient.ack)
    info = _sync(AsyncClient.info)
    list = _sync(AsyncClient.list)
    list_all = _sync_iter(AsyncClient.list_all)
