"""The exceptions a client call raises: one class per JSON-RPC error code (SPEC §7), so callers
can catch `TaskNotFound` rather than compare numbers, and `TransportError` when no JSON-RPC
answer came at all.

The codes are the server's own (`stagewise.errors`), so client and manager cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stagewise import errors as codes


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
    code, name = codes.PARSE_ERROR, "PARSE_ERROR"


class InvalidRequest(StagewiseError):
    code, name = codes.INVALID_REQUEST, "INVALID_REQUEST"


class MethodNotFound(StagewiseError):
    code, name = codes.METHOD_NOT_FOUND, "METHOD_NOT_FOUND"


class InvalidParams(StagewiseError):
    """`data` is ``{field, reason}``."""

    code, name = codes.INVALID_PARAMS, "INVALID_PARAMS"


class InternalError(StagewiseError):
    code, name = codes.INTERNAL_ERROR, "INTERNAL_ERROR"


class TaskNotFound(StagewiseError):
    code, name = codes.TASK_NOT_FOUND, "TASK_NOT_FOUND"


class TaskExists(StagewiseError):
    code, name = codes.TASK_EXISTS, "TASK_EXISTS"


class InvalidTransition(StagewiseError):
    """`data` is ``{from, to}``."""

    code, name = codes.INVALID_TRANSITION, "INVALID_TRANSITION"


class NotWaitingForMessage(StagewiseError):
    code, name = codes.NOT_WAITING_FOR_MESSAGE, "NOT_WAITING_FOR_MESSAGE"


class LimitExceeded(StagewiseError):
    code, name = codes.LIMIT_EXCEEDED, "LIMIT_EXCEEDED"


class Unavailable(StagewiseError):
    """1006: Redis could not serve the call (down, loading, read-only, out of memory, a cluster
    slot down); `reason` says which (`data` is ``{reason}``).  Nothing was half-written: the
    call may be retried, a create idempotently with ``on_conflict="ignore"``."""

    code, name = codes.UNAVAILABLE, "UNAVAILABLE"

    @property
    def reason(self) -> str | None:
        return self.data.get("reason") if isinstance(self.data, Mapping) else None


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
        Unavailable,
    )
}


def error_from(obj: Any) -> StagewiseError:
    """The exception for a JSON-RPC error object ``{code, message, data?}``."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("code"), int):
        return TransportError(0, f"malformed JSON-RPC error: {obj!r}")
    code = obj["code"]
    return ERRORS.get(code, StagewiseError)(code, str(obj.get("message", "")), obj.get("data"))
