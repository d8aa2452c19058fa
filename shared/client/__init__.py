"""Python client for the manager's JSON-RPC 2.0 entrypoint (SPEC §7).

    async with AsyncClient("http://127.0.0.1:8765") as c:
        view = await c.create({"app": "demo", "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}]})
        done = await c.wait(view["id"], timeout=60)

    with Client("http://127.0.0.1:8765") as c:  # the same methods, blocking
        print(c.get(view["id"])["results"])

One method per RPC method, keyword arguments named as in the spec (`from` is `from_`); arguments
left at ``None`` are not sent, so the server's defaults apply.  Results are the decoded JSON (the
TypedDicts of `types` document their shape).  A JSON-RPC error raises a `StagewiseError` subclass
chosen by its code (`TaskNotFound`, `InvalidParams`, ...) carrying `.code`, `.message` and `.data`.

    types   the result shapes (TypedDicts) and `Filters`, the task filters
    errors  StagewiseError, one subclass per error code, `error_from`
    aio     AsyncClient (aiohttp)
    sync    Client, AsyncClient behind a private event loop in a thread

The client needs neither daemon: `stagewise.manager.inproc.RedisClient` (the same methods run in
this process, straight to Redis) lives with the manager whose method table it runs.
"""

from stagewise.client.aio import DEFAULT_URL, TERMINAL, AsyncClient
from stagewise.client.errors import (
    ERRORS,
    InternalError,
    InvalidParams,
    InvalidRequest,
    InvalidTransition,
    LimitExceeded,
    MethodNotFound,
    NotWaitingForMessage,
    ParseError,
    StagewiseError,
    TaskExists,
    TaskNotFound,
    TransportError,
    Unauthorized,
    Unavailable,
    error_from,
)
from stagewise.client.sync import Client
from stagewise.client.types import (
    AckResult,
    AppInfo,
    Attempt,
    BatchResult,
    CreateManyResult,
    ExecutorInfo,
    Filters,
    GroupInfo,
    Notification,
    SystemInfo,
    TaskPage,
    TaskStatus,
    TaskView,
)

__all__ = [
    "DEFAULT_URL",
    "TERMINAL",
    "AsyncClient",
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
    "Unavailable",
    "ERRORS",
    "error_from",
    "Filters",
    "TaskView",
    "TaskStatus",
    "TaskPage",
    "BatchResult",
    "Attempt",
    "GroupInfo",
    "CreateManyResult",
    "AppInfo",
    "ExecutorInfo",
    "Notification",
    "AckResult",
    "SystemInfo",
]
