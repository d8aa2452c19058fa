"""Flow control's scripts (SPEC §2a) one at a time against the real Redis, in the manner of
tests/test_transitions.py: the test plays the API, the executor and the manager by hand through
stagewise.storage.calls, and reads the outcome back.  Allowed steps end where they should;
refused ones write nothing.

debounce (create.lua): a key's IDLE task is replaced in one step; limits: limit_acquire,
hold, unblock, limit_release, permit_check, limit_recheck, outbox_done, limit_pause, app_pause.
"""

from __future__ import annotations

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
