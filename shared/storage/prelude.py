"""The Lua prelude: the names the scripts share with Python, generated from Python.

Every script is run with this prelude, then ``_lib.lua``, in front of it (``runner.source``).
The scripts never spell a key name, a status, the consumer group or a duration bucket
themselves; they use what is defined here, which is made from the one definition of each:

  PREFIX      ARGV[1], the "{namespace:partition}" of every key the script touches
  GROUP       stagewise.keys.GROUP
  S           the statuses of stagewise.status.Status: S.QUEUED == 'QUEUED'; an unknown name
              raises (a typo is an error, not a nil that compares unequal to everything)
  TERMINAL    stagewise.status.TERMINAL as a set: TERMINAL[status] is true or nil
  UNINDEXED   stagewise.status.UNINDEXED as a set: statuses without a status index
  MANY        stagewise.storage.calls.MANY: MANY.claim == {KEYS, ARGV after ARGV[1]} per run
  BUCKETS     stagewise.keys.DURATION_BUCKETS, as the strings the metrics hash fields carry
  LIMIT_WOKEN_GRACE  stagewise.keys.LIMIT_WOKEN_GRACE (flow control)
  LIMIT_KEYS_KEPT    stagewise.keys.LIMIT_KEYS_KEPT (the dashboard's list of limit keys)
  k_<name>    one function per key of stagewise.keys.Keys, built by calling that method with
              placeholder arguments and turning the string it returns into a concatenation
              (so a changed key layout changes the scripts with it)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

from stagewise.keys import DURATION_BUCKETS, GROUP, LIMIT_KEYS_KEPT, LIMIT_WOKEN_GRACE, Keys
from stagewise.status import TERMINAL, UNINDEXED, Status
from stagewise.storage.calls import MANY

# Lua function name -> (Keys method, names of its Lua parameters)
KEY_FUNCTIONS: dict[str, tuple[Callable[..., str], tuple[str, ...]]] = {
    "k_task": (Keys.task, ("id",)),
    "k_attempts": (Keys.attempts, ("id",)),
    "k_inbox": (Keys.inbox, ("id",)),
    "k_stream_of": (Keys.stream_of, ("name",)),
    "k_apps": (Keys.apps, ()),
    "k_due": (Keys.due, ()),
    "k_deadlines": (Keys.deadlines, ()),
    "k_executors": (Keys.executors, ()),
    "k_executor": (Keys.executor, ("eid",)),
    "k_running": (Keys.running, ("eid",)),
    "k_dead_executors": (Keys.dead_executors, ()),
    "k_reaping": (Keys.reaping, ("eid",)),
    "k_control": (Keys.control, ("eid",)),
    "k_idle": (Keys.idle, ("app",)),
    "k_pushed": (Keys.pushed, ("eid",)),
    "k_idx_status": (Keys.idx_status, ("status",)),
    "k_idx_app_status": (Keys.idx_app_status, ("app", "status")),
    "k_idx_tag": (Keys.idx_tag, ("tag",)),
    "k_idx_group": (Keys.idx_group, ("group",)),
    "k_ended": (Keys.ended, ()),
    "k_notes": (Keys.notes, ()),
    "k_task_notes": (Keys.task_notes, ("id",)),
    "k_metrics": (Keys.metrics, ("app",)),
    # flow control (stagewise/storage/limits.py)
    "k_limit": (Keys.limit, ("key",)),
    "k_limit_permits": (Keys.limit_permits, ("key",)),
    "k_limit_held": (Keys.limit_held, ("key",)),
    "k_limit_woken": (Keys.limit_woken, ("key",)),
    "k_limit_rate": (Keys.limit_rate, ("key",)),
    "k_limit_due": (Keys.limit_due, ()),
    "k_limit_keys": (Keys.limit_keys, ()),
    "k_limit_grants": (Keys.limit_grants, ()),
    "k_limit_outbox": (Keys.limit_outbox, ()),
    "k_revoked": (Keys.revoked, ()),
    "k_paused_apps": (Keys.paused_apps, ()),
    # fan-out
    "k_spawns": (Keys.spawns, ()),
    "k_join": (Keys.join, ("id",)),
    "k_live_children": (Keys.live_children, ("id",)),
    "k_cascades": (Keys.cascades, ()),
    "k_idx_parent": (Keys.idx_parent, ("id",)),
    "k_debounce": (Keys.debounce, ()),
}

_MARK = "\x00"
_PART = re.compile(r"\x00(P|\d+)\x00")


def _lua_string(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_:.{}/ -]*", text):
        raise ValueError(f"unexpected character in a key layout: {text!r}")
    return f"'{text}'"


def key_function(name: str, method: Callable[..., str], params: tuple[str, ...]) -> str:
    """`local function k_x(a, b) return PREFIX .. ':x:' .. a .. ':' .. b end` from the
    Keys method: the method is called on a Keys whose prefix is a marker, with markers for
    its arguments, and the markers in what it returns become PREFIX and the parameters."""
    probe = Keys("x")
    probe.prefix = f"{_MARK}P{_MARK}"
    text = method(probe, *(f"{_MARK}{i}{_MARK}" for i in range(len(params))))
    parts: list[str] = []
    pos = 0
    for m in _PART.finditer(text):
        if m.start() > pos:
            parts.append(_lua_string(text[pos : m.start()]))
        parts.append("PREFIX" if m.group(1) == "P" else params[int(m.group(1))])
        pos = m.end()
    if pos < len(text):
        parts.append(_lua_string(text[pos:]))
    return f"local function {name}({', '.join(params)}) return {' .. '.join(parts)} end"


def _bucket(b: float) -> str:
    # the field text the scripts write ('0.005', '1', '3600'): %g is what Lua's tostring gave
    return f"{b:g}"


@cache
def prelude() -> str:
    statuses = ", ".join(f"{s.name} = '{s.value}'" for s in Status)
    terminal = ", ".join(f"{s.value} = true" for s in sorted(TERMINAL))
    unindexed = ", ".join(f"{s.value} = true" for s in sorted(UNINDEXED))
    buckets = ", ".join(f"'{_bucket(b)}'" for b in DURATION_BUCKETS)
    many = ", ".join(f"{name} = {{{nkeys}, {nargs}}}" for name, (nkeys, nargs) in MANY.items())
    lines = [
        "-- generated from stagewise.keys and stagewise.status (stagewise/storage/prelude.py)",
        "local PREFIX = ARGV[1]",
        f"local GROUP = '{GROUP}'",
        f"local S = setmetatable({{{statuses}}}, "
        "{__index = function(_, name) error('unknown status ' .. tostring(name)) end})",
        f"local TERMINAL = {{{terminal}}}",
        f"local UNINDEXED = {{{unindexed}}}",
        f"local BUCKETS = {{{buckets}}}",
        f"local MANY = {{{many}}}",
        f"local LIMIT_WOKEN_GRACE = {LIMIT_WOKEN_GRACE!r}",
        f"local LIMIT_KEYS_KEPT = {LIMIT_KEYS_KEPT!r}",
        *(key_function(name, method, params) for name, (method, params) in KEY_FUNCTIONS.items()),
    ]
    return "\n".join(lines) + "\n"
