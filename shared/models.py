"""The task document and commands (SPEC §2, §3) as msgspec Structs, decoded from JSON-RPC
params with errors that name the field (``task.commands[2].timer``) and the reason."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from stagewise import templates
from stagewise.errors import RpcError, invalid_params
from stagewise.keys import debounce_partition, partition_of
from stagewise.policy import cron_valid, next_cron

TaskId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
AppName = Annotated[str, Meta(pattern=r"^[a-z0-9_.-]{1,64}$")]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
Seconds30d = Annotated[float, Meta(gt=0, le=30 * 86400)]

MANAGED = frozenset(
    {
        "status",
        "stage",
        "stages",
        "results",
        "job_id",
        "attempt",
        "retries",
        "executor_id",
        "created",
        "updated",
        "queued_at",
        "next_run",
        "wait_deadline",
        "exec_deadline",
        "exit_code",
        "error",
        "cleaned",
        "locked",
        "lease",
        # flow control (SPEC §2a)
        "blocked_by",
        # fan-out (SPEC §3a): a child's link to its parent, a parent's children progress
        "parent",
        "children",
    }
)


class CallCommand(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    method: Annotated[str, Meta(min_length=1, max_length=256)]
    params: dict[str, Any] | None = None
    timeout: Annotated[float, Meta(gt=0, le=86400)] | None = None
    if_: Any = field(name="if", default=None)


class MessageSpec(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    timeout: Seconds30d | None = None
    on_timeout: Literal["continue", "fail"] = "continue"


class TimerCommand(Struct, frozen=True, forbid_unknown_fields=True):
    timer: Seconds30d


class MessageCommand(Struct, frozen=True, forbid_unknown_fields=True):
    message: MessageSpec


# --- fan-out (SPEC §3a) ------------------------------------------------------------------------

MAX_CHILDREN = 1000  # children one stage may start; more fails the stage with LIMIT_EXCEEDED


class ChildrenSpec(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """`tasks`: the children's documents; or `map` (a template naming a list) and `task`, the
    document started once per item.  Every field of a child document but `commands` is a
    template over the parent's kws, results and task, filled when the stage starts; the
    commands are the child's own, filled by the child's runs (so `{{ kws.item }}` in them
    reads the child's kws)."""

    tasks: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_CHILDREN)] | None = None
    map: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    task: dict[str, Any] | None = None
    on_failure: Literal["fail", "continue"] = "fail"


class ChildrenCommand(Struct, frozen=True, forbid_unknown_fields=True):
    children: ChildrenSpec


def _parse_children(obj: dict[str, Any], where: str) -> ChildrenCommand:
    cmd = convert(obj, ChildrenCommand, where)
    spec, at = cmd.children, f"{where}.children"
    if (spec.tasks is None) == (spec.map is None):
        raise invalid_params(at, "needs exactly one of 'tasks' or 'map' (with 'task')")
    if spec.map is not None and spec.task is None:
        raise invalid_params(f"{at}.task", "required field is missing")
    if spec.tasks is not None and spec.task is not None:
        raise invalid_params(f"{at}.task", "goes with 'map', not with 'tasks'")
    docs: list[dict[str, Any]] = spec.tasks if spec.tasks is not None else [spec.task or {}]
    try:
        if spec.map is not None:
            templates.validate_template(spec.map, f"{at}.map")
            if not templates.template_paths(spec.map):
                raise templates.InvalidTemplate(
                    f"{at}.map", "must be a template such as '{{ results.0.files }}'"
                )
        for n, doc in enumerate(docs):
            d_at = f"{at}.tasks[{n}]" if spec.tasks is not None else f"{at}.task"
            templates.validate_template({k: v for k, v in doc.items() if k != "commands"}, d_at)
    except templates.InvalidTemplate as e:
        raise invalid_params(e.where, e.reason) from None
    for n, doc in enumerate(docs):
        d_at = f"{at}.tasks[{n}]" if spec.tasks is not None else f"{at}.task"
        if not templates.template_paths({k: v for k, v in doc.items() if k != "commands"}):
            # nothing to fill: the document is checked whole now rather than when it starts
            parse_task(
                {**doc, "kws": {**doc.get("kws", {}), "item": None, "index": 0}} if spec.map else doc, d_at
            )
        elif "commands" in doc:
            if not isinstance(doc["commands"], list):
                raise invalid_params(f"{d_at}.commands", "must be a list")
            for i, c in enumerate(doc["commands"]):
                parse_command(c, f"{d_at}.commands[{i}]")
    return cmd


Command = CallCommand | TimerCommand | MessageCommand | ChildrenCommand


# --- flow control (SPEC §2a) ---------------------------------------------------------------
MAX_LIMITS = 4
# A limit key after its templates are filled: it becomes part of Redis key names and of the
# members the limit scripts keep, so it must be printable and short; '|' separates the fields
# of those members, and control characters would make logs and the CLI unreadable.
LIMIT_KEY = re.compile(r"^[^|\s\x00-\x1f]{1,200}$")


class Limit(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    key: Annotated[str, Meta(min_length=1, max_length=1000)]
    concurrency: Annotated[int, Meta(ge=1, le=100000)] | None = None
    rate: Annotated[int, Meta(ge=1, le=100000)] | None = None
    per: Annotated[float, Meta(gt=0, le=86400)] = 1.0


class Debounce(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    key: Annotated[str, Meta(min_length=1, max_length=1000)]
    period: Seconds30d
    max_wait: Seconds30d | None = None


class TaskDoc(Struct, frozen=True, forbid_unknown_fields=True):
    app: AppName
    commands: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=100)]
    id: TaskId | None = None
    kws: dict[str, Any] = {}
    tags: Annotated[list[Tag], Meta(max_length=32)] = []
    group: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    description: Annotated[str, Meta(max_length=4096)] | None = None
    meta: dict[str, Any] = {}
    run_at: Annotated[float, Meta(ge=0)] | None = None
    cron: str | None = None
    tz: Annotated[str, Meta(min_length=1, max_length=64)] = "UTC"
    priority: Annotated[int, Meta(ge=0, le=9)] = 0
    max_exec_timeout: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    max_retries: Annotated[int, Meta(ge=0, le=20)] = 0
    retry_backoff: Annotated[float, Meta(ge=0, le=3600)] = 1.0
    restart_policy: Literal["current", "first"] = "current"
    next_task: TaskId | None = None
    notify: bool = False
    system: bool = False
    enabled: bool = True
    # flow control (SPEC §2a)
    limits: Annotated[list[Limit], Meta(max_length=MAX_LIMITS)] = []
    debounce: Debounce | None = None


T = TypeVar("T")
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")


def convert(obj: Any, type_: type[T], where: str) -> T:
    """msgspec.convert with the error turned into invalid_params(field, reason)."""
    try:
        return msgspec.convert(obj, type_, strict=True)
    except msgspec.ValidationError as e:
        raise validation_error(str(e), where) from None


def validation_error(text: str, where: str) -> RpcError:
    m = _AT.match(text)
    reason, path = (m["reason"], m["path"] or "") if m else (text, "")
    field_ = (where + path).lstrip(".")
    if u := _UNKNOWN.match(reason):
        name = u["name"]
        return invalid_params(
            _join(field_, name), "managed field, set by stagewise" if name in MANAGED else "unknown field"
        )
    if u := _MISSING.match(reason):
        return invalid_params(_join(field_, u["name"]), "required field is missing")
    return invalid_params(field_ or "params", reason)


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def parse_command(obj: Any, where: str) -> Command:
    if not isinstance(obj, dict):
        raise invalid_params(where, "a command must be an object")
    kinds = [k for k in ("method", "timer", "message", "children") if k in obj]
    if len(kinds) != 1:
        raise invalid_params(where, "a command needs exactly one of 'method', 'timer', 'message', 'children'")
    if kinds[0] == "children":
        return _parse_children(obj, where)
    if kinds[0] == "timer":
        return convert(obj, TimerCommand, where)
    if kinds[0] == "message":
        return convert(obj, MessageCommand, where)
    cmd = convert(obj, CallCommand, where)
    try:
        if cmd.params is not None:
            templates.validate_template(cmd.params, f"{where}.params")
        if "if" in obj:
            templates.validate_condition(cmd.if_, f"{where}.if")
    except templates.InvalidTemplate as e:
        raise invalid_params(e.where, e.reason) from None
    return cmd


class Task(Struct, frozen=True):
    """A validated task: the document, its commands parsed, and the per-stage plan that the
    Lua scripts read ("c" call, ["t", s] timer, ["m", timeout or -1, on_timeout],
    ["f", on_failure] children)."""

    doc: TaskDoc
    id: str
    commands: list[Command]
    # flow control: the limits with their keys filled ([key, concurrency or 0, rate or 0, per])
    limits: list[list[Any]] = []
    # debounce (SPEC §2a): its key filled, or None
    debounce: str | None = None

    def plan(self) -> list[Any]:
        out: list[Any] = []
        for c in self.commands:
            if isinstance(c, TimerCommand):
                out.append(["t", c.timer])
            elif isinstance(c, MessageCommand):
                t = c.message.timeout
                out.append(["m", t if t is not None else -1, c.message.on_timeout])
            elif isinstance(c, ChildrenCommand):
                out.append(["f", c.children.on_failure])
            else:
                out.append("c")
        return out


def parse_task(obj: Any, where: str = "task") -> Task:
    if not isinstance(obj, dict):
        raise invalid_params(where, "must be an object")
    for name in obj:
        if name in MANAGED:
            raise invalid_params(f"{where}.{name}", "managed field, set by stagewise")
    doc = convert(obj, TaskDoc, where)
    commands = [parse_command(c, f"{where}.commands[{i}]") for i, c in enumerate(doc.commands)]
    # zoneinfo here, not at the top: the executor imports this module for Task and never
    # parses a task, and zoneinfo loads sysconfig and the tz path search with it
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(doc.tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of the tz database
        raise invalid_params(f"{where}.tz", f"unknown time zone {doc.tz!r}") from None
    if doc.cron is not None:
        if not cron_valid(doc.cron):
            raise invalid_params(f"{where}.cron", "not a valid 5-field cron expression")
        try:
            next_cron(doc.cron, doc.tz, time.time())
        except Exception:  # noqa: BLE001 - croniter gives up on dates that never come
            raise invalid_params(f"{where}.cron", "the expression never fires") from None
    debounce = None
    if doc.debounce is not None:
        if doc.cron is not None:
            raise invalid_params(f"{where}.debounce", "a cron task cannot be debounced")
        # filled without the task's id: a key of one task alone would debounce nothing, and
        # the id of a debounced task may still be drawn again (place)
        debounce = _fill_key(doc.debounce.key, doc, "", f"{where}.debounce.key")
    task_id = doc.id or uuid.uuid4().hex
    return Task(
        doc=doc, id=task_id, commands=commands, limits=fill_limits(doc, task_id, where), debounce=debounce
    )


def place(task: Task, partitions: int, where: str = "task") -> Task:
    """A debounced task lives in its debounce key's partition (keys.debounce_partition), so that
    one create script can find and replace the IDLE task of the key: a generated id is drawn
    again until it lands there (about `partitions` draws), a given id that lands elsewhere is
    refused.  Any other task is returned as it is."""
    if task.debounce is None or partitions <= 1:
        return task
    target = debounce_partition(task.debounce, partitions)
    if partition_of(task.id, partitions) == target:
        return task
    if task.doc.id is not None:
        raise invalid_params(
            f"{where}.id",
            f"a debounced task lives in its debounce key's partition ({target}); this id would live "
            f"in {partition_of(task.id, partitions)}: leave id out to have one drawn that fits",
        )
    task_id = uuid.uuid4().hex
    while partition_of(task_id, partitions) != target:
        task_id = uuid.uuid4().hex
    return msgspec.structs.replace(task, id=task_id, limits=fill_limits(task.doc, task_id, where))


def _fill_key(key: str, doc: TaskDoc, task_id: str, where: str) -> str:
    """A limit (or debounce) key with its templates filled from kws and task, once, at create."""
    env = {
        "kws": doc.kws,
        "results": [],
        "task": {"id": task_id, "job_id": None, "attempt": 0, "group": doc.group},
    }
    try:
        templates.validate_template(key, where)
        value = templates.fill(key, env)
    except templates.InvalidTemplate as e:
        raise invalid_params(e.where, e.reason) from None
    except templates.TemplateError as e:
        raise invalid_params(where, f"template: {e}") from None
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    if not LIMIT_KEY.match(text):
        raise invalid_params(where, "a key is 1..200 printable characters without '|' or spaces")
    return text


def fill_limits(doc: TaskDoc, task_id: str, where: str) -> list[list[Any]]:
    out: list[list[Any]] = []
    seen: set[str] = set()
    for i, lim in enumerate(doc.limits):
        at = f"{where}.limits[{i}]"
        if lim.concurrency is None and lim.rate is None:
            raise invalid_params(at, "a limit needs concurrency, rate or both")
        key = _fill_key(lim.key, doc, task_id, f"{at}.key")
        if key in seen:
            raise invalid_params(f"{at}.key", f"key {key!r} is given twice")
        seen.add(key)
        out.append([key, lim.concurrency or 0, lim.rate or 0, lim.per])
    return out
