"""Helpers shared by the test suite (and the chaos / bench scripts).

- `wait_for(pred, ...)`: the only sanctioned way to wait for something in a test.
- `RedisServer`: a private, throw-away redis-server process.
- `Daemons`: starts manager / executor processes (`python -m stagewise ...`) with logs in a
  temp dir, and stops them all (SIGTERM, then SIGKILL) at the end.

Import as `from tests.helpers import ...` (conftest makes the repo root importable).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import redis
from redis.crc import key_slot

REPO_ROOT = Path(__file__).resolve().parents[1]


S = TypeVar("S", "RedisServer", "RedisClusterServers")


@contextlib.contextmanager
def started_for_tests(start: Callable[[], S]) -> Iterator[S]:
    """Servers from `start` for a fixture, stopped after it.  Without redis-server on the
    machine the test fails with how to get it, not with a traceback."""
    import pytest  # here: bench scripts import this module without pytest's plugins loaded

    try:
        servers = start()
    except RuntimeError as e:
        pytest.fail(f"{e}\n(run the suite with `make test`, which installs redis-server)", pytrace=False)
    try:
        yield servers
    finally:
        servers.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    pred: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline is the point of this helper
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Await `pred()` (sync or async) until it returns something truthy; return that value.

    Raises AssertionError when `timeout` seconds pass first.  Exceptions from `pred` propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(lines[-n:])


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- redis


class RedisServer:
    """A redis-server child process on a free port with its own temp dir (no persistence)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, dir: Path) -> None:
        self.proc = proc
        self.port = port
        self.dir = dir
        self.url = f"redis://127.0.0.1:{port}/0"

    @classmethod
    def start(cls, timeout: float = 10.0, attempts: int = 3) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH: run `make test` (it installs redis-server)")
        last = ""
        for _ in range(attempts):  # retry: the free port may be taken between probe and bind
            port = free_port()
            tmp = Path(tempfile.mkdtemp(prefix="stagewise-redis-"))
            argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            argv += ["--dir", str(tmp), "--daemonize", "no"]
            with open(tmp / "redis.log", "wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            server = cls(proc, port, tmp)
            if server._wait_ready(timeout):
                return server
            last = _tail(tmp / "redis.log", 20)
            server.stop()
        raise RuntimeError(f"redis-server did not start after {attempts} attempts; last log:\n{last}")

    def _wait_ready(self, timeout: float) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    pass
                time.sleep(0.02)  # poll interval inside a deadline loop
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _cluster_ports(n: int) -> list[int]:
    """`n` ports that were free a moment ago, each with its cluster bus port (port + 10000)
    free too."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p + 10000 > 65535 or p in out or p + 10000 in out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        out.append(p)
    return out


class RedisClusterServers:
    """A throw-away Redis Cluster on loopback: `masters` redis-server processes with
    cluster-enabled, no persistence, all in one temp dir, joined by `redis-cli --cluster create`
    (with `replicas` replicas per master: `masters * (1 + replicas)` processes, the replicas
    synced before `start` returns); `start` returns once every node reports cluster_state:ok.
    `.url` names the first node (a client finds the others from it); `.ports`, `.dir`, `.procs`.
    `node_timeout` (ms) is how long a master may be silent before its replica takes over."""

    def __init__(
        self, procs: list[subprocess.Popen[bytes]], ports: list[int], dir: Path, replicas: int = 0
    ) -> None:
        self.procs = procs
        self.ports = ports
        self.dir = dir
        self.replicas = replicas
        self.url = f"redis://127.0.0.1:{ports[0]}/0"
        self._slots: list[tuple[int, int, int]] | None = None  # (first slot, last slot, master port)

    @classmethod
    def start(
        cls,
        masters: int = 3,
        timeout: float = 30.0,
        attempts: int = 3,
        replicas: int = 0,
        node_timeout: int = 5000,
    ) -> RedisClusterServers:
        exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server / redis-cli are not on PATH: run `make test` (it installs them)")
        last = ""
        for _ in range(attempts):  # retry: a free port may be taken between probe and bind
            ports = _cluster_ports(masters * (1 + replicas))
            tmp = Path(tempfile.mkdtemp(prefix="stagewise-cluster-"))
            procs = []
            for p in ports:
                argv = [exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
                argv += ["--cluster-config-file", f"nodes-{p}.conf"]
                argv += ["--cluster-node-timeout", str(node_timeout)]
                argv += ["--dir", str(tmp), "--save", "", "--appendonly", "no", "--daemonize", "no"]
                with open(tmp / f"redis-{p}.log", "wb") as log:
                    procs.append(
                        subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                    )
            cluster = cls(procs, ports, tmp, replicas)
            try:
                cluster._form(cli, timeout)
                return cluster
            except BaseException as e:
                cluster.stop()
                if not isinstance(e, RuntimeError | subprocess.TimeoutExpired):
                    raise
                last = str(e)
        raise RuntimeError(f"the Redis Cluster did not form after {attempts} attempts:\n{last}")

    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True
        )

    def _form(self, cli: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        clients = [self._client(p) for p in self.ports]
        try:

            def each(pred: Callable[[redis.Redis], bool]) -> bool:
                try:
                    return all(pred(c) for c in clients)
                except redis.RedisError:
                    return False

            def state(c: redis.Redis) -> dict[str, str]:
                raw = c.execute_command("CLUSTER INFO")
                if isinstance(raw, dict):
                    return {str(k): str(v) for k, v in raw.items()}
                return dict(line.split(":", 1) for line in str(raw).split() if ":" in line)

            def until(pred: Callable[[], bool], what: str) -> None:
                while not pred():
                    if any(p.poll() is not None for p in self.procs):
                        raise RuntimeError(f"a node exited while waiting for {what}:\n{self.log_tails()}")
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"timed out waiting for {what}:\n{self.log_tails()}")
                    time.sleep(0.02)  # poll interval inside a deadline loop

            until(lambda: each(lambda c: bool(c.ping())), "every node to answer PING")
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            done = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *nodes,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=max(deadline - time.monotonic(), 1),
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{done.stdout.decode()}{done.stderr.decode()}"
                )
            n = str(len(self.ports))
            until(
                lambda: each(
                    lambda c: (s := state(c))["cluster_state"] == "ok" and s["cluster_known_nodes"] == n
                ),
                "cluster_state:ok on every node",
            )
            if self.replicas:  # a replica not synced yet could not take over from its master
                until(
                    lambda: each(
                        lambda c: (
                            c.info("replication")["role"] == "master"
                            or c.info("replication").get("master_link_status") == "up"
                        )
                    ),
                    "every replica in sync",
                )
        finally:
            for c in clients:
                c.close()

    def masters(self) -> dict[int, list[int]]:
        """The ports of the masters that serve slots now, each with the ports of its replicas
        (read from the first node that answers: after a failover the map has changed)."""
        for p in self.ports:
            if self.procs[self.ports.index(p)].poll() is not None:
                continue
            c = self._client(p)
            try:
                rows = c.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            finally:
                c.close()
            out: dict[int, list[int]] = {}
            for _start, _end, master, *replicas in rows:
                out.setdefault(int(master[1]), []).extend(int(r[1]) for r in replicas)
            return out
        raise AssertionError("no cluster node answers")

    def proc_of(self, port: int) -> subprocess.Popen[bytes]:
        return self.procs[self.ports.index(port)]

    def port_of(self, key: str) -> int:
        """The port of the master serving `key` (by its hash slot; the slot map is read once,
        from the first node: nothing moves slots in these clusters)."""
        if self._slots is None:
            c = self._client(self.ports[0])
            try:
                rows = c.execute_command("CLUSTER SLOTS")
            finally:
                c.close()
            self._slots = [(int(start), int(end), int(master[1])) for start, end, master, *_ in rows]
        slot = key_slot(key.encode())
        for start, end, port in self._slots:
            if start <= slot <= end:
                return port
        raise AssertionError(f"no master serves slot {slot} of {key!r}")

    def replicas_of(self, master_port: int) -> list[int]:
        """The ports of the replicas of the master on `master_port`."""
        c = self._client(master_port)
        try:
            info = c.info("replication")
        finally:
            c.close()
        return [int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]

    def log_tails(self, n: int = 20) -> str:
        return "\n".join(f"--- node {p} ---\n{_tail(self.dir / f'redis-{p}.log', n)}" for p in self.ports)

    def stop(self, timeout: float = 5.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- daemons


class RpcError(Exception):
    """A JSON-RPC error reply: `.code`, `.message`, `.data`."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code} {message} {data!r}")
        self.code = code
        self.message = message
        self.data = data


class Proc:
    """A daemon child process with its output in `log_path`."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} rc={self.returncode}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM: a graceful stop."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)

    async def wait_exit(self, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        """Wait until the process has exited; return its exit code."""
        try:
            await wait_for(
                lambda: not self.alive, timeout=timeout, what=f"{self.name} (pid {self.pid}) to exit"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {self.log_path} ---\n{self.log_tail()}") from None
        assert self.proc.returncode is not None
        return self.proc.returncode

    def log_tail(self, n: int = 50) -> str:
        return _tail(self.log_path, n)


class ManagerProc(Proc):
    """A manager process; `rpc` / `get` speak to its HTTP server."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        http: str,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        super().__init__(name, argv, env, log_path)
        self.url = f"http://{http}"
        self._session = session
        self._next_id = 0
        tokens = [t.strip() for t in env.get("STAGEWISE_API_TOKENS", "").split(",") if t.strip()]
        # rpc() and get() send this bearer token (the first configured one); raw() never adds it.
        self.token: str | None = tokens[0] if tokens else None

    def _auth(self, headers: dict[str, str] | None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        out.update(headers or {})
        return out

    async def rpc(self, method: str, params: Any = None, headers: dict[str, str] | None = None) -> Any:
        """Call `method`; return its result or raise RpcError."""
        self._next_id += 1
        rid = self._next_id  # calls may be in flight concurrently: keep our own id
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            body["params"] = params
        status, reply = await self.raw(json.dumps(body), self._auth(headers))
        if not isinstance(reply, dict):
            raise AssertionError(f"{method}: HTTP {status}, not a JSON-RPC reply: {reply!r}")
        if "error" in reply:
            err = reply["error"]
            raise RpcError(err.get("code"), err.get("message"), err.get("data"))
        if reply.get("id") != rid or "result" not in reply:
            raise AssertionError(f"{method}: malformed reply {reply!r}")
        return reply["result"]

    async def raw(self, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST `body` to /rpc as is; return (HTTP status, parsed JSON or None)."""
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        data = body.encode() if isinstance(body, str) else body
        async with self._session().post(f"{self.url}/rpc", data=data, headers=hdrs) as resp:
            return resp.status, _json_or_none(await resp.read())

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET `path` (e.g. "/tasks/x/status"); return (HTTP status, parsed JSON or None)."""
        async with self._session().get(f"{self.url}{path}", headers=self._auth(headers)) as resp:
            return resp.status, _json_or_none(await resp.read())


class Daemons:
    """Starts manager / executor processes for one test and stops them all in `aclose`."""

    def __init__(self, redis_url: str, namespace: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._session: aiohttp.ClientSession | None = None
        self._counts: dict[str, int] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    def env(self, **overrides: Any) -> dict[str, str]:
        """The environment of a daemon; an override of None removes the variable."""
        env = dict(os.environ)
        env.update(
            STAGEWISE_REDIS_URL=self.redis_url,
            STAGEWISE_NAMESPACE=self.namespace,
            STAGEWISE_PING_INTERVAL="0.5",
            STAGEWISE_DEAD_AFTER="3",
            PYTHONPATH=str(REPO_ROOT),
            PYTHONUNBUFFERED="1",
        )
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def _log_path(self, kind: str) -> Path:
        self._counts[kind] = n = self._counts.get(kind, 0) + 1
        return self.log_dir / f"{kind}-{n}.log"

    async def manager(self, args: Sequence[str] = (), ready_timeout: float = 20.0, **env: Any) -> ManagerProc:
        """Start a manager on a free port and wait until GET /healthz answers 200."""
        env.setdefault("STAGEWISE_HTTP", f"127.0.0.1:{free_port()}")
        full_env = self.env(**env)
        argv = [sys.executable, "-m", "stagewise", "manager", *args]
        log_path = self._log_path("manager")
        m = ManagerProc(log_path.stem, argv, full_env, log_path, full_env["STAGEWISE_HTTP"], self.session)
        self.procs.append(m)

        async def healthy() -> bool:
            if not m.alive:
                raise AssertionError(f"{m.name} exited with code {m.returncode} before /healthz answered")
            try:
                status, _ = await m.get("/healthz")
            except (TimeoutError, aiohttp.ClientError):
                return False
            return status == 200

        try:
            await wait_for(healthy, timeout=ready_timeout, interval=0.05, what=f"{m.name} /healthz")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {m.log_path} ---\n{m.log_tail()}") from None
        return m

    async def executor(
        self, app: str = "examples.app:app", concurrency: int = 8, args: Sequence[str] = (), **env: Any
    ) -> Proc:
        """Start `stagewise executor APP --concurrency N` (does not wait for registration)."""
        argv = [sys.executable, "-m", "stagewise", "executor", app, "--concurrency", str(concurrency), *args]
        log_path = self._log_path("executor")
        p = Proc(log_path.stem, argv, self.env(**env), log_path)
        self.procs.append(p)
        return p

    async def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every live process, SIGKILL what is left after `grace` seconds."""
        for p in self.procs:
            p.terminate()
        try:
            await wait_for(lambda: not any(p.alive for p in self.procs), timeout=grace, interval=0.05)
        except AssertionError:
            pass
        for p in self.procs:
            if p.alive:
                p.kill()
        for p in self.procs:
            try:
                await asyncio.to_thread(p.proc.wait, 5)
            except subprocess.TimeoutExpired:
                pass

    def log_tails(self, n: int = 50) -> str:
        return "\n".join(
            f"===== {p.name} {p.argv[3:]} rc={p.returncode} ({p.log_path}) =====\n{p.log_tail(n)}"
            for p in self.procs
        )

    async def aclose(self) -> None:
        try:
            await self.stop_all()
        finally:
            if self._session is not None:
                await self._session.close()


# --------------------------------------------------------------------------- tasks in tests

TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELED"})


async def task_until(
    m: ManagerProc, task_id: str, pred: Callable[[dict[str, Any]], Any], within: float = 15.0, what: str = ""
) -> dict[str, Any]:
    """Poll tasks.get until `pred(view)` holds; return that view.  A task not created yet (a
    create racing the first poll) is waited for like any other state."""

    async def probe() -> dict[str, Any] | None:
        try:
            v = await m.rpc("tasks.get", {"id": task_id})
        except RpcError as e:
            if e.code == 1001:  # TASK_NOT_FOUND: not there yet
                return None
            raise
        return v if pred(v) else None

    return await wait_for(probe, timeout=within, what=what or f"task {task_id}")


def uid(prefix: str = "t") -> str:
    """A task id unique to one test."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add_task(tid: str, **extra: Any) -> dict[str, Any]:
    """A one-stage demo.add task (app "demo", see examples/app.py)."""
    return {
        "id": tid,
        "app": "demo",
        "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}],
        **extra,
    }


def idle_app_task(tid: str, app: str, **extra: Any) -> dict[str, Any]:
    """A task of an app no executor serves: it stays QUEUED."""
    return {"id": tid, "app": app, "commands": [{"method": f"{app}.x"}], **extra}


@contextlib.asynccontextmanager
async def demo_manager(redis_url: str, log_dir: Path) -> AsyncIterator[ManagerProc]:
    """A manager and one registered demo executor on a namespace of their own (module fixtures)."""
    d = Daemons(redis_url, "t" + uuid.uuid4().hex[:10], log_dir)
    try:
        m = await d.manager()
        await d.executor("examples.app:app", concurrency=8, STAGEWISE_GRACE="1")
        await wait_for(lambda: m.rpc("executors.list"), timeout=15, what="the demo executor to register")
        yield m
    finally:
        await d.aclose()
