"""The promise of SPEC §11 under fire: 300 three-stage tasks while executors are SIGKILLed
every 1-3 s and the manager twice; every task FINISHED, exact results, no double commit."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import run_chaos


async def test_chaos(redis_url: str, namespace: str, tmp_path: Path) -> None:
    s = await run_chaos(
        redis_url,
        namespace,
        tmp_path,
        tasks=300,
        duration=30.0,
        kill_min=1.0,
        kill_max=3.0,
        executors=2,
        concurrency=8,
        manager_kills=2,
        drain_timeout=90.0,
    )
    print("\n" + s.lines())
    assert s.executor_kills >= 5 and s.manager_kills == 2  # the chaos really happened
    assert s.lost == 0 and s.failed == 0, s.lines()
    assert s.finished == 300 and s.wrong_results == 0, s.lines()
    assert s.double_committed == 0, s.lines()
    assert s.stage_executions >= 900


async def test_chaos_with_limited_keys(redis_url: str, namespace: str, tmp_path: Path) -> None:
    """Flow control under fire: 60 tasks over 3 keys of concurrency 2 (and 60 plain ones) while
    executors are SIGKILLed: the handlers' own spans never overlap beyond 2 per key, and every
    task finishes once (slots held by killed runs come back after the reap)."""
    s = await run_chaos(
        redis_url,
        namespace,
        tmp_path,
        tasks=60,
        duration=20.0,
        kill_min=1.5,
        kill_max=3.0,
        executors=2,
        concurrency=8,
        manager_kills=1,
        drain_timeout=120.0,
        limited=60,
        limit_keys=3,
        limit=2,
    )
    print("\n" + s.lines())
    assert s.executor_kills >= 3 and s.manager_kills == 1
    assert s.lost == 0 and s.failed == 0 and s.finished == 120 and s.wrong_results == 0, s.lines()
    assert s.double_committed == 0, s.lines()
    assert sorted(s.max_overlap) == ["k0", "k1", "k2"], s.lines()
    assert all(1 <= n <= 2 for n in s.max_overlap.values()), s.lines()
