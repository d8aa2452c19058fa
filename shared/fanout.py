"""Fan-out stages (SPEC §3a): the child tasks a parent's children stage starts.

The stage's documents are templates over the parent's kws, results and task (SPEC §4), and
templates are Python; so the manager's spawn role (manager/scheduler.py) builds the children
here from the parent's hash, and spawn.lua stores them and the parent's join in one step.
Everything in this module is pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from stagewise import templates
from stagewise.errors import RpcError
from stagewise.keys import partition_of
from stagewise.models import MAX_CHILDREN, ChildrenCommand, Task, parse_command, parse_task
from stagewise.storage.calls import results_of


class SpawnError(Exception):
    """The stage cannot start its children: the parent's run fails with this error (a stage
    error of SPEC §7: TEMPLATE_ERROR, LIMIT_EXCEEDED, INVALID_PARAMS)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def child_id(parent_id: str, stage: int, index: int) -> str:
    return f"{parent_id}.{stage}.{index}"


def _env(h: dict[str, str], parent_id: str) -> dict[str, Any]:
    doc = json.loads(h["doc"])
    return {
        "kws": json.loads(h["kws"]) if h.get("kws") else {},
        "results": results_of(h),
        "task": {
            "id": parent_id,
            "job_id": h.get("job_id"),
            "attempt": int(h.get("attempt") or 0),
            "group": doc.get("group"),
        },
    }


def _fill(doc: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """The child's document: every field but `commands` filled from the parent's env."""
    commands = doc.get("commands")
    out = templates.fill({k: v for k, v in doc.items() if k != "commands"}, env)
    if not isinstance(out, dict):  # a template can only fill values; the document stays an object
        raise SpawnError("TEMPLATE_ERROR", "a child document must be an object")
    if commands is not None:
        out["commands"] = commands
    return out


def build(h: dict[str, str], parent_id: str, stage: int, partitions: int = 1) -> tuple[list[Task], str]:
    """The children of the parent's children stage `stage` (h: the parent's hash), in child
    order, and the stage's on_failure; raises SpawnError."""
    raw = json.loads(h["doc"])["commands"][stage]
    cmd = parse_command(raw, f"commands[{stage}]")
    if not isinstance(cmd, ChildrenCommand):
        raise SpawnError("INVALID_PARAMS", f"stage {stage} is not a children stage")
    spec = cmd.children
    env = _env(h, parent_id)
    docs: list[dict[str, Any]] = []
    try:
        if spec.map is not None:
            items = templates.fill(spec.map, env)
            if not isinstance(items, list):
                raise SpawnError(
                    "TEMPLATE_ERROR", f"map {spec.map!r} is not a list but {type(items).__name__}"
                )
            if len(items) > MAX_CHILDREN:
                raise SpawnError("LIMIT_EXCEEDED", f"map gives {len(items)} children, at most {MAX_CHILDREN}")
            assert spec.task is not None
            for index, item in enumerate(items):
                d = _fill(spec.task, env)
                kws = d.get("kws", {})
                if not isinstance(kws, dict):
                    raise SpawnError("INVALID_PARAMS", "a child's kws must be an object")
                d["kws"] = {**kws, "item": item, "index": index}
                docs.append(d)
        else:
            assert spec.tasks is not None
            docs = [_fill(d, env) for d in spec.tasks]
    except templates.TemplateError as e:
        raise SpawnError("TEMPLATE_ERROR", str(e)) from None
    family = partition_of(parent_id, partitions)
    children: list[Task] = []
    for index, d in enumerate(docs):
        d.setdefault("id", child_id(parent_id, stage, index))
        try:
            t = parse_task(d, f"children[{index}]")
        except RpcError as e:
            raise SpawnError("INVALID_PARAMS", f"{e.message}: {json.dumps(e.data)}") from None
        if partition_of(t.id, partitions) != family:
            # one script both ends a child and counts it in its parent's join: a family shares
            # one partition (README, "Fan-out")
            raise SpawnError(
                "INVALID_PARAMS",
                f"child id {t.id!r} is in another partition than its parent; leave `id` out "
                f"(it is then {child_id(parent_id, stage, index)!r})",
            )
        children.append(t)
    ids = [t.id for t in children]
    if len(set(ids)) != len(ids):
        raise SpawnError("INVALID_PARAMS", "two children have the same id")
    if parent_id in ids:
        raise SpawnError("INVALID_PARAMS", "a child cannot have its parent's id")
    return children, spec.on_failure
