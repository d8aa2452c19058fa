"""Bearer tokens, the refusal to listen openly without them, and the in-flight limit."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tests.helpers import REPO_ROOT, free_port


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
        "shared.cli",
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
