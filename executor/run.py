"""The run loop: a claimed run of a task, stage after stage, until the task is no longer ours.

Each call stage is called (executor/call.py) and its result committed with commit.lua, a
fenced script that also decides what comes next: RUN the next call stage (with the messages
taken from the inbox on the way), WAITING or FINISHED (the task is no longer ours), STALE
(the run lost the task: abandon it) or REPLAY (our commit had landed but its reply was lost:
hand the run back whole).  A failed attempt goes to fail.lua, which schedules the retry or
fails the task; this run ends there either way.  Commits and fails of concurrent runs go out
together through the Batcher.

The script calls a run makes (commit, fail, handback) are made here and nowhere else.  The
claim and every commit leave a run at a call stage: timers and messages are resolved by the
scripts (commit.lua, wake.lua), never handed to an executor.  Whether a failed attempt is
retried, and when, is stagewise.policy.retry_delay's decision.

A run is never dropped while its task may still be RUNNING under its lease: a write that meets
a Redis fault that passes by itself is sent again until it gets its answer (the Batcher, and
`_persist` for the calls sent on their own; every script is fenced, so a replay is applied
once); a run that crashes fails its attempt, or else is handed back; a run whose write comes
back STALE tries a hand-back too (fenced: it applies only when the task is still ours under
the run's lease, at an earlier stage, i.e. Redis lost a commit of ours); and a run given up
(`give_up`: the executor was refused in its partition, or is stopping) is handed back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stagewise import tracing
from stagewise.errors import StageError, stage_error
from stagewise.executor.app import App
from stagewise.executor.batcher import Batcher
from stagewise.executor.call import Facts, Failure, call, decode
from stagewise.faults import Backoff, Warnings, transient
from stagewise.keys import Keys
from stagewise.policy import retry_delay
from stagewise.storage import calls
from stagewise.storage.calls import Code, Commit, Fail, R, results_of
from stagewise.storage.limits import Drainer
from stagewise.storage.runner import Scripts

RUN_STOP_TIMEOUT = 1.0  # s give_up waits for cancelled runs to end before handing them back


class Run:
    """One claimed run of a task on this executor."""

    __slots__ = ("task_id", "keys", "job_id", "lease", "h", "aio", "limited")

    def __init__(
        self, task_id: str, keys: Keys, h: dict[str, str], lease: str, limited: bool = False
    ) -> None:
        self.task_id, self.keys, self.h, self.lease = task_id, keys, h, lease
        self.job_id = h["job_id"]
        self.aio: asyncio.Task[None] | None = None
        self.limited = limited  # claimed with permits of limit keys (flow control)


class Runner:
    """Runs the claimed runs of one executor, each in an asyncio task of its own.  `runs` (by
    task id) and the `slots` semaphore are the executor's: a run is in `runs` while its task
    lives, and gives its slot back when it ends."""

    def __init__(
        self,
        *,
        r: Any,
        scripts: Scripts,
        batcher: Batcher,
        app: App,
        pool: ThreadPoolExecutor,
        executor_id: str,
        runs: dict[str, Run],
        slots: asyncio.Semaphore,
        log: Any,
        drainer: Drainer | None = None,
    ) -> None:
        self.r, self.scripts, self.batcher = r, scripts, batcher
        # flow control: a run of a limited task that ended left an outbox entry in its
        # partition, drained at once so that its slots go to the tasks held back
        self.drainer = drainer
        self.app, self.pool, self.executor_id = app, pool, executor_id
        self.runs, self.slots, self.log = runs, slots, log
        # Runs given up (give_up) whose hand-back has not landed yet: a stop hands them back.
        self.owed: set[Run] = set()
        self.warnings = Warnings(log, "write_failed")

    def start(self, k: Keys, task_id: str, h: dict[str, str], lease: str, limited: bool = False) -> None:
        """Starts the run of a task just claimed with `lease`; `h` is claim.lua's answer;
        `limited`: claimed with permits of limit keys."""
        run = Run(task_id, k, h, lease, limited)
        self.runs[run.task_id] = run
        run.aio = asyncio.create_task(self.run(run))

    async def run(self, run: Run) -> None:
        """The task of one run: the run loop until the task is no longer ours, or a cancel (a
        cancel request, a stop, the executor refused in the run's partition), or a crash of ours."""
        try:
            await self._run(run)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a bug of ours, not of the handler: fail the attempt, don't strand it
            self.log.exception("run_crashed", task_id=run.task_id, job_id=run.job_id)
            try:
                await self._crashed(run, e)
            except Exception:  # noqa: BLE001 - logged here, not lost as a task's unretrieved exception
                # Neither the fail nor the hand-back was taken: the task keeps our lease until its
                # execution deadline (expire.lua) or our end (the reaper) takes it back.
                self.log.exception("run_left", task_id=run.task_id, job_id=run.job_id)
        finally:
            if self.runs.get(run.task_id) is run:  # not a later run of the same task
                del self.runs[run.task_id]
            if run.limited and self.drainer is not None:
                self.drainer.kick(run.keys)
            self.slots.release()

    async def _crashed(self, run: Run, e: Exception) -> None:
        """Fails the attempt at the stage the run had reached (the stored one: the run may
        have committed stages since its claim); if fail.lua cannot take it (an error that is no
        passing Redis fault), the run is handed back instead."""
        k, stage = run.keys, int(run.h["stage"])
        raw = await self._persist(lambda: self.r.hget(k.task(run.task_id), "stage"))
        stage = int(raw) if raw is not None else stage
        err = stage_error(StageError.STAGE_ERROR, f"executor error: {e}"[:2000], stage, type(e).__name__)
        doc = decode(run.h["doc"])
        delay = retry_delay(
            int(run.h.get("retries") or 0), doc.get("max_retries", 0), float(doc.get("retry_backoff", 1.0))
        )
        try:
            res = await self.fail(run, stage, err, delay, "error", batched=False)
        except Exception:  # noqa: BLE001 - fall back on the hand-back below
            self.log.exception("fail_refused", task_id=run.task_id, job_id=run.job_id)
            res = Fail("STALE", None)
        if res.code == "STALE":
            await self.handback(run)

    async def _persist(self, send: Callable[[], Awaitable[R]], until: float | None = None) -> R:
        """`send()` until it gets an answer: a Redis fault that passes by itself is waited out
        with a capped backoff (every script is fenced, so a call sent twice is applied once).
        With `until` (loop time), the fault is raised once that time has passed, and a call
        that gets no answer by then (a Redis that stopped answering) is cut off."""
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        while True:
            try:
                if until is None:
                    res = await send()
                else:
                    async with asyncio.timeout_at(until):
                        res = await send()
            except Exception as e:
                if not transient(e) or (until is not None and loop.time() + backoff.delay > until):
                    raise
                self.warnings.failed(e)
                await backoff.wait()
                continue
            self.warnings.ok()
            return res

    async def give_up(self, runs: list[Run], reason: str, until: float | None = None) -> list[Run]:
        """Cancels `runs` and hands each back (QUEUED at its current stage; STALE when it was
        no longer ours).  Returns the runs whose hand-back did not land by `until` (loop time;
        None: it waits for Redis as long as it takes); they stay in `owed`."""
        self.owed.update(runs)
        tasks = [run.aio for run in runs if run.aio and not run.aio.done()]
        for t in tasks:
            t.cancel()
        if tasks:  # let them end first, so that their last writes go out before the hand-back
            await asyncio.wait(tasks, timeout=RUN_STOP_TIMEOUT)
        left: list[Run] = []
        for run in runs:
            try:
                res = await self.handback(run, until)
            except Exception as e:  # noqa: BLE001 - the caller decides what a run left means
                self.log.warning("handback_failed", task_id=run.task_id, job_id=run.job_id, error=str(e))
                left.append(run)
                continue
            self.owed.discard(run)
            self.log.info(
                "run_handed_back", task_id=run.task_id, job_id=run.job_id, reason=reason, result=res.code
            )
        return left

    async def _run(self, run: Run) -> None:
        h = run.h
        doc = decode(h["doc"])
        commands: list[dict[str, Any]] = doc["commands"]
        kws = decode(h["kws"]) if h.get("kws") else {}
        results = results_of(h)
        stage = int(h["stage"])
        attempt = int(h["attempt"])
        task_env = {"id": run.task_id, "job_id": run.job_id, "attempt": attempt, "group": doc.get("group")}
        env = {"kws": kws, "results": results, "task": task_env}
        facts = Facts(run.task_id, run.job_id, attempt, float(h["exec_deadline"]), self.executor_id)
        ids = {"task_id": run.task_id, "job_id": run.job_id}  # on every line about this run
        log = self.log
        retries, max_retries = int(h.get("retries") or 0), doc.get("max_retries", 0)
        backoff = float(doc.get("retry_backoff", 1.0))
        tr = tracing.current()  # None: tracing off, and nothing below costs more than this test
        span: tracing.Attempt | None = None
        try:
            while True:
                cmd = commands[stage]
                t0 = time.monotonic()
                if tr is not None:  # a span per attempt, in the run's trace (stagewise.tracing)
                    span = tr.attempt(
                        task_id=run.task_id,
                        job_id=run.job_id,
                        stage=stage,
                        method=cmd["method"],
                        attempt=attempt,
                        app=self.app.name,
                        trace_field=h.get("trace"),
                    )
                try:
                    if span is None:
                        outcome, result, value = await call(self.app, self.pool, cmd, env, facts, stage)
                    else:
                        with span.active():
                            outcome, result, value = await call(
                                self.app, self.pool, cmd, env, facts, stage, span.context
                            )
                except Failure as f:
                    spent = f.error["code"] == StageError.EXEC_TIMEOUT  # the run's time budget is gone
                    delay = retry_delay(retries, max_retries, backoff, spent)
                    if f.later is not None and f.later.pause_key:
                        f = self._check_pause_key(run, f, stage)
                    if f.later is not None:  # RetryLater: the handler's delay, not a retry
                        delay = f.later.seconds
                        if f.later.pause_key and self.drainer is not None:
                            await self._pause_key(f.later.pause_key, f.later.seconds)
                    failed = await self.fail(
                        run, stage, f.error, delay, f.outcome, method=cmd["method"], later=f.later is not None
                    )
                    if span is not None:
                        span.end(f.outcome, failed.code, f.error)
                    if failed.code == "STALE":
                        await self.handback(run)  # ours at an earlier stage only if Redis lost a commit
                    log.info(
                        "stage",
                        **ids,
                        stage=stage,
                        method=cmd["method"],
                        outcome=f.outcome,
                        error=f.error["code"],
                        ms=round((time.monotonic() - t0) * 1000, 3),
                        next=failed.code,
                        **({"traceback": f.error["traceback"]} if "traceback" in f.error else {}),
                    )
                    return
                res = await self.commit(run, stage, result, outcome, cmd["method"])
                if span is not None:
                    span.end(outcome, res.code)
                log.info(
                    "stage",
                    **ids,
                    stage=stage,
                    method=cmd["method"],
                    outcome=outcome,
                    ms=round((time.monotonic() - t0) * 1000, 3),
                    next=res.code,
                )
                results.append(value)
                match res.code:
                    case "RUN":
                        assert res.stage is not None
                        stage = res.stage
                        for _, taken in res.taken:  # messages taken from the inbox on the way
                            results.append(decode(taken))
                    case "STALE":
                        # Cancelled, unlocked, expired, reaped, or taken back by the manager's
                        # reconciliation (orphan.lua: Redis lost our registration): the hand-back
                        # answers STALE too, and the run is over, as it should be (info).  But if
                        # Redis lost our last commit (a restart from an older file, a failover), the
                        # task is still ours at an earlier stage: handed back, that stage runs again
                        # (a warning: Redis lost a write of ours).
                        back = await self.handback(run)
                        lost = back.code == "QUEUED"
                        (log.warning if lost else log.info)(
                            "run_abandoned", **ids, stage=stage, reason="stale", result=back.code
                        )
                        return
                    case "REPLAY":  # our commit landed but its reply was lost: give the run back whole
                        back = await self.handback(run)
                        log.warning(
                            "run_handed_back", **ids, stage=stage, reason="commit replayed", result=back.code
                        )
                        return
                    case _:  # WAITING / FINISHED: the task is no longer ours
                        return
        except BaseException as e:
            # The run stopped in an attempt (a cancel, a stop, a crash of ours): its span ends
            # too (a span already ended is left as it was).
            if span is not None:
                span.end("canceled" if isinstance(e, asyncio.CancelledError) else "error")
            raise

    # ------------------------------------------------------------------ the scripts of a run
    async def commit(self, run: Run, stage: int, result: str, outcome: str, method: str) -> Commit:
        """commit.lua, through the batcher: the result (JSON) and outcome of the call stage
        just run; `method` feeds the duration histogram."""
        return await self.batcher.run(
            calls.commit(run.keys, run.task_id, run.job_id, run.lease, stage, result, outcome, method)
        )

    async def fail(
        self,
        run: Run,
        stage: int,
        error: dict[str, Any],
        delay: float | None,
        outcome: str,
        *,
        method: str = "",
        batched: bool = True,
        later: bool = False,
    ) -> Fail:
        """fail.lua: the attempt of `stage` failed with `error`; a retry is due after `delay` s,
        or the run fails (None).  `method` feeds the duration histogram.  The run loop's fails
        go through the batcher (`batched`), a crashed run's as a call of its own."""
        c = calls.fail(
            run.keys, run.task_id, run.job_id, run.lease, stage, error, delay, outcome, method, later
        )
        if batched:
            return await self.batcher.run(c)  # the Batcher waits Redis faults out itself
        return await self._persist(lambda: self.scripts.run(c))

    @staticmethod
    def _check_pause_key(run: Run, f: Failure, stage: int) -> Failure:
        """A RetryLater whose pause_key is not one of the task's limit keys (as filled at
        create) is a mistake in the handler: the attempt fails with a STAGE_ERROR that says
        so (retried as any failed attempt), and no key is paused.  Pausing it anyway would let
        a handler stop another tenant's key; ignoring it would hide the mistake in a log."""
        assert f.later is not None
        keys = [lim[0] for lim in decode(run.h["limits"])] if run.h.get("limits") else []
        if f.later.pause_key in keys:
            return f
        msg = f"RetryLater pause_key {f.later.pause_key!r} is not one of the task's limit keys {keys!r}"
        return Failure(stage_error(StageError.STAGE_ERROR, msg, stage, "RetryLater"))

    async def _pause_key(self, key: str, seconds: float) -> None:
        """RetryLater's pause_key: the key paused for `seconds` (Redis's clock); a failure is
        logged, the retry itself still goes ahead."""
        assert self.drainer is not None
        limits = self.drainer.limits
        try:
            await self._persist(lambda: limits.pause(key, None, seconds))
        except Exception as e:  # noqa: BLE001 - the retry is what matters
            self.log.warning("pause_key_failed", key=key, error=str(e)[:300])

    async def handback(self, run: Run, until: float | None = None) -> Code:
        """handback.lua: gives the run back, QUEUED again at its current stage (STALE: it was no
        longer ours); for a run given up, whose commit was replayed, or that came back STALE.
        Redis faults are waited out (`_persist`), until `until` if given."""
        c = calls.handback(run.keys, run.task_id, run.job_id, run.lease)
        return await self._persist(lambda: self.scripts.run(c), until)
