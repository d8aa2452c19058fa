"""OpenTelemetry tracing (SPEC §8, stagewise.tracing).

- In one process, with the SDK's in-memory exporter installed: a manager (HTTP server and
  scheduler) and an executor on the session's redis-server.  A task created over HTTP with a
  W3C `traceparent` header gets a span per stage attempt and per wait, all children of the
  caller's span, with the SPEC's attributes; the handler's `ctx.trace` is its attempt's span,
  which is also the current span in a sync handler's thread.  A task created without one is
  one trace whose id is its job id, its failing attempts each a span with outcome error.
- Real daemons with OTEL_TRACES_EXPORTER=console: the executor's stage spans and the
  manager's wait span of one run land in their logs, in the caller's trace.
- Real daemons without any OTEL_* variable never import opentelemetry (PYTHONPROFILEIMPORTTIME
  lists every module a process imports), though the caller sends a traceparent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stagewise import tracing
from stagewise.config import Settings
from stagewise.executor.app import App, Ctx
from stagewise.executor.worker import Executor
from stagewise.manager.http import make_app
from stagewise.manager.rpc import Api, Dispatcher
from stagewise.manager.scheduler import Scheduler
from stagewise.manager.store import Store
from stagewise.storage.connection import connect
from tests.helpers import Daemons, ManagerProc, Proc, RpcError, free_port, task_until, uid, wait_for

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
# Every OTEL_* variable that could switch tracing on in a daemon, removed from its environment
NO_OTEL = {
    name: None
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_SDK_DISABLED",
    )
}

app = App("otel")


@app.method("otel.ok")
async def ok(ctx: Ctx) -> dict[str, Any]:
    assert ctx.trace is not None
    return {"trace_id": ctx.trace.trace_id, "span_id": ctx.trace.span_id, "traceparent": ctx.trace.traceparent}


@app.method("otel.sync")
def in_thread(ctx: Ctx) -> dict[str, Any]:
    """A sync handler, in the thread pool: the attempt's span is the current one there."""
    sc = otel_trace.get_current_span().get_span_context()
    return {"current": f"{sc.span_id:016x}", "ctx": ctx.trace.span_id if ctx.trace else None}


@app.method("otel.boom")
async def boom() -> None:
    raise ValueError("no luck")


class Stack:
    """An in-process manager (HTTP + scheduler) and executor, tracing to `exporter`."""

    def __init__(self, store: Store, exporter: InMemorySpanExporter, url: str) -> None:
        self.store, self.exporter, self.url = store, exporter, url

    async def rpc(self, method: str, params: Any, headers: dict[str, str] | None = None) -> Any:
        import aiohttp

        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with aiohttp.ClientSession() as s, s.post(f"{self.url}/rpc", json=body, headers=headers) as resp:
            reply = await resp.json()
        if "error" in reply:
            raise RpcError(reply["error"]["code"], reply["error"]["message"], reply["error"].get("data"))
        return reply["result"]

    async def ended(self, tid: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            v = await self.store.get(tid)
            return v if v["status"] in ("FINISHED", "FAILED", "CANCELED") else None

        return await wait_for(probe, timeout=15, what=f"{tid} to end")

    async def spans(self, job_id: str, n: int) -> list[ReadableSpan]:
        """The `n` spans of run `job_id`, by start time, once they have ended: a run's status
        changes in Redis before its executor ends the span of the attempt that changed it."""

        def ended() -> list[ReadableSpan]:
            got = [s for s in self.exporter.get_finished_spans() if s.attributes["stagewise.job_id"] == job_id]
            return sorted(got, key=lambda s: s.start_time or 0) if len(got) >= n else []

        spans = await wait_for(ended, what=f"{n} spans of run {job_id}")
        assert len(spans) == n, [s.name for s in spans]
        return spans


@pytest.fixture
async def stack(redis_url: str, namespace: str) -> AsyncIterator[Stack]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    port = free_port()
    settings = Settings(redis_url=redis_url, namespace=namespace, http=f"127.0.0.1:{port}", tick=0.02)
    r = await connect(redis_url, 32)
    store = Store(r, settings)
    runner = web.AppRunner(make_app(store, Dispatcher(Api(store))), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    scheduler = asyncio.create_task(Scheduler(store).run(stop))
    executor = Executor(app, settings, concurrency=4)
    serving = asyncio.create_task(executor.serve(stop))
    try:
        yield Stack(store, exporter, f"http://127.0.0.1:{port}")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(scheduler, serving), 15)
        await runner.cleanup()
        await r.aclose()
        tracing.uninstall()
        provider.shutdown()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_spans_join_the_callers_trace(stack: Stack) -> None:
    tid = uid("traced")
    doc = {
        "id": tid,
        "app": "otel",
        "commands": [{"method": "otel.ok"}, {"timer": 0.3}, {"message": {}}, {"method": "otel.sync"}],
    }
    await stack.rpc("tasks.create", {"task": doc}, {"traceparent": TRACEPARENT, "tracestate": "vendor=x"})
    await wait_for(lambda: _status_is(stack, tid, "WAITING", stage=2), what=f"{tid} waiting for its message")
    await stack.rpc("tasks.send", {"id": tid, "data": {"hello": 1}})
    v = await stack.ended(tid)
    assert v["status"] == "FINISHED", v
    spans = await stack.spans(v["job_id"], 4)
    assert [s.name for s in spans] == ["stage otel.ok", "wait timer", "wait message", "stage otel.sync"]
    for s in spans:  # every span of the run is a child of the caller's span, in its trace
        assert f"{s.context.trace_id:032x}" == CALLER_TRACE
        assert s.parent is not None and f"{s.parent.span_id:016x}" == CALLER_SPAN and s.parent.is_remote
        assert s.parent.trace_state.get("vendor") == "x"
        assert attrs(s)["stagewise.task_id"] == tid and attrs(s)["stagewise.outcome"] == "ok"
    first, timer, message, last = spans
    assert attrs(first) == {
        "stagewise.task_id": tid,
        "stagewise.job_id": v["job_id"],
        "stagewise.stage": 0,
        "stagewise.method": "otel.ok",
        "stagewise.attempt": 1,
        "stagewise.app": "otel",
        "stagewise.outcome": "ok",
        "stagewise.next": "WAITING",
    }
    assert first.kind == otel_trace.SpanKind.CONSUMER and first.status.status_code == StatusCode.UNSET
    # ctx.trace is the attempt's own span, and the span is current in a sync handler's thread
    span_id = f"{first.context.span_id:016x}"
    assert v["results"][0] == {
        "trace_id": CALLER_TRACE,
        "span_id": span_id,
        "traceparent": f"00-{CALLER_TRACE}-{span_id}-01",
    }
    last_id = f"{last.context.span_id:016x}"
    assert v["results"][3] == {"current": last_id, "ctx": last_id}
    assert attrs(timer)["stagewise.stage"] == 1 and attrs(timer)["stagewise.wait"] == "timer"
    assert attrs(message)["stagewise.stage"] == 2 and attrs(message)["stagewise.wait"] == "message"
    assert attrs(last)["stagewise.stage"] == 3 and attrs(last)["stagewise.next"] == "FINISHED"
    # a wait span lasts from the start of the wait to its end (the timer: at least its 0.3 s)
    assert timer.start_time is not None and timer.end_time is not None
    assert 0.3 <= (timer.end_time - timer.start_time) / 1e9 < 10
    assert first.end_time is not None and timer.start_time <= first.end_time  # began at the commit
    assert message.start_time is not None and message.start_time >= timer.end_time - 1000  # µs rounding
    # the stored context is the task's field `trace`, with the run it belongs to
    h = await stack.store.raw(tid)
    assert h is not None and h["trace"] == f"{v['job_id']} {TRACEPARENT} vendor=x"
    assert "trace" not in v  # not part of the TaskView


async def _status_is(stack: Stack, tid: str, status: str, stage: int) -> bool:
    h = await stack.store.raw(tid)
    return h is not None and h["status"] == status and int(h["stage"]) == stage


async def test_a_run_without_caller_is_a_trace_of_its_own(stack: Stack) -> None:
    tid = uid("failing")
    doc = {"id": tid, "app": "otel", "commands": [{"method": "otel.boom"}], "max_retries": 1, "retry_backoff": 0}
    # a traceparent that is not valid is ignored, as W3C Trace Context says
    await stack.rpc("tasks.create", {"task": doc}, {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"})
    v = await stack.ended(tid)
    assert v["status"] == "FAILED", v
    spans = await stack.spans(v["job_id"], 2)
    assert [s.name for s in spans] == ["stage otel.boom", "stage otel.boom"]
    trace_id, parent_id = tracing.run_ids(v["job_id"])
    assert trace_id == int(v["job_id"], 16)  # the trace of a run is found by its job id
    for n, (s, next_) in enumerate(zip(spans, ["RETRY", "FAILED"], strict=True), 1):
        assert s.context.trace_id == trace_id
        assert s.parent is not None and s.parent.span_id == parent_id
        assert attrs(s)["stagewise.outcome"] == "error" and attrs(s)["stagewise.attempt"] == n
        assert attrs(s)["stagewise.next"] == next_ and attrs(s)["stagewise.error"] == "STAGE_ERROR"
        assert s.status.status_code == StatusCode.ERROR and "no luck" in (s.status.description or "")
    assert "trace" not in (await stack.store.raw(tid) or {})  # nothing stored without a caller
    # a fresh run (tasks.restart) is a trace of its own, not the first run's
    await stack.rpc("tasks.restart", {"ids": [tid], "dry_run": False})
    v2 = await wait_for(
        lambda: _ended_run(stack, tid, v["job_id"]), timeout=15, what=f"{tid}'s second run to end"
    )
    again = await stack.spans(v2["job_id"], 2)
    assert all(s.context.trace_id == int(v2["job_id"], 16) for s in again)


async def _ended_run(stack: Stack, tid: str, old_job: str) -> dict[str, Any] | None:
    v = await stack.store.get(tid)
    return v if v["job_id"] != old_job and v["status"] == "FAILED" else None


async def test_a_restart_leaves_the_callers_trace(stack: Stack) -> None:
    tid = uid("again")
    doc = {"id": tid, "app": "otel", "commands": [{"method": "otel.ok"}]}
    await stack.rpc("tasks.create", {"task": doc}, {"traceparent": TRACEPARENT})
    v = await stack.ended(tid)
    await stack.rpc("tasks.restart", {"ids": [tid], "dry_run": False})

    async def second() -> dict[str, Any] | None:
        w = await stack.store.get(tid)
        return w if w["job_id"] != v["job_id"] and w["status"] == "FINISHED" else None

    v2 = await wait_for(second, what=f"{tid}'s second run")
    (first,) = await stack.spans(v["job_id"], 1)
    (fresh,) = await stack.spans(v2["job_id"], 1)
    assert f"{first.context.trace_id:032x}" == CALLER_TRACE
    assert fresh.context.trace_id == int(v2["job_id"], 16)


async def test_a_message_that_never_comes_is_a_wait_span_that_timed_out(stack: Stack) -> None:
    tid = uid("silent")
    doc = {"id": tid, "app": "otel", "commands": [{"message": {"timeout": 0.2, "on_timeout": "fail"}}]}
    await stack.rpc("tasks.create", {"task": doc}, {"traceparent": TRACEPARENT})
    v = await stack.ended(tid)
    assert v["status"] == "FAILED" and v["error"]["code"] == "MESSAGE_TIMEOUT", v
    (wait,) = await stack.spans(v["job_id"], 1)
    assert wait.name == "wait message" and f"{wait.context.trace_id:032x}" == CALLER_TRACE
    assert attrs(wait)["stagewise.outcome"] == "timeout" and wait.status.status_code == StatusCode.ERROR
    assert wait.start_time is not None and wait.end_time is not None
    assert (wait.end_time - wait.start_time) / 1e9 >= 0.2


# --------------------------------------------------------------------------- real daemons


def _json_lines(p: Proc) -> list[dict[str, Any]]:
    out = []
    for line in p.log_path.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _spans_logged(p: Proc) -> list[dict[str, Any]]:
    """The spans a daemon's console exporter wrote (one JSON line each)."""
    return [x for x in _json_lines(p) if "context" in x and "name" in x]


async def test_daemons_export_spans_configured_by_the_environment(daemons: Daemons) -> None:
    otel = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": None}
    m = await daemons.manager(**otel)
    ex = await daemons.executor("examples.app:app", **otel)
    tid = uid("console")
    doc = {
        "id": tid,
        "app": "demo",
        "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}, {"timer": 0.2}],
    }
    await m.rpc("tasks.create", {"task": doc}, headers={"traceparent": TRACEPARENT})
    v = await task_until(m, tid, lambda v: v["status"] == "FINISHED")

    def named(p: Proc, name: str) -> list[dict[str, Any]]:
        return [s for s in _spans_logged(p) if s["name"] == name and s["attributes"]["stagewise.task_id"] == tid]

    (stage,) = await wait_for(lambda: named(ex, "stage demo.add"), what="the executor's span")
    (wait,) = await wait_for(lambda: named(m, "wait timer"), what="the manager's span")
    for s in (stage, wait):
        assert s["context"]["trace_id"] == f"0x{CALLER_TRACE}" and s["parent_id"] == f"0x{CALLER_SPAN}"
        assert s["attributes"]["stagewise.job_id"] == v["job_id"]
        assert s["attributes"]["stagewise.outcome"] == "ok"
    assert stage["attributes"]["stagewise.method"] == "demo.add"
    assert stage["resource"]["attributes"]["service.name"] == "stagewise-executor"
    assert wait["resource"]["attributes"]["service.name"] == "stagewise-manager"


def otel_importers(log: str) -> dict[str, str | None]:
    """Each opentelemetry module a process imported (its PYTHONPROFILEIMPORTTIME lines), with
    the first module outside opentelemetry on whose behalf it was imported (None: imported at
    run time, by a function).  The lines list each import after those it made, one level of
    indentation deeper: a module's importer is the next line less indented."""
    rows = []
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1]
            if name.strip() != "imported package":
                rows.append((len(name) - len(name.lstrip()), name.strip()))
    out: dict[str, str | None] = {}
    for i, (depth, name) in enumerate(rows):
        if not name.startswith("opentelemetry"):
            continue
        importer = None
        for d, parent in rows[i + 1 :]:
            if d < depth:
                depth = d
                if not parent.startswith("opentelemetry"):
                    importer = parent
                    break
        out[name] = importer
    return out


async def test_daemons_without_otel_env_never_import_it(daemons: Daemons) -> None:
    """Nothing of stagewise imports opentelemetry without OTEL_* (redis-py 8 imports its metrics
    API on its own when it is installed: allowed, it is not ours to decide)."""
    env = {**NO_OTEL, "PYTHONPROFILEIMPORTTIME": "1"}
    m: ManagerProc = await daemons.manager(**env)
    ex = await daemons.executor("examples.app:app", **env)
    tid = uid("plain")
    doc = {"id": tid, "app": "demo", "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}, {"timer": 0.1}]}
    await m.rpc("tasks.create", {"task": doc}, headers={"traceparent": TRACEPARENT})
    await task_until(m, tid, lambda v: v["status"] == "FINISHED")
    await daemons.stop_all()
    for p, marker in ((m, "stagewise.manager.scheduler"), (ex, "stagewise.executor.run")):
        log = p.log_path.read_text()
        assert "stagewise.tracing" in log and marker in log  # the listing works
        ours = {name: by for name, by in otel_importers(log).items() if by is None or not by.startswith("redis")}
        assert not ours, (p, ours)


def test_importers_of_a_module() -> None:
    log = "\n".join(
        f"import time: 1 | 1 | {name}"
        for name in (
            "imported package",
            "    opentelemetry.trace",
            "  opentelemetry",
            "redis.observability",
            "    opentelemetry.sdk",
            "  stagewise.tracing",
            "stagewise.executor",
            "opentelemetry.context",  # imported by a function at run time
        )
    )
    assert otel_importers(log) == {
        "opentelemetry.trace": "redis.observability",
        "opentelemetry": "redis.observability",
        "opentelemetry.sdk": "stagewise.tracing",
        "opentelemetry.context": None,
    }


def test_configured_by_the_environment() -> None:
    assert not tracing.configured({})
    assert not tracing.configured({"OTEL_RESOURCE_ATTRIBUTES": "a=b"})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.configured({"OTEL_SERVICE_NAME": "billing"})
    assert not tracing.configured({"OTEL_SERVICE_NAME": "billing", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.configured({"OTEL_TRACES_EXPORTER": "none"})


def test_caller_context_is_checked() -> None:
    assert tracing.caller(TRACEPARENT) == TRACEPARENT
    assert tracing.caller(TRACEPARENT, " a=1,b=2 ") == f"{TRACEPARENT} a=1,b=2"
    assert tracing.caller(None, "a=1") is None
    for bad in (
        "",
        "00-" + CALLER_TRACE + "-" + CALLER_SPAN,  # no flags
        "ff-" + CALLER_TRACE + "-" + CALLER_SPAN + "-01",  # version ff is invalid
        "00-" + CALLER_TRACE.upper() + "-" + CALLER_SPAN + "-01",  # upper case
        "00-" + CALLER_TRACE + "-" + "0" * 16 + "-01",  # a zero span id
        TRACEPARENT + "-extra",  # version 00 has exactly four fields
    ):
        assert tracing.caller(bad) is None, bad
    # a later version may carry more fields: the first four are taken
    assert tracing.caller("01-" + CALLER_TRACE + "-" + CALLER_SPAN + "-01-more") == TRACEPARENT

