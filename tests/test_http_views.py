"""The HTTP views of SPEC §8 (GET /tasks/{id}, GET /tasks/{id}/status, GET /healthz) and
tasks.status, which must agree with them, for tasks in every kind of status."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import ManagerProc, RpcError, wait_for

TASKVIEW_FIELDS = {
    # the document (SPEC §2) ...
    "id",
    "app",
    "commands",
    "kws",
    "tags",
    "group",
    "description",
    "meta",
    "run_at",
    "cron",
    "tz",
    "priority",
    "max_exec_timeout",
    "max_retries",
    "retry_backoff",
    "restart_policy",
    "next_task",
    "notify",
    "system",
    "enabled",
    # ... plus the managed fields (SPEC §7)
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
}
HTTP_CODE = {
    "IDLE": 202,
    "QUEUED": 202,
    "RUNNING": 202,
    "WAITING": 202,
    "SUSPENDED": 202,
    "FINISHED": 201,
    "FAILED": 500,
    "CANCELED": 410,
}


def call(method: str, **params: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {"method": method}
    if params:
        cmd["params"] = params
    return cmd


async def create(m: ManagerProc, task_id: str, *commands: dict[str, Any]) -> dict[str, Any]:
    view = await m.rpc("tasks.create", {"task": {"id": task_id, "app": "demo", "commands": list(commands)}})
    assert view["id"] == task_id
    return view


async def status_of(m: ManagerProc, task_id: str, status: str) -> dict[str, Any]:
    """Check GET /tasks/{id}/status and tasks.status agree for a task in `status`; return the view."""
    code, body = await m.get(f"/tasks/{task_id}/status")
    assert code == HTTP_CODE[status], (code, body)
    assert isinstance(body, dict) and set(body) == {"status", "stage", "stages"}, body
    assert body["status"] == status, body
    assert isinstance(body["stage"], int) and isinstance(body["stages"], int), body
    st = await m.rpc("tasks.status", {"id": task_id})
    assert st == {"id": task_id, **body, "http_code": code}, (st, body)
    view = await m.rpc("tasks.get", {"id": task_id})
    assert (view["status"], view["stage"], view["stages"]) == (status, body["stage"], body["stages"])
    return view


async def until(m: ManagerProc, task_id: str, status: str, within: float = 15.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        st = await m.rpc("tasks.status", {"id": task_id})
        return st if st["status"] == status else None

    return await wait_for(probe, timeout=within, what=f"{task_id} to be {status}")


async def test_views_without_an_executor(daemons: Any) -> None:
    """No executor for "demo": a task stays QUEUED (202) until cancelled (410)."""
    m = await daemons.manager()

    code, body = await m.get("/healthz")
    assert code == 200, (code, body)

    created = await create(m, "v-queued", call("demo.add", a=1, b=2), {"timer": 5})
    assert created["status"] == "QUEUED"

    code, view = await m.get("/tasks/v-queued")
    assert code == 200, (code, view)
    assert TASKVIEW_FIELDS <= set(view), TASKVIEW_FIELDS - set(view)
    assert view == await m.rpc("tasks.get", {"id": "v-queued"})
    assert view["id"] == "v-queued" and view["app"] == "demo" and view["status"] == "QUEUED"
    assert view["commands"] == [call("demo.add", a=1, b=2), {"timer": 5}]
    assert view["results"] == [] and view["locked"] is False and view["error"] is None

    view = await status_of(m, "v-queued", "QUEUED")
    assert (view["stage"], view["stages"]) == (0, 2)

    canceled = await m.rpc("tasks.cancel", {"ids": ["v-queued"], "dry_run": False})
    assert canceled == [{"id": "v-queued", "status": "CANCELED", "changed": True, "error": None}]
    view = await status_of(m, "v-queued", "CANCELED")
    assert view["stage"] == 0 and view["stages"] == 2
    code, view = await m.get("/tasks/v-queued")
    assert code == 200 and view["status"] == "CANCELED", (code, view)

    for path in ("/tasks/no-such-task", "/tasks/no-such-task/status", f"/tasks/{'x' * 200}/status"):
        code, body = await m.get(path)
        assert code == 404, (path, code, body)
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.status", {"id": "no-such-task"})
    assert e.value.code == 1001


async def test_views_with_an_executor(daemons: Any) -> None:
    """FINISHED 201, FAILED 500, RUNNING and WAITING 202, a cancelled running task 410."""
    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=4)
    await create(m, "v-add", call("demo.add", a=2, b=3))
    await create(m, "v-fail", call("demo.fail", message="nope"))
    await create(m, "v-sleep", call("demo.sleep", seconds=60))
    await create(m, "v-wait", call("demo.echo", value=1), {"timer": 600})

    await until(m, "v-add", "FINISHED")
    view = await status_of(m, "v-add", "FINISHED")
    assert (view["stage"], view["stages"]) == (1, 1)
    code, view = await m.get("/tasks/v-add")
    assert code == 200 and view["results"] == [5] and view["error"] is None, (code, view)

    await until(m, "v-fail", "FAILED")
    view = await status_of(m, "v-fail", "FAILED")
    assert (view["stage"], view["stages"]) == (0, 1)
    code, view = await m.get("/tasks/v-fail")
    assert code == 200, (code, view)
    err = view["error"]
    assert err["code"] == "STAGE_ERROR" and err["stage"] == 0 and err["type"] == "RuntimeError", err
    assert "nope" in err["message"], err

    await until(m, "v-wait", "WAITING")
    view = await status_of(m, "v-wait", "WAITING")
    assert (view["stage"], view["stages"]) == (1, 2) and view["results"][0] == 1

    await until(m, "v-sleep", "RUNNING")
    view = await status_of(m, "v-sleep", "RUNNING")
    assert view["locked"] is True and view["executor_id"], view
    canceled = await m.rpc("tasks.cancel", {"ids": ["v-sleep"], "dry_run": False})
    assert canceled[0]["status"] == "CANCELED" and canceled[0]["changed"] is True, canceled
    await until(m, "v-sleep", "CANCELED")
    await status_of(m, "v-sleep", "CANCELED")

    code, body = await m.get("/healthz")
    assert code == 200, (code, body)
