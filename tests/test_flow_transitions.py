"""Flow control's scripts (SPEC §2a) one at a time against the real Redis, in the manner of
tests/test_transitions.py: the test plays the API, the executor and the manager by hand through
stagewise.storage.calls, and reads the outcome back.  Allowed steps end where they should;
refused ones write nothing.

debounce (create.lua): a key's IDLE task is replaced in one step; limits: limit_acquire,
hold, unblock, limit_release, permit_check, limit_recheck, outbox_done, limit_pause, app_pause.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from stagewise.config import Settings
from stagewise.errors import RpcError
from stagewise.keys import Keys, debounce_partition, member, partition_of
from stagewise.manager.store import Store, view
from stagewise.models import parse_task
from stagewise.storage import calls
from tests.helpers import wait_for
from tests.test_transitions import APP, call, check, snapshot

DEB = {"key": "d:{{ kws.user }}", "period": 30}


@pytest.fixture
def store(r: Any, redis_url: str, namespace: str) -> Store:
    return Store(r, Settings(redis_url=redis_url, namespace=namespace))


@pytest.fixture
def k(namespace: str) -> Keys:
    return Keys(namespace, 0)


async def dcreate(store: Store, debounce: dict[str, Any] | None = None, **doc: Any) -> dict[str, Any]:
    doc.setdefault("app", APP)
    doc.setdefault("commands", [call()])
    doc.setdefault("kws", {"user": "u1"})
    return view(await store.create(parse_task({**doc, "debounce": debounce or DEB})))


async def server_now(r: Any) -> float:
    sec, usec = await r.time()
    return float(sec + usec / 1e6)


# =========================================================================== debounce


async def test_a_create_of_the_key_replaces_its_idle_task(store: Store, r: Any, k: Keys) -> None:
    first = await dcreate(store, kws={"user": "u1", "n": 1}, tags=["a"], group="g1")
    t0 = await server_now(r)
    assert first["status"] == "IDLE" and t0 + 29 < first["next_run"] <= t0 + 30
    assert await r.hget(k.debounce(), "d:u1") == first["id"]
    second = await dcreate(
        store, kws={"user": "u1", "n": 2}, commands=[call("b"), call("c")], tags=["b"], group="g2"
    )
    assert second["id"] == first["id"] and second["created"] == first["created"]
    assert second["kws"] == {"user": "u1", "n": 2} and second["stages"] == 2 and second["tags"] == ["b"]
    assert second["next_run"] > first["next_run"]
    v = await check(store, r, k, first["id"], "IDLE", kws={"user": "u1", "n": 2})
    assert v == {**second, "updated": v["updated"]}
    # the old document's indexes and due entry went with it
    assert await r.zscore(k.idx_tag("a"), first["id"]) is None
    assert await r.zscore(k.idx_group("g1"), first["id"]) is None
    assert await r.zscore(k.idx_tag("b"), first["id"]) is not None
    assert await r.zscore(k.due(), member(APP, first["id"])) == pytest.approx(second["next_run"])
    assert await r.zcard(k.idx_status("IDLE")) == 1  # one task, not two
    # another key is another task
    other = await dcreate(store, kws={"user": "u2"})
    assert other["id"] != first["id"]


async def test_max_wait_bounds_the_delay_from_the_first_create(store: Store, r: Any, k: Keys) -> None:
    deb = {"key": "d:{{ kws.user }}", "period": 30, "max_wait": 40}
    first = await dcreate(store, deb)
    h = await r.hgetall(k.task(first["id"]))
    again = await dcreate(store, deb)
    assert again["id"] == first["id"]
    assert again["next_run"] == pytest.approx(float(h["debounce_first"]) + 40)


async def test_max_wait_over_queues_the_task_at_once(store: Store, r: Any, k: Keys) -> None:
    deb = {"key": "d:{{ kws.user }}", "period": 0.2, "max_wait": 0.2}
    first = await dcreate(store, deb)
    first_at = float(await r.hget(k.task(first["id"]), "debounce_first"))

    async def over() -> bool:  # max_wait passes (no manager runs here to queue it)
        return await server_now(r) > first_at + 0.2

    await wait_for(over, timeout=5, what="max_wait to pass")
    again = await dcreate(store, deb, kws={"user": "u1", "last": True})
    assert again["id"] == first["id"] and again["status"] == "QUEUED" and again["kws"]["last"] is True
    assert await r.hget(k.debounce(), "d:u1") is None  # it started: the key holds nothing now
    third = await dcreate(store, deb)
    assert third["id"] != first["id"] and third["status"] == "IDLE"


async def test_a_task_that_left_idle_is_not_replaced(store: Store, r: Any, k: Keys) -> None:
    first = await dcreate(store)
    [res] = await store.batch("cancel", [first["id"]], dry_run=False)
    assert res["status"] == "CANCELED"
    assert await r.hget(k.debounce(), "d:u1") is None
    second = await dcreate(store)
    assert second["id"] != first["id"] and second["status"] == "IDLE"
    # queued by the manager: the same (set_status drops the mapping on the way out of IDLE)
    await r.zadd(k.due(), {member(APP, second["id"]): 0})
    assert (await store.scripts.run(calls.wake(k, member(APP, second["id"])))).status is None
    assert (await store.get(second["id"]))["status"] == "QUEUED"
    assert await r.hget(k.debounce(), "d:u1") is None
    third = await dcreate(store)
    assert third["id"] not in (first["id"], second["id"])


async def test_a_replace_may_move_the_task_to_another_app(store: Store, r: Any, k: Keys) -> None:
    first = await dcreate(store)
    second = await dcreate(store, app="other", priority=3)
    assert second["id"] == first["id"] and second["app"] == "other"
    assert await r.zscore(k.idx_app_status(APP, "IDLE"), first["id"]) is None
    assert await r.zscore(k.idx_app_status("other", "IDLE"), first["id"]) is not None
    assert await r.zscore(k.due(), member("other", first["id"])) is not None
    assert await r.zscore(k.due(), member(APP, first["id"])) is None
    assert "other:3" in await r.smembers(k.apps())


async def test_a_refused_debounced_create_writes_nothing(store: Store, r: Any, k: Keys) -> None:
    """A first create of the key whose id exists (on_conflict error) is refused as any create,
    and the key holds no task after it."""
    tid = (await dcreate(store, {"key": "x", "period": 5}, id="taken"))["id"]
    await store.batch("cancel", [tid], dry_run=False)
    before = await snapshot(r, k, tid)
    with pytest.raises(RpcError) as e:
        await dcreate(store, id="taken")
    assert e.value.code == 1002
    assert await snapshot(r, k, tid) == before
    assert await r.hlen(k.debounce()) == 0


@pytest.mark.parametrize("given", [False, True])
async def test_a_debounced_task_lives_in_its_keys_partition(
    r: Any, redis_url: str, namespace: str, given: bool
) -> None:
    store = Store(r, Settings(redis_url=redis_url, namespace=namespace, partitions=4))
    target = debounce_partition("d:u1", 4)
    if not given:
        for _ in range(8):
            v = await dcreate(store, kws={"user": "u1"})
            assert partition_of(v["id"], 4) == target
        return
    elsewhere = next(f"t{i}" for i in range(100) if partition_of(f"t{i}", 4) != target)
    with pytest.raises(RpcError) as e:
        await dcreate(store, id=elsewhere)
    assert e.value.code == -32602 and e.value.data["field"] == "task.id"
    fits = next(f"t{i}" for i in range(100) if partition_of(f"t{i}", 4) == target)
    assert (await dcreate(store, id=fits))["id"] == fits
    assert await r.hget(Keys(namespace, target).debounce(), "d:u1") == fits


def test_debounce_is_checked_at_parse() -> None:
    for doc, field in [
        ({"debounce": {"key": "k", "period": 0}}, "task.debounce.period"),
        ({"debounce": {"key": "{{ kws.nope }}", "period": 1}}, "task.debounce.key"),
        ({"debounce": {"key": "k", "period": 1}, "cron": "* * * * *"}, "task.debounce"),
        ({"debounce": {"key": "k"}}, "task.debounce.period"),
    ]:
        with pytest.raises(RpcError) as e:
            parse_task({"app": APP, "commands": [call()], **doc})
        assert e.value.data["field"] == field, (doc, e.value.data)


# =========================================================================== limits
# The test plays the executor's two steps (stagewise/storage/limits.py): limit_acquire.lua in
# the key's partition, then claim.lua with the permit; a task held back is parked (hold.lua).


@pytest.fixture
async def raw(redis_url: str) -> Any:
    import redis.asyncio as aredis

    c = aredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def everything(raw: Any, namespace: str) -> dict[bytes, bytes]:
    """Every key of the namespace, dumped: a step that writes nothing leaves this as it was."""
    out = {}
    async for key in raw.scan_iter(match=f"{{{namespace}:*"):
        out[key] = await raw.dump(key)
    return out


def lim_doc(tid: str, conc: int = 1) -> dict[str, Any]:
    return {"id": tid, "app": APP, "commands": [call()], "limits": [{"key": "L", "concurrency": conc}]}


async def read_hint(r: Any, k: Keys, consumer: str = "ex1") -> tuple[str, dict[str, str]]:
    got = await r.xreadgroup("executors", consumer, {k.stream(APP): ">"}, count=1)
    [(_, [(entry_id, fields)])] = got
    return entry_id, fields


async def acquire(store: Store, k: Keys, hint: dict[str, str], lease: str) -> str | None:
    """limit_acquire.lua for each key of the hint: None (granted) or the key holding it back;
    what it woke is put back as the executor would."""
    verdicts, woken = await store.limits.acquire(
        [(k, APP, hint["t"], hint["j"], lease, json.loads(hint["l"]), hint["o"])]
    )
    await store.limits.wake(woken)
    return verdicts[0]


async def limited_claim(store: Store, r: Any, k: Keys, tid: str, lease: str) -> calls.Claim:
    await store.scripts.run(calls.ping(k, "ex1", ["app", APP, "host", "t", "pid", 1]))
    entry_id, hint = await read_hint(r, k)
    assert hint["t"] == tid
    assert await acquire(store, k, hint, lease) is None
    return await store.scripts.run(
        calls.claim(k, k.stream(APP), entry_id, tid, hint["j"], "ex1", lease, permits=True)
    )


async def held(store: Store, r: Any, k: Keys, tid: str, lease: str) -> None:
    entry_id, hint = await read_hint(r, k)
    assert hint["t"] == tid
    assert await acquire(store, k, hint, lease) == "L"
    res = await store.scripts.run(calls.hold(k, k.stream(APP), entry_id, tid, hint["j"], "L"))
    assert res.code == "HELD"


@pytest.mark.parametrize("op", ["cancel", "unlock"])
async def test_a_slot_freed_by_the_api_goes_to_the_held_task_at_once(
    store: Store, r: Any, k: Keys, op: str
) -> None:
    """cancel / unlock of a run that holds a slot: when the call returns, its permit is given
    back, the outbox is empty and the task held by the key is back on its stream (no wait for
    the manager's limits role, which is not running here)."""
    await store.create(parse_task(lim_doc("a")))
    await store.create(parse_task(lim_doc("b")))
    assert (await limited_claim(store, r, k, "a", "lease-a")).code == "OK"
    await held(store, r, k, "b", "lease-b")
    assert (await store.get("b"))["blocked_by"] == "L"
    assert (await store.limits.get("L", 0))["running"] == 1
    [res] = await store.batch(op, ["a"], dry_run=False)
    assert res["changed"]
    assert await r.zcard(k.limit_outbox()) == 0
    assert await store.limits.get("L", 0) == {"key": "L", "running": 0, "held": 1, "paused_until": None}
    v = await store.get("b")
    assert v["status"] == "QUEUED" and v["blocked_by"] is None  # back on its stream
    got = await r.xreadgroup("executors", "ex1", {k.stream(APP): ">"}, count=10)
    assert "b" in [f["t"] for _, f in got[0][1]]  # (unlock put `a` back on its stream too)


async def test_refused_limit_steps_write_nothing(
    store: Store, r: Any, k: Keys, raw: Any, namespace: str
) -> None:
    """Each refusal of the flow-control scripts, one after the other, leaves every key of the
    namespace as it was."""
    await store.create(parse_task(lim_doc("a")))
    await store.create(parse_task(lim_doc("b")))
    assert (await limited_claim(store, r, k, "a", "lease-a")).code == "OK"
    await held(store, r, k, "b", "lease-b")
    await store.scripts.run(calls.ping(k, "ex1", ["app", APP, "host", "t", "pid", 1]))
    jb = (await store.raw("b") or {})["job_id"]
    before = await everything(raw, namespace)
    s = store.scripts
    refusals: list[tuple[calls.Call[Any], Any]] = [
        # a replay of a granted permit: granted, nothing written twice
        (
            calls.limit_acquire(k, "L", f"0|{APP}/a|x", f"0|{APP}/a|lease-a", ["L", 1, 0, 1.0], "1", 5),
            calls.Acquired("OK", []),
        ),
        # a claim without permits of a task with limits: LIMITED (the executor asks first)
        (calls.claim(k, k.stream(APP), "0-1", "b", jb, "ex1", "lease-c"), "LIMITED"),
        # a claim of a stale run (another job id)
        (calls.claim(k, k.stream(APP), "0-1", "b", "nope", "ex1", "lease-c", permits=True), "STALE"),
        # a key woke a task that is no longer held for that run
        (calls.unblock(k, "a", "other-job"), calls.Code("STALE")),
        # the run of a permit still holds the task: LIVE, nothing revoked
        (calls.permit_check(k, "a", "lease-a"), calls.Code("LIVE")),
        # a recheck of a permit already given back
        (calls.limit_recheck(k, "L|0|demo/zz|gone", 5), calls.Code("GONE")),
        # an outbox entry another drainer removed
        (calls.outbox_done(k, "demo/zz|gone|L"), calls.Code("GONE")),
        # a release of what the key no longer holds: nothing to give back, nothing to wake
        (calls.limit_release(k, "L", [f"0|{APP}/zz|gone"], [f"0|{APP}/zz|gone"]), []),
    ]
    for c, expected in refusals:
        got = await s.run(c)
        assert (got.code if isinstance(expected, str) else got) == expected, (c.script, got)
        assert await everything(raw, namespace) == before, c.script


async def test_claims_of_a_paused_app_and_a_revoked_lease_write_nothing(
    store: Store, r: Any, k: Keys, raw: Any, namespace: str
) -> None:
    await store.create(parse_task(lim_doc("a")))
    await store.scripts.run(calls.ping(k, "ex1", ["app", APP, "host", "t", "pid", 1]))
    entry_id, hint = await read_hint(r, k)
    assert await acquire(store, k, hint, "lease-a") is None
    # the manager found the permit's claim late: permit_check revokes the lease
    assert (await store.scripts.run(calls.permit_check(k, "a", "lease-a"))).code == "GONE"
    before = await everything(raw, namespace)
    c = calls.claim(k, k.stream(APP), entry_id, "a", hint["j"], "ex1", "lease-a", permits=True)
    assert (await store.scripts.run(c)).code == "REVOKED"
    assert await everything(raw, namespace) == before
    await store.pause_app(APP, 4e9)
    before = await everything(raw, namespace)
    c = calls.claim(k, k.stream(APP), entry_id, "a", hint["j"], "ex1", "lease-b", permits=True)
    assert (await store.scripts.run(c)).code == "PAUSED"
    assert await everything(raw, namespace) == before


async def test_a_permit_whose_claim_never_came_is_given_back(store: Store, r: Any, k: Keys) -> None:
    """The executor died between limit_acquire and claim: the manager's check revokes the
    lease and gives the slot to the held task."""
    await store.create(parse_task(lim_doc("a")))
    await store.create(parse_task(lim_doc("b")))
    _, hint = await read_hint(r, k)
    assert await acquire(store, k, hint, "lease-a") is None  # ... and the executor dies
    await held(store, r, k, "b", "lease-b")
    n = await store.limits.check_permits(k, float("inf"))
    assert n == 1
    assert await r.zscore(k.revoked(), "lease-a") is not None
    v = await store.get("b")
    assert v["status"] == "QUEUED" and v["blocked_by"] is None
