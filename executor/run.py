"""The run loop: a claimed run of a task, stage after stage, until the task is no longer ours.

Each call stage is called (executor/call.py) and its result committed with commit.lua, a
fenced script that also decides what comes next: RUN the next call stage (with the messages
taken from the inbox on the way), WAITING or FINISHED (the task is no longer ours), STALE
(the run lost the task: abandon it) or REPLAY (our commit had landed but its reply was lost:
hand the run back whole).  A failed attempt goes to fail.lua, which schedules the retry or
fails the task; this run ends there either way.  Commits and fails of concurrent runs go out
together through the Batcher.

The script calls a run makes (commit, fail, handback) are built here and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stagewise.errors import StageError, stage_error
from stagewise.executor.app import App
from stagewise.executor.batcher import Batcher
from stagewise.executor.call import Facts, Failure, call, decode, encode
from stagewise.keys import Keys
from stagewise.models import command_kind
from stagewise.policy import next_retry_delay
from stagewise.scripting import Scripts
from stagewise.store import results_of


class Run:
    """One claimed run of a task on this executor."""

    __slots__ = ("task_id", "keys", "job_id", "lease", "h", "aio")

    def __init__(self, task_id: str, keys: Keys, h: dict[str, str], lease: str) -> None:
        self.task_id, self.keys, self.h, self.lease = task_id, keys, h, lease
        self.job_id = h["job_id"]
        self.aio: asyncio.Task[None] | None = None


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
    ) -> None:
        self.r, self.scripts, self.batcher = r, scripts, batcher
        self.app, self.pool, self.executor_id = app, pool, executor_id
        self.runs, self.slots, self.log = runs, slots, log

    def start(self, k: Keys, task_id: str, h: dict[str, str], lease: str) -> None:
        """Starts the run of a task just claimed with `lease`; `h` is claim.lua's answer."""
        run = Run(task_id, k, h, lease)
        self.runs[run.task_id] = run
        run.aio = asyncio.create_task(self.run(run))

    async def run(self, run: Run) -> None:
        """The task of one run: the run loop until the task is no longer ours, or a cancel (a
        cancel request, a stop, the executor declared dead), or a crash of ours."""
        try:
            await self._run(run)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a bug of ours, not of the handler: fail the attempt, don't strand it
            self.log.exception("run_crashed", task_id=run.task_id, job_id=run.job_id)
            await self._crashed(run, e)
        finally:
            self.runs.pop(run.task_id, None)
            self.slots.release()

    async def _crashed(self, run: Run, e: Exception) -> None:
        """Fails the attempt at the stage the run had reached (the stored one: the run may
        have committed stages since its claim)."""
        k, stage = run.keys, int(run.h["stage"])
        raw = await self.r.hget(k.task(run.task_id), "stage")
        stage = int(raw) if raw is not None else stage
        err = stage_error(StageError.STAGE_ERROR, f"executor error: {e}"[:2000], stage, type(e).__name__)
        await self.fail(run, stage, err, 1.0, "error", batched=False)

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
        while True:
            cmd = commands[stage]
            if command_kind(cmd) != "call":
                res = await self.commit(run, stage)
            else:
                t0 = time.monotonic()
                try:
                    outcome, result, value = await call(self.app, self.pool, cmd, env, facts, stage)
                except Failure as f:
                    retries = int(h.get("retries") or 0)
                    delay = next_retry_delay(retries + 1, float(doc.get("retry_backoff", 1.0)))
                    res = await self.fail(
                        run,
                        stage,
                        f.error,
                        delay,
                        f.outcome,
                        spent=f.error["code"] == StageError.EXEC_TIMEOUT,
                        method=cmd["method"],
                    )
                    log.info(
                        "stage",
                        **ids,
                        stage=stage,
                        method=cmd["method"],
                        outcome=f.outcome,
                        error=f.error["code"],
                        ms=round((time.monotonic() - t0) * 1000, 3),
                        next=res[0],
                    )
                    return
                res = await self.commit(run, stage, (result, outcome, cmd["method"]))
                log.info(
                    "stage",
                    **ids,
                    stage=stage,
                    method=cmd["method"],
                    outcome=outcome,
                    ms=round((time.monotonic() - t0) * 1000, 3),
                    next=res[0],
                )
                results.append(value)
            match res[0]:
                case "RUN":
                    stage = int(res[1])
                    for i in range(2, len(res), 2):  # messages taken from the inbox on the way
                        results.append(decode(res[i + 1]))
                case "STALE":
                    log.warning("run_abandoned", **ids, stage=stage, reason="stale")
                    return
                case "REPLAY":  # our commit landed but its reply was lost: give the run back whole
                    res = await self.handback(run)
                    log.warning(
                        "run_handed_back", **ids, stage=stage, reason="commit replayed", result=res[0]
                    )
                    return
                case _:  # WAITING / FINISHED: the task is no longer ours
                    return

    # ------------------------------------------------------------------ the scripts of a run
    async def commit(self, run: Run, stage: int, done: tuple[str, str, str] | None = None) -> Any:
        """commit.lua, through the batcher.  `done` is (result JSON, outcome, method) of the
        call stage just run; None for a stage the executor cannot run (a timer or message stage
        the run resumed at), where the commit only decides what comes next."""
        k = run.keys
        return await self.batcher.run(
            "commit",
            [k.task(run.task_id), k.attempts(run.task_id)],
            [k.prefix, run.task_id, run.job_id, run.lease, stage, *([1, *done] if done else [0, "", ""])],
        )

    async def fail(
        self,
        run: Run,
        stage: int,
        error: dict[str, Any],
        delay: float,
        outcome: str,
        *,
        spent: bool = False,
        method: str | None = None,
        batched: bool = True,
    ) -> Any:
        """fail.lua: the attempt of `stage` failed with `error`; a retry is due after `delay` s
        unless the run's budget is `spent`.  `method` feeds the duration histogram.  The run
        loop's fails go through the batcher (`batched`), a crashed run's as a call of its own."""
        k = run.keys
        send = self.batcher.run if batched else self.scripts.run
        return await send(
            "fail",
            [k.task(run.task_id), k.attempts(run.task_id), k.due()],
            [
                k.prefix,
                run.task_id,
                run.job_id,
                run.lease,
                stage,
                encode(error),
                delay,
                outcome,
                int(spent),
                *([] if method is None else [method]),
            ],
        )

    async def handback(self, run: Run) -> Any:
        """handback.lua: gives the run back, QUEUED again at its current stage; for a stopping
        executor past its grace period and for a run whose commit was replayed."""
        k = run.keys
        return await self.scripts.run(
            "handback", [k.task(run.task_id)], [k.prefix, run.task_id, run.job_id, run.lease]
        )
