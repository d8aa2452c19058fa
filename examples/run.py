"""`make run`: start redis, a manager and a demo executor, run examples/demo_task.json, then serve.

Unless STAGEWISE_REDIS_URL is set, a private redis-server is started (port 6399, or a free one)
with its data in ./run/redis.  Daemon logs go to ./run/*.log.  Ctrl-C (or SIGTERM) stops
everything.  Only the standard library is used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "run"
TASK_FILE = ROOT / "examples" / "demo_task.json"
DEMO_TIMEOUT = 120.0  # seconds for the whole demo task
TERMINAL = {"FINISHED", "FAILED", "CANCELED"}


class DemoError(Exception):
    pass


class RpcError(DemoError):
    def __init__(self, code: int, message: str, data: Any) -> None:
        super().__init__(f"JSON-RPC error {code} {message}: {json.dumps(data)}")
        self.code = code


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: ignore TIME_WAIT
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


class Child:
    """A child process in its own process group (so Ctrl-C reaches only us; we stop it in order)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = RUN_DIR / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive:
            raise DemoError(
                f"{self.name} exited with code {self.proc.returncode}; {self.log}:\n{tail(self.log)}"
            )

    def stop(self, timeout: float) -> None:
        if not self.alive:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} did not stop within {timeout:.0f}s: killing it")
            self.proc.kill()
            self.proc.wait()


class Demo:
    def __init__(self) -> None:
        self.children: list[Child] = []
        http = os.environ.get("STAGEWISE_HTTP", "127.0.0.1:8765")
        self.http_host, _, port = http.rpartition(":")
        self.http_port = int(port)
        self.base = f"http://{http}"
        tokens = [t.strip() for t in os.environ.get("STAGEWISE_API_TOKENS", "").split(",") if t.strip()]
        self.headers = {"Content-Type": "application/json"}
        if tokens:
            self.headers["Authorization"] = f"Bearer {tokens[0]}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        self._id = 0
        self.grace = float(os.environ.get("STAGEWISE_GRACE", "30"))  # the executor's stop grace period

    # ------------------------------------------------------------------ processes

    def start_redis(self) -> str:
        url = os.environ.get("STAGEWISE_REDIS_URL")
        if url:
            print(f"using Redis at {url}")
            return url
        exe = shutil.which("redis-server")
        if exe is None:
            raise DemoError("redis-server is not installed (`make run` installs it)")
        port = 6399 if port_free("127.0.0.1", 6399) else free_port()
        data = RUN_DIR / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--daemonize", "no"]
        redis = Child("redis", argv)
        self.children.append(redis)
        deadline = time.monotonic() + 10
        while not redis_ping(port):
            redis.check()
            if time.monotonic() > deadline:
                raise DemoError(
                    f"redis-server did not answer PING within 10s; {redis.log}:\n{tail(redis.log)}"
                )
            time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        print(f"started redis-server on {url} (data in {data.relative_to(ROOT)})")
        return url

    def start_daemons(self, redis_url: str) -> None:
        if not port_free(self.http_host, self.http_port):
            raise DemoError(f"{self.http_host}:{self.http_port} is in use; set STAGEWISE_HTTP=host:port")
        env = dict(
            os.environ, STAGEWISE_REDIS_URL=redis_url, STAGEWISE_HTTP=f"{self.http_host}:{self.http_port}"
        )
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        cli = [sys.executable, "-m", "stagewise"]
        self.children.append(Child("manager", [*cli, "manager"], env))
        self.children.append(
            Child("executor", [*cli, "executor", "examples.app:app", "--concurrency", "8"], env)
        )
        deadline = time.monotonic() + 20
        while not self.healthy():
            self.check_children()
            if time.monotonic() > deadline:
                raise DemoError(
                    f"manager not healthy within 20s; run/manager.log:\n{tail(RUN_DIR / 'manager.log')}"
                )
            time.sleep(0.1)
        print(f"manager and executor (examples.app:app) are up; logs in {RUN_DIR.relative_to(ROOT)}/")

    def check_children(self) -> None:
        for child in self.children:
            child.check()

    def shutdown(self) -> None:
        # Reverse start order: executor (hands running work back), manager, then redis.
        try:
            for child in reversed(self.children):
                if child.alive:
                    print(f"stopping {child.name} ...")
                child.stop(timeout=self.grace + 5 if child.name == "executor" else 10)
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            for child in self.children:
                if child.alive:
                    child.proc.kill()
                    child.proc.wait()

    # ------------------------------------------------------------------ HTTP

    def healthy(self) -> bool:
        try:
            with self.opener.open(f"{self.base}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def rpc(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self._id += 1
        body = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params or {}}
        req = urllib.request.Request(f"{self.base}/rpc", data=json.dumps(body).encode(), headers=self.headers)
        try:
            with self.opener.open(req, timeout=10) as resp:
                reply = json.load(resp)
        except urllib.error.HTTPError as e:
            raise DemoError(f"{method}: HTTP {e.code} {e.read()[:300]!r}") from None
        if "error" in reply:
            err = reply["error"]
            raise RpcError(err.get("code"), err.get("message"), err.get("data"))
        return reply["result"]

    # ------------------------------------------------------------------ the demo task

    def run_task(self) -> bool:
        task = json.loads(TASK_FILE.read_text())
        task["id"] = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        commands = task["commands"]
        n = len(commands)
        view = self.rpc("tasks.create", {"task": task, "on_conflict": "error"})
        print(f"\ncreated task {view['id']} ({n} stages) from {TASK_FILE.relative_to(ROOT)}")

        printed, last_status, sent = 0, None, False
        deadline = time.monotonic() + DEMO_TIMEOUT
        while True:
            view = self.rpc("tasks.get", {"id": task["id"], "include_results": True})
            status, stage = view["status"], int(view.get("stage") or 0)
            results = view.get("results") or []
            done = n if status == "FINISHED" else min(stage, n)
            for i in range(printed, done):
                result = results[i] if i < len(results) else None
                note = "  (if: false, skipped)" if result is None and "if" in commands[i] else ""
                print(f"  stage {i + 1}/{n} {describe(commands[i])} -> {json.dumps(result)}{note}")
            printed = max(printed, done)
            if status != last_status:
                where = "" if status in TERMINAL else f" at stage {min(stage, n - 1) + 1}/{n}"
                print(f"  status {status}{where}")
                last_status = status
            if status == "WAITING" and stage < n and "message" in commands[stage] and not sent:
                data = {"name": "world"}
                print(f"  task waits for a message: tasks.send {json.dumps(data)}")
                self.rpc("tasks.send", {"id": task["id"], "data": data})
                sent = True
            if status in TERMINAL:
                break
            self.check_children()
            if time.monotonic() > deadline:
                raise DemoError(f"task {task['id']} still {status} after {DEMO_TIMEOUT:.0f}s")
            time.sleep(0.1)

        print(f"\ntask {task['id']} {status}")
        if status != "FINISHED":
            print(f"error: {json.dumps(view.get('error'))}")
            return False
        print(f"results: {json.dumps(view.get('results'))}")
        return True

    def serve(self) -> None:
        print(f"\nserving JSON-RPC on {self.base}/rpc and the dashboard on {self.base}/ — Ctrl-C to stop")
        while True:
            self.check_children()
            time.sleep(0.5)


def describe(command: dict[str, Any]) -> str:
    if "method" in command:
        return str(command["method"])
    if "timer" in command:
        return f"timer {command['timer']}s"
    return "message"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    RUN_DIR.mkdir(exist_ok=True)
    demo = Demo()
    code = 0
    try:
        demo.start_daemons(demo.start_redis())
        if demo.run_task():
            demo.serve()
        else:
            code = 1
    except KeyboardInterrupt:
        print()
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    finally:
        demo.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
