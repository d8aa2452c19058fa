"""The `stagewise` client commands, run as real subprocesses (`python -m stagewise ...`) against a
real manager and a demo executor (one pair for the whole module, as in test_client.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import stagewise
from stagewise.cli import parser
from tests.helpers import (
    REPO_ROOT,
    ManagerProc,
    RpcError,
    add_task,
    demo_manager,
    free_port,
    idle_app_task,
    task_until,
    uid,
    wait_for,
)


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
async def m(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ManagerProc]:
    async with demo_manager(redis_url, Path(tmp_path_factory.mktemp("cli-logs"))) as m:
        yield m


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEWISE_") and k != "COLUMNS"}
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    return env


async def sw(
    m: ManagerProc | None,
    *args: str,
    stdin: str | None = None,
    timeout: float = 30,  # noqa: ASYNC109
    python_flags: Sequence[str] = (),
) -> Run:
    """Run `stagewise ARGS... --url M.URL`; its exit code and output."""
    argv = [sys.executable, *python_flags, "-m", "stagewise", *args]
    if m is not None:
        argv += ["--url", m.url]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO_ROOT,
        env=_env(),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"stagewise {' '.join(args)} did not exit within {timeout}s") from None
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def ok(r: Run) -> Run:
    assert r.rc == 0, f"rc={r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    assert "Traceback" not in r.err
    return r


def one_error_line(r: Run, prefix: str) -> str:
    assert r.rc == 1, f"rc={r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), r.err
    return lines[0]


async def until(m: ManagerProc, tid: str, statuses: set[str]) -> dict[str, Any]:
    return await task_until(m, tid, lambda v: v["status"] in statuses, 15, f"{tid} to reach {statuses}")


# --------------------------------------------------------------------------- tests


async def test_info_and_executors(m: ManagerProc) -> None:
    info, info_json, json_first, execs, execs_json = await asyncio.gather(
        sw(m, "info"),
        sw(m, "info", "--json"),
        sw(None, "--json", "--url", m.url, "info"),  # client options before the command too
        sw(m, "executors"),
        sw(m, "executors", "--json"),
    )
    want = await m.rpc("system.info")
    assert want["namespace"] in ok(info).out and "redis_version" in info.out
    assert ok(info_json).json() == want == ok(json_first).json()
    rows = ok(execs_json).json()
    assert [e["app"] for e in rows] == ["demo"]
    assert rows[0]["id"] in ok(execs).out


async def test_create_get_status_list_attempts(m: ManagerProc, tmp_path: Path) -> None:
    tid = uid()
    path = tmp_path / "task.json"
    path.write_text(json.dumps(add_task(tid)))
    created = ok(await sw(m, "task", "create", str(path)))
    assert tid in created.out
    await until(m, tid, {"FINISHED"})
    dup = await sw(m, "task", "create", str(path))
    one_error_line(dup, "error 1002 TASK_EXISTS: ")
    same = ok(await sw(m, "task", "create", "-", "--on-conflict", "ignore", "--json", stdin=path.read_text()))
    assert same.json()["id"] == tid and same.json()["status"] == "FINISHED"

    get, get_json, status_json, att, att_json = await asyncio.gather(
        sw(m, "task", "get", tid),
        sw(m, "task", "get", tid, "--json"),
        sw(m, "task", "status", tid, "--json"),
        sw(m, "task", "attempts", tid),
        sw(m, "task", "attempts", tid, "--json"),
    )
    assert tid in ok(get).out and "FINISHED" in get.out and "demo.add" in get.out
    assert ok(get_json).json() == await m.rpc("tasks.get", {"id": tid})
    assert ok(status_json).json() == await m.rpc("tasks.status", {"id": tid})
    assert ok(att_json).json() == await m.rpc("tasks.attempts", {"id": tid})
    assert "ok" in ok(att).out and att_json.json()[0]["job_id"] in att.out

    app = uid("cl")
    ids = [f"{app}-{i}" for i in range(5)]
    for i in ids:
        await m.rpc("tasks.create", {"task": idle_app_task(i, app)})
    table, page, every, tail = await asyncio.gather(
        sw(m, "task", "list", "--app", app, "--status", "queued"),
        sw(m, "task", "list", "--app", app, "--max", "2", "--json"),
        sw(m, "task", "list", "--app", app, "--max", "2", "--all", "--sort", "asc", "--json"),
        sw(m, "task", "list", "--app", app, "--max", "2"),
    )
    assert all(i in ok(table).out for i in ids) and "5 tasks" in table.out
    rows = [line for line in table.out.splitlines() if line.startswith(app)]
    assert len(rows) == 5 and all("QUEUED" in r and "0/1" in r for r in rows)
    first = ok(page).json()
    assert first == await m.rpc("tasks.list", {"app": app, "max_results": 2})
    assert len(first["items"]) == 2 and first["next_cursor"]
    assert [v["id"] for v in ok(every).json()["items"]] == ids
    assert f"--cursor {first['next_cursor']}" in ok(tail).out
    rest = ok(
        await sw(m, "task", "list", "--app", app, "--max", "10", "--cursor", first["next_cursor"], "--json")
    )
    assert {v["id"] for v in rest.json()["items"]} == set(ids) - {v["id"] for v in first["items"]}
    await m.rpc("tasks.cancel", {"ids": ids, "dry_run": False})


async def test_errors_are_one_line(m: ManagerProc, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    missing, missing_json, invalid, bad_file, bad_task, dead, no_target = await asyncio.gather(
        sw(m, "task", "get", "no-such-task"),
        sw(m, "task", "get", "no-such-task", "--json"),
        sw(m, "task", "list", "--max", "5000"),
        sw(m, "task", "create", str(bad)),
        sw(m, "task", "create", "-", stdin=json.dumps({"app": "demo", "commands": [], "status": "X"})),
        sw(None, "info", "--url", f"http://127.0.0.1:{free_port()}"),
        sw(m, "task", "cancel"),
    )
    assert one_error_line(missing, "error 1001 TASK_NOT_FOUND: ").endswith("not found")
    one_error_line(missing_json, "error 1001 TASK_NOT_FOUND: ")
    assert "max_results" in one_error_line(invalid, "error -32602 INVALID_PARAMS: ")
    assert "not JSON" in one_error_line(bad_file, "error: ")
    one_error_line(bad_task, "error -32602 INVALID_PARAMS: ")
    assert "cannot reach" in one_error_line(dead, "error: ")
    assert "ids or at least one filter" in one_error_line(no_target, "error: ")
    assert missing.out == dead.out == ""


async def test_watch_exit_codes(m: ManagerProc) -> None:
    ok_id, fail_id, cancel_id = uid("w"), uid("w"), uid("w")
    steps = [
        {"method": "demo.add", "params": {"a": 20, "b": 22}},
        {"method": "demo.sleep", "params": {"seconds": 0.3}},
        {"method": "demo.echo", "params": {"value": "{{ results.0 }}"}},
    ]
    await m.rpc("tasks.create", {"task": {"id": ok_id, "app": "demo", "commands": steps}})
    fail_steps = [steps[0], {"method": "demo.fail", "params": {"message": "nope [bold]"}}]
    await m.rpc("tasks.create", {"task": {"id": fail_id, "app": "demo", "commands": fail_steps}})
    await m.rpc("tasks.create", {"task": {"id": cancel_id, "app": "demo", "commands": [{"message": {}}]}})
    watches = [
        asyncio.create_task(sw(m, "task", "watch", ok_id, "--interval", "0.05")),
        asyncio.create_task(sw(m, "task", "watch", fail_id, "--interval", "0.05")),
        asyncio.create_task(sw(m, "task", "watch", cancel_id, "--interval", "0.05")),
        asyncio.create_task(sw(m, "task", "watch", ok_id, "--json", "--interval", "0.05")),
    ]
    await until(m, cancel_id, {"WAITING"})
    await m.rpc("tasks.cancel", {"ids": [cancel_id], "dry_run": False})
    done, failed, canceled, as_json = await asyncio.gather(*watches)

    assert ok(done).rc == 0
    lines = done.out.splitlines()
    assert any("stage 0 demo.add -> 42" in line for line in lines)
    assert any("stage 1 demo.sleep -> 0.3" in line for line in lines)
    assert any("stage 2 demo.echo -> 42" in line for line in lines)
    assert "3/3" in done.out and lines[-1].strip() == f"{ok_id} FINISHED"
    assert failed.rc == 1 and "Traceback" not in failed.err
    shown, tried = await asyncio.gather(sw(m, "task", "get", fail_id), sw(m, "task", "attempts", fail_id))
    for r, heading in ((shown, "traceback of the failed stage's handler:"), (tried, "traceback of job")):
        assert ok(r).rc == 0 and heading in r.out and "RuntimeError: nope [bold]" in r.out, r.out
    assert "stage 0 demo.add -> 42" in failed.out and "FAILED" in failed.out and "nope [bold]" in failed.out
    assert canceled.rc == 2 and "CANCELED" in canceled.out
    assert as_json.rc == 0 and as_json.json()["results"] == [42, 0.3, 42]


async def test_create_wait_follows_the_task_and_exits_by_outcome(m: ManagerProc, tmp_path: Path) -> None:
    """`task create --wait` prints each stage with how long it took, says what a waiting task
    waits for (a timer's countdown; the command that sends a message), and exits 0 / 1 by
    outcome; a list waits for all of its tasks."""
    ok_id, fail_id, msg_id = uid("cw"), uid("cw"), uid("cw")
    docs = {
        ok_id: [{"timer": 0.3}, {"method": "demo.sleep", "params": {"seconds": 0.2}}],
        fail_id: [{"method": "demo.fail", "params": {"message": "no"}}],
        msg_id: [
            {"message": {"timeout": 600}},
            {"method": "demo.echo", "params": {"value": "{{ results.0 }}"}},
        ],
    }
    for tid, commands in docs.items():
        (tmp_path / f"{tid}.json").write_text(json.dumps({"id": tid, "app": "demo", "commands": commands}))
    flags = ("--wait", "--interval", "0.05")
    runs = [
        asyncio.create_task(sw(m, "task", "create", str(tmp_path / f"{tid}.json"), *flags)) for tid in docs
    ]
    await until(m, msg_id, {"WAITING"})
    await m.rpc("tasks.send", {"id": msg_id, "data": {"hi": 1}})
    done, failed, sent = await asyncio.gather(*runs)

    assert ok(done).rc == 0
    assert "stage 0 timer: resumes in" in done.out
    slept = next(line for line in done.out.splitlines() if "stage 1 demo.sleep -> 0.2" in line)
    value, unit = slept.rsplit("(", 1)[1].rstrip(")").split()  # e.g. "203 ms", or "1.2 s" on a busy machine
    assert float(value) * {"ms": 0.001, "s": 1.0}[unit] >= 0.2, slept
    assert done.out.splitlines()[-1].strip() == f"{ok_id} FINISHED"
    assert failed.rc == 1 and f"{fail_id} FAILED" in failed.out and "no" in failed.out
    assert ok(sent).rc == 0
    assert f"stage 0 waiting for a message: stagewise task send {msg_id} '<JSON>' (times out in" in sent.out
    assert 'stage 1 demo.echo -> {"hi": 1}' in sent.out

    batch = tmp_path / "batch.json"
    batch.write_text(
        json.dumps(
            [{"app": "demo", "commands": [{"method": "demo.echo", "params": {"value": i}}]} for i in range(3)]
        )
    )
    all_ok = ok(await sw(m, "task", "create", str(batch), *flags))
    assert "3 FINISHED" in all_ok.out
    batch.write_text(
        json.dumps(
            [
                {"app": "demo", "commands": c}
                for c in (docs[fail_id], [{"method": "demo.add", "params": {"a": 1, "b": 2}}])
            ]
        )
    )
    some_failed = await sw(m, "task", "create", str(batch), *flags)
    assert some_failed.rc == 1 and "1 FINISHED, 1 FAILED" in some_failed.out


async def test_apps_overview(m: ManagerProc) -> None:
    """`stagewise apps` (apps.list): per app queued / running / waiting / failed in the last
    hour / lag / live executors, and a warning where queued work has no executor to run it."""
    lonely = uid("lonely").replace("-", "")
    tid = uid("lo")
    await m.rpc("tasks.create", {"task": {"id": tid, "app": lonely, "commands": [{"method": "x.y"}]}})
    waiting = uid("wa")
    await m.rpc("tasks.create", {"task": {"id": waiting, "app": "demo", "commands": [{"message": {}}]}})
    failing = uid("fa")
    await m.rpc(
        "tasks.create", {"task": {"id": failing, "app": "demo", "commands": [{"method": "demo.fail"}]}}
    )
    await until(m, failing, {"FAILED"})
    rows = {r["app"]: r for r in ok(await sw(m, "apps", "--json")).json()}
    assert rows[lonely]["queued"] == 1 and rows[lonely]["executors"] == 0
    assert isinstance(rows[lonely]["lag"], float) and rows[lonely]["lag"] >= 0
    assert rows["demo"]["executors"] == 1 and rows["demo"]["waiting"] >= 1
    assert rows["demo"]["failed_last_hour"] >= 1 and rows["demo"]["paused_until"] is None
    shown = ok(await sw(m, "apps"))
    assert lonely in shown.out and "FAILED 1H" in shown.out
    assert f"{lonely}: queued work and no live executor" in shown.out
    assert "demo: queued work" not in shown.out
    await m.rpc("tasks.cancel", {"ids": [tid, waiting], "dry_run": False})


async def test_send(m: ManagerProc) -> None:
    tid = uid()
    task = {
        "id": tid,
        "app": "demo",
        "commands": [{"message": {}}, {"method": "demo.echo", "params": {"value": 1}}],
    }
    await m.rpc("tasks.create", {"task": task})
    await until(m, tid, {"WAITING"})
    sent = ok(await sw(m, "task", "send", tid, '{"name": "world"}'))
    assert tid in sent.out
    await until(m, tid, {"FINISHED"})
    assert (await m.rpc("tasks.get", {"id": tid}))["results"] == [{"name": "world"}, 1]
    late, not_json = await asyncio.gather(
        sw(m, "task", "send", tid, "1"), sw(m, "task", "send", tid, "{oops")
    )
    one_error_line(late, "error 1004 NOT_WAITING_FOR_MESSAGE: ")
    one_error_line(not_json, "error: the message is not JSON")


async def test_cancel_dry_run_then_yes(m: ManagerProc) -> None:
    app = uid("cc")
    ids = [f"{app}-{i}" for i in range(2)]
    for i in ids:
        await m.rpc("tasks.create", {"task": idle_app_task(i, app)})
    dry = ok(await sw(m, "task", "cancel", *ids, "no-such-task"))
    rows = [line for line in dry.out.splitlines() if line.startswith((app, "no-such-task"))]
    assert len(rows) == 3 and all("CANCELED" in r and "would change" in r for r in rows[:2])
    assert "TASK_NOT_FOUND" in rows[2] and "dry run: 2 of 3 would change" in dry.out
    assert {(await m.rpc("tasks.status", {"id": i}))["status"] for i in ids} == {"QUEUED"}
    dry_json = ok(await sw(m, "task", "cancel", *ids, "--json")).json()
    assert dry_json == [{"id": i, "status": "CANCELED", "changed": True, "error": None} for i in ids]
    assert {(await m.rpc("tasks.status", {"id": i}))["status"] for i in ids} == {"QUEUED"}
    applied = ok(await sw(m, "task", "cancel", *ids, "--yes"))
    assert "2 of 2 changed" in applied.out and all(i in applied.out for i in ids)
    assert {(await m.rpc("tasks.status", {"id": i}))["status"] for i in ids} == {"CANCELED"}


async def test_batch_commands_by_filter(m: ManagerProc) -> None:
    app, group = uid("bf"), uid("g")
    ids = [f"{app}-{i}" for i in range(3)]
    for i, tid in enumerate(ids):
        extra: dict[str, Any] = {"tags": ["hot"]} if i < 2 else {}
        await m.rpc("tasks.create", {"task": idle_app_task(tid, app, group=group, **extra)})
    dry = ok(await sw(m, "task", "cancel", "--app", app, "--tag", "hot", "--json")).json()
    assert sorted(r["id"] for r in dry) == ids[:2] and all(r["changed"] for r in dry)
    capped = ok(await sw(m, "task", "cancel", "--group", group, "--max", "1", "--json")).json()
    assert len(capped) == 1
    ok(await sw(m, "task", "cancel", "--app", app, "--status", "QUEUED", "--since", "1h", "--yes"))
    assert {(await m.rpc("tasks.status", {"id": i}))["status"] for i in ids} == {"CANCELED"}
    listed = ok(
        await sw(m, "task", "list", "--group", group, "--tag", "hot", "--no-cleaned", "--json")
    ).json()
    assert sorted(v["id"] for v in listed["items"]) == ids[:2]

    restarted = ok(await sw(m, "task", "restart", ids[0], "--from", "first", "--yes", "--json")).json()
    assert restarted[0]["id"] == ids[0] and restarted[0]["changed"] is True
    assert (await m.rpc("tasks.status", {"id": ids[0]}))["status"] not in ("CANCELED",)
    await m.rpc("tasks.cancel", {"ids": [ids[0]], "dry_run": False})

    delete_dry = ok(await sw(m, "task", "delete", *ids))
    assert "dry run: 3 of 3 would change" in delete_dry.out
    await m.rpc("tasks.get", {"id": ids[1]})
    ok(await sw(m, "task", "delete", ids[1], "--yes"))
    with pytest.raises(RpcError) as e:
        await m.rpc("tasks.get", {"id": ids[1]})
    assert e.value.code == 1001


async def test_unlock(m: ManagerProc) -> None:
    tid = uid()
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": tid,
                "app": "demo",
                "commands": [{"method": "demo.sleep", "params": {"seconds": 3}}],
            }
        },
    )
    try:
        await until(m, tid, {"RUNNING"})
        dry = ok(await sw(m, "task", "unlock", tid))
        assert tid in dry.out and "would change" in dry.out
        applied = ok(await sw(m, "task", "unlock", tid, "--yes", "--json")).json()
        assert applied[0]["changed"] is True and applied[0]["status"] in ("SUSPENDED", "QUEUED")
    finally:
        await m.rpc("tasks.cancel", {"ids": [tid], "dry_run": False})


async def test_clean(m: ManagerProc) -> None:
    tid = uid()
    await m.rpc("tasks.create", {"task": add_task(tid)})
    await until(m, tid, {"FINISHED"})
    dry = ok(await sw(m, "task", "clean", "--older-than", "0"))
    assert tid in dry.out and "dry run" in dry.out
    assert (await m.rpc("tasks.get", {"id": tid}))["cleaned"] is False
    applied = ok(await sw(m, "task", "clean", "--older-than", "0", "--yes", "--json")).json()
    assert any(r["id"] == tid and r["changed"] for r in applied)
    assert (await m.rpc("tasks.get", {"id": tid}))["cleaned"] is True
    listed = ok(await sw(m, "task", "list", "--app", "demo", "--cleaned", "--max", "1000", "--json")).json()
    assert tid in {v["id"] for v in listed["items"]}


async def test_create_many_and_group(m: ManagerProc) -> None:
    group = uid("grp")
    tasks = [add_task(f"{group}-{i}") for i in range(3)]
    created = ok(
        await sw(m, "task", "create", "-", "--group", group, "--json", stdin=json.dumps(tasks))
    ).json()
    assert created == {"group": group, "ids": [t["id"] for t in tasks]}
    for t in tasks:
        await until(m, t["id"], {"FINISHED"})
    table, as_json = await asyncio.gather(sw(m, "group", group), sw(m, "group", group, "--json"))
    assert as_json.rc == 0 and as_json.json() == await m.rpc("groups.get", {"group": group})
    assert as_json.json()["total"] == 3
    assert f"group {group}: 3 tasks" in ok(table).out and "FINISHED" in table.out


async def test_notifications(m: ManagerProc) -> None:
    tid = uid()
    await m.rpc("tasks.create", {"task": add_task(tid, notify=True)})
    await until(m, tid, {"FINISHED"})

    async def finished() -> list[Any]:
        rows = await m.rpc("notifications.list", {"task_id": tid})
        return rows if any(n["status"] == "FINISHED" for n in rows) else []

    rows = await wait_for(finished, timeout=10, what="a FINISHED notification")
    table = ok(await sw(m, "notifications", "--task", tid))
    assert all(n["id"] in table.out for n in rows) and tid in table.out
    listed = ok(await sw(m, "notifications", "--task", tid, "--json")).json()
    assert {n["id"] for n in listed} == {n["id"] for n in rows}
    acked = ok(await sw(m, "notifications", "--ack", *[n["id"] for n in rows], "--json")).json()
    assert acked == {"acked": len(rows)}


async def test_resolve_url_and_token() -> None:
    def args(*argv: str) -> argparse.Namespace:
        return parser.build_parser().parse_args([*argv, "info"])

    assert parser.resolve(args(), {}) == ("http://127.0.0.1:8765", None)
    env = {"STAGEWISE_HTTP": "0.0.0.0:9001", "STAGEWISE_API_TOKENS": "a, b"}
    assert parser.resolve(args(), env) == ("http://127.0.0.1:9001", "a")
    env |= {"STAGEWISE_URL": "http://mgr:1", "STAGEWISE_API_TOKEN": "z"}
    assert parser.resolve(args(), env) == ("http://mgr:1", "z")
    assert parser.resolve(args("--url", "http://x:2", "--token", "t"), env) == ("http://x:2", "t")
    assert parser.since("15m") == pytest.approx(time.time() - 900, abs=5)
    assert parser.since("2024-01-01T00:00:00Z") == "2024-01-01T00:00:00Z" and parser.since("12.5") == 12.5
    assert parser.duration("7d") == 7 * 86400 and parser.duration("90") == 90


async def test_daemon_subcommands_kept() -> None:
    """A daemon's configuration mistake is one line and exit status 78 (EX_CONFIG), which the
    units do not restart on."""
    r = await sw(None, "executor", "examples.app:app", "--concurrency", "0")
    assert r.rc == 78 and r.err.strip() == "stagewise: --concurrency must be >= 1"
    r = await sw(None, "--config", "/nonexistent.toml", "manager")
    assert r.rc == 78 and r.err.startswith("stagewise: configuration error") and len(r.err.splitlines()) == 1
    r = await sw(None, "executor", "tests.helpers:uid")
    assert (
        r.rc == 78
        and r.err.strip() == "stagewise: executor: tests.helpers:uid is a function, not a stagewise.App"
    )


async def test_version() -> None:
    r = ok(await sw(None, "--version"))
    assert r.out == f"stagewise {stagewise.__version__}\n" and r.out != "stagewise 0.0.0\n"


async def test_client_commands_load_no_daemon() -> None:
    """A client command imports neither daemon (nor uvloop): `-X importtime` lists every module
    the process imported."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = await sw(None, "task", "status", "x", "--url", url, python_flags=["-X", "importtime"])
    assert r.rc == 1 and "error: cannot reach" in r.err
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in r.err.splitlines() if line.startswith("import time:")
    }
    assert "stagewise.cli.commands" in imported and "stagewise.client" in imported
    assert not {m for m in imported if m.startswith(("stagewise.manager", "stagewise.executor", "uvloop"))}


async def test_token(daemons: Any) -> None:
    mgr = await daemons.manager(STAGEWISE_API_TOKENS="s3cret")
    anonymous, with_token = await asyncio.gather(
        sw(mgr, "info"), sw(mgr, "info", "--token", "s3cret", "--json")
    )
    assert with_token.rc == 0 and with_token.json()["namespace"] == daemons.namespace
    one_error_line(anonymous, "error 401 UNAUTHORIZED: ")


async def test_fan_out_parent_and_children(m: ManagerProc) -> None:
    """A parent at a children stage: `task watch` says what it waits for, `task get` shows
    the children's progress, `task list --parent` lists them; a child shows its parent."""
    pid = uid("fan")
    kids = [
        {"app": "demo", "commands": [{"message": {}}]},
        {"app": "demo", "commands": [{"method": "demo.add", "params": {"a": 1, "b": 2}}]},
    ]
    await m.rpc(
        "tasks.create", {"task": {"id": pid, "app": "demo", "commands": [{"children": {"tasks": kids}}]}}
    )
    await until(m, f"{pid}.0.1", {"FINISHED"})
    await until(m, f"{pid}.0.0", {"WAITING"})
    watch = asyncio.create_task(sw(m, "task", "watch", pid, "--interval", "0.05"))
    got, listed, child = await asyncio.gather(
        sw(m, "task", "get", pid),
        sw(m, "task", "list", "--parent", pid, "--json"),
        sw(m, "task", "get", f"{pid}.0.0"),
    )
    assert (
        "children: 2 tasks" in ok(got).out
        and "1/2 ended (stage 0)" in got.out
        and "1 FINISHED, 1 WAITING" in got.out
    )
    assert sorted(t["id"] for t in ok(listed).json()["items"]) == [f"{pid}.0.0", f"{pid}.0.1"]
    assert "parent" in ok(child).out and pid in child.out
    await m.rpc("tasks.send", {"id": f"{pid}.0.0", "data": "x"})
    watched = ok(await watch)
    assert (
        "waiting for its children" in watched.out
        and watched.out.splitlines()[-1].strip() == f"{pid} FINISHED"
    )


async def test_apps_and_limits_pause_and_resume(m: ManagerProc) -> None:
    """`apps pause|resume` and `limits get|pause|resume` (SPEC §2a, §7): what they set is what the
    manager reports; `stagewise apps` shows the pause."""
    app = uid("paws").replace("-", "")
    await m.rpc("tasks.create", {"task": {"app": app, "run_at": 4e9, "commands": [{"method": "x.y"}]}})
    got = ok(await sw(m, "apps", "pause", app, "--until", "2h", "--json")).json()
    assert got["app"] == app and 7100 < got["paused_until"] - time.time() < 7300
    rows = {r["app"]: r for r in await m.rpc("apps.list")}
    assert rows[app]["paused_until"] == pytest.approx(got["paused_until"])
    assert "until" in [line for line in ok(await sw(m, "apps")).out.splitlines() if app in line][0]
    assert f"app {app} not paused" in ok(await sw(m, "apps", "resume", app)).out
    assert {r["app"]: r for r in await m.rpc("apps.list")}[app]["paused_until"] is None
    forever = ok(await sw(m, "apps", "pause", app)).out
    assert f"app {app} paused until" in forever
    ok(await sw(m, "apps", "resume", app))

    key = uid("key")
    ok(await sw(m, "limits", "pause", key, "--until", "4000000000"))
    info = ok(await sw(m, "limits", "get", key, "--json")).json()
    assert info == {"key": key, "running": 0, "held": 0, "paused_until": 4e9}
    shown = ok(await sw(m, "limits", "get", key)).out
    assert key in shown and "held" in shown and "until" in shown
    assert ok(await sw(m, "limits", "resume", key, "--json")).json() == {"key": key, "paused_until": None}
    assert (await m.rpc("limits.get", {"key": key}))["paused_until"] is None
    bad = await sw(m, "limits", "pause", key)  # --until is required
    assert bad.rc == 2 and "--until" in bad.err
    assert (await sw(m, "limits", "pause", key, "--until", "soon")).rc == 2
