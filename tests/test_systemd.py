"""systemd integration: the notify protocol of both daemons and the unit files in deploy/.

Each daemon runs as a real process with a NOTIFY_SOCKET of the test's own (a SOCK_DGRAM socket
bound here) and WATCHDOG_USEC=400000, so it should ping WATCHDOG=1 every 0.2 s.  Arrival times
are the kernel's receive timestamps (SO_TIMESTAMPNS), so the cadence checks do not depend on how
promptly this test reads the socket.
"""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio

from stagewise import sdnotify
from stagewise.config import Settings
from stagewise.keys import Keys
from tests.helpers import Daemons, Proc, RedisServer, wait_for

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
WATCHDOG_USEC = 400_000
PERIOD = WATCHDOG_USEC / 2e6  # what the daemons should keep to
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd is Linux-only")


class NotifySocket:
    """What systemd would listen on: every datagram, split into its KEY=value lines."""

    def __init__(self, address: str) -> None:
        self.address = address  # the NOTIFY_SOCKET value ('@name' = abstract namespace)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_stamps = True
        except OSError:
            self.kernel_stamps = False
        self.lines: list[tuple[float, str]] = []  # (arrival time, line), in arrival order

    def drain(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            at = time.time()
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    at = sec + nsec / 1e9
            self.lines += [(at, line) for line in data.decode().split("\n")]

    def index(self, line: str) -> int | None:
        self.drain()
        return next((i for i, (_, text) in enumerate(self.lines) if text == line), None)

    def pings_after(self, i: int) -> list[float]:
        self.drain()
        return [at for at, text in self.lines[i + 1 :] if text == "WATCHDOG=1"]

    def close(self) -> None:
        self.sock.close()


def _check_cadence(pings: list[float]) -> None:
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    median = sorted(gaps)[len(gaps) // 2]
    assert PERIOD * 0.5 <= median <= PERIOD * 1.5, f"pings every {median:.3f}s, expected ~{PERIOD}s: {gaps}"
    # the contract: a gap of WATCHDOG_USEC would get the unit killed
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"a gap reached the watchdog timeout: {gaps}"


async def _ready_pings_stop(sock: NotifySocket, proc: Proc, what: str, pings: int = 5) -> None:
    """READY=1 first, then `pings` WATCHDOG=1 at the right cadence; then SIGTERM -> STOPPING=1 and
    exit 0, with no ping after STOPPING=1."""
    await wait_for(lambda: sock.index("READY=1") is not None, timeout=20, what=f"{what} READY=1")
    i = sock.index("READY=1")
    assert i is not None
    assert all(text != "WATCHDOG=1" for _, text in sock.lines[:i]), sock.lines
    got = await wait_for(
        lambda: len(sock.pings_after(i)) >= pings and sock.pings_after(i),
        timeout=10 * pings * PERIOD,
        what=f"{pings} WATCHDOG=1 from {what}",
    )
    _check_cadence(got)

    proc.terminate()
    await wait_for(lambda: sock.index("STOPPING=1") is not None, timeout=10, what=f"{what} STOPPING=1")
    assert await proc.wait_exit(timeout=30) == 0
    sock.drain()
    j = sock.index("STOPPING=1")
    assert j is not None
    assert all(text != "WATCHDOG=1" for _, text in sock.lines[j:]), "a WATCHDOG=1 after STOPPING=1"


# --------------------------------------------------------------------------- the daemons


async def test_manager_ready_watchdog_stopping(daemons: Daemons, tmp_path: Path) -> None:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        m = await daemons.manager(NOTIFY_SOCKET=sock.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
        await _ready_pings_stop(sock, m, "manager")
        assert any(text.startswith("STATUS=serving ") for _, text in sock.lines), sock.lines
    finally:
        sock.close()


async def test_executor_ready_watchdog_stopping(
    daemons: Daemons, r: redis.asyncio.Redis, namespace: str
) -> None:
    # the abstract namespace ('@...'), as systemd itself uses for user managers / containers
    sock = NotifySocket(f"@stagewise-test-{uuid.uuid4().hex}")
    try:
        ex = await daemons.executor(
            "examples.app:app", NOTIFY_SOCKET=sock.address, WATCHDOG_USEC=str(WATCHDOG_USEC)
        )
        await wait_for(lambda: sock.index("READY=1") is not None, timeout=20, what="executor READY=1")
        # READY=1 comes after registration (and the consumer groups, created just before it)
        assert await r.zcard(Keys(namespace).executors()) == 1
        await _ready_pings_stop(sock, ex, "executor")
        assert any(text.startswith("STATUS=app demo") for _, text in sock.lines), sock.lines
        assert await r.zcard(Keys(namespace).executors()) == 0  # left the registry on the way out
    finally:
        sock.close()


def _redis_on(port: int, dir: Path) -> subprocess.Popen[bytes]:
    """A throw-away redis-server on a given (just freed) port."""
    exe = shutil.which("redis-server")
    assert exe
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen([*argv, "--dir", str(dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_manager_withholds_watchdog_while_redis_is_down(daemons: Daemons, tmp_path: Path) -> None:
    """The manager's ping also says "Redis answers": it stops while Redis is away and comes back
    with it, so systemd restarts a manager cut off from Redis for WatchdogSec."""
    own = RedisServer.start()  # a Redis of this test's own, to stop and start again
    again: subprocess.Popen[bytes] | None = None
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        m = await daemons.manager(
            STAGEWISE_REDIS_URL=own.url, NOTIFY_SOCKET=sock.address, WATCHDOG_USEC=str(WATCHDOG_USEC)
        )
        await wait_for(lambda: sock.index("WATCHDOG=1") is not None, timeout=10, what="a first ping")
        port = own.port
        own.stop()
        await wait_for(lambda: "watchdog_withheld" in m.log_path.read_text(), what="the ping withheld")
        sock.drain()
        n = len(sock.lines)
        again = _redis_on(port, tmp_path)
        await wait_for(lambda: "watchdog_resumed" in m.log_path.read_text(), what="the ping resumed")
        await wait_for(lambda: sock.pings_after(n - 1), what="pings again")
        m.terminate()
        assert await m.wait_exit(timeout=30) == 0
    finally:
        sock.close()
        own.stop()
        if again is not None:
            again.terminate()
            again.wait(10)


# --------------------------------------------------------------------------- sdnotify itself


def test_sdnotify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    assert not sdnotify.enabled()
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.watchdog_period() is None


def test_sdnotify_watchdog_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sock = NotifySocket(str(tmp_path / "n.sock"))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        assert sdnotify.watchdog_period() is None  # no WatchdogSec=
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        assert sdnotify.watchdog_period() == 1.5
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert sdnotify.watchdog_period() is None  # meant for another process
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        assert sdnotify.watchdog_period() == 1.5
        monkeypatch.setenv("WATCHDOG_USEC", "soon")
        assert sdnotify.watchdog_period() is None
        assert sdnotify.stopping("a\nb")
        sock.drain()
        assert [text for _, text in sock.lines] == ["STOPPING=1", "STATUS=a b"]
    finally:
        sock.close()


# --------------------------------------------------------------------------- the unit files


def _unit(name: str) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(DEPLOY / name)
    return p


@pytest.mark.parametrize("name", ["stagewise-manager.service", "stagewise-executor@.service"])
def test_unit_settings(name: str) -> None:
    svc = _unit(name)["Service"]
    assert svc["Type"] == "notify"
    assert svc["Restart"] == "always"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["User"] == "stagewise"
    watchdog = float(svc["WatchdogSec"].removesuffix("s"))
    assert watchdog > 2 * Settings().ping_interval  # room for a slow Redis round trip
    if "executor" in name:
        assert svc["KillMode"] == "mixed"
        assert "${STAGEWISE_APP}" in svc["ExecStart"]
        # the stop must outlast the grace period plus fetch (5 s) and the hand-backs
        assert float(svc["TimeoutStopSec"].removesuffix("s")) >= Settings().grace + 15


def _unit_dir() -> Path | None:
    for d in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if (Path(d) / "sysinit.target").exists():
            return Path(d)
    return None


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed on this machine: unit files not verified")
    units = _unit_dir()
    if units is None:
        pytest.skip("no systemd unit directory with sysinit.target: unit files not verified")
    # A root of its own: the system's units and ours.
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    for f in DEPLOY.glob("*.service"):
        shutil.copy(f, root / "etc/systemd/system" / f.name)
    verify_units(exe, units, root, root / "opt/stagewise/venv/bin/stagewise")


def verify_units(exe: str, units: Path, root: Path, binary: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of our two units as installed under `root` (the template through
    an instance), beside the system's `units`, with a stand-in for the ExecStart `binary` (verify
    checks that it is executable).  Fails on any error, and on any warning naming our units."""
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    out = subprocess.run(
        [exe, "verify", f"--root={root}", "stagewise-manager.service", "stagewise-executor@billing.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "stagewise" not in report, report  # unknown keys / bad values are only warnings
    return out
