"""The executor app a user writes (SPEC §9): a name and the methods it serves.

    app = App("billing")

    @app.method("billing.charge")
    async def charge(amount: int, currency: str = "EUR") -> dict: ...

Params are converted to the handler's annotations by one msgspec Struct built per method at
registration, so a call does no signature inspection.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from stagewise.tracing import TraceContext

_APP = re.compile(r"^[a-z0-9_.-]{1,64}$")


class Ctx(msgspec.Struct, frozen=True):
    """What a handler learns about the call by taking a ``ctx`` parameter."""

    task_id: str
    job_id: str
    stage: int
    attempt: int
    app: str
    executor_id: str
    deadline: float | None  # UNIX time when the call is cancelled (stage timeout or exec deadline)
    # The span of this attempt (ids, traceparent) when OpenTelemetry tracing is on, else None
    trace: TraceContext | None = None


class ParamsError(ValueError):
    pass


class RetryLater(Exception):  # noqa: N818 - the name SPEC §2a gives it
    """Raised by a handler: try this stage again after `seconds`, without counting it against
    max_retries (the attempt's outcome is `retry_later`, the task SUSPENDED meanwhile).  With
    `pause_key` (one of the task's limit keys), no task of that key is claimed until then: an
    upstream's Retry-After."""

    def __init__(self, seconds: float, pause_key: str | None = None) -> None:
        if not seconds >= 0:
            raise ValueError("RetryLater needs seconds >= 0")
        super().__init__(f"retry after {seconds} s" + (f" (key {pause_key} paused)" if pause_key else ""))
        self.seconds = float(min(seconds, 30 * 86400))
        self.pause_key = pause_key


class Method:
    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        self.takes_ctx = "ctx" in sig.parameters
        fields: list[Any] = []
        self.var_kw = False
        for p in sig.parameters.values():
            if p.name == "ctx":
                continue
            if p.kind is p.VAR_KEYWORD:
                self.var_kw = True
                continue
            if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
                raise TypeError(f"{name}: handler parameters must be passable by name ({p.name})")
            tp = hints.get(p.name, Any)
            fields.append((p.name, tp) if p.default is p.empty else (p.name, tp, p.default))
        self._names = {f[0] for f in fields}
        self._struct = msgspec.defstruct(f"Params_{name}", fields, forbid_unknown_fields=not self.var_kw)

    def convert(self, params: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of a call, or ParamsError naming the parameter."""
        try:
            obj = msgspec.convert(params, self._struct, strict=True)
        except msgspec.ValidationError as e:
            text = str(e).replace("Object contains unknown field", "unexpected parameter")
            text = text.replace("Object missing required field", "missing parameter")
            raise ParamsError(text.replace("- at `$.", "- at `params.")) from None
        out = {n: getattr(obj, n) for n in self._names}
        if self.var_kw:
            out.update({k: v for k, v in params.items() if k not in self._names})
        return out


class App:
    def __init__(self, name: str) -> None:
        if not _APP.match(name):
            raise ValueError(f"app name {name!r} must match [a-z0-9_.-]{{1,64}}")
        self.name = name
        self.methods: dict[str, Method] = {}

    def method(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.methods:
                raise ValueError(f"method {name!r} registered twice")
            self.methods[name] = Method(name, fn)
            return fn

        return register
