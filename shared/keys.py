"""Every Redis key name of stagewise, in one place.

All keys of a namespace partition share the Redis Cluster hash tag ``{namespace:partition}``,
so one Lua script can touch all keys of a task (its hash, its app stream, the indexes) and a
namespace can still be spread over a cluster partition by partition (SPEC §10).

The Lua scripts derive keys from data they read (status and app indexes, an executor's
running set, ...).  They do not spell key names themselves: their ``k_*`` functions are
generated from the methods below (``stagewise.storage.prelude``), and so are the consumer
group name and the duration buckets of the metrics hash.
"""

from __future__ import annotations

import re
import zlib

GROUP = "executors"  # the one consumer group on every app stream

# Upper bounds (s) of the stage duration buckets of the metrics hash (Keys.metrics): the
# scripts count each attempt in the first bucket >= its duration; GET /metrics reads them.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip

# Flow control (stagewise/storage/limits.py).  A held task woken for a free slot keeps the slot
# reserved until its claim comes; after this long without it, it is asked again (the process
# that woke it may have died before putting it back on its stream).
LIMIT_WOKEN_GRACE = 5.0  # s
# A permit is checked against its run this long after it was granted, and again as long as
# the run goes on: a permit whose claim never came (its executor died in between), or whose
# run is over without its outbox entry drained, gives its slot back.
LIMIT_PERMIT_CHECK = 5.0  # s
# The dashboard's list of limit keys (Keys.limit_keys, limits.list) keeps the keys asked for most
# recently, this many per partition: a key per customer must not grow it without bound.
LIMIT_KEYS_KEPT = 1000


# The health key (Keys.health) expires this long after its write.
HEALTH_TTL_MS = 10_000


# A child's generated id is `<parent id>.<stage>.<index>` (SPEC §3a), nested children add more
# pairs: the id without those trailing pairs is the family's root (never the empty string: the
# pairs start after the first character, so ".1.2" is its own root and its children's).
_CHILD_SUFFIX = re.compile(r"(?<=.)(?:\.\d+\.\d+)+$")


def family_root(task_id: str) -> str:
    """The id a task's partition is computed from: the task's own id, or for an id ending in
    `.<stage>.<index>` pairs, what is left without them."""
    return _CHILD_SUFFIX.sub("", task_id)


def partition_of(task_id: str, partitions: int) -> int:
    """The partition a task lives in: stable across processes and restarts.  A fan-out family
    (a parent and its generated child ids, nested too) shares its root's partition, so one
    script can end a child and count it in its parent's join (SPEC §3a)."""
    if partitions <= 1:
        return 0
    return zlib.crc32(family_root(task_id).encode()) % partitions


def limit_partition(key: str, partitions: int) -> int:
    """The partition that keeps the state of a limit key (flow control, SPEC §2a): one for the
    whole namespace, whichever partitions its tasks live in."""
    return partition_of("limit:" + key, partitions)


def debounce_partition(key: str, partitions: int) -> int:
    """The partition of a debounce key (SPEC §2a): it keeps the key's mapping to its IDLE task,
    and every task debounced by the key lives there too (Store.create places it), so that one
    create script finds and replaces that task in its own slot."""
    return partition_of("debounce:" + key, partitions)


def member(app: str, task_id: str) -> str:
    """Member of the scheduling sorted sets: the app rides along so that the manager can name
    the app stream in KEYS without reading the task first ('/' is in neither alphabet)."""
    return f"{app}/{task_id}"


def stream_name(app: str, priority: int = 0) -> str:
    """'billing' for priority 0, 'billing:7' above; ':' is not in the app alphabet."""
    return app if priority == 0 else f"{app}:{priority}"


def parse_stream_name(name: str) -> tuple[str, int]:
    app, _, prio = name.partition(":")
    return app, int(prio or 0)


def split_member(m: str) -> tuple[str, str]:
    app, _, task_id = m.partition("/")
    return app, task_id


class Keys:
    """Key names of one namespace partition."""

    __slots__ = ("namespace", "partition", "prefix")

    def __init__(self, namespace: str, partition: int = 0) -> None:
        self.namespace = namespace
        self.partition = partition
        self.prefix = f"{{{namespace}:{partition}}}"

    # --- per task
    def task(self, task_id: str) -> str:
        """Hash: the task document, its state and its results (fields r.0, r.1, ...)."""
        return f"{self.prefix}:t:{task_id}"

    def attempts(self, task_id: str) -> str:
        """List of JSON attempt records (one per stage execution)."""
        return f"{self.prefix}:at:{task_id}"

    def inbox(self, task_id: str) -> str:
        """List of messages sent before the task reached its message stage."""
        return f"{self.prefix}:in:{task_id}"

    # --- dispatch
    def stream(self, app: str, priority: int = 0) -> str:
        """An app's work stream for one priority; entries are dispatch hints {t: task id, j: job
        id}.  Executors read the streams of their app from the highest priority down."""
        return f"{self.prefix}:q:{stream_name(app, priority)}"

    def stream_of(self, name: str) -> str:
        """The stream key of a member of apps()."""
        return f"{self.prefix}:q:{name}"

    def apps(self) -> str:
        """Set of stream names (stream_name(app, priority)) that exist in this partition, each
        with its consumer group."""
        return f"{self.prefix}:apps"

    # --- scheduling (members are member(app, id))
    def due(self) -> str:
        """ZSET member -> time the manager must look at it: run_at, cron fire, timer end,
        message timeout, retry time."""
        return f"{self.prefix}:due"

    def deadlines(self) -> str:
        """ZSET member -> exec_deadline, for RUNNING tasks only."""
        return f"{self.prefix}:dl"

    # --- executors
    def executors(self) -> str:
        """ZSET executor id -> last ping (server time)."""
        return f"{self.prefix}:ex"

    def executor(self, executor_id: str) -> str:
        """Hash: app, host, pid, started."""
        return f"{self.prefix}:ex:{executor_id}"

    def running(self, executor_id: str) -> str:
        """Set of members leased by the executor."""
        return f"{self.prefix}:run:{executor_id}"

    def dead_executors(self) -> str:
        """ZSET executor id -> time it was declared dead (mark_dead.lua), for as long as its
        reap is not finished (forget.lua): a manager that dies mid-reap leaves it here for the
        next one to finish."""
        return f"{self.prefix}:exd"

    def reaping(self, executor_id: str) -> str:
        """Hash member -> lease: the runs an executor held when it was declared dead, each with
        the lease of its claim, until reap.lua has taken each back (or found it over)."""
        return f"{self.prefix}:reap:{executor_id}"

    def control(self, executor_id: str) -> str:
        """List of control messages to an executor (cancel requests)."""
        return f"{self.prefix}:ctl:{executor_id}"

    # --- push delivery to idle executors (offer.lua, create.lua, withdraw.lua)
    def idle(self, app: str) -> str:
        """List of offers '<executor id> <lease>': an executor of `app` with a run slot held
        free for a task of this partition, and the lease that run will have (offer.lua).
        create.lua pops one for a task due now and claims the run in that executor's name."""
        return f"{self.prefix}:idle:{app}"

    def pushed(self, executor_id: str) -> str:
        """Stream (consumer group GROUP) of runs create.lua claimed for an executor under one of
        its offers: the executor reads it with its app streams, in the same XREADGROUP."""
        return f"{self.prefix}:push:{executor_id}"

    # --- indexes (ZSET task id -> updated); none for the statuses of status.UNINDEXED (RUNNING:
    # the deadlines zset holds exactly those tasks)
    def idx_status(self, status: str) -> str:
        return f"{self.prefix}:i:s:{status}"

    def idx_app_status(self, app: str, status: str) -> str:
        return f"{self.prefix}:i:as:{app}:{status}"

    def idx_tag(self, tag: str) -> str:
        return f"{self.prefix}:i:t:{tag}"

    def idx_group(self, group: str) -> str:
        return f"{self.prefix}:i:g:{group}"

    # --- fan-out (SPEC §3a): children stages and their join
    def spawns(self) -> str:
        """ZSET member -> time its run reached a children stage: parents whose children the
        manager's spawn role has to start (spawn.lua removes the entry once they are)."""
        return f"{self.prefix}:sp"

    def join(self, task_id: str) -> str:
        """Hash: the join of a parent's latest children stage: token (fences the children of
        that start), stage, total, ended, on_failure, ids (JSON list), and one slot o.<index>
        per child that ended, holding its entry of the stage result."""
        return f"{self.prefix}:j:{task_id}"

    def live_children(self, task_id: str) -> str:
        """Set of a parent's children that have not ended yet (all of one start)."""
        return f"{self.prefix}:lc:{task_id}"

    def cascades(self) -> str:
        """ZSET parent id -> time: parents that ended (or were restarted) with children still
        live, whose children the manager's cascade role cancels in bounded batches."""
        return f"{self.prefix}:cas"

    def idx_parent(self, parent_id: str) -> str:
        """Index (like the others, scored by updated) of a parent's children: tasks.list parent."""
        return f"{self.prefix}:i:p:{parent_id}"

    # --- what the manager does after a task ended, and notifications
    def ended(self) -> str:
        """ZSET member -> time: FINISHED/FAILED tasks with cron or next_task to act on."""
        return f"{self.prefix}:ended"

    def metrics(self, app: str) -> str:
        """Hash of write-time aggregates of one app (stage durations, retries, failures by
        code), counted by the scripts that decide; read by GET /metrics."""
        return f"{self.prefix}:m:{app}"

    def notes(self) -> str:
        """Stream of notifications (tasks with notify), bounded in length and age."""
        return f"{self.prefix}:notes"

    def task_notes(self, task_id: str) -> str:
        """List of the notification ids of one task (the last 100)."""
        return f"{self.prefix}:nt:{task_id}"

    # --- manager coordination
    def clean_cursor(self) -> str:
        """Hash status -> score (updated) up to which the terminal tasks of that status index
        have been through clean.lua: cleaned tasks keep their place in the index, and a clean
        that started from the oldest every time would stall on them."""
        return f"{self.prefix}:cc"

    def reconcile_cursor(self) -> str:
        """Hash {score, member}: where in the QUEUED status index the manager's reconcile role
        goes on looking for tasks whose dispatch hint is gone (requeue_lost.lua), a bounded
        number per pass; gone when a pass reached the end, so the next starts from the oldest."""
        return f"{self.prefix}:rc"

    def stats(self) -> str:
        """Hash minute -> JSON sample of the counters and queues (partition 0 only): the
        dashboard's last hour (manager/stats.py)."""
        return f"{self.prefix}:stats"

    def health(self) -> str:
        """String written with a short TTL (HEALTH_TTL_MS) by the manager's health check (GET
        /healthz, the systemd watchdog): a write to this partition's slot proves that its
        master takes writes.  Also the fence a durability wait is measured from
        (stagewise.storage.durability)."""
        return f"{self.prefix}:health"

    def lock(self, name: str) -> str:
        """Short-lived lock so that one manager at a time runs a periodic job that is not
        itself idempotent (stream trimming)."""
        return f"{self.prefix}:lock:{name}"

    # --- flow control (SPEC §2a).  A limit key's state lives in one partition, the key's
    # own (limit_partition); its tasks live in theirs.  See stagewise/storage/limits.py.
    def limit(self, key: str) -> str:
        """Hash of a limit key: c (concurrency), r (rate), per (the numbers of the last task
        that asked), paused (UNIX s until which nothing of the key is claimed, '' none)."""
        return f"{self.prefix}:l:{key}"

    def limit_permits(self, key: str) -> str:
        """ZSET permit -> time granted: the runs that hold a slot of the key, one member
        '<partition>|<app>/<task id>|<lease>' per run."""
        return f"{self.prefix}:lp:{key}"

    def limit_held(self, key: str) -> str:
        """ZSET ref -> order: the tasks held back by the key, ref '<partition>|<app>/<task
        id>|<job id>', order = priority then FIFO (lower first)."""
        return f"{self.prefix}:lh:{key}"

    def limit_woken(self, key: str) -> str:
        """ZSET ref -> time woken: held tasks put back on their stream whose claim has not
        come yet; each keeps a slot reserved until it comes (or the reservation lapses)."""
        return f"{self.prefix}:lw:{key}"

    def limit_rate(self, key: str) -> str:
        """ZSET lease -> time: the claims of the key within its rate window."""
        return f"{self.prefix}:lr:{key}"

    def limit_keys(self) -> str:
        """ZSET key -> last time a task asked it for a slot (limit_acquire.lua): the limit keys
        of this partition seen lately, the LIMIT_KEYS_KEPT most recent (limits.list)."""
        return f"{self.prefix}:lk"

    def limit_due(self) -> str:
        """ZSET key -> time: limit keys of this partition that the manager must look at then
        (a rate window opens, a pause ends, a reservation lapses)."""
        return f"{self.prefix}:ld"

    def limit_grants(self) -> str:
        """ZSET JSON {k, p} -> time: permits of this partition's keys, each due to be checked
        against its run at that time (a run that never started or is over gives its slot back)."""
        return f"{self.prefix}:lg"

    def limit_outbox(self) -> str:
        """ZSET JSON {m, l, k} -> time: runs of this partition's tasks that left RUNNING and
        whose permits (in their keys' partitions) are still to be given back."""
        return f"{self.prefix}:lo"

    def revoked(self) -> str:
        """ZSET lease -> time: leases whose permit the manager took back before their claim
        came; claim.lua refuses them, so a late claim can never run beyond a limit."""
        return f"{self.prefix}:rv"

    def debounce(self) -> str:
        """Hash debounce key -> id of the IDLE task it holds (SPEC §2a): written by create.lua,
        dropped when that task leaves IDLE (set_status); this partition is the key's own
        (debounce_partition), and so is the task's."""
        return f"{self.prefix}:db"

    def paused_apps(self) -> str:
        """Hash app -> UNIX s until which its tasks are not claimed (apps.pause), kept in
        every partition so that each claim reads it in its own slot."""
        return f"{self.prefix}:pa"
