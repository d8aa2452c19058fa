"""OpenTelemetry tracing (SPEC §8), the one module that touches `opentelemetry`.

Each run of a task is a trace: a span per stage attempt, made by the executor that runs it
(`stage <method>`), and a span per wait (`wait timer`, `wait message`), made by the manager
that ends the wait.  All spans of a run share one parent:

- the caller's span, when the `tasks.create` (or `tasks.create_many`) request that started the
  run carried a W3C `traceparent` header: the manager stores it with the task, in the field
  `trace` of its hash, as "<job id> <traceparent> [<tracestate>]";
- otherwise a parent made up from the run's job id, the same in every process: the trace id is
  the job id (a uuid4 in hex: 128 bits, like a trace id) and the span id a hash of it.  No span
  carries that id (no process sees a run from its start to its end to record one), so tracing
  back ends show the run's spans as the top of its trace; what they buy is that the trace of a
  run is found by its job id (`tasks.attempts` shows it).

The stored context belongs to the run the create started: a later run of the task (a retry is
the same run; `tasks.restart`, a cron fire and `next_task` chaining make new ones) gets a trace
of its own, whose id is its job id.

Tracing is on when the `stagewise[otel]` extra is installed and the standard environment asks
for it (`configured`); the daemons call `setup()` at start.  Otherwise nothing of
`opentelemetry` is imported, `current()` is None, and the scripts neither read nor write a
field for tracing: the cost is a global read per attempt.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msgspec

# W3C Trace Context, level 1: version 00 exactly; a later version may add fields after these
# (a receiver takes the first four), never "ff"; ids of all zeros are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
MAX_TRACESTATE = 512  # bytes kept of a tracestate header (W3C: propagate at least 512)

# The variables that ask for traces: an exporter, an OTLP endpoint or a service name.
_ASKS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
)


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: OTEL_SDK_DISABLED is not "true", and one of
    OTEL_TRACES_EXPORTER (other than "none"), OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_SERVICE_NAME is set."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if _exporter_names(env) == ["none"]:
        return False
    return any(env.get(name, "").strip() for name in _ASKS)


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"
    return [n.strip().lower() for n in raw.split(",") if n.strip()]


# --------------------------------------------------------------------------- the caller's context


def caller(traceparent: str | None, tracestate: str | None = None) -> str | None:
    """The caller's context of an HTTP request as the task stores it ("<traceparent>" or
    "<traceparent> <tracestate>"), or None when `traceparent` is missing or not valid (W3C:
    an invalid traceparent is ignored, and tracestate with it)."""
    if not traceparent:
        return None
    m = _TRACEPARENT.match(traceparent.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags = m.group(1, 2, 3, 4)
    if version == "ff" or (version == "00" and m.group(5)) or not int(trace_id, 16) or not int(span_id, 16):
        return None
    out = f"00-{trace_id}-{span_id}-{flags}"
    state = (tracestate or "").strip()
    if state and len(state) <= MAX_TRACESTATE and state.isprintable():
        out += " " + state
    return out


def stored(job_id: str, context: str) -> str:
    """The value of the task's `trace` field: the caller's context (`caller`) and the run it
    belongs to."""
    return f"{job_id} {context}"


def _parse_stored(job_id: str, value: str | None) -> tuple[str, str] | None:
    """(traceparent, tracestate) of a `trace` field when it belongs to the run `job_id`."""
    if not value:
        return None
    owner, _, rest = value.partition(" ")
    if owner != job_id:
        return None
    traceparent, _, tracestate = rest.partition(" ")
    return traceparent, tracestate


def run_ids(job_id: str) -> tuple[int, int]:
    """The (trace id, span id) of the made-up parent of a run without a caller's context: the
    job id itself when it is 32 hex digits (as stagewise makes them), else a hash of it."""
    digest = hashlib.blake2b(job_id.encode(), digest_size=24).digest()
    try:
        trace_id = int(job_id, 16) if len(job_id) == 32 else 0
    except ValueError:
        trace_id = 0
    trace_id = trace_id or int.from_bytes(digest[:16], "big") or 1
    return trace_id, int.from_bytes(digest[16:], "big") or 1


# --------------------------------------------------------------------------- what a handler sees


class TraceContext(msgspec.Struct, frozen=True):
    """The span of the stage attempt a handler runs in (`ctx.trace`): ids in lower-case hex,
    and the W3C `traceparent` to send on to another service."""

    trace_id: str
    span_id: str
    sampled: bool

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


# --------------------------------------------------------------------------- spans


class Attempt:
    """The span of one stage attempt, from before the call to the answer of its commit or fail."""

    __slots__ = ("_t", "span", "context", "_ended")

    def __init__(self, t: Tracing, span: Any) -> None:
        self._t = t
        self.span = span
        sc = span.get_span_context()
        self.context = TraceContext(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", bool(sc.trace_flags & 1))
        self._ended = False

    @contextmanager
    def active(self) -> Iterator[None]:
        """The span as the current one while the handler runs: spans the handler makes (its
        own, or an instrumented library's) are its children."""
        ctx = self._t.context
        token = ctx.attach(self._t.trace.set_span_in_context(self.span))
        try:
            yield
        finally:
            ctx.detach(token)

    def end(self, outcome: str, next_: str | None = None, error: Mapping[str, Any] | None = None) -> None:
        """Ends the span with the attempt's outcome (the attempts record's word: ok, skipped,
        error, timeout; canceled when the run was stopped mid-call), what the script answered
        (`next_`: RUN, WAITING, FINISHED, RETRY, FAILED, STALE, ...) and the stage error.  Only
        the first call counts."""
        if self._ended:
            return
        self._ended = True
        span = self.span
        span.set_attribute("stagewise.outcome", outcome)
        if next_:
            span.set_attribute("stagewise.next", next_)
        if error is not None:
            span.set_attribute("stagewise.error", str(error.get("code")))
            span.set_status(self._t.error_status(f"{error.get('code')}: {error.get('message', '')}"[:500]))
        elif outcome in ("error", "timeout"):
            span.set_status(self._t.error_status(outcome))
        span.end()


class Tracing:
    """Spans through an OpenTelemetry TracerProvider (the SDK's, or any other)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.trace = trace
        self.context = context
        self.kind = SpanKind
        self._status, self._error = Status, StatusCode.ERROR
        self.propagator = TraceContextTextMapPropagator()
        self.tracer = provider.get_tracer("stagewise", _version())
        # The made-up parent of a run is sampled as a root with the run's trace id would be
        # (OTEL_TRACES_SAMPLER: a ratio keeps or drops all spans of a run together).
        self.sampler = getattr(provider, "sampler", None)

    def error_status(self, description: str) -> Any:
        return self._status(self._error, description)

    def parent(self, job_id: str, trace_field: str | None) -> Any:
        """The OpenTelemetry context the spans of run `job_id` are made in."""
        given = _parse_stored(job_id, trace_field)
        if given is not None:
            carrier = {"traceparent": given[0]}
            if given[1]:
                carrier["tracestate"] = given[1]
            return self.propagator.extract(carrier)
        trace = self.trace
        trace_id, span_id = run_ids(job_id)
        sampled = True
        if self.sampler is not None:
            sampled = self.sampler.should_sample(None, trace_id, "run").decision.is_sampled()
        sc = trace.SpanContext(
            trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(1 if sampled else 0)
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(sc))

    def attempt(
        self,
        *,
        task_id: str,
        job_id: str,
        stage: int,
        method: str,
        attempt: int,
        app: str,
        trace_field: str | None,
    ) -> Attempt:
        span = self.tracer.start_span(
            f"stage {method}",
            context=self.parent(job_id, trace_field),
            kind=self.kind.CONSUMER,
            attributes={
                "stagewise.task_id": task_id,
                "stagewise.job_id": job_id,
                "stagewise.stage": stage,
                "stagewise.method": method,
                "stagewise.attempt": attempt,
                "stagewise.app": app,
            },
        )
        return Attempt(self, span)

    def wait(self, task_id: str, w: Any) -> None:
        """The span of a wait that just ended (`w`: stagewise.storage.calls.WaitEnd), from when
        it began to when it ended, both by Redis's clock."""
        span = self.tracer.start_span(
            f"wait {w.kind}",
            context=self.parent(w.job_id, w.trace),
            kind=self.kind.INTERNAL,
            attributes={
                "stagewise.task_id": task_id,
                "stagewise.job_id": w.job_id,
                "stagewise.stage": w.stage,
                "stagewise.wait": w.kind,
                "stagewise.outcome": w.outcome,
            },
            start_time=int(w.started * 1e9),
        )
        if w.outcome != "ok":
            span.set_status(self.error_status(f"{w.kind} wait ended by {w.outcome}"))
        span.end(end_time=int(w.ended * 1e9))

    def shutdown(self) -> None:
        """Sends what is still buffered (a provider of ours, or one with a shutdown)."""
        stop = getattr(self.provider, "shutdown", None)
        if stop is not None:
            stop()


def _version() -> str:
    import stagewise

    return str(stagewise.__version__)


# --------------------------------------------------------------------------- set-up

_current: Tracing | None = None
_decided = False


def current() -> Tracing | None:
    """The tracing of this process, or None (tracing off): what the hot paths ask."""
    return _current


def install(provider: Any) -> Tracing:
    """Traces through `provider` from now on, whatever the environment says (tests, and
    programs that embed an executor or a manager and set up OpenTelemetry themselves)."""
    global _current, _decided
    _current, _decided = Tracing(provider), True
    return _current


def uninstall() -> None:
    """Tracing off again (tests); the environment is looked at again by the next `setup`."""
    global _current, _decided
    _current, _decided = None, False


def setup(service: str, log: Any = None, env: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing as the environment asks for it (`configured`), once per process: the global
    TracerProvider when one was set already (`opentelemetry-instrument`, the app's module),
    else one made here from the OTEL_* variables (resource, sampler, exporters) and made
    the global one, so that a handler's own spans go the same way.  `service` names the
    process when OTEL_SERVICE_NAME does not.  None when tracing is off, or asked for without
    the `stagewise[otel]` extra installed (logged on `log`)."""
    global _current, _decided
    if _decided:
        return _current
    _decided = True
    env = os.environ if env is None else env
    if not configured(env):
        return None
    try:
        _current = Tracing(_provider(service, env))
    except ImportError as e:
        if log is not None:
            log.warning("tracing_unavailable", reason=f"{e}; install stagewise[otel]")
        return None
    except Exception as e:  # noqa: BLE001 - a bad OTEL_* value must not stop the daemon
        if log is not None:
            log.warning("tracing_unavailable", reason=f"{type(e).__name__}: {e}")
        return None
    if log is not None:
        log.info("tracing_on", exporters=_exporter_names(env))
    return _current


def shutdown() -> None:
    """Flushes and stops the tracing of this process (a daemon's last step)."""
    if _current is not None:
        _current.shutdown()


def _provider(service: str, env: Mapping[str, str]) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    existing = trace.get_tracer_provider()
    if hasattr(existing, "add_span_processor"):  # an SDK provider someone set up already
        return existing
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; the sampler comes
    # from OTEL_TRACES_SAMPLER(_ARG), the batching from OTEL_BSP_*, in the SDK itself.
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": service}))
    for name in _exporter_names(env):
        if name != "none":
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    """The span exporter OTEL_TRACES_EXPORTER names: otlp (over http/protobuf, or grpc as
    OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL says), console (one JSON line per span on stdout, like
    the daemons' own log lines), or any exporter registered under that name by a package."""
    if name == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
        )
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    if name == "otlp_proto_http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "otlp_proto_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    from importlib.metadata import entry_points

    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise ImportError(f"no span exporter {name!r} (OTEL_TRACES_EXPORTER)")
    return next(iter(found)).load()()
