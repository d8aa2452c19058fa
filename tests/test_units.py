"""Pure pieces: retry and cron policy, configuration, status table, keys, handler params."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.exceptions as rex

from stagewise import config, faults, log
from stagewise.executor.app import App, ParamsError
from stagewise.keys import Keys, family_root, member, partition_of, split_member
from stagewise.policy import next_cron, next_retry_delay, retry_delay
from stagewise.status import ACTIVE, HTTP_CODE, TERMINAL, Status, allowed


@pytest.mark.parametrize(
    ("retry", "backoff", "rand", "expected"),
    [
        (1, 1.0, 0.5, 1.0),  # no jitter at the middle of the draw
        (2, 1.0, 0.5, 2.0),
        (3, 1.0, 0.5, 4.0),
        (1, 1.0, 0.0, 0.8),  # -20 %
        (1, 1.0, 0.999999, 1.2),  # +20 %
        (4, 2.5, 0.5, 20.0),
        (20, 1.0, 0.5, 3600.0),  # capped at an hour
        (1, 0.0, 0.7, 0.0),
    ],
)
def test_next_retry_delay(retry: int, backoff: float, rand: float, expected: float) -> None:
    assert next_retry_delay(retry, backoff, rand) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("retries", "max_retries", "final", "expected"),
    [
        (0, 0, False, None),  # no retries allowed: the run fails
        (0, 3, False, 2.0),  # first retry: backoff 2 x 2^0
        (2, 3, False, 8.0),  # third retry: 2 x 2^2
        (3, 3, False, None),  # retries spent
        (0, 3, True, None),  # the run's time budget is spent: fails whatever is left
    ],
)
def test_retry_delay_decides_and_times_the_retry(
    retries: int, max_retries: int, final: bool, expected: float | None
) -> None:
    # rand 0.5: no jitter
    got = retry_delay(retries, max_retries, 2.0, final, rand=0.5)
    assert got == (None if expected is None else pytest.approx(expected))


def _ts(s: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(s).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("*/5 * * * *", "UTC", "2026-01-01T00:00:00", "2026-01-01T00:05:00"),  # strictly after
        ("*/5 * * * *", "UTC", "2026-01-01T00:03:10", "2026-01-01T00:05:00"),
        ("0 9 * * *", "Europe/Berlin", "2026-06-01T10:00:00", "2026-06-02T09:00:00"),
        ("0 9 * * 1", "UTC", "2026-11-23T09:00:00", "2026-11-30T09:00:00"),  # a Monday
    ],
)
def test_next_cron(expr: str, tz: str, after: str, expected: str) -> None:
    assert next_cron(expr, tz, _ts(after, tz)) == _ts(expected, tz)


def test_status_table() -> None:
    assert TERMINAL == {Status.FINISHED, Status.FAILED, Status.CANCELED}
    assert all(allowed(s, Status.CANCELED) for s in ACTIVE)
    assert not any(allowed(s, Status.CANCELED) for s in TERMINAL)
    assert allowed(Status.QUEUED, Status.RUNNING) and not allowed(Status.IDLE, Status.RUNNING)
    assert not allowed(Status.FINISHED, Status.QUEUED) and allowed(Status.FINISHED, Status.IDLE)
    assert HTTP_CODE[Status.FINISHED] == 201 and HTTP_CODE[Status.FAILED] == 500
    assert HTTP_CODE[Status.CANCELED] == 410 and HTTP_CODE[Status.WAITING] == 202


def test_keys_share_one_hash_tag() -> None:
    k = Keys("ns", 3)
    names = [k.task("a"), k.stream("app"), k.due(), k.deadlines(), k.idx_status("QUEUED"), k.running("e")]
    assert all(n.startswith("{ns:3}:") for n in names)
    assert split_member(member("billing", "t:1")) == ("billing", "t:1")
    assert partition_of("abc", 1) == 0
    assert {partition_of(f"t{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    assert partition_of("same", 8) == partition_of("same", 8)


@pytest.mark.parametrize("root", ["p", "report.2024", "1.2", ".1.2", "a.b.7", "x:9", "12", "a..3.4x"])
def test_a_fan_out_family_shares_its_roots_partition(root: str) -> None:
    """Children (`<parent>.<stage>.<index>`), nested to any depth, land with their root."""
    assert family_root(root) == root
    ids = [root]
    for depth in range(4):
        ids.append(f"{ids[-1]}.{depth}.{depth * 7 + 3}")
    for tid in ids:
        assert family_root(tid) == family_root(root), tid
        assert {partition_of(tid, n) for n in (2, 6, 16)} == {partition_of(root, n) for n in (2, 6, 16)}
    assert family_root("report.2024.11") == "report"  # why ids ending in pairs moved (CHANGELOG)


def test_config_env_and_toml(tmp_path: Any) -> None:
    s = config.load(
        env={"STAGEWISE_NAMESPACE": "x", "STAGEWISE_PING_INTERVAL": "0.5", "STAGEWISE_API_TOKENS": "a, b"}
    )
    assert s.namespace == "x" and s.ping_interval == 0.5 and s.api_tokens == ("a", "b")
    assert s.dead_seconds == 1.5 and s.host == "127.0.0.1" and s.port == 8765
    f = tmp_path / "c.toml"
    f.write_text('STAGEWISE_NAMESPACE = "fromfile"\npartitions = 4\n')
    s = config.load(str(f), env={})
    assert s.namespace == "fromfile" and s.partitions == 4
    assert config.load(str(f), env={"STAGEWISE_NAMESPACE": "env"}).namespace == "env"  # env wins


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("bogus = 1\n", {}, "unknown key 'bogus'"),
        ("", {"STAGEWISE_PARTITIONS": "two"}, "STAGEWISE_PARTITIONS"),
        ("", {"STAGEWISE_PING_INTERVAL": "-1"}, "must be > 0"),
        ("", {"STAGEWISE_HTTP": "nohost"}, "host:port"),
    ],
)
def test_config_errors(tmp_path: Any, text: str, env: dict[str, str], needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=needle):
        config.load(str(f), env=env)


def test_handler_params_are_converted_to_annotations() -> None:
    app = App("t")

    @app.method("t.f")
    def f(a: int, b: list[str], c: float = 1.5, ctx: Any = None) -> None: ...

    @app.method("t.kw")
    def kw(a: int, **rest: Any) -> None: ...

    m = app.methods["t.f"]
    assert m.takes_ctx and not m.is_async
    assert m.convert({"a": 1, "b": ["x"]}) == {"a": 1, "b": ["x"], "c": 1.5}
    assert m.convert({"a": 1, "b": [], "c": 2}) == {"a": 1, "b": [], "c": 2.0}
    for bad, needle in [
        ({"a": "1", "b": []}, "params.a"),
        ({"b": []}, "missing parameter `a`"),
        ({"a": 1, "b": [1]}, "params.b[0]"),
        ({"a": 1, "b": [], "z": 0}, "unexpected"),
    ]:
        with pytest.raises(ParamsError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            m.convert(bad)
    assert app.methods["t.kw"].convert({"a": 1, "z": 2}) == {"a": 1, "z": 2}
    with pytest.raises(ValueError):
        App("Bad Name")
    with pytest.raises(ValueError):
        app.method("t.f")(f)


@pytest.mark.parametrize(
    ("error", "passes"),
    [
        (rex.ConnectionError("Error 111 connecting"), True),
        (rex.TimeoutError("Timeout reading"), True),
        (ConnectionResetError(104, "reset"), True),
        (rex.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (rex.ReadOnlyError("You can't write against a read only replica."), True),
        (rex.ClusterDownError("CLUSTERDOWN The cluster is down"), True),
        (rex.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"), True),
        (rex.ResponseError("BUSY Redis is busy running a script."), True),
        (rex.ResponseError("MASTERDOWN Link with MASTER is down"), True),
        (rex.ResponseError("UNBLOCKED the stream key no longer exists"), True),
        (rex.SlotNotCoveredError("Slot 42 not covered by the cluster"), True),
        (rex.ResponseError("NOGROUP No such key 'q' or consumer group 'executors'"), False),
        (rex.ResponseError("ERR Error running script: attempt to index a nil value"), False),
        (rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (rex.NoScriptError("No matching script."), False),
        (ValueError("not Redis"), False),
    ],
)
def test_which_redis_faults_pass_by_themselves(error: Exception, passes: bool) -> None:
    assert faults.transient(error) is passes


def test_fault_kinds_and_nogroup() -> None:
    assert faults.kind(rex.ResponseError("NOGROUP No such key")) == "ResponseError:NOGROUP"
    assert faults.kind(rex.OutOfMemoryError("command not allowed")) == "OutOfMemoryError"
    assert faults.is_nogroup(rex.ResponseError("NOGROUP No such key")) is True
    assert faults.is_nogroup(rex.ResponseError("ERR no")) is False


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = faults.Backoff()
    assert [b.next() for _ in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    b.reset()
    assert b.next() == pytest.approx(0.1)
    short = faults.Backoff(cap=0.25)  # the heartbeat's, with a ping interval of 0.25 s
    assert [short.next() for _ in range(4)] == pytest.approx([0.1, 0.2, 0.25, 0.25])


def test_warnings_once_per_kind_of_failure_then_recovered() -> None:
    with log.capture() as logs:
        w = faults.Warnings(log.get(), "ping_failed")
        for _ in range(5):
            w.failed(rex.ConnectionError("Error 111"), partition=0)
        w.failed(rex.OutOfMemoryError("command not allowed"), partition=0)
        w.failed(rex.OutOfMemoryError("command not allowed"), partition=0)
        w.ok(partition=0)
        w.ok(partition=0)
    assert [(e["event"], e.get("kind"), e.get("failures")) for e in logs] == [
        ("ping_failed", "ConnectionError", None),
        ("ping_failed", "OutOfMemoryError", None),
        ("ping_failed_recovered", None, 7),
    ]
