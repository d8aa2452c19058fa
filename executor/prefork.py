"""`stagewise executor --processes P`: P executor processes under one supervisor (SPEC §9).

One event loop uses one core.  To use more, the supervisor loads the app once (so a mistake in it
is still one line and exit 78, and the children share its imported code copy-on-write), then forks
P children.  Each child is a whole executor (stagewise.executor.main.serve): its own event loop,
Redis connections, registration and executor id, so the manager sees P executors and fences,
reaps and reconciles each on its own.  Nothing is shared between the children at run time.

The supervisor itself does little, on purpose (no event loop, no Redis):
- it waits for signals with `sigtimedwait` (SIGCHLD, SIGTERM, SIGINT blocked in the parent), so a
  child's exit or an operator's signal is handled at once and nothing polls;
- SIGTERM / SIGINT go on to every child, which starts its own two-phase stop; a second one is
  passed on too and ends the children at once (their own second-signal rule);
- a child that dies while the supervisor is not stopping (SIGKILLed, crashed) is started again,
  after a back-off that doubles per quick death (1 s .. 30 s), so a child that dies at start-up
  does not spin;  its runs are recovered by the manager as for any dead executor;
- a child that exits with EXIT_CONFIG (a configuration mistake that it found after the fork, such
  as a bad Redis URL) stops the whole group with that status: restarting cannot fix it;
- under systemd (Type=notify, NotifyAccess=main) the supervisor is the main process: it says
  READY=1 once the children are forked, WATCHDOG=1 while it turns, and STOPPING=1 on the first
  signal; the children's own notifications are switched off (NOTIFY_SOCKET removed).
It exits when every child has exited: 0 after a clean stop, else the worst status seen.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from stagewise import log, sdnotify
from stagewise.config import EXIT_CONFIG

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # s before a child that died is started again
QUICK_DEATH = 10.0  # s: a child that lived less than this doubles the next back-off


def _status(wait_status: int) -> int:
    """A child's wait status as a shell would report it (128 + signal when killed)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def supervise(processes: int, child: Callable[[int], int]) -> int:
    """Fork `processes` children, each running `child(index)` (its return value is its exit
    status), and look after them until they have all exited; returns the supervisor's status."""
    lg = log.get(role="executor", supervisor=os.getpid())
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
    restart_at: dict[int, float] = {}  # index -> when to start it again
    backoff = {i: BACKOFF_FIRST for i in range(processes)}
    stopping = 0  # signals received
    worst = 0

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child: a whole executor of its own
            code = 1
            try:
                for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                    os.environ.pop(name, None)
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                code = child(index)
            except SystemExit as e:  # config.fail and friends
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - logged, then the status says it
                lg.exception("executor_process_crashed", index=index)
            finally:
                os._exit(code)
        children[pid] = (index, time.monotonic())
        lg.info("executor_process_started", index=index, pid=pid)

    for i in range(processes):
        spawn(i)
    sdnotify.ready(f"{processes} executor processes")
    period = sdnotify.watchdog_period()
    while children or (restart_at and not stopping):
        now = time.monotonic()
        waits = [t - now for t in restart_at.values()] + ([period] if period else [])
        timeout = max(0.0, min(waits)) if waits else 3600.0
        info = signal.sigtimedwait(_SIGNALS, timeout)
        if period:
            sdnotify.notify("WATCHDOG=1")
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            stopping += 1
            restart_at.clear()
            if stopping == 1:
                sdnotify.stopping(f"stopping {len(children)} executor processes")
                lg.info("executor_processes_stopping", processes=len(children))
            for pid in children:  # each child runs its own two-phase stop (a second: at once)
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        while children:  # reap every child that has exited (SIGCHLD may stand for several)
            pid, st = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid not in children:
                continue
            index, started = children.pop(pid)
            code = _status(st)
            if stopping:
                worst = max(worst, code)
                lg.info("executor_process_exited", index=index, pid=pid, status=code)
                continue
            if code == EXIT_CONFIG:  # a configuration mistake: every child would hit it
                lg.error("executor_process_config_error", index=index, pid=pid, status=code)
                worst, stopping = EXIT_CONFIG, 1
                restart_at.clear()
                for other in children:
                    os.kill(other, signal.SIGTERM)
                continue
            lived = time.monotonic() - started
            if lived >= QUICK_DEATH:  # it had been working: start again soon
                backoff[index] = BACKOFF_FIRST
            delay = backoff[index]
            backoff[index] = min(delay * 2, BACKOFF_MAX)
            lg.warning("executor_process_died", index=index, pid=pid, status=code, restart_in=delay)
            restart_at[index] = time.monotonic() + delay
        now = time.monotonic()
        for index in [i for i, t in restart_at.items() if t <= now and not stopping]:
            del restart_at[index]
            spawn(index)
    lg.info("executor_processes_stopped", status=worst)
    return worst
