"""The web dashboard (GET /) in a real headless chromium, against a real manager and executor.

Set STAGEWISE_SCREENSHOT_DIR to a directory to have the tests save dashboard.png (the task list),
dashboard-home.png, dashboard-task.png (a task page), dashboard-children.png (a parent's children)
and dashboard-limits.png (the Limits view) there; that is how docs/ gets its screenshots.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect

from tests.helpers import add_task, idle_app_task, task_until, uid, wait_for

CHROMIUM = "/usr/bin/chromium"
# without the background-networking flags chromium stalls on a network that cannot reach its services
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dash-secret-1"
WAIT = 10_000  # ms, for every expect below

HOSTILE = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>"  # no quote: JSON keeps it


def _order(tid: str) -> dict[str, Any]:
    """A task that runs two calls, then waits at two message stages in a row."""
    return {
        "id": tid,
        "app": "demo",
        "tags": ["dash", "web"],
        "description": f"order with a hostile description {HOSTILE}",
        "kws": {"x": 40, "note": HOSTILE},
        "commands": [
            {"method": "demo.add", "params": {"a": "{{ kws.x }}", "b": 2}},
            {"method": "demo.echo", "params": {"value": {"total": "{{ results.0 }}", "html": HOSTILE}}},
            {"message": {"timeout": 3600}},
            {"message": {}},
            {"method": "demo.charge", "params": {"amount": "{{ results.0 }}"}},
        ],
    }


async def _shot(page: Any, name: str) -> None:
    out = os.environ.get("STAGEWISE_SCREENSHOT_DIR")
    if out:  # playwright creates the directory
        await page.screenshot(path=str(Path(out) / name), full_page=True)


async def test_dashboard_in_chromium(daemons: Any) -> None:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing (`make test` installs it with apt)", pytrace=False)
    m = await daemons.manager(STAGEWISE_API_TOKENS=f"{TOKEN},other-token", STAGEWISE_STATS_EVERY="0.5")
    await daemons.executor("examples.app:app", concurrency=4, STAGEWISE_GRACE="1")
    await wait_for(lambda: m.rpc("executors.list"), timeout=15, what="the demo executor to register")

    order, other = uid("order"), uid("parked")
    await m.rpc("tasks.create", {"task": _order(order)})
    await m.rpc("tasks.create", {"task": {**_order(other), "tags": ["dash"], "description": None}})
    done = (await m.rpc("tasks.create", {"task": add_task(uid("sum"), tags=["dash"])}))["id"]
    failed = uid("broken")
    await m.rpc(
        "tasks.create",
        {
            "task": {
                "id": failed,
                "app": "demo",
                "commands": [{"method": "demo.fail", "params": {"message": "no"}}],
            }
        },
    )
    for n in range(2):
        await m.rpc("tasks.create", {"task": idle_app_task(uid(f"report{n}"), "reports", tags=["nightly"])})
    for tid, status in [(order, "WAITING"), (other, "WAITING"), (done, "FINISHED"), (failed, "FAILED")]:
        await task_until(m, tid, lambda v, s=status: v["status"] == s, what=f"{tid} {status}")

    # the shell is public and holds no data; everything else still wants the token
    s = daemons.session()
    async with s.get(f"{m.url}/") as resp:
        shell = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert order not in shell and "demo" not in shell
    for asset in ("/ui/dashboard.js", "/ui/dashboard.css"):
        async with s.get(f"{m.url}{asset}") as resp:
            assert resp.status == 200 and resp.headers["X-Content-Type-Options"] == "nosniff"
    async with s.get(f"{m.url}/tasks/{order}") as resp:
        assert resp.status == 401
    async with s.post(f"{m.url}/") as resp:
        assert resp.status == 401
    status, _ = await m.raw('{"jsonrpc": "2.0", "id": 1, "method": "tasks.list"}')
    assert status == 401

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: d.accept())  # the confirm() before cancel

            # sign in: a wrong token is refused, the right one opens the overview
            await page.goto(f"{m.url}/")
            await page.fill("#token", "wrong")
            await page.click("#login button[type=submit]")
            await expect(page.locator("#login")).to_contain_text("refused", timeout=WAIT)
            await page.fill("#token", TOKEN)
            await page.click("#login button[type=submit]")
            # the overview: each app's counts, and the last hour's charts (samples every 0.5 s
            # here: the page's own refresh brings the lines in)
            await expect(page.locator('#apps tr[data-app="demo"]')).to_be_visible(timeout=WAIT)
            await expect(page.locator('#apps tr[data-app="demo"] td').nth(6)).to_have_text("1")
            await expect(
                page.locator("#chart-finished polyline, #chart-finished circle").first
            ).to_be_attached(timeout=WAIT + 12_000)
            await expect(page.locator("#chart-p50 figcaption")).to_have_text("Stage duration p50, per method")
            await _shot(page, "dashboard-home.png")
            await page.click("nav a[data-nav=tasks]")
            rows = page.locator("#tasks tbody tr[data-id]")
            await expect(rows).to_have_count(6, timeout=WAIT)
            await expect(page.locator(f'#tasks tr[data-id="{failed}"]')).to_contain_text("STAGE_ERROR")
            await expect(page.locator("#info")).to_contain_text("namespace t", timeout=WAIT)

            # filters: app, then a status, then tags, then paging one task at a time
            table = page.locator("#tasks")
            await page.fill("#filters input[name=app]", "demo")
            await page.click("#apply")
            await expect(table).to_have_attribute("data-query", "app=demo", timeout=WAIT)
            await expect(rows).to_have_count(4)
            await page.select_option("#filters select[name=status]", "WAITING")
            await page.click("#apply")
            await expect(table).to_have_attribute("data-query", "status=WAITING&app=demo", timeout=WAIT)
            await expect(rows).to_have_count(2)
            await page.fill("#filters input[name=max_results]", "1")
            await page.click("#apply")
            await expect(table).to_have_attribute("data-query", re.compile("max_results=1$"), timeout=WAIT)
            await expect(rows).to_have_count(1)
            first = await rows.first.get_attribute("data-id")
            await page.click("#next-page")
            await expect(table).to_have_attribute("data-query", re.compile("cursor="), timeout=WAIT)
            await expect(rows).to_have_count(1)
            assert {first, await rows.first.get_attribute("data-id")} == {order, other}
            await page.click("#first-page")
            await expect(table).to_have_attribute("data-query", re.compile("max_results=1$"), timeout=WAIT)
            await page.fill("#filters input[name=max_results]", "50")
            await page.fill("#filters input[name=tags]", "dash, web")
            await page.click("#apply")
            await expect(table).to_have_attribute("data-query", re.compile("tags=dash"), timeout=WAIT)
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_have_attribute("data-id", order)

            # the task page: stages, results, attempts, live status
            await page.click(f'#tasks tr[data-id="{order}"] a')
            await expect(page).to_have_url(f"{m.url}/#/task/{order}", timeout=WAIT)
            await expect(page.locator("#task-status")).to_have_text("WAITING", timeout=WAIT)
            stages = page.locator("#stages tbody tr")
            await expect(stages).to_have_count(5)
            await expect(stages.nth(0)).to_contain_text("demo.add")
            await expect(stages.nth(0).locator("td").nth(4)).to_have_text("42")
            await expect(stages.nth(1).locator("td").nth(4)).to_contain_text(HOSTILE)  # shown, not run
            await expect(stages.nth(2)).to_contain_text("message")
            await expect(stages.nth(2)).to_have_class("current")
            await expect(page.locator(".description")).to_contain_text(HOSTILE)
            await expect(page.locator("#attempts tbody tr")).to_have_count(2)
            await expect(page.locator("#btn-restart")).to_be_disabled()
            # the timeline: the run's two attempts as bars, and what the task waits for now
            await expect(page.locator("#timeline .tl-row")).to_have_count(2)
            await expect(page.locator("#timeline .tl-bar").first).to_have_attribute("data-outcome", "ok")
            await expect(page.locator("#wait-note")).to_contain_text(f"stagewise task send {order}")
            await expect(page.locator("#no-executor")).to_be_hidden()

            # a message sent behind the page's back shows up by itself (the page polls)
            await m.rpc("tasks.send", {"id": order, "data": {"approved": True}})
            await expect(stages.nth(2).locator("td").nth(4)).to_contain_text('"approved": true', timeout=WAIT)
            await expect(stages.nth(3)).to_have_class("current", timeout=WAIT)
            await _shot(page, "dashboard-task.png")

            # cancel through the page: the status turns CANCELED and the polling stops
            await page.click("#btn-cancel")
            await expect(page.locator("#task-status")).to_have_text("CANCELED", timeout=WAIT)
            await expect(page.locator("#live")).to_have_text("final")
            await expect(page.locator("#action-note")).to_contain_text("now CANCELED")
            await expect(page.locator("#btn-restart")).to_be_enabled()
            assert (await m.rpc("tasks.status", {"id": order}))["status"] == "CANCELED"

            # the executors page lists the running executor
            await page.click("nav a[data-nav=executors]")
            ex_rows = page.locator("#executors tbody tr[data-id]")
            await expect(ex_rows).to_have_count(1, timeout=WAIT)
            await expect(ex_rows.first).to_contain_text("demo")

            await page.click("nav a[data-nav=tasks]")
            await expect(rows).to_have_count(6, timeout=WAIT)
            await expect(page.locator(f'#tasks tr[data-id="{order}"] .badge')).to_have_text("CANCELED")
            await _shot(page, "dashboard.png")

            # a failed task's page shows its handler's traceback, as text
            await page.click(f'#tasks tr[data-id="{failed}"] a')
            await expect(page.locator("#task-status")).to_have_text("FAILED", timeout=WAIT)
            await expect(page.locator("#task-traceback")).to_contain_text("Traceback (most recent call last)")
            await expect(page.locator("#task-traceback")).to_contain_text("RuntimeError")
            await expect(page.locator("#timeline .tl-bar").last).to_have_attribute("data-outcome", "error")

            # the list refreshes by itself, and a task is found by its id
            await page.click("nav a[data-nav=tasks]")
            await expect(rows).to_have_count(6, timeout=WAIT)
            stranded = uid("nobody")
            await m.rpc(
                "tasks.create", {"task": {"id": stranded, "app": "nobody", "commands": [{"method": "x.y"}]}}
            )
            await expect(rows).to_have_count(7, timeout=WAIT)
            await page.fill("#goto-id", stranded)
            await page.click("#goto button[type=submit]")
            await expect(page).to_have_url(f"{m.url}/#/task/{stranded}", timeout=WAIT)
            await expect(page.locator("#task-status")).to_have_text("QUEUED", timeout=WAIT)
            # queued work of an app that no live executor serves: the page says so
            await expect(page.locator("#no-executor")).to_contain_text("No live executor serves app nobody")

            assert await page.evaluate("window.__xss") is None
            assert errors == []
        finally:
            await browser.close()


async def test_dashboard_shows_a_parents_children(daemons: Any) -> None:
    """A parent at a children stage: its page counts its children by status, links each child
    and the list filtered by parent; a child's page links its parent."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing (`make test` installs it with apt)", pytrace=False)
    m = await daemons.manager()
    await daemons.executor("examples.app:app", concurrency=4)
    pid = uid("fan")
    kids = [
        {"app": "demo", "commands": [{"method": "demo.add", "params": {"a": 1, "b": 1}}]},
        {"app": "demo", "commands": [{"message": {}}]},
    ]
    task = {"id": pid, "app": "demo", "commands": [{"children": {"tasks": kids}}]}
    await m.rpc("tasks.create", {"task": task})
    await task_until(m, f"{pid}.0.0", lambda v: v["status"] == "FINISHED", what="the first child")
    await task_until(m, f"{pid}.0.1", lambda v: v["status"] == "WAITING", what="the second child")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{m.url}/#/task/{pid}")
            await expect(page.locator("#children")).to_contain_text("1 of 2 ended", timeout=WAIT)
            await expect(page.locator("#children .child-count")).to_have_count(2)
            await expect(page.locator("#wait-note")).to_contain_text("Waiting for its children: 1 of 2 ended")
            await expect(page.locator("#stages .kind-children")).to_have_text("children")
            await page.click("#children-links summary")
            await expect(page.locator("#children a.child")).to_have_text([f"{pid}.0.0", f"{pid}.0.1"])
            await m.rpc("tasks.send", {"id": f"{pid}.0.1", "data": "ok"})
            await expect(page.locator("#children")).to_contain_text("2 of 2 ended", timeout=WAIT)
            await expect(page.locator("#children-links")).to_have_attribute("open", "")  # kept open
            # a section the task does not have (no description here) is left out, not written "null"
            stray = "[...document.querySelector('#task-body').childNodes].filter(n => n.nodeType === 3)"
            assert await page.evaluate(f"{stray}.map(n => n.textContent)") == []
            await _shot(page, "dashboard-children.png")
            await page.click("#children a.child >> nth=1")
            await expect(page.locator("#parent-link")).to_have_text(f"{pid} (stage 0)", timeout=WAIT)
            await page.click("#parent-link")
            await page.click("#children-list")
            await expect(page.locator("#tasks tbody tr")).to_have_count(2, timeout=WAIT)
            assert await page.input_value("#filters input[name=parent]") == pid
            assert errors == []
        finally:
            await browser.close()


async def test_dashboard_flow_control(daemons: Any) -> None:
    """Flow control in the dashboard: a task held back by a limit key says so in the list and on
    its page, the Limits view lists the key with its running and held counts, and an app is
    paused and resumed from the overview."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing (`make test` installs it with apt)", pytrace=False)
    m = await daemons.manager()
    await daemons.executor("tests.limits_app:app", concurrency=4)
    key = "c:dash"

    def task(tid: str) -> dict[str, Any]:
        return {"id": tid, "app": "lim", "commands": [{"method": "lim.work", "params": {"key": "dash", "ms": 60_000}}],
                "limits": [{"key": key, "concurrency": 1}]}  # fmt: skip

    running, held = uid("run"), uid("held")
    await m.rpc("tasks.create", {"task": task(running)})
    await task_until(m, running, lambda v: v["status"] == "RUNNING", what="the first task running")
    await m.rpc("tasks.create", {"task": task(held)})
    await task_until(m, held, lambda v: v["blocked_by"] == key, what="the second task held back")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: d.accept())  # the confirm() before a pause

            await page.goto(f"{m.url}/#/tasks")
            row = page.locator(f'#tasks tr[data-id="{held}"]')
            await expect(row.locator(".held")).to_contain_text(f"held by {key}", timeout=WAIT)
            await expect(page.locator(f'#tasks tr[data-id="{running}"] .held')).to_have_count(0)
            await row.locator("td.id a").click()
            await expect(page.locator("#task-status")).to_have_text("QUEUED", timeout=WAIT)
            await expect(page.locator(".summary")).to_contain_text(f"Held by held by {key}")
            await expect(page.locator(".summary")).to_contain_text("1 at once")

            await page.locator(".summary .held a").click()  # to the key in the Limits view
            limit = page.locator(f'#limits tr[data-key="{key}"]')
            await expect(limit).to_have_class("current", timeout=WAIT)
            await expect(limit.locator("td").nth(1)).to_have_text("1")
            await expect(limit.locator("td").nth(2)).to_have_text("1")
            await page.click("nav a[data-nav=limits]")
            await expect(page.locator("#limits tbody tr[data-key]")).to_have_count(1, timeout=WAIT)
            await _shot(page, "dashboard-limits.png")

            # pause the app from the overview, then resume it
            await page.click("nav a[data-nav=overview]")
            app_row = page.locator('#apps tr[data-app="lim"]')
            await app_row.locator("button.pause-app").click(timeout=WAIT)
            await expect(app_row.locator("td.paused")).to_contain_text("until", timeout=WAIT)
            [lim] = [a for a in await m.rpc("apps.list") if a["app"] == "lim"]
            assert lim["paused_until"] is not None
            await app_row.locator("button.resume-app").click(timeout=WAIT)
            await expect(app_row.locator("button.pause-app")).to_be_visible(timeout=WAIT)
            [lim] = [a for a in await m.rpc("apps.list") if a["app"] == "lim"]
            assert lim["paused_until"] is None
            assert errors == []
        finally:
            await browser.close()
    await m.rpc("tasks.cancel", {"ids": [running, held], "dry_run": False})
