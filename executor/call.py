"""The stage call: one attempt of one call stage, from the method's name to the result to store.

No Redis here.  Given the app, the stage's command, the template environment (kws, results,
task) and the facts of the run, `call` looks the method up, checks the stage's condition,
fills its params templates, converts them to the handler's annotations, runs the handler
within its timeout (a sync handler in the thread pool) and encodes what it returned.  It
answers (outcome, result JSON, result) or raises `Failure` with the stage error to store; the
run loop (executor/run.py) commits the one or fails the attempt with the other.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from stagewise.errors import StageError, stage_error
from stagewise.executor.app import App, Ctx, ParamsError, RetryLater
from stagewise.templates import TemplateError, check, fill
from stagewise.tracing import TraceContext

_encoder = msgspec.json.Encoder()
decode = msgspec.json.Decoder().decode  # JSON as stored (a task's doc, kws, results)


def encode(value: Any) -> str:
    """`value` as the JSON string the scripts store."""
    return _encoder.encode(value).decode()


class Failure(Exception):
    """A stage attempt failed with a stored error."""

    def __init__(
        self, error: dict[str, Any], outcome: str = "error", later: RetryLater | None = None
    ) -> None:
        self.error = error
        self.outcome = outcome
        self.later = later  # the handler raised RetryLater: outcome retry_later


TRACEBACK_BYTES = 8192  # of a handler's traceback, kept with its STAGE_ERROR


@dataclass(frozen=True, slots=True)
class Facts:
    """What a stage call knows of its run, the same for every stage of it: the handler's
    `Ctx` is made of these, and the run's deadline bounds every call's timeout."""

    task_id: str
    job_id: str
    attempt: int
    exec_deadline: float  # epoch seconds: the end of the run's max_exec budget
    executor_id: str


def handler_traceback(e: BaseException) -> str:
    """The traceback of what a handler raised, as Python prints it, from the handler's own
    first frame on (the frames of this module and of the thread pool that called it are
    left out), and at most its last TRACEBACK_BYTES (SPEC §7: the last 8 KiB)."""
    tb = e.__traceback__
    while tb is not None and _ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(e), e, tb if tb is not None else e.__traceback__))
    raw = text.encode()
    if len(raw) > TRACEBACK_BYTES:
        text = raw[-TRACEBACK_BYTES:].decode(errors="ignore")
    return text


def _ours(filename: str) -> bool:
    return filename == __file__ or f"concurrent{os.sep}futures" in filename


async def call(
    app: App,
    pool: ThreadPoolExecutor,
    cmd: dict[str, Any],
    env: dict[str, Any],
    run: Facts,
    stage: int,
    trace: TraceContext | None = None,
) -> tuple[str, str, Any]:
    """Runs one call stage; returns (outcome, result JSON, result) or raises Failure.  `trace`:
    the attempt's span (tracing on), the handler's `ctx.trace`."""
    name = cmd["method"]
    method = app.methods.get(name)
    if method is None:
        raise Failure(
            stage_error(
                StageError.METHOD_NOT_FOUND,
                f"method {name!r} is not registered in app {app.name!r}",
                stage,
            )
        )
    try:
        if "if" in cmd and not check(cmd["if"], env):
            return "skipped", "null", None
        params = fill(cmd.get("params") or {}, env)
    except TemplateError as e:
        raise Failure(stage_error(StageError.TEMPLATE_ERROR, str(e), stage)) from None
    try:
        kwargs = method.convert(params)
    except ParamsError as e:
        raise Failure(stage_error(StageError.INVALID_PARAMS, str(e), stage)) from None
    timeout = cmd.get("timeout")
    wall = time.time()
    deadline = min(run.exec_deadline, wall + timeout) if timeout else run.exec_deadline
    if method.takes_ctx:
        kwargs["ctx"] = Ctx(
            task_id=run.task_id,
            job_id=run.job_id,
            stage=stage,
            attempt=run.attempt,
            app=app.name,
            executor_id=run.executor_id,
            deadline=deadline,
            trace=trace,
        )
    try:
        async with asyncio.timeout(max(deadline - wall, 0)) as window:
            if method.is_async:
                value = await method.fn(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                fn = partial(method.fn, **kwargs)
                if trace is not None:  # run in our context: the span is the current one there too
                    fn = partial(contextvars.copy_context().run, fn)
                value = await loop.run_in_executor(pool, fn)
        if window.expired():
            # The time ran out, yet the handler returned: the timeout's cancel was lost in
            # the handler (swallowed by it, or by a Redis write of its own on Python 3.11,
            # shared/aio.py).  A call that outlived its deadline timed out all the same.
            raise TimeoutError
    except TimeoutError:
        if timeout and wall + timeout <= run.exec_deadline:
            raise Failure(
                stage_error(StageError.STAGE_TIMEOUT, f"call exceeded its timeout of {timeout} s", stage),
                "timeout",
            ) from None
        raise Failure(
            stage_error(StageError.EXEC_TIMEOUT, "max_exec_timeout exceeded", stage), "timeout"
        ) from None
    except asyncio.CancelledError:
        raise
    except RetryLater as e:  # flow control (SPEC §2a): not an error of the stage
        raise Failure(stage_error(StageError.RETRY_LATER, str(e), stage), "retry_later", e) from None
    except Exception as e:  # the handler raised: that is the stage's error, not ours
        raise Failure(
            stage_error(
                StageError.STAGE_ERROR,
                str(e)[:2000] or type(e).__name__,
                stage,
                type(e).__name__,
                handler_traceback(e),
            )
        ) from None
    try:
        encoded = encode(value)
        # later stages must see what was stored (a tuple became a list, a datetime a string)
        return (
            "ok",
            encoded,
            value if isinstance(value, str | int | float | bool | None) else decode(encoded),
        )
    except (TypeError, ValueError) as e:
        raise Failure(
            stage_error(
                StageError.STAGE_ERROR, f"result is not JSON-serialisable: {e}", stage, type(e).__name__
            )
        ) from None
