"""The promise of SPEC §11 under fire: 300 three-stage tasks while executors are SIGKILLed
every 1-3 s and the manager twice; every task FINISHED, exact results, no double commit."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.chaos import run_chaos
from tests.helpers import RedisServer, started_for_tests
from tests.redis_faults_table import Standalone


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


async def test_chaos_fan_out_and_limited_keys(redis_url: str, namespace: str, tmp_path: Path) -> None:
    """SPEC §3a and §2a under fire, in one run: 30 parents x 10 children, and 45 tasks over 3 keys
    of concurrency 2, while executors and the manager are SIGKILLed: every parent joined exactly
    once with the exact result list, and the limited handlers' own spans never overlap beyond 2
    per key (slots held by killed runs come back after the reap)."""
    s = await run_chaos(
        redis_url,
        namespace,
        tmp_path,
        tasks=30,
        duration=20.0,
        kill_min=1.0,
        kill_max=3.0,
        executors=2,
        concurrency=8,
        manager_kills=2,
        drain_timeout=120.0,
        workload="fanout",
        children=10,
        limited=45,
        limit_keys=3,
        limit=2,
    )
    print("\n" + s.lines())
    assert s.executor_kills >= 3 and s.manager_kills == 2  # the chaos really happened
    assert s.lost == 0 and s.failed == 0, s.lines()
    assert s.finished == 75 and s.children_finished == 300, s.lines()
    assert s.wrong_results == 0 and s.double_counted_joins == 0 and s.double_committed == 0, s.lines()
    assert sorted(s.max_overlap) == ["k0", "k1", "k2"], s.lines()
    assert all(1 <= n <= 2 for n in s.max_overlap.values()), s.lines()


async def test_chaos_with_redis_faults(tmp_path: Path) -> None:
    """The same with Redis faults mixed in (make chaos CHAOS_ARGS="--redis-faults" at full
    size): Redis SIGKILLed and restarted from its AOF, SIGSTOPped past the dead threshold, out
    of memory, in turn, while executors and the manager are SIGKILLed.  Every acknowledged task
    ends FINISHED once, and no create was answered -32603."""
    (tmp_path / "redis").mkdir()
    (tmp_path / "logs").mkdir()
    faulty = Standalone(tmp_path / "redis")
    faulty.start()
    try:
        with started_for_tests(RedisServer.start) as counter:
            s = await run_chaos(
                faulty.url,
                "c" + uuid.uuid4().hex[:10],
                tmp_path / "logs",
                tasks=150,
                duration=24.0,
                kill_min=2.0,
                kill_max=4.0,
                executors=2,
                concurrency=8,
                manager_kills=1,
                drain_timeout=90.0,
                seed=13,
                faulty=faulty,
                counter_url=counter.url,
                redis_every=(3.0, 5.0),
            )
    finally:
        faulty.stop()
    print("\n" + s.lines())
    assert set(s.redis_faults) == {"sigkill+aof", "sigstop", "oom"}, s.lines()  # every kind happened
    assert s.executor_kills >= 3 and s.manager_kills == 1, s.lines()
    assert s.acknowledged == 150 and s.finished == 150, s.lines()
    assert s.lost == 0 and s.stuck == 0 and s.failed == 0 and s.wrong_results == 0, s.lines()
    assert s.double_committed == 0, s.lines()
    # creates refused during a fault were answered 1006 (tests/test_redis_faults_table.py
    # asserts that each fault is answered so): never -32603, nor anything else
    assert {k.split()[0] for k in s.answers} <= {"1006"}, s.lines()
