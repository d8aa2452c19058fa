"""Bearer tokens, the refusal to listen openly without them, and the in-flight limit."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tests.helpers import REPO_ROOT, free_port, wait_for


async def test_tokens_guard_every_route_but_healthz(daemons: Any) -> None:
    m = await daemons.manager(STAGEWISE_API_TOKENS="tok-a, tok-b")
    body = '{"jsonrpc": "2.0", "id": 1, "method": "system.info"}'
    for headers in [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic tok-a"},
        {"Authorization": "Bearer "},
        {"Authorization": "tok-a"},
    ]:
        status, _ = await m.raw(body, headers)
        assert status == 401, headers
        status, _ = await m.get("/tasks/x", {**headers, "Authorization": headers.get("Authorization", "")})
        assert status == 401
    for tok in ("tok-a", "tok-b"):
        status, reply = await m.raw(body, {"Authorization": f"Bearer {tok}"})
        assert status == 200 and reply["result"]["namespace"]
    m.token = None
    status, _ = await m.get("/healthz")
    assert status == 200


async def _run_manager(env: dict[str, str], *args: str) -> tuple[int | None, str]:
    """Runs `stagewise manager` expecting it to refuse and exit; (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stagewise",
        "manager",
        *args,
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    except TimeoutError:  # it did not refuse: it is serving
        proc.kill()
        await proc.wait()
        return None, ""
    return proc.returncode, out.decode()


@pytest.mark.parametrize("host", ["0.0.0.0", "example.invalid"])
async def test_refuses_open_address_without_tokens(daemons: Any, host: str) -> None:
    env = daemons.env(STAGEWISE_HTTP=f"{host}:{free_port()}")
    code, out = await _run_manager(env)
    assert code not in (0, None) and "refusing to serve" in out


async def test_insecure_flag_and_tokens_allow_open_address(daemons: Any) -> None:
    m = await daemons.manager(args=["--insecure"], STAGEWISE_HTTP=f"0.0.0.0:{free_port()}")
    assert (await m.rpc("system.info"))["partitions"] == 1
    m2 = await daemons.manager(STAGEWISE_HTTP=f"0.0.0.0:{free_port()}", STAGEWISE_API_TOKENS="t")
    assert (await m2.rpc("system.info"))["partitions"] == 1


async def test_in_flight_limit_sheds_the_excess_and_serves_the_rest(daemons: Any) -> None:
    """With STAGEWISE_MAX_INFLIGHT=2, two requests are served at once and 4 x 2 wait; past that a
    request gets 503 with Retry-After at once.  The held requests are then all answered.  Each
    held request is counted on /healthz (which the limit does not apply to) before the next one
    is sent, so the one beyond the queue is known to come last."""
    m = await daemons.manager(STAGEWISE_MAX_INFLIGHT="2")
    host, port = m.url.removeprefix("http://").split(":")
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "system.info"}'
    head = (
        f"POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    async def load() -> dict[str, int]:
        status, doc = await m.get("/healthz")
        assert status == 200, doc
        return dict(doc["requests"])

    assert await load() == {"serving": 0, "waiting": 0, "max_inflight": 2}
    held = []
    for i in range(2 + 4 * 2):  # headers only: the server takes them in, the body never comes
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head)
        await writer.drain()
        held.append((reader, writer))

        async def counted(n: int = i + 1) -> bool:
            got = await load()
            return got["serving"] + got["waiting"] == n

        await wait_for(counted, timeout=10, what=f"held request {i + 1} counted by the manager")
    assert await load() == {"serving": 2, "waiting": 8, "max_inflight": 2}
    status, reply = await asyncio.wait_for(m.raw(body.decode(), {"Connection": "close"}), timeout=10)
    assert status == 503, reply  # answered at once: it never waited for a slot
    for _, writer in held:  # the bodies: every held request is served
        writer.write(body)
        await writer.drain()
    for reader, writer in held:
        reply = await asyncio.wait_for(reader.read(), timeout=20)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b'"namespace"' in reply, reply[:400]
    status, reply = await m.raw(body.decode())
    assert status == 200 and reply["result"]["namespace"]
    assert await load() == {"serving": 0, "waiting": 0, "max_inflight": 2}


async def test_without_tokens_requests_from_pages_of_other_sites_are_refused(daemons: Any) -> None:
    """CSRF and DNS rebinding: a browser names the page that sent a request in Origin, and a page
    that renamed itself to us (a name resolving to 127.0.0.1) still sends its own Host."""
    m = await daemons.manager()
    port = m.url.rsplit(":", 1)[1]
    body = '{"jsonrpc": "2.0", "id": 1, "method": "system.info"}'
    for headers in [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://evil.example:{port}"},
        {"Host": f"evil.example:{port}"},
        {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
    ]:
        status, reply = await m.raw(body, headers)
        assert status == 403, (headers, status, reply)
    for headers in [{}, {"Origin": m.url}, {"Host": f"localhost:{port}"}]:  # clients, our own page
        status, reply = await m.raw(body, headers)
        assert status == 200 and reply["result"]["namespace"], (headers, status, reply)
    status, _ = await m.get("/healthz", {"Host": "evil.example"})
    assert status == 200

    # With tokens a foreign page gets nowhere anyway (it cannot send them), and a reverse proxy
    # may rewrite Host and Origin: no such checks then.
    t = await daemons.manager(STAGEWISE_API_TOKENS="tok")
    proxied = {"Authorization": "Bearer tok", "Host": "api.example", "Origin": "https://api.example"}
    status, reply = await t.raw(body, proxied)
    assert status == 200 and reply["result"]["namespace"], (status, reply)
