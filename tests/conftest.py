"""Fixtures for the whole suite.

One redis-server per session (`redis_server`, `redis_url`); every test gets its own
`namespace` on it, so tests never see each other's keys.  `daemons` starts manager /
executor processes for a test and always stops them (their log tails are printed when the
test fails).  Wait for things with `tests.helpers.wait_for`, never with a bare sleep.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # make `tests.helpers`, `examples.app` importable
    sys.path.insert(0, str(ROOT))

import tests.helpers as _helpers  # noqa: E402

# tests/ itself is on sys.path too (rootdir conftest): make `import helpers` the same module,
# so that e.g. `RpcError` is one class whichever way a test imports it.
sys.modules.setdefault("helpers", _helpers)

from tests.helpers import Daemons, RedisServer, started_for_tests, wait_for  # noqa: E402

__all__ = ["wait_for"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the item (item.rep_setup / rep_call / rep_teardown)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session: `.port`, `.url`, `.dir`, `.proc`."""
    with started_for_tests(RedisServer.start) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    """A namespace unique to this test."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An async Redis client (decode_responses=True) on the session server."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def daemons(
    request: pytest.FixtureRequest, redis_url: str, namespace: str, tmp_path: Path
) -> AsyncIterator[Daemons]:
    """`await daemons.manager(**env)` / `await daemons.executor(app, concurrency, **env)`."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    d = Daemons(redis_url, namespace, log_dir)
    try:
        yield d
    finally:
        try:
            await d.aclose()
        finally:
            if d.procs and _failed(request.node):
                print(f"\n----- daemon logs (namespace {namespace}) -----\n{d.log_tails()}")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp dir for the Redis servers a test starts itself (removed after the test)."""
    d = Path(tempfile.mkdtemp(prefix="stagewise-scratch-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
