"""Issue 13, the API side: whatever Redis does, the manager answers within a bound.

Each test runs against a redis-server of its own (never the session's), which it stops, fills,
demotes or kills: JSON-RPC methods answer `1006 UNAVAILABLE {reason}` (never -32603, never a
hang), GET /tasks/{id} and /healthz answer 503, the client raises `Unavailable`, and service
resumes by itself once Redis is back.  Plus the reason mapping on its own, /healthz on a Redis
Cluster with one master stopped, and a Sentinel failover under a running manager and executor.

Every answer during a fault is timed against BOUND (6 s: SPEC §7 promises 5 s; the socket
timeout of stagewise.storage.connection makes it about 3 s here, 0 s where Redis refuses).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stagewise.client import AsyncClient, Unavailable
from stagewise.faults import unavailable_reason
from stagewise.keys import Keys
from stagewise.manager.inproc import RedisClient
from stagewise.storage.connection import SOCKET_TIMEOUT, parse_sentinel_url
from tests.helpers import (
    REPO_ROOT,
    Daemons,
    ManagerProc,
    RedisClusterServers,
    RedisServer,
    RpcError,
    add_task,
    free_port,
    idle_app_task,
    started_for_tests,
    task_until,
    uid,
    wait_for,
)

BOUND = 6.0  # s: the longest any answer during a fault may take here
assert SOCKET_TIMEOUT < BOUND - 2

T = TypeVar("T")


async def timed(what: Callable[[], Awaitable[T]]) -> tuple[T | BaseException, float]:
    """(what's result or the exception it raised, the seconds it took)."""
    t0 = time.monotonic()
    try:
        out: T | BaseException = await what()
    except Exception as e:  # noqa: BLE001 - the caller inspects it
        out = e
    return out, time.monotonic() - t0


async def unavailable(what: Callable[[], Awaitable[Any]], reason: str) -> float:
    """Asserts that a JSON-RPC call answers 1006 with `reason` within BOUND; its time."""
    got, took = await timed(what)
    assert isinstance(got, RpcError), f"expected 1006 {reason}, got {got!r}"
    assert (got.code, got.data) == (1006, {"reason": reason}), got
    assert took < BOUND, f"1006 {reason} took {took:.2f} s"
    return took


async def http_503(m: ManagerProc, path: str, reason: str) -> tuple[Any, float]:
    """Asserts that GET `path` answers 503 within BOUND naming `reason`; (body, seconds)."""
    got, took = await timed(lambda: m.get(path))
    assert not isinstance(got, BaseException), got
    status, body = got
    assert status == 503, (path, status, body)
    assert took < BOUND, f"GET {path} took {took:.2f} s"
    if path == "/healthz":
        assert body["ok"] is False and body["reason"] == reason, body
        assert set(body["requests"]) == {"serving", "waiting", "max_inflight"}, body
    else:
        assert body == {
            "code": 1006,
            "message": f"Redis is unavailable ({reason}); the call may be retried",
            "data": {"reason": reason},
        }, body
    return body, took


def admin(port: int) -> redis.Redis:
    """A plain client to steer a test's own server (CONFIG SET, REPLICAOF, ...)."""
    return redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=5, decode_responses=True)


def start_redis_on(port: int, dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A redis-server on a given port (one a server of the test just left), as RedisServer
    starts them; returns once it answers PING."""
    exe = shutil.which("redis-server")
    assert exe
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(dir), "--daemonize", "no", *extra]
    with open(dir / f"redis-{port}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    c = admin(port)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                if c.ping():
                    return proc
            except redis.RedisError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"redis-server on {port} did not start:\n{(dir / f'redis-{port}.log').read_text()}"
                )
            time.sleep(0.02)  # poll interval inside a deadline loop
    finally:
        c.close()


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a stopped server would not see the SIGTERM
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def own() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop, fill, demote or kill."""
    with started_for_tests(RedisServer.start) as server:
        try:
            yield server
        finally:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)


def no_internal_errors(m: ManagerProc) -> None:
    log = m.log_path.read_text()
    assert "rpc_internal_error" not in log, m.log_tail()


# --------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), "unreachable"),
        (RedisTimeoutError("Timeout reading from socket"), "unreachable"),
        (ConnectionResetError(104, "Connection reset by peer"), "unreachable"),
        (TimeoutError(), "unreachable"),
        (BusyLoadingError("Redis is loading the dataset in memory"), "loading"),
        (ReadOnlyError("You can't write against a read only replica."), "read-only"),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "out of memory"),
        (ClusterDownError("The cluster is down"), "cluster down"),
        (SlotNotCoveredError('Slot "42" not covered by the cluster.'), "cluster down"),
        (RedisClusterException("All slots are not covered after query all startup_nodes."), "cluster down"),
        (MasterDownError("Link with MASTER is down"), "master down"),
        # redis-py 5 has no class for MASTERDOWN: the reply's code decides
        (
            ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
            "master down",
        ),
        (ResponseError("LOADING Redis is loading the dataset in memory"), "loading"),
        # an error a script met, as Redis 6 wraps it
        (
            ResponseError("ERR Error running script (call to f_1): @user_script:1: -OOM command not allowed"),
            "out of memory",
        ),
        # not an outage: a retry cures none of these
        (ResponseError("ERR unknown command 'FOO'"), None),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), None),
        (AuthenticationError("invalid username-password pair"), None),
        (RedisClusterException("CROSSSLOT Keys in request don't hash to the same slot"), None),
        (ValueError("a bug"), None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_unavailable_reason(exc: BaseException, reason: str | None) -> None:
    assert unavailable_reason(exc) == reason


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db", "password"),
    [
        ("redis+sentinel://127.0.0.1:26379/mymaster", [("127.0.0.1", 26379)], "mymaster", 0, None),
        (
            "redis+sentinel://:s%40cret@h1:1,h2:2,[::1]:3/svc/2",
            [("h1", 1), ("h2", 2), ("::1", 3)],
            "svc",
            2,
            "s@cret",
        ),
        ("redis+sentinel://h1/svc/", [("h1", 26379)], "svc", 0, None),
    ],
)
def test_sentinel_urls(
    url: str, sentinels: list[tuple[str, int]], service: str, db: int, password: str | None
) -> None:
    u = parse_sentinel_url(url)
    assert (list(u.sentinels), u.service, u.db, u.password) == (sentinels, service, db, password)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1:26379", "no service name"),
        ("redis+sentinel://h1:26379/", "no service name"),
        ("redis+sentinel:///svc", "no sentinel host:port given"),
        ("redis+sentinel://h1:26379,/svc", "sentinel 2 has no host"),
        ("redis+sentinel://h1:port/svc", "sentinel 1 'h1:port': the port must be a number"),
        ("redis+sentinel://h1:70000/svc", "the port must be a number from 1 to 65535"),
        ("redis+sentinel://h1/svc/x", "the database 'x' is not a number"),
        ("redis+sentinel://h1/svc/0/more", "more than /service_name/db"),
        ("redis+sentinel://secret@h1/svc", "credentials must be"),
        ("redis+sentinel://h1/svc?ssl=1", "options after '?'"),
    ],
)
def test_malformed_sentinel_urls_are_named(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="bad Sentinel URL") as e:
        parse_sentinel_url(url)
    assert problem in str(e.value)
    assert "secret" not in str(e.value)


def test_a_malformed_sentinel_url_stops_the_manager_with_one_line() -> None:
    env = dict(os.environ, STAGEWISE_REDIS_URL="redis+sentinel://h1:26379", PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "stagewise", "manager"],
        env=env,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "STAGEWISE_REDIS_URL" in err and "no service name" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- faults of one server


async def test_a_stopped_redis_answers_1006_unreachable_in_bounded_time(
    daemons: Daemons, own: RedisServer
) -> None:
    m = await daemons.manager(STAGEWISE_REDIS_URL=own.url)
    tid = uid()
    await m.rpc("tasks.create", {"task": idle_app_task(tid, "idle")})  # pooled connections in use
    os.kill(own.proc.pid, signal.SIGSTOP)
    try:

        async def batch_of_5() -> float:
            # the requests after the first that found Redis unreachable are answered without
            # waiting each its own timeout: the batch too answers within the bound
            batch = [
                {"jsonrpc": "2.0", "id": n, "method": "tasks.get", "params": {"id": tid}} for n in range(5)
            ]
            got, took = await timed(lambda: m.raw(json.dumps(batch)))
            assert not isinstance(got, BaseException), got
            status, replies = got
            assert status == 200 and [r["error"]["data"] for r in replies] == [{"reason": "unreachable"}] * 5
            assert took < BOUND, f"a batch of 5 took {took:.2f} s"
            return took

        async def view(path: str) -> float:
            return (await http_503(m, path, "unreachable"))[1]

        # at once: each on a connection of its own, pooled or new
        times = await asyncio.gather(
            unavailable(lambda: m.rpc("tasks.create", {"task": idle_app_task(uid(), "idle")}), "unreachable"),
            unavailable(lambda: m.rpc("tasks.get", {"id": tid}), "unreachable"),
            unavailable(lambda: m.rpc("tasks.list", {"app": "idle"}), "unreachable"),
            view("/healthz"),
            view(f"/tasks/{tid}"),
            view(f"/tasks/{tid}/status"),
            batch_of_5(),
        )
        # and one after the other, on the connections the calls above left in the pool
        times += [
            await unavailable(lambda: m.rpc("tasks.send", {"id": tid, "data": 1}), "unreachable"),
            await view("/healthz"),
        ]
        print(f"\nanswer times while Redis is SIGSTOPped (s): {[round(t, 2) for t in times]}")
    finally:
        os.kill(own.proc.pid, signal.SIGCONT)
    t0 = time.monotonic()
    await wait_for(lambda: _ok(m, "/healthz"), timeout=BOUND, what="/healthz 200 after SIGCONT")
    assert (await m.rpc("tasks.get", {"id": tid}))["id"] == tid
    await m.rpc("tasks.create", {"task": idle_app_task(uid(), "idle")})
    print(f"serving again {time.monotonic() - t0:.2f} s after SIGCONT")
    no_internal_errors(m)


async def _ok(m: ManagerProc, path: str) -> bool:
    status, _ = await m.get(path)
    return status == 200


async def test_out_of_memory_answers_1006_and_writes_nothing(daemons: Daemons, own: RedisServer) -> None:
    m = await daemons.manager(STAGEWISE_REDIS_URL=own.url)
    namespace = daemons.namespace
    kept = uid()
    await m.rpc("tasks.create", {"task": idle_app_task(kept, "idle")})
    r = admin(own.port)
    try:
        r.mset({f"filler:{n}": "x" * 10_000 for n in range(200)})  # ~2 MB of data
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", str(used // 2))
        refused = uid()
        times = [
            await unavailable(
                lambda: m.rpc("tasks.create", {"task": idle_app_task(refused, "idle")}), "out of memory"
            ),
            await unavailable(
                lambda: m.rpc("tasks.create_many", {"tasks": [idle_app_task(uid(), "idle")]}),
                "out of memory",
            ),
            (await http_503(m, "/healthz", "out of memory"))[1],
        ]
        print(f"\nanswer times out of memory (s): {[round(t, 3) for t in times]}")
        # reads still work, and the refused create left nothing behind
        assert (await m.rpc("tasks.get", {"id": kept}))["status"] == "QUEUED"
        code, _ = await m.get(f"/tasks/{kept}")
        assert code == 200
        with pytest.raises(RpcError) as e:
            await m.rpc("tasks.get", {"id": refused})
        assert e.value.code == 1001
        assert not [k for k in r.scan_iter(f"{Keys(namespace).prefix}*") if refused in k]
        # the client raises Unavailable with the reason, over HTTP and in process
        async with AsyncClient(m.url, timeout=10) as c:
            with pytest.raises(Unavailable) as ue:
                await c.create(idle_app_task(uid(), "idle"))
        assert (ue.value.code, ue.value.reason, ue.value.name) == (1006, "out of memory", "UNAVAILABLE")
        async with RedisClient(own.url, namespace=namespace) as direct:
            with pytest.raises(Unavailable) as ue:
                await direct.create(idle_app_task(uid(), "idle"))
            assert ue.value.reason == "out of memory"
        r.config_set("maxmemory", "0")
        await wait_for(lambda: _ok(m, "/healthz"), timeout=BOUND, what="/healthz 200 with memory freed")
        await m.rpc("tasks.create", {"task": idle_app_task(refused, "idle")})
    finally:
        r.config_set("maxmemory", "0")
        r.close()
    no_internal_errors(m)


async def test_redis_killed_and_restarted_on_the_same_port(
    daemons: Daemons, own: RedisServer, scratch: Path
) -> None:
    m = await daemons.manager(STAGEWISE_REDIS_URL=own.url)
    await m.rpc("tasks.create", {"task": idle_app_task(uid(), "idle")})
    own.proc.kill()
    own.proc.wait()
    times = [
        await unavailable(
            lambda: m.rpc("tasks.create", {"task": idle_app_task(uid(), "idle")}), "unreachable"
        ),
        await unavailable(lambda: m.rpc("tasks.list", {}), "unreachable"),
    ]
    times.append((await http_503(m, "/healthz", "unreachable"))[1])
    async with RedisClient(own.url, namespace=daemons.namespace) as direct:
        with pytest.raises(Unavailable) as ue:  # cannot even connect
            await direct.info()
        assert ue.value.reason == "unreachable"
    print(f"\nanswer times while Redis is killed (s): {[round(t, 2) for t in times]}")
    again = start_redis_on(own.port, scratch)
    try:
        t0 = time.monotonic()

        async def creates() -> bool:
            try:
                await m.rpc("tasks.create", {"task": idle_app_task(uid(), "idle")})
            except RpcError as e:
                assert e.code == 1006, e
                return False
            return True

        await wait_for(creates, timeout=5, what="a create to succeed after the restart")
        await wait_for(lambda: _ok(m, "/healthz"), timeout=5, what="/healthz 200 after the restart")
        print(f"serving again {time.monotonic() - t0:.2f} s after the restart")
    finally:
        stop_proc(again)
    no_internal_errors(m)


async def test_a_replica_answers_read_only_and_master_down(
    daemons: Daemons, own: RedisServer, scratch: Path
) -> None:
    m = await daemons.manager(STAGEWISE_REDIS_URL=own.url)
    tid = uid()
    await m.rpc("tasks.create", {"task": idle_app_task(tid, "idle")})
    master_port = free_port()
    master = start_redis_on(master_port, scratch)
    r = admin(own.port)
    try:
        r.replicaof("127.0.0.1", master_port)
        # synced (not loading any more): the replica serves reads and refuses writes
        await wait_for(
            lambda: r.info("replication").get("master_link_status") == "up",
            timeout=15,
            what="the replica to sync",
        )
        times = [
            await unavailable(
                lambda: m.rpc("tasks.create", {"task": idle_app_task(uid(), "idle")}), "read-only"
            ),
            (await http_503(m, "/healthz", "read-only"))[1],
        ]
        with pytest.raises(RpcError) as e:  # a read is served: the synced data set has no task
            await m.rpc("tasks.get", {"id": tid})
        assert e.value.code == 1001
        # the master goes away and the replica may not serve stale data: MASTERDOWN
        r.config_set("replica-serve-stale-data", "no")
        stop_proc(master)
        await wait_for(
            lambda: r.info("replication").get("master_link_status") == "down",
            timeout=15,
            what="the replica to lose its master",
        )
        times += [
            await unavailable(lambda: m.rpc("tasks.get", {"id": tid}), "master down"),
            (await http_503(m, f"/tasks/{tid}", "master down"))[1],
            # Redis refuses the write as a replica's before it looks at the link
            (await http_503(m, "/healthz", "read-only"))[1],
        ]
        print(f"\nanswer times read-only, then master down (s): {[round(t, 3) for t in times]}")
        r.replicaof("NO", "ONE")
        r.config_set("replica-serve-stale-data", "yes")
        await wait_for(lambda: _ok(m, "/healthz"), timeout=BOUND, what="/healthz 200 as a master again")
        await m.rpc("tasks.create", {"task": idle_app_task(tid, "idle")})
    finally:
        r.close()
        stop_proc(master)
    no_internal_errors(m)


# --------------------------------------------------------------------------- Redis Cluster


async def test_healthz_checks_the_master_of_every_partition(daemons: Daemons, tmp_path: Path) -> None:
    """With one master of three stopped, /healthz answers 503 within the bound though the node
    the manager was pointed at answers: each partition's master is written to."""
    with started_for_tests(RedisClusterServers.start) as cluster:
        m = await daemons.manager(STAGEWISE_REDIS_URL=cluster.url, STAGEWISE_PARTITIONS="8")
        owners = {cluster.port_of(Keys(daemons.namespace, p).health()) for p in range(8)}
        others = sorted(owners - {cluster.ports[0]})
        assert others, "8 partitions all on the first master"
        proc = cluster.procs[cluster.ports.index(others[0])]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            _, took = await http_503(m, "/healthz", "unreachable")
            print(f"\n/healthz with one cluster master stopped: 503 in {took:.2f} s")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await wait_for(lambda: _ok(m, "/healthz"), timeout=10, what="/healthz 200 after SIGCONT")
        no_internal_errors(m)


# --------------------------------------------------------------------------- Sentinel


class Sentinelled:
    """A master, its replica and one sentinel watching them as `mymaster`, in `dir`."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.master_port, self.replica_port, self.sentinel_port = free_port(), free_port(), free_port()
        self.master = self._start(start_redis_on(self.master_port, dir))
        self.replica = self._start(
            start_redis_on(self.replica_port, dir, "--replicaof", "127.0.0.1", str(self.master_port))
        )
        conf = dir / "sentinel.conf"  # the sentinel rewrites its file: one of its own, writable
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 3000\n"
        )
        exe = shutil.which("redis-server")
        assert exe
        with open(dir / "sentinel.log", "ab") as log:
            self._start(
                subprocess.Popen(
                    [exe, str(conf), "--sentinel"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/mymaster"

    def _start(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def sentinel(self) -> redis.Redis:
        return admin(self.sentinel_port)

    def master_addr(self) -> tuple[str, int] | None:
        s = self.sentinel()
        try:
            got = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        except redis.RedisError:
            return None
        finally:
            s.close()
        return (str(got[0]), int(got[1])) if got else None

    def replica_ready(self) -> bool:
        """The sentinel knows the replica, and the replica is in sync: a failover can pick it."""
        s = self.sentinel()
        try:
            rows = s.execute_command("SENTINEL", "REPLICAS", "mymaster")
        except redis.RedisError:
            return False
        finally:
            s.close()
        for row in rows or []:
            info = row if isinstance(row, dict) else dict(zip(row[::2], row[1::2], strict=True))
            if int(info.get("port", 0)) == self.replica_port and info.get("master-link-status") == "ok":
                return "s_down" not in str(info.get("flags", ""))
        return False

    def replica_caught_up(self) -> bool:
        """The replica has applied every write the master has made so far.  (WAIT on another
        connection than the writer's would not tell: it covers that connection's writes only.)"""
        master, replica = admin(self.master_port), admin(self.replica_port)
        try:
            done = int(master.info("replication")["master_repl_offset"])
            return int(replica.info("replication").get("slave_repl_offset", -1)) >= done
        finally:
            master.close()
            replica.close()

    async def kill_master(self, caught_up: bool = True) -> None:
        """SIGKILL the master, once its replica holds every write when `caught_up` (a write
        still in flight may be lost by a failover: replication is asynchronous); without, at
        once, whatever the replica lacks (what durability levels are about)."""
        if caught_up:
            await wait_for(self.replica_caught_up, timeout=10, what="the replica to catch up")
        self.procs[0].kill()
        self.procs[0].wait()

    def rejoin_old_master(self) -> None:
        """The killed master starts again, empty, as a replica of the promoted one (as a
        restarted old master that the sentinel reconfigures ends up; started so at once, not
        after the sentinel's delay)."""
        self.procs[0] = start_redis_on(
            self.master_port, self.dir, "--replicaof", "127.0.0.1", str(self.replica_port)
        )

    def old_master_rejoined(self) -> bool:
        """The promoted replica has the old master as an online replica of its own."""
        c = admin(self.replica_port)
        try:
            return "online" in str(c.info("replication").get("slave0", ""))
        except redis.RedisError:
            return False
        finally:
            c.close()

    def stop(self) -> None:
        for p in self.procs:
            stop_proc(p)


@pytest.fixture
def sentinelled(scratch: Path) -> Iterator[Sentinelled]:
    s = Sentinelled(scratch)
    try:
        yield s
    finally:
        s.stop()


async def test_a_sentinel_failover_is_followed(daemons: Daemons, sentinelled: Sentinelled) -> None:
    s = sentinelled
    await wait_for(s.replica_ready, timeout=20, interval=0.1, what="the sentinel to see the synced replica")
    assert s.master_addr() == ("127.0.0.1", s.master_port)
    env = {"STAGEWISE_REDIS_URL": s.url}
    m = await daemons.manager(**env)
    await daemons.executor(concurrency=4, STAGEWISE_GRACE="1", **env)
    before = [uid("pre") for _ in range(3)]
    for tid in before:
        await m.rpc("tasks.create", {"task": add_task(tid)})
    for tid in before:
        await task_until(m, tid, lambda v: v["status"] == "FINISHED", within=15)
    t0 = time.monotonic()
    await s.kill_master()
    await unavailable(lambda: m.rpc("tasks.get", {"id": before[0]}), "unreachable")
    await wait_for(
        lambda: s.master_addr() == ("127.0.0.1", s.replica_port),
        timeout=20,
        interval=0.1,
        what="the sentinel to promote the replica",
    )
    promoted = time.monotonic() - t0

    async def serves() -> bool:
        try:
            await m.rpc("tasks.get", {"id": before[0]})
        except RpcError as e:
            assert e.code == 1006, e
            return False
        return True

    await wait_for(serves, timeout=BOUND, what="the API to answer after the failover")
    serving = time.monotonic() - t0
    after = [uid("post") for _ in range(3)]
    for tid in after:
        await m.rpc("tasks.create", {"task": add_task(tid)})
    for tid in after:
        v = await task_until(m, tid, lambda v: v["status"] == "FINISHED", within=20)
        assert v["results"] == [3]
    for tid in before:  # what the replica had is still there
        assert (await m.rpc("tasks.get", {"id": tid}))["status"] == "FINISHED"
    await wait_for(lambda: _ok(m, "/healthz"), timeout=BOUND, what="/healthz 200 after the failover")
    print(f"\nfailover: promoted after {promoted:.2f} s, API serving after {serving:.2f} s")
    no_internal_errors(m)


async def test_the_in_process_client_follows_sentinel(sentinelled: Sentinelled, namespace: str) -> None:
    s = sentinelled
    await wait_for(s.replica_ready, timeout=20, interval=0.1, what="the sentinel to see the synced replica")
    async with RedisClient(s.url, namespace=namespace) as c:
        tid = uid()
        await c.create(idle_app_task(tid, "idle"))
        assert (await c.info())["namespace"] == namespace
        await s.kill_master()
        await wait_for(
            lambda: s.master_addr() == ("127.0.0.1", s.replica_port),
            timeout=20,
            interval=0.1,
            what="the sentinel to promote the replica",
        )

        async def served() -> Any:
            try:
                return await c.get(tid)
            except Unavailable:
                return None

        v = await wait_for(served, timeout=BOUND, what="the in-process client to follow the failover")
        assert v["id"] == tid
        await c.create(idle_app_task(uid(), "idle"))
