"""Error codes, in one place: JSON-RPC codes (SPEC §7), application codes, and the codes of
stage and run errors stored on a task."""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TASK_NOT_FOUND = 1001
TASK_EXISTS = 1002
INVALID_TRANSITION = 1003
NOT_WAITING_FOR_MESSAGE = 1004
LIMIT_EXCEEDED = 1005
UNAVAILABLE = 1006  # Redis cannot serve the call now; data: {reason} (stagewise.faults)

MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    TASK_NOT_FOUND: "TASK_NOT_FOUND",
    TASK_EXISTS: "TASK_EXISTS",
    INVALID_TRANSITION: "INVALID_TRANSITION",
    NOT_WAITING_FOR_MESSAGE: "NOT_WAITING_FOR_MESSAGE",
    LIMIT_EXCEEDED: "LIMIT_EXCEEDED",
    UNAVAILABLE: "UNAVAILABLE",
}


class RpcError(Exception):
    """An error answered to a JSON-RPC caller."""

    def __init__(self, code: int, message: str | None = None, data: Any = None) -> None:
        super().__init__(message or MESSAGES.get(code, "error"))
        self.code = code
        self.message = message or MESSAGES.get(code, "error")
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


def invalid_params(field: str, reason: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: {field}: {reason}", {"field": field, "reason": reason})


def not_found(task_id: str) -> RpcError:
    return RpcError(TASK_NOT_FOUND, f"task {task_id!r} not found", {"id": task_id})


def invalid_transition(src: str, dst: str) -> RpcError:
    return RpcError(INVALID_TRANSITION, f"cannot go from {src} to {dst}", {"from": src, "to": dst})


def unavailable(reason: str) -> RpcError:
    """1006: Redis could not serve the call (`reason`: one of stagewise.faults.REASONS).
    Nothing was half-written (each write is one script); the call may be retried, a create
    idempotently with on_conflict "ignore"."""
    return RpcError(
        UNAVAILABLE, f"Redis is unavailable ({reason}); the call may be retried", {"reason": reason}
    )


# Codes of the errors stored on a task ({code, message, stage, type?, traceback?}, SPEC §7).
class StageError:
    METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
    INVALID_PARAMS = "INVALID_PARAMS"
    TEMPLATE_ERROR = "TEMPLATE_ERROR"
    STAGE_ERROR = "STAGE_ERROR"
    STAGE_TIMEOUT = "STAGE_TIMEOUT"
    EXEC_TIMEOUT = "EXEC_TIMEOUT"
    MESSAGE_TIMEOUT = "MESSAGE_TIMEOUT"
    EXECUTOR_LOST = "EXECUTOR_LOST"
    CANCELED = "CANCELED"
    # flow control: the handler raised RetryLater (an attempt's record, outcome retry_later;
    # never a task's error)
    RETRY_LATER = "RETRY_LATER"


def stage_error(
    code: str, message: str, stage: int, type_: str | None = None, traceback: str | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "stage": stage}
    if type_:
        err["type"] = type_
    if traceback:
        err["traceback"] = traceback
    return err
