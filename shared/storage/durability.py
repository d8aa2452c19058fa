"""STAGEWISE_DURABILITY (SPEC §10) on the wire: what an API write waits for before it is
acknowledged, and the start-up check that the Redis servers can give it.

`async` waits for nothing: Redis applied the write, its own persistence (AOF everysec) and
asynchronous replication do the rest.  `replica` sends ``WAIT min_replicas timeout`` after the
write, `fsync` sends ``WAITAOF 1 min_replicas timeout`` (the local AOF fsynced, and as many
replicas' AOFs; min_replicas 0 is the local disk only).  Fewer than asked within the timeout
is `DurabilityNotMet`, answered ``1006 UNAVAILABLE`` with a reason that gives the counts.

WAIT and WAITAOF count what the replicas (disks) took of *this connection's* writes up to its
last one.  So the wait is preceded, on the same connection, by the fence: a tiny write of the
partition's health key (Keys.health).  Redis replicates and logs in one order, so once the
fence is acknowledged, so is every write the server applied before it: the scripts of this
call, and also a write another client made that this call only read (a create retried with
on_conflict "ignore" that finds the task stored by a first try which was answered 1006, or
an unlock of a task already unlocked).  Without the fence such a call, having written
nothing, would be acknowledged at once whatever the replicas hold.

The executor's commits and the manager's timed roles do not wait: SPEC §10 asks it of API
writes, a commit lost with its Redis is run again (stages are at least once), and a role
re-derives its work from what Redis kept (the reconciliation).  Waiting there would put a
replica round trip on every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagewise.config import Settings
from stagewise.faults import DURABILITY
from stagewise.keys import HEALTH_TTL_MS, Keys
from stagewise.storage.connection import SOCKET_TIMEOUT, is_cluster

# Seconds an acknowledgement waits for replicas or disks.  Fixed: with the write before it, it
# must fit the socket timeout of the reply (SOCKET_TIMEOUT), which keeps the API's answer
# within SPEC §7's 5 s; a replica on the same network acknowledges in about a millisecond, so
# a second means "not there", not "slow".
WAIT_TIMEOUT = 1.0
assert WAIT_TIMEOUT < SOCKET_TIMEOUT / 2

# WAITAOF first came with Redis 7.2.
FSYNC_MIN_VERSION = (7, 2)


@dataclass(frozen=True)
class Durability:
    """A durability level (config.DURABILITY_LEVELS) and what its wait needs."""

    level: str = "async"
    min_replicas: int = 1
    timeout: float = WAIT_TIMEOUT

    @classmethod
    def of(cls, settings: Settings) -> Durability:
        return cls(settings.durability, settings.min_replicas)

    @property
    def waits(self) -> bool:
        """False for `async`: no fence, no wait, nothing added to a call."""
        return self.level != "async"

    def command(self) -> tuple[Any, ...]:
        """The wait command, sent after the fence on the same connection."""
        ms = round(self.timeout * 1000)
        if self.level == "replica":
            return ("WAIT", self.min_replicas, ms)
        return ("WAITAOF", 1, self.min_replicas, ms)

    def shortfall(self, reply: Any) -> str | None:
        """None when the wait's `reply` meets the level, else the reason of the 1006.  An error
        reply (WAIT on a server that became a replica, WAITAOF with appendonly switched off)
        is a shortfall too: the write is not known to be kept."""
        within = f"within {self.timeout:g} s"
        if isinstance(reply, Exception):
            return f"{DURABILITY}: {self.command()[0]} failed: {reply}"
        if self.level == "replica":
            got = int(reply)
            if got >= self.min_replicas:
                return None
            return f"{DURABILITY}: {got} of {self.min_replicas} replicas acknowledged {within}"
        local, replicas = (int(x) for x in reply)
        if local < 1:
            return f"{DURABILITY}: the write was not fsynced to the local AOF {within}"
        if replicas < self.min_replicas:
            return f"{DURABILITY}: {replicas} of {self.min_replicas} replicas fsynced the write {within}"
        return None


def fence(k: Keys) -> tuple[Any, ...]:
    """The write the wait is measured from (see the module's text), in partition `k`'s slot."""
    return ("SET", k.health(), "1", "PX", HEALTH_TTL_MS)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


async def check_server(client: Any, durability: Durability) -> list[str]:
    """Raises ValueError (one line) when the server(s) cannot give `durability`: `fsync` on a
    Redis older than 7.2 (no WAITAOF) or with appendonly off (WAITAOF would refuse every
    write).  Returns warnings for what may mend by itself: fewer replicas connected than
    `replica` / `fsync` wait for (every write answers 1006 until they are).  On a Redis
    Cluster each master is checked."""
    if not durability.waits:
        return []
    nodes: list[tuple[str, Any]]
    if is_cluster(client):
        nodes = [(n.name, n) for n in client.get_primaries()]
    else:
        nodes = [("", None)]
    warnings = []
    for name, node in nodes:
        kwargs = {} if node is None else {"target_nodes": node}
        try:
            info = await client.info("everything", **kwargs)
        except Exception as e:
            if "NOPERM" not in str(e) and "no permissions" not in str(e):
                raise
            raise ValueError(
                f"STAGEWISE_DURABILITY={durability.level}: Redis refused INFO, which the start-up "
                "check of its version and persistence needs (allow +info)"
            ) from None
        where = f" on {name}" if name else ""
        version = str(info.get("redis_version", "0"))
        if durability.level == "fsync":  # both problems in the one line, so one fix round
            needs = []
            if _version(version) < FSYNC_MIN_VERSION:
                needs.append(f"Redis 7.2 or later for WAITAOF (it runs {version})")
            if not int(info.get("aof_enabled", 0)):
                needs.append("appendonly yes, whose fsync WAITAOF waits for")
            if needs:
                raise ValueError(
                    f"STAGEWISE_DURABILITY=fsync needs {' and '.join(needs)} on the server{where}; "
                    "use replica or async otherwise"
                )
        replicas = int(info.get("connected_slaves", 0))
        if replicas < durability.min_replicas:
            warnings.append(
                f"STAGEWISE_DURABILITY={durability.level} waits for {durability.min_replicas} replica(s); "
                f"the server{where} has {replicas} connected: API writes answer 1006 until enough are"
            )
    return warnings
