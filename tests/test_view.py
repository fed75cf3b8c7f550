"""The served view: RV stamping, resume semantics, eviction and 410."""

from __future__ import annotations

import orjson
import pytest

from cache.view import Expired, View
from kubeapi.resources import ENDPOINTSLICES, SERVICES


def svc(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv), "labels": labels}}


def test_published_objects_carry_the_event_rv_even_when_synthesized() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 5)], 10)
    v.publish([("MODIFIED", svc("a", 5))], 12, synthetic=True)
    assert v.objects["default/a"].obj["metadata"]["resourceVersion"] == "12"
    line = orjson.loads(v.read(0)[0].line)
    assert line["type"] == "MODIFIED"
    assert line["object"]["kind"] == "Service" and line["object"]["apiVersion"] == "v1"
    assert line["object"]["metadata"]["resourceVersion"] == "12"


def test_rv_never_goes_backwards_and_a_raised_event_counts_as_synthetic() -> None:
    v = View(SERVICES)
    v.reset([], 10)
    v.publish([("ADDED", svc("a", 20))], 20, synthetic=True)
    v.publish([("ADDED", svc("b", 15))], 15, synthetic=False)  # a late upstream event
    evs = v.read(0)
    assert [e.rv for e in evs] == [20, 20]
    assert evs[1].synthetic, "a client resuming at 20 must still get it"
    assert v.cursor_after(20) == evs[0].seq


def test_resume_skips_the_upstream_event_at_the_rv_but_replays_synthesized_ones() -> None:
    v = View(ENDPOINTSLICES)
    v.reset([], 10)
    v.publish([("ADDED", svc("up", 11))], 11, synthetic=False)
    v.publish([("MODIFIED", svc("x", 3)), ("MODIFIED", svc("y", 3))], 11, synthetic=True)
    v.publish([("ADDED", svc("later", 12))], 12, synthetic=False)
    evs = v.read(v.cursor_after(11))
    assert [e.entry.obj["metadata"]["name"] for e in evs] == ["x", "y", "later"]
    assert [e.entry.obj["metadata"]["name"] for e in v.read(v.cursor_after(10))] == ["up", "x", "y", "later"]
    assert v.read(v.cursor_after(12)) == []


def test_deleted_carries_the_last_served_state_with_the_new_rv() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 5, app="x")], 10)
    v.publish([("DELETED", {"metadata": {"name": "a", "namespace": "default", "resourceVersion": "11"}})], 11,
              synthetic=False)
    ev = v.read(0)[0]
    assert ev.type == "DELETED"
    assert ev.entry.obj["metadata"]["labels"] == {"app": "x"}
    assert ev.entry.obj["metadata"]["resourceVersion"] == "11"
    assert "default/a" not in v.objects


def test_resume_from_before_the_first_sync_is_expired() -> None:
    v = View(SERVICES)
    v.reset([], 100)
    with pytest.raises(Expired):
        v.cursor_after(99)
    assert v.cursor_after(100) == v.head()


def test_eviction_expires_old_cursors_and_rvs_in_whole_groups() -> None:
    v = View(SERVICES, max_events=3)
    v.reset([], 1)
    v.publish([("ADDED", svc("a", 2))], 2, synthetic=False)
    v.publish([("MODIFIED", svc("a", 2)), ("MODIFIED", svc("a", 2))], 3, synthetic=True)
    v.publish([("ADDED", svc("b", 4))], 4, synthetic=False)  # 4 events > 3: evicts rv 2
    with pytest.raises(Expired):
        v.cursor_after(1)
    assert v.cursor_after(2) == v.read(v.cursor_after(2))[0].seq
    v.publish([("ADDED", svc("c", 5))], 5, synthetic=False)  # evicts the synthetic group at 3
    with pytest.raises(Expired):
        v.cursor_after(3)  # half of the group at 3 would be missing
    with pytest.raises(Expired):
        v.read(0)
    assert [e.rv for e in v.read(v.cursor_after(4))] == [5]


async def test_wait_returns_when_an_event_arrives() -> None:
    import asyncio

    v = View(SERVICES)
    v.reset([], 1)
    cursor = v.head()
    waiter = asyncio.create_task(v.wait(cursor, 5))
    await asyncio.sleep(0.01)
    v.publish([("ADDED", svc("a", 2))], 2, synthetic=False)
    await asyncio.wait_for(waiter, 1)
    assert len(v.read(cursor)) == 1


async def test_wait_for_rv_times_out_when_the_view_stays_behind() -> None:
    v = View(SERVICES)
    v.reset([], 1)
    assert not await v.wait_for_rv(5, 0.05)
    v.advance(5)
    assert await v.wait_for_rv(5, 0.05)
