"""stagewise.client against a real manager and a demo executor: every method, async, sync and
in-process (stagewise.manager.inproc.RedisClient, straight to Redis).

One manager and one executor serve the whole module (starting them per test would cost more than
the tests); every test uses its own task ids, and tasks meant to stay QUEUED use an app of their
own that no executor serves, so tests do not see each other's tasks.

`test_bearer_token` checks the client against a manager with STAGEWISE_API_TOKENS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stagewise.client import (
    AsyncClient,
    Client,
    InvalidParams,
    MethodNotFound,
    NotWaitingForMessage,
    StagewiseError,
    TaskExists,
    TaskNotFound,
    TransportError,
    Unauthorized,
)
from stagewise.manager.inproc import RedisClient
from tests.helpers import (
    ManagerProc,
    add_task,
    demo_manager,
    free_port,
    idle_app_task,
    uid,
    wait_for,
)


@pytest.fixture(scope="module")
async def manager(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ManagerProc]:
    async with demo_manager(redis_url, Path(tmp_path_factory.mktemp("client-logs"))) as m:
        yield m


class SyncAsAsync:
    """The sync `Client` behind an awaitable facade (each call in a worker thread), so that one
    test body exercises both clients."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.client, name)
        if name == "list_all":

            async def gen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                for item in await asyncio.to_thread(lambda: list(fn(*args, **kwargs))):
                    yield item

            return gen

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, *args, **kwargs)

        return call


@pytest.fixture(params=["async", "sync", "redis"])
async def c(request: pytest.FixtureRequest, manager: ManagerProc, redis_url: str) -> AsyncIterator[Any]:
    """Each test runs with the HTTP clients and with RedisClient, which must behave the same."""
    if request.param == "async":
        async with AsyncClient(manager.url, timeout=10) as client:
            yield client
    elif request.param == "redis":
        namespace = (await manager.rpc("system.info"))["namespace"]
        async with RedisClient(redis_url, namespace=namespace) as direct:
            yield direct
    else:
        with Client(manager.url, timeout=10) as sync_client:
            yield SyncAsAsync(sync_client)


# --------------------------------------------------------------------------- implemented methods


async def test_info_and_executors(c: Any, manager: ManagerProc) -> None:
    info = await c.info()
    assert set(info) >= {"version", "redis_version", "namespace", "partitions"}
    assert info == await manager.rpc("system.info")
    executors = await c.executors()
    assert [e["app"] for e in executors] == ["demo"]
    assert set(executors[0]) >= {"id", "app", "host", "pid", "started", "last_ping", "running"}


async def test_create_get_status_wait_attempts(c: Any) -> None:
    tid = uid()
    view = await c.create(add_task(tid))
    assert view["id"] == tid and view["stages"] == 1 and view["status"] in ("QUEUED", "RUNNING", "FINISHED")
    st = await c.wait(tid, timeout=10, interval=0.02)
    assert st == {"id": tid, "status": "FINISHED", "stage": 1, "stages": 1, "http_code": 201}
    assert await c.status(tid) == st
    done = await c.get(tid)
    assert done["results"] == [3] and done["exit_code"] == 0
    assert "results" not in await c.get(tid, include_results=False)
    attempts = await c.attempts(tid)
    assert [(a["stage"], a["outcome"], a["job_id"]) for a in attempts] == [(0, "ok", done["job_id"])]
    with pytest.raises(TaskExists) as e:
        await c.create(add_task(tid))
    assert e.value.code == 1002
    same = await c.create(add_task(tid), on_conflict="ignore")
    assert same["job_id"] == done["job_id"]
    again = await c.create(add_task(tid, kws={"v": 2}), on_conflict="replace")
    assert again["job_id"] != done["job_id"] and again["kws"] == {"v": 2}
    await c.wait(tid, timeout=10, interval=0.02)


async def test_error_mapping(c: Any) -> None:
    with pytest.raises(TaskNotFound) as e:
        await c.get("no-such-task")
    assert (e.value.code, e.value.name) == (1001, "TASK_NOT_FOUND")
    assert str(e.value).startswith("1001 TASK_NOT_FOUND: ")
    with pytest.raises(TaskNotFound):
        await c.status("no-such-task")
    with pytest.raises(TaskNotFound):
        await c.attempts("no-such-task")
    with pytest.raises(InvalidParams) as e2:
        await c.create({"app": "demo", "commands": [{"method": "demo.add"}], "status": "FINISHED"})
    assert e2.value.code == -32602 and "status" in e2.value.data["field"]
    with pytest.raises(InvalidParams) as e2:
        await c.list(max_results=5000)
    assert e2.value.data["field"] == "max_results"
    with pytest.raises(InvalidParams) as e2:
        await c.get("bad id!")
    assert e2.value.data["field"] == "id"
    with pytest.raises(MethodNotFound) as e3:
        await c.call("no.such.method")
    assert isinstance(e3.value, StagewiseError) and e3.value.code == -32601
    with pytest.raises(TaskNotFound):  # call() forwards params by name
        await c.call("tasks.status", id="no-such-task")
    assert (await c.call("system.info"))["namespace"]


async def test_transport_errors() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=5) as dead:
        with pytest.raises(TransportError) as e:
            await dead.info()
    assert e.value.code == 0 and "cannot reach" in e.value.message
    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as sync_dead, pytest.raises(TransportError):
        sync_dead.info()


async def test_send(c: Any) -> None:
    tid = uid()
    task = {
        "id": tid,
        "app": "demo",
        "commands": [{"message": {}}, {"method": "demo.echo", "params": {"value": "{{ results.0.x }}"}}],
    }
    await c.create(task)
    await c.wait(tid, {"WAITING"}, timeout=10, interval=0.02)
    view = await c.send(tid, {"x": 41})
    assert view["id"] == tid
    await c.wait(tid, timeout=10, interval=0.02)
    assert (await c.get(tid))["results"] == [{"x": 41}, 41]
    with pytest.raises(NotWaitingForMessage) as e:
        await c.send(tid, 1)
    assert e.value.code == 1004


async def test_batch(c: Any) -> None:
    tid = uid()
    await c.create(add_task(tid))
    got = await c.batch([("tasks.status", {"id": tid}), ("tasks.get", {"id": "nope"}), ("system.info", None)])
    assert got[0]["id"] == tid
    assert isinstance(got[1], TaskNotFound) and got[1].data == {"id": "nope"}
    assert set(got[2]) >= {"version", "namespace"}
    assert await c.batch([]) == []
    with pytest.raises(TaskNotFound):
        await c.batch([("tasks.get", {"id": tid}), ("tasks.get", {"id": "nope"})], raise_errors=True)


async def test_list_and_list_all(c: Any) -> None:
    app = uid("lst")
    ids = [f"{app}-{i}" for i in range(7)]
    for tid in ids:
        await c.create(idle_app_task(tid, app))
    page = await c.list(app=app, max_results=3)
    assert len(page["items"]) == 3 and page["next_cursor"]
    assert all("results" not in v for v in page["items"])
    page2 = await c.list(app=app, max_results=3, cursor=page["next_cursor"])
    assert not {v["id"] for v in page["items"]} & {v["id"] for v in page2["items"]}
    every = [v async for v in c.list_all(app=app, max_results=2, sort="asc")]
    assert [v["id"] for v in every] == ids  # created in order, so updated in order
    desc = [v["id"] async for v in c.list_all(app=app, status="QUEUED", include_results=True)]
    assert desc == ids[::-1]
    assert (await c.list(app=app, status="FINISHED"))["items"] == []


async def test_cancel_by_ids(c: Any) -> None:
    app = uid("cx")
    a, b = f"{app}-a", f"{app}-b"
    await c.create(idle_app_task(a, app))
    await c.create(idle_app_task(b, app))
    dry = await c.cancel([a, b, "no-such-task"])
    assert [(r["id"], r["status"], r["changed"]) for r in dry[:2]] == [
        (a, "CANCELED", True),
        (b, "CANCELED", True),
    ]
    assert dry[2]["id"] == "no-such-task" and dry[2]["changed"] is False and dry[2]["error"]
    assert (await c.status(a))["status"] == "QUEUED"  # a dry run changes nothing
    done = await c.cancel([a], dry_run=False)
    assert done == [{"id": a, "status": "CANCELED", "changed": True, "error": None}]
    assert (await c.get(a))["status"] == "CANCELED"
    again = await c.cancel([a], dry_run=False)
    assert again[0]["changed"] is False
    await c.cancel([b], dry_run=False)


async def test_wait_timeout(c: Any) -> None:
    app = uid("wt")
    await c.create(idle_app_task(f"{app}-1", app))
    with pytest.raises(TimeoutError):
        await c.wait(f"{app}-1", timeout=0.2, interval=0.05)
    assert (await c.wait(f"{app}-1", {"QUEUED"}, timeout=1))["status"] == "QUEUED"
    await c.cancel([f"{app}-1"], dry_run=False)


async def test_list_filters(c: Any) -> None:
    app, group = uid("lf"), uid("g")
    t0 = datetime.now(UTC)
    await c.create(idle_app_task(f"{app}-1", app, tags=["red", "big"], group=group))
    await c.create(idle_app_task(f"{app}-2", app, tags=["red"]))
    await c.create(idle_app_task(f"{app}-3", app, tags=["blue"], group=group))

    async def ids(**kw: Any) -> set[str]:
        return {v["id"] async for v in c.list_all(app=app, **kw)}

    assert await ids(tags=["red"]) == {f"{app}-1", f"{app}-2"}
    assert await ids(tags=["red", "big"]) == {f"{app}-1"}
    assert await ids(group=group) == {f"{app}-1", f"{app}-3"}
    assert await ids(since=t0) == {f"{app}-1", f"{app}-2", f"{app}-3"}
    assert await ids(since=t0.isoformat()) == {f"{app}-1", f"{app}-2", f"{app}-3"}
    assert await ids(since=t0.timestamp() + 3600) == set()
    assert await ids(cleaned=True) == set()
    assert len(await ids(cleaned=False)) == 3
    await c.cancel([f"{app}-{i}" for i in (1, 2, 3)], dry_run=False)


async def test_cancel_by_filter(c: Any) -> None:
    app = uid("cf")
    ids = [f"{app}-{i}" for i in range(3)]
    for tid in ids:
        await c.create(idle_app_task(tid, app, tags=["x"] if tid != ids[2] else []))
    dry = await c.cancel(app=app, tags=["x"])
    assert sorted(r["id"] for r in dry) == ids[:2] and all(r["changed"] for r in dry)
    assert (await c.status(ids[0]))["status"] == "QUEUED"
    capped = await c.cancel(app=app, max_results=1)
    assert len(capped) == 1
    await c.cancel(app=app, status="QUEUED", dry_run=False)
    assert {(await c.status(t))["status"] for t in ids} == {"CANCELED"}


async def test_a_misspelt_filter_is_a_type_error(c: Any) -> None:
    """The filters are one keyword set (stagewise.client.Filters) taken as ``**filters``: a name
    outside it fails as a misspelt named parameter would, before anything is sent."""
    with pytest.raises(TypeError, match="list\\(\\) got an unexpected keyword argument 'statuss'"):
        await c.list(statuss="QUEUED")
    with pytest.raises(TypeError, match="cancel\\(\\) got an unexpected keyword argument 'ap'"):
        await c.cancel(ap="x", dry_run=False)
    with pytest.raises(TypeError, match="'tag'"):
        [v async for v in c.list_all(tag="x")]


async def test_unlock(c: Any) -> None:
    tid = uid()
    await c.create(
        {"id": tid, "app": "demo", "commands": [{"method": "demo.sleep", "params": {"seconds": 3}}]}
    )
    try:
        await c.wait(tid, {"RUNNING"}, timeout=10, interval=0.02)
        dry = await c.unlock([tid])
        # RUNNING -> SUSPENDED, and the server re-queues a suspended run at once (due now)
        assert [(r["id"], r["changed"], r["error"]) for r in dry] == [(tid, True, None)]
        assert dry[0]["status"] in ("SUSPENDED", "QUEUED")
        assert (await c.get(tid))["locked"] is True
        done = await c.unlock([tid], dry_run=False)
        assert done[0]["changed"] is True and done[0]["status"] in ("SUSPENDED", "QUEUED")
        attempts = await wait_for(lambda: c.attempts(tid), timeout=5, what="the unlocked attempt")
        assert attempts[0]["outcome"] == "unlocked"
        idle = uid("ul")
        await c.create(idle_app_task(idle, idle))
        assert (await c.unlock([idle]))[0]["changed"] is False  # not running: nothing to release
        await c.cancel([idle], dry_run=False)
    finally:
        await c.cancel([tid], dry_run=False)


async def test_restart(c: Any) -> None:
    tid = uid()
    first = await c.create(add_task(tid))
    await c.wait(tid, timeout=10, interval=0.02)
    dry = await c.restart([tid])
    assert dry[0]["changed"] is True and (await c.status(tid))["status"] == "FINISHED"
    done = await c.restart([tid], dry_run=False, from_="first")
    assert done[0]["changed"] is True
    await c.wait(tid, timeout=10, interval=0.02)
    view = await c.get(tid)
    assert view["results"] == [3] and view["job_id"] != first["job_id"]
    app = uid("rs")
    await c.create(idle_app_task(f"{app}-1", app))
    assert (await c.restart([f"{app}-1"], from_="current"))[0]["changed"] is False  # not terminal
    await c.cancel([f"{app}-1"], dry_run=False)


async def test_delete(c: Any) -> None:
    tid = uid()
    await c.create(add_task(tid))
    await c.wait(tid, timeout=10, interval=0.02)
    app = uid("dl")
    await c.create(idle_app_task(f"{app}-1", app))
    dry = await c.delete([tid, f"{app}-1"])
    assert [(r["id"], r["changed"]) for r in dry] == [(tid, True), (f"{app}-1", False)]
    await c.get(tid)  # still there after the dry run
    await c.delete([tid], dry_run=False)
    with pytest.raises(TaskNotFound):
        await c.get(tid)
    await c.cancel([f"{app}-1"], dry_run=False)


async def test_clean(c: Any) -> None:
    tid = uid()
    await c.create(add_task(tid, kws={"secret": 1}))
    await c.wait(tid, timeout=10, interval=0.02)
    dry = await c.clean(older_than=0)
    assert any(r["id"] == tid and r["changed"] for r in dry)
    assert (await c.get(tid))["results"] == [3]
    await c.clean(older_than=0, dry_run=False)
    view = await c.get(tid)
    assert view["cleaned"] is True and view["kws"] == {} and view["results"] is None
    assert tid in {v["id"] async for v in c.list_all(cleaned=True, app="demo")}


async def test_create_many_and_group(c: Any) -> None:
    group = uid("grp")
    tasks = [add_task(f"{group}-{i}") for i in range(3)]
    res = await c.create_many(tasks, group=group)
    assert res == {"group": group, "ids": [t["id"] for t in tasks]}
    for t in tasks:
        await c.wait(t["id"], timeout=10, interval=0.02)
    g = await c.group(group)
    assert g == {"group": group, "total": 3, "by_status": {"FINISHED": 3}}
    auto = await c.create_many([add_task(uid())])
    assert auto["group"] and len(auto["ids"]) == 1
    with pytest.raises(StagewiseError):  # LimitExceeded or InvalidParams: more than 1000
        await c.create_many([add_task(f"{group}-x{i}") for i in range(1001)])


async def test_notifications(c: Any) -> None:
    tid = uid()
    await c.create(add_task(tid, notify=True))
    await c.wait(tid, timeout=10, interval=0.02)

    async def finished() -> list[Any]:
        rows = await c.notifications(task_id=tid)
        return rows if any(n["status"] == "FINISHED" for n in rows) else []

    rows = await wait_for(finished, timeout=10, what="a FINISHED notification")
    assert all(n["task_id"] == tid for n in rows)
    assert set(rows[0]) >= {"id", "task_id", "job_id", "status", "created", "error"}
    assert len(await c.notifications(task_id=tid, max_results=1)) == 1
    acked = await c.ack([n["id"] for n in rows])
    assert acked == {"acked": len(rows)}


async def test_bearer_token(daemons: Any) -> None:
    m = await daemons.manager(STAGEWISE_API_TOKENS="s3cret,other")
    async with AsyncClient(m.url, token="s3cret") as good:
        assert (await good.info())["namespace"] == daemons.namespace
    with Client(m.url, token="other") as sync_good:
        assert sync_good.info()["namespace"] == daemons.namespace
    async with AsyncClient(m.url) as anonymous:
        with pytest.raises(Unauthorized) as e:
            await anonymous.info()
    assert e.value.code == 401
    async with AsyncClient(m.url, token="wrong") as wrong:
        with pytest.raises(Unauthorized):
            await wrong.info()
