"""systemd's notify protocol (``sd_notify(3)``) without a dependency.

A unit with ``Type=notify`` starts the daemon with ``$NOTIFY_SOCKET`` (an AF_UNIX SOCK_DGRAM
address; a leading ``@`` means the abstract namespace).  The daemon sends newline-separated
``KEY=value`` lines to it:

  READY=1      the daemon serves (systemd then counts the unit as started)
  STOPPING=1   a shutdown began
  WATCHDOG=1   "I am alive": with ``WatchdogSec=``, systemd kills and restarts a unit whose
               pings stop for that long.  It passes the interval as ``$WATCHDOG_USEC``.
  STATUS=...   a line shown by ``systemctl status``

Without ``$NOTIFY_SOCKET`` (not run by systemd) every call here is a no-op, so the daemons call
these unconditionally.  A failed send is ignored: notification never breaks the daemon.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from stagewise.aio import raise_if_stop_requested

Health = Callable[[], Awaitable[bool] | bool]

_sock: socket.socket | None = None
_sock_for: str | None = None


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # e.g. "vsock:..." (systemd 253+, for VMs): not supported here


def enabled() -> bool:
    """True when a notify socket is configured."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    return bool(raw) and _address(raw) is not None


def notify(*lines: str) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True when it was sent."""
    global _sock, _sock_for
    raw = os.environ.get("NOTIFY_SOCKET", "")
    addr = _address(raw) if raw else None
    if addr is None or not lines:
        return False
    payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
    try:
        if _sock is None or _sock_for != raw:
            if _sock is not None:
                _sock.close()
            _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            _sock.setblocking(False)  # never stall the event loop on a full receive queue
            _sock_for = raw
        _sock.sendto(payload, addr)
        return True
    except OSError:
        return False


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None when systemd
    expects no pings from this process (unset, malformed, or ``$WATCHDOG_PID`` names another)."""
    if not enabled():
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def watchdog(healthy: Health | None = None, log: Any = None) -> None:
    """Ping WATCHDOG=1 every half interval while ``healthy()`` holds; run until cancelled.

    It is an asyncio task, so a ping also proves the event loop turns: a blocked loop, a
    loop that stopped turning or a failing health check all let the pings lapse, and systemd
    restarts the unit after ``WatchdogSec``.  ``healthy`` may be sync or async; an exception, or
    no answer within half a period, counts as unhealthy.  Returns at once when no watchdog is set.
    """
    period = watchdog_period()
    if period is None:
        return
    loop = asyncio.get_running_loop()
    was_ok = True
    while True:
        started = loop.time()
        try:
            ok = True
            if healthy is not None:
                value = healthy()
                if inspect.isawaitable(value):  # at most half a period: pings stay < 0.75 interval apart
                    value = await asyncio.wait_for(value, period / 2)
                ok = bool(value)
            why = "" if ok else "health check false"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # TimeoutError, a Redis error, ...: unhealthy, not fatal
            raise_if_stop_requested()
            ok, why = False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if ok:
            notify("WATCHDOG=1")
        if log is not None and ok != was_ok:
            if ok:
                log.info("watchdog_resumed")
            else:
                log.warning("watchdog_withheld", reason=why)
        was_ok = ok
        raise_if_stop_requested()  # a cancel that wait_for returned a result for (shared/aio.py)
        await asyncio.sleep(max(0.0, started + period - loop.time()))
