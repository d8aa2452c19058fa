"""The daemons' log lines (stagewise.log): one JSON object per line, keys in a fixed order (bound
fields, call fields, event, role, level, timestamp, exception), filtered by level.  Run in a fresh
interpreter: `configure` holds for the whole process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

SCRIPT = r"""
from stagewise import log

log.configure("{level}", role="executor")
log.configure("debug", role="manager")  # the first call wins
lg = log.get(app="a", executor_id="e1")


class Odd:
    def __repr__(self):
        return "<odd>"


lg.info("stage", task_id="t1", ms=1.5, value=Odd(), text="\u00e9")
lg.debug("hidden_unless_debug")
lg.bind(task_id="t2").warning("bound", role="own")
log.get().error("n=%d", 3)
try:
    raise ValueError("boom")
except ValueError:
    lg.exception("crashed", job_id="j1")
lg.info("no_exception_here", exc_info=True)
"""


def lines(level: str) -> tuple[list[str], list[dict[str, Any]]]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("{level}", level)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return out, [json.loads(x) for x in out]


def test_info_lines_keep_their_fields_in_order() -> None:
    raw, got = lines("info")
    assert [e["event"] for e in got] == ["stage", "bound", "n=3", "crashed", "no_exception_here"]
    ts = r'"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"'
    assert re.fullmatch(
        r'\{"app": "a", "executor_id": "e1", "task_id": "t1", "ms": 1\.5, "value": "<odd>", '
        r'"text": "\\u00e9", "event": "stage", "role": "executor", "level": "info", ' + ts + r"\}",
        raw[0],
    ), raw[0]
    assert list(got[1]) == ["app", "executor_id", "task_id", "role", "event", "level", "timestamp"]
    assert got[1]["role"] == "own" and got[1]["level"] == "warning"  # a bound role wins
    assert got[2] == {"event": "n=3", "role": "executor", "level": "error", "timestamp": got[2]["timestamp"]}
    crashed = got[3]
    assert list(crashed)[-3:] == ["level", "timestamp", "exception"] and crashed["level"] == "error"
    assert crashed["exception"].startswith("Traceback (most recent call last):")
    assert crashed["exception"].endswith("ValueError: boom")
    assert "exception" not in got[4] and "exc_info" not in got[4]  # nothing being handled


def test_the_level_filters_and_an_unknown_one_means_info() -> None:
    assert [e["event"] for e in lines("debug")[1]][:2] == ["stage", "hidden_unless_debug"]
    assert [e["event"] for e in lines("WARNING")[1]] == ["bound", "n=3", "crashed"]
    assert [e["event"] for e in lines("nonsense")[1]] == [e["event"] for e in lines("info")[1]]
