"""Configuration from the environment and an optional TOML file (SPEC §10).

Precedence: defaults < TOML file (``--config``) < environment.  The file uses the same names
as the environment (``STAGEWISE_REDIS_URL = "..."``) or their short lower-case form
(``redis_url = "..."``); any other key is an error, so a typo never passes silently.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any, NoReturn

PREFIX = "STAGEWISE_"


class ConfigError(ValueError):
    pass


# The exit status of a daemon stopped by a configuration mistake (sysexits' EX_CONFIG): the units
# do not restart on it (RestartPreventExitStatus), so a mistake is one line in the journal, not
# a restart loop.
EXIT_CONFIG = 78

# STAGEWISE_DURABILITY (SPEC §10): when an API write is acknowledged.  `async`: once Redis
# applied it; `replica`: once WAIT saw STAGEWISE_MIN_REPLICAS replicas take it; `fsync`: once
# WAITAOF saw it fsynced to the local AOF (and on STAGEWISE_MIN_REPLICAS replicas' AOFs).
# stagewise.storage.durability carries them out.
DURABILITY_LEVELS = ("async", "replica", "fsync")


def fail(line: str) -> NoReturn:
    """Stops a daemon on a configuration mistake: `line` on stderr, exit status EXIT_CONFIG."""
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "stagewise"
    http: str = "127.0.0.1:8765"
    api_tokens: tuple[str, ...] = ()
    ping_interval: float = 5.0  # s between executor heartbeats
    dead_after: int = 3  # missed pings before an executor is declared dead
    max_interruptions: int = 5  # executor losses on one stage before EXECUTOR_LOST
    partitions: int = 1
    durability: str = "async"  # one of DURABILITY_LEVELS
    min_replicas: int = 1  # replicas a `replica` / `fsync` acknowledgement waits for
    # Beyond SPEC §10 (documented in the README):
    body_limit: int = 1 << 20  # bytes of a JSON-RPC request body
    grace: float = 30.0  # s an executor waits for running stages on SIGTERM
    tick: float = 0.1  # s between manager scheduling passes
    batch: int = 500  # due entries handled per partition per pass
    log_level: str = "info"
    max_inflight: int = 256  # HTTP requests served at once; more get 503
    clean_after: float = 0.0  # s; the manager cleans terminal tasks older than this (0 = never)
    notify_retention: float = 7 * 86400.0  # s notifications are kept
    stats_every: float = 60.0  # s between the dashboard's samples of counters and queues (0 = off)
    # SPEC §2a backpressure: creates for an app with this many QUEUED tasks are refused (0 = never)
    max_backlog: int = 0
    _sources: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def host(self) -> str:
        return self.http.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    @property
    def dead_seconds(self) -> float:
        return self.ping_interval * self.dead_after


_NAMES = {f.name for f in fields(Settings) if not f.name.startswith("_")}


# 0 switches clean_after and max_backlog off; min_replicas 0 is `fsync` on the local disk only
_ZERO_OK = {"clean_after", "max_backlog", "min_replicas"}


def _coerce(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "tuple[str, ...]":
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(s.strip() for s in items if str(s).strip())
        if kind == "float":
            value: Any = float(raw)
        elif kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            value = int(raw)
        else:
            value = str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{PREFIX}{name.upper()}: expected {kind}, got {raw!r}") from None
    if kind in ("float", "int") and (value < 0 or (value == 0 and name not in _ZERO_OK)):
        raise ConfigError(f"{PREFIX}{name.upper()}: must be > 0, got {raw!r}")
    return value


def _validate(s: Settings) -> Settings:
    host, sep, port = s.http.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{PREFIX}HTTP: expected host:port, got {s.http!r}")
    if s.durability not in DURABILITY_LEVELS:
        raise ConfigError(
            f"{PREFIX}DURABILITY: expected one of {', '.join(DURABILITY_LEVELS)}, got {s.durability!r}"
        )
    if s.durability == "replica" and s.min_replicas < 1:
        # WAIT for 0 replicas returns at once: an acknowledgement that promises nothing
        raise ConfigError(f"{PREFIX}MIN_REPLICAS: must be >= 1 with {PREFIX}DURABILITY=replica, got 0")
    if s.redis_url.startswith("redis+sentinel://"):
        # imported for a Sentinel URL only: it loads redis-py, which the client commands never need
        from stagewise.storage.connection import parse_sentinel_url

        try:
            parse_sentinel_url(s.redis_url)
        except ValueError as e:
            raise ConfigError(f"{PREFIX}REDIS_URL: {e}") from None
    return s


def load(path: str | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    if path:
        import tomllib  # only with a config file

        with open(path, "rb") as f:
            data = tomllib.load(f)
        for key, raw in data.items():
            name = key[len(PREFIX) :].lower() if key.startswith(PREFIX) else key
            if name not in _NAMES:
                raise ConfigError(f"{path}: unknown key {key!r}")
            values[name] = _coerce(name, raw)
    for name in _NAMES:
        raw = env.get(PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
        elif name == "api_tokens" and raw == "":
            values[name] = ()
    return _validate(replace(Settings(), **values))
