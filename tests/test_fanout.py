"""Fan-out stages (SPEC §3a) end to end: real manager and executor processes on a real Redis.

A children stage starts child tasks and waits; the join re-queues the parent with the result
list in child order, or fails it with CHILD_FAILED.  Cancelling or restarting a parent takes
its live children with it; a child's end is counted once.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import TERMINAL, RpcError, task_until

APP = "examples.app:app"


async def done(m: Any, tid: str, within: float = 30.0) -> dict[str, Any]:
    return await task_until(m, tid, lambda v: v["status"] in TERMINAL, within, f"{tid} to end")


def add(a: Any, b: Any = 0) -> dict[str, Any]:
    return {"method": "demo.add", "params": {"a": a, "b": b}}


async def test_static_children_results_in_order(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    task = {
        "id": "st",
        "app": "demo",
        "kws": {"base": 100},
        "commands": [
            add(1, 1),
            {
                "children": {
                    "tasks": [
                        # every field but commands is filled from the parent: kws.n gets results.0
                        {
                            "app": "demo",
                            "kws": {"n": "{{ results.0 }}"},
                            "commands": [add("{{ kws.n }}", 10)],
                        },
                        {"app": "demo", "kws": {"n": "{{ kws.base }}"}, "commands": [add("{{ kws.n }}", 20)]},
                        {"app": "demo", "id": "st-own", "commands": [{"timer": 0.2}, add(3, 30)]},
                    ]
                }
            },
            {"method": "demo.echo", "params": {"value": "{{ results.1 }}"}},
        ],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await done(m, "st")
    assert v["status"] == "FINISHED", v
    out = v["results"][1]
    assert [c["id"] for c in out] == ["st.1.0", "st.1.1", "st-own"]
    assert [c["result"] for c in out] == [12, 120, 33]
    assert {c["status"] for c in out} == {"FINISHED"} and all(c["error"] is None for c in out)
    assert v["results"][2] == out  # the next stage reads it as results.1
    child = await m.rpc("tasks.get", {"id": "st.1.1"})
    assert child["parent"] == {"id": "st", "stage": 1, "job_id": v["job_id"]}
    assert child["kws"] == {"n": 100}
    assert v["children"]["total"] == 3 and v["children"]["ended"] == 3
    assert v["children"]["by_status"] == {"FINISHED": 3}
    page = await m.rpc("tasks.list", {"parent": "st", "sort": "asc"})
    assert sorted(i["id"] for i in page["items"]) == ["st-own", "st.1.0", "st.1.1"]
    assert all(i["parent"]["id"] == "st" for i in page["items"])
    assert (await m.rpc("tasks.list", {"parent": "st", "status": "RUNNING"}))["items"] == []


async def test_map_children_item_and_index(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    task = {
        "id": "mp",
        "app": "demo",
        "kws": {"items": [5, 6, 7, 8]},
        "commands": [
            {
                "children": {
                    "map": "{{ kws.items }}",
                    "task": {
                        "app": "demo",
                        "tags": ["kid"],
                        "commands": [add("{{ kws.item }}", "{{ kws.index }}")],
                    },
                    "on_failure": "continue",
                }
            },
            # an empty map: no children, the stage's result is []
            {"children": {"map": "{{ kws.none ?? [] }}", "task": {"app": "demo", "commands": [add(1)]}}},
        ],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await done(m, "mp")
    assert v["status"] == "FINISHED", v
    assert [c["result"] for c in v["results"][0]] == [5, 7, 9, 11]
    assert [c["id"] for c in v["results"][0]] == [f"mp.0.{i}" for i in range(4)]
    assert v["results"][1] == []
    kid = await m.rpc("tasks.get", {"id": "mp.0.2"})
    assert kid["kws"] == {"item": 7, "index": 2} and kid["tags"] == ["kid"]


async def test_fail_policy_fails_the_parent_and_cancels_the_rest(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    task = {
        "id": "ff",
        "app": "demo",
        "commands": [
            {
                "children": {
                    "tasks": [
                        {"app": "demo", "commands": [{"message": {}}]},  # waits until cancelled
                        {"app": "demo", "commands": [{"method": "demo.fail", "params": {"message": "no"}}]},
                        {"app": "demo", "commands": [{"message": {}}]},
                    ]
                }
            },
            add(1),
        ],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await done(m, "ff")
    assert v["status"] == "FAILED"
    assert (
        v["error"]["code"] == "CHILD_FAILED" and v["error"]["child"] == "ff.0.1" and v["error"]["stage"] == 0
    )
    for cid in ("ff.0.0", "ff.0.2"):
        c = await done(m, cid, 10)
        assert c["status"] == "CANCELED", c
    failed = await m.rpc("tasks.get", {"id": "ff.0.1"})
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "STAGE_ERROR"


async def test_continue_policy_collects_every_end(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    task = {
        "id": "cc",
        "app": "demo",
        "commands": [
            {
                "children": {
                    "on_failure": "continue",
                    "tasks": [
                        {"app": "demo", "commands": [add(1, 1)]},
                        {"app": "demo", "commands": [{"method": "demo.fail", "params": {"message": "no"}}]},
                        {"app": "demo", "commands": [{"message": {}}]},
                    ],
                }
            },
        ],
    }
    await m.rpc("tasks.create", {"task": task})
    await task_until(m, "cc.0.2", lambda v: v["status"] == "WAITING", 15, "cc.0.2 waiting")
    await task_until(m, "cc.0.1", lambda v: v["status"] == "FAILED", 15, "cc.0.1 failed")
    mid = await m.rpc("tasks.get", {"id": "cc"})
    assert mid["status"] == "WAITING" and mid["children"]["ended"] == 2
    assert mid["children"]["by_status"] == {"FINISHED": 1, "FAILED": 1, "WAITING": 1}
    await m.rpc("tasks.cancel", {"ids": ["cc.0.2"], "dry_run": False})
    v = await done(m, "cc")
    assert v["status"] == "FINISHED"
    out = v["results"][0]
    assert [c["status"] for c in out] == ["FINISHED", "FAILED", "CANCELED"]
    assert out[0]["result"] == 2 and out[1]["result"] is None
    assert out[1]["error"]["code"] == "STAGE_ERROR" and out[2]["error"]["code"] == "CANCELED"


async def test_nested_fan_out(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    grandchild = {"app": "demo", "commands": [add("{{ kws.item }}", 1000)]}
    child = {
        "app": "demo",
        "commands": [
            {"children": {"map": "{{ kws.item }}", "task": grandchild}},
            {"method": "demo.echo", "params": {"value": "{{ results.0 }}"}},
        ],
    }
    task = {
        "id": "nest",
        "app": "demo",
        "kws": {"rows": [[1, 2], [3]]},
        "commands": [{"children": {"map": "{{ kws.rows }}", "task": child}}],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await done(m, "nest")
    assert v["status"] == "FINISHED", v
    rows = [[g["result"] for g in c["result"]] for c in v["results"][0]]
    assert rows == [[1001, 1002], [1003]]
    g = await m.rpc("tasks.get", {"id": "nest.0.0.0.1"})
    assert g["parent"]["id"] == "nest.0.0" and g["results"] == [1002]


async def test_cancel_cascades_down_the_family(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    wait = {"app": "demo", "commands": [{"message": {}}]}
    child = {"app": "demo", "commands": [{"children": {"tasks": [wait, wait]}}]}
    await m.rpc(
        "tasks.create",
        {"task": {"id": "cz", "app": "demo", "commands": [{"children": {"tasks": [child, wait]}}]}},
    )
    for gid in ("cz.0.0.0.0", "cz.0.0.0.1", "cz.0.1"):
        await task_until(m, gid, lambda v: v["status"] == "WAITING", 15, f"{gid} waiting")
    res = await m.rpc("tasks.cancel", {"ids": ["cz"], "dry_run": False})
    assert res[0]["status"] == "CANCELED"
    for tid in ("cz.0.0", "cz.0.1", "cz.0.0.0.0", "cz.0.0.0.1"):
        v = await done(m, tid, 10)
        assert v["status"] == "CANCELED", v
    # a parent goes after its children
    refused = await m.rpc("tasks.delete", {"ids": ["cz"], "dry_run": False})
    assert refused[0]["changed"] is False and "children" in refused[0]["error"]
    await m.rpc("tasks.delete", {"parent": "cz.0.0", "dry_run": False})
    await m.rpc("tasks.delete", {"parent": "cz", "dry_run": False})
    gone = await m.rpc("tasks.delete", {"ids": ["cz"], "dry_run": False})
    assert gone[0]["status"] == "DELETED"


async def test_restart_replaces_the_children_and_ignores_old_ends(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    wait = {"app": "demo", "commands": [{"message": {}}]}
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": "rs",
                "app": "demo",
                "commands": [{"children": {"tasks": [wait, {"app": "demo", "commands": [add(1)]}]}}],
            }
        },
    )
    await task_until(m, "rs.0.0", lambda v: v["status"] == "WAITING", 15, "rs.0.0 waiting")
    first = await m.rpc("tasks.get", {"id": "rs"})
    await m.rpc("tasks.cancel", {"ids": ["rs"], "dry_run": False})
    await task_until(m, "rs.0.0", lambda v: v["status"] == "CANCELED", 10, "rs.0.0 cancelled")
    await m.rpc("tasks.restart", {"ids": ["rs"], "dry_run": False})
    fresh = await task_until(
        m,
        "rs.0.0",
        lambda v: v["status"] == "WAITING" and v["parent"]["job_id"] != first["job_id"],
        15,
        "a fresh rs.0.0",
    )
    again = await m.rpc("tasks.get", {"id": "rs"})
    assert fresh["parent"]["job_id"] == again["job_id"]
    await m.rpc("tasks.send", {"id": "rs.0.0", "data": "hello"})
    v = await done(m, "rs")
    assert v["status"] == "FINISHED"
    assert [c["result"] for c in v["results"][0]] == ["hello", 1]


async def test_a_thousand_children(daemons: Any) -> None:
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=32)
    task = {
        "id": "k",
        "app": "demo",
        "kws": {"xs": list(range(1000))},
        "commands": [
            {
                "children": {
                    "map": "{{ kws.xs }}",
                    "task": {"app": "demo", "commands": [add("{{ kws.item }}", 1)]},
                }
            }
        ],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await done(m, "k", 120)
    assert v["status"] == "FINISHED", v
    assert [c["result"] for c in v["results"][0]] == list(range(1, 1001))
    too_many = {**task, "id": "k2", "kws": {"xs": list(range(1001))}}
    await m.rpc("tasks.create", {"task": too_many})
    v = await done(m, "k2")
    assert v["status"] == "FAILED" and v["error"]["code"] == "LIMIT_EXCEEDED"
    assert (await m.rpc("tasks.list", {"parent": "k2"}))["items"] == []


async def test_template_error_fails_the_stage(daemons: Any) -> None:
    m = await daemons.manager()
    task = {
        "id": "te",
        "app": "demo",
        "commands": [
            {"children": {"map": "{{ kws.missing }}", "task": {"app": "demo", "commands": [add(1)]}}}
        ],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await done(m, "te")
    assert v["status"] == "FAILED" and v["error"]["code"] == "TEMPLATE_ERROR" and v["error"]["stage"] == 0


@pytest.mark.parametrize(
    ("command", "field"),
    [
        ({"children": {}}, "task.commands[0].children"),
        ({"children": {"tasks": []}}, "task.commands[0].children.tasks"),
        ({"children": {"map": "{{ kws.x }}"}}, "task.commands[0].children.task"),
        (
            {"children": {"tasks": [{"app": "demo", "commands": [{"method": "m"}]}], "on_failure": "x"}},
            "task.commands[0].children.on_failure",
        ),
        (
            {"children": {"tasks": [{"app": "Bad!", "commands": [{"method": "m"}]}]}},
            "task.commands[0].children.tasks[0].app",
        ),
        (
            {"children": {"tasks": [{"app": "demo", "commands": [{"method": "m"}]}] * 1001}},
            "task.commands[0].children.tasks",
        ),
    ],
)
async def test_children_command_is_validated(daemons: Any, command: dict[str, Any], field: str) -> None:
    m = await daemons.manager()
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.create", {"task": {"app": "demo", "commands": [command]}})
    assert e.value.code == -32602 and e.value.data["field"] == field, e.value.data


async def test_a_retry_from_the_first_stage_starts_fresh_children(daemons: Any) -> None:
    """A retry keeps the job id: the join's token (job id and count of starts) fences the
    first pass's children out of the second, which replaces them."""
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    task = {
        "id": "rf",
        "app": "demo",
        "max_retries": 1,
        "retry_backoff": 0,
        "restart_policy": "first",
        "commands": [
            {"children": {"tasks": [{"app": "demo", "commands": [add(1)]}]}},
            {"method": "demo.fail", "params": {"message": "again"}},
        ],
    }
    await m.rpc("tasks.create", {"task": task})
    v = await done(m, "rf")
    assert v["status"] == "FAILED" and v["error"]["code"] == "STAGE_ERROR" and v["retries"] == 1
    fails = [a for a in await m.rpc("tasks.attempts", {"id": "rf"}) if a["stage"] == 1]
    assert len(fails) == 2
    child = await m.rpc("tasks.get", {"id": "rf.0.0"})
    assert child["created"] > fails[0]["ended"]  # made again by the second pass
    assert child["status"] == "FINISHED" and child["parent"]["job_id"] == v["job_id"]
    assert v["children"]["total"] == 1 and v["children"]["ended"] == 1


async def test_every_way_a_child_ends_is_counted(daemons: Any) -> None:
    """The join hook sits in set_status, which every terminal transition goes through: the
    execution deadline (expire.lua), a failed attempt after its retry (fail.lua), a cancel, a
    finish from a message (send.lua) all reach the parent."""
    m = await daemons.manager()
    await daemons.executor(APP, concurrency=8)
    kids = [
        {
            "app": "demo",
            "max_exec_timeout": 1,
            "commands": [{"method": "demo.sleep", "params": {"seconds": 30}}],
        },
        {
            "app": "demo",
            "max_retries": 1,
            "retry_backoff": 0,
            "commands": [{"method": "demo.fail", "params": {"message": "twice"}}],
        },
        {"app": "demo", "commands": [{"message": {}}]},
        {"app": "demo", "commands": [{"message": {}}]},
    ]
    task = {
        "id": "ways",
        "app": "demo",
        "commands": [{"children": {"tasks": kids, "on_failure": "continue"}}],
    }
    await m.rpc("tasks.create", {"task": task})
    await task_until(m, "ways.0.3", lambda v: v["status"] == "WAITING", 15, "ways.0.3 waiting")
    await m.rpc("tasks.cancel", {"ids": ["ways.0.2"], "dry_run": False})
    await m.rpc("tasks.send", {"id": "ways.0.3", "data": [1, "two"]})
    v = await done(m, "ways")
    assert v["status"] == "FINISHED"
    out = v["results"][0]
    assert [(c["status"], (c["error"] or {}).get("code")) for c in out] == [
        ("FAILED", "EXEC_TIMEOUT"),
        ("FAILED", "STAGE_ERROR"),
        ("CANCELED", "CANCELED"),
        ("FINISHED", None),
    ]
    assert out[3]["result"] == [1, "two"]
    assert (await m.rpc("tasks.get", {"id": "ways.0.1"}))["retries"] == 1
