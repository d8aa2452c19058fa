"""The OpenRPC document of the JSON-RPC entrypoint (SPEC §8): `GET /openrpc.json` and the
method `rpc.discover`.

Generated from the code's own types, nothing written by hand: each method's params from the
msgspec Struct the dispatcher decodes them with (Api.methods), its result from the client's
TypedDict of that reply (stagewise.client.types), and the task document from the Structs that
validate it (stagewise.models).  `python -m stagewise.manager.openrpc` prints it;
`--markdown` prints the JSON-RPC reference of docs/jsonrpc.md, made from the same document.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

from stagewise import errors
from stagewise.client import types as T
from stagewise.models import CallCommand, MessageCommand, TaskDoc, TimerCommand

OPENRPC_VERSION = "1.2.6"
REF = "#/components/schemas/{name}"

# method -> the type of its result (None: null)
RESULTS: dict[str, Any] = {
    "tasks.create": T.TaskView,
    "tasks.create_many": T.CreateManyResult,
    "tasks.get": T.TaskView,
    "tasks.list": T.TaskPage,
    "tasks.status": T.TaskStatus,
    "tasks.send": T.TaskView,
    "tasks.cancel": list[T.BatchResult],
    "tasks.unlock": list[T.BatchResult],
    "tasks.restart": list[T.BatchResult],
    "tasks.delete": list[T.BatchResult],
    "tasks.clean": list[T.BatchResult],
    "tasks.attempts": list[T.Attempt],
    "groups.get": T.GroupInfo,
    "executors.list": list[T.ExecutorInfo],
    "notifications.list": list[T.Notification],
    "notifications.ack": T.AckResult,
    "system.info": T.SystemInfo,
    "apps.list": list[T.AppInfo],
    "apps.pause": T.AppPause,
    "apps.resume": T.AppPause,
    "limits.get": T.LimitInfo,
    "limits.list": list[T.LimitSeen],
    "limits.pause": T.LimitPause,
    "limits.resume": T.LimitPause,
    "stats.history": dict[str, Any],
    "rpc.discover": dict[str, Any],
}

# Params that the dispatcher takes raw, to validate them itself with errors that name the
# field (models.parse_task): their schema is the task document's.
TASK_DOCUMENT_PARAMS: dict[tuple[str, str], Any] = {
    ("tasks.create", "task"): TaskDoc,
    ("tasks.create_many", "tasks"): list[TaskDoc],
}

SUMMARIES: dict[str, str] = {
    "tasks.create": "Store a task; it is queued at once when due.",
    "tasks.create_many": "Store up to 1000 tasks as a group, whole or not at all.",
    "tasks.get": "A task's view (TaskView), with its results unless asked not to.",
    "tasks.list": "A page of tasks matching every filter given.",
    "tasks.status": "A task's status, stage and the HTTP code of its status view.",
    "tasks.send": "A message for the task's message stage (now, or the next one ahead).",
    "tasks.cancel": "Cancel tasks (by ids or filters); a dry run unless dry_run is false.",
    "tasks.unlock": "Force-release the leases of RUNNING tasks; a dry run unless dry_run is false.",
    "tasks.restart": "A fresh run of terminal tasks; a dry run unless dry_run is false.",
    "tasks.delete": "Remove terminal tasks; a dry run unless dry_run is false.",
    "tasks.clean": "Drop results and kws of terminal tasks older than older_than.",
    "tasks.attempts": "A task's stage attempts.",
    "groups.get": "Counts of a group's tasks by status.",
    "executors.list": "The live executors.",
    "notifications.list": "Notifications of tasks created with notify.",
    "notifications.ack": "Acknowledge (remove) notifications.",
    "system.info": "Versions, namespace and partitions.",
    "apps.list": "Each app's queued, running and waiting tasks, failures in the last hour, live executors and lag.",
    "apps.pause": "Stop claims of an app's tasks until apps.resume or `until` (UNIX s); executors stay connected.",
    "apps.resume": "Claims of an app's tasks go on.",
    "limits.get": "A limit key's RUNNING and held-back tasks and its pause.",
    "limits.list": "The limit keys asked for most recently, each with its RUNNING and held-back tasks, its pause "
    "and when a task last asked it (beyond SPEC: the dashboard's Limits view).",
    "limits.pause": "No task of a limit key is claimed until `until` (UNIX s) or limits.resume.",
    "limits.resume": "Tasks of a limit key are claimed again.",
    "rpc.discover": "This document.",
    "stats.history": "The last hour, per minute: tasks created, finished and failed, queue depth and lag per app, "
    "stage duration p50 and p95 per method (beyond SPEC: the dashboard's home page).",
}


def document(methods: dict[str, tuple[type[msgspec.Struct], Any]], version: str) -> dict[str, Any]:
    """The OpenRPC document of `methods` (Api.methods: name -> (params Struct, handler))."""
    names = sorted(methods)
    params_types = [methods[n][0] for n in names]
    overrides = list(TASK_DOCUMENT_PARAMS.values())
    command_types = [CallCommand, TimerCommand, MessageCommand]
    results = [RESULTS[n] for n in names]
    all_types = [*params_types, *overrides, *command_types, *results]
    generated, components = msgspec.json.schema_components(all_types, ref_template=REF)
    by_type = dict(zip(map(id, all_types), generated, strict=True))
    # a task's commands are checked one by one against these (models.parse_command)
    commands = {"anyOf": [by_type[id(t)] for t in command_types]}
    components["TaskDoc"]["properties"]["commands"]["items"] = commands
    methods_doc = []
    for name, ptype, result in zip(names, params_types, results, strict=True):
        struct = components[ptype.__name__]
        required = set(struct.get("required", []))
        params = []
        for pname, pschema in struct.get("properties", {}).items():
            override = TASK_DOCUMENT_PARAMS.get((name, pname))
            if override is not None:
                pschema = {**by_type[id(override)], **{k: v for k, v in pschema.items() if k != "type"}}
            params.append({"name": pname, "required": pname in required, "schema": pschema})
        methods_doc.append(
            {
                "name": name,
                "summary": SUMMARIES.get(name, ""),
                "paramStructure": "by-name",
                "params": params,
                "result": {"name": "result", "schema": by_type[id(result)]},
                "errors": list(ERRORS.values()),  # inline: the meta-schema refuses a string $ref here
            }
        )
    # the params Structs are inlined as descriptors above; what they refer to stays
    for ptype in params_types:
        if not _referenced(ptype.__name__, methods_doc, components):
            components.pop(ptype.__name__, None)
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "stagewise",
            "version": version,
            "description": "Durable multi-stage tasks over Redis Streams: the manager's JSON-RPC 2.0 entrypoint "
            "(POST /rpc). Errors carry data {field, reason} for invalid params.",
            "license": {"name": "Apache-2.0"},
        },
        "methods": methods_doc,
        "components": {
            "schemas": dict(sorted(components.items())),
            "errors": ERRORS,
        },
    }


# The application errors of SPEC §7 (JSON-RPC's own codes are the protocol's).
ERRORS: dict[str, dict[str, Any]] = {
    errors.MESSAGES[code]: {"code": code, "message": errors.MESSAGES[code]}
    for code in sorted(c for c in errors.MESSAGES if c > 0)
}


def _referenced(name: str, methods_doc: list[dict[str, Any]], components: dict[str, Any]) -> bool:
    ref = json.dumps(REF.format(name=name))
    return ref in json.dumps(methods_doc) or any(
        ref in json.dumps(schema) for other, schema in components.items() if other != name
    )


def markdown(doc: dict[str, Any]) -> str:
    """The JSON-RPC reference (docs/jsonrpc.md) of an OpenRPC document."""
    out = [
        "# JSON-RPC reference",
        "",
        f"Generated from the OpenRPC document (`GET /openrpc.json`, `rpc.discover`) of stagewise "
        f"{doc['info']['version']} by `python -m stagewise.manager.openrpc --markdown`; do not edit. "
        "Requests go to `POST /rpc` as JSON-RPC 2.0 with params by name. Schemas named in a type "
        "are under `components.schemas` of the document.",
        "",
    ]
    for m in doc["methods"]:
        out += [f"## `{m['name']}`", "", m["summary"], ""]
        if m["params"]:
            out += ["| param | required | type |", "|---|---|---|"]
            for p in m["params"]:
                out.append(f"| `{p['name']}` | {'yes' if p['required'] else 'no'} | {_type(p['schema'])} |")
        else:
            out.append("No params.")
        out += ["", f"Result: {_type(m['result']['schema'])}", ""]
    out += ["## Errors", "", "| code | name |", "|---|---|"]
    out += [f"| {e['code']} | `{name}` |" for name, e in doc["components"]["errors"].items()]
    return "\n".join(out) + "\n"


def _type(schema: dict[str, Any]) -> str:
    """A short human spelling of a JSON Schema."""
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[1]}`"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    t = schema.get("type")
    if t == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if isinstance(t, list):
        return " or ".join(t)
    return str(t) if t else "any"


def main() -> None:
    from stagewise.manager.rpc import package_version, schema_methods

    doc = document(schema_methods(), package_version())
    sys.stdout.write(markdown(doc) if "--markdown" in sys.argv[1:] else json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
