"""The served view: RV stamping, resume semantics, eviction and 410."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from cache.view import BURST_EVENTS, Expired, HistoryBudget, View
from kubeapi.resources import ENDPOINTSLICES, SERVICES
from tests.support.fake_clock import FakeClock
from tests.support.waiting import one_loop_step


def svc(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv), "labels": labels}}


def test_published_objects_carry_the_event_rv_even_when_synthesized() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 5)], 10)
    v.publish([("MODIFIED", svc("a", 5))], 12)
    assert v.objects["default/a"].obj["metadata"]["resourceVersion"] == "12"
    line = orjson.loads(v.read(0)[0].line)
    assert line["type"] == "MODIFIED"
    assert line["object"]["kind"] == "Service" and line["object"]["apiVersion"] == "v1"
    assert line["object"]["metadata"]["resourceVersion"] == "12"


def test_rv_never_goes_backwards_and_a_raised_event_is_replayed_to_a_client_at_that_rv() -> None:
    v = View(SERVICES)
    v.reset([], 10)
    v.publish([("ADDED", svc("a", 20))], 20)
    v.publish([("ADDED", svc("b", 15))], 15)  # a late upstream event
    evs = v.read(0)
    assert [e.rv for e in evs] == [20, 20]
    assert evs[0].advanced and not evs[1].advanced
    # A client at 20 has seen "a" (the view reached 20 with it) but maybe not "b".
    assert v.cursor_after(20) == evs[1].seq


def test_resume_skips_the_upstream_event_at_the_rv_but_replays_synthesized_ones() -> None:
    v = View(ENDPOINTSLICES)
    v.reset([], 10)
    v.publish([("ADDED", svc("up", 11))], 11)
    v.publish([("MODIFIED", svc("x", 3)), ("MODIFIED", svc("y", 3))], 11)
    v.publish([("ADDED", svc("later", 12))], 12)
    evs = v.read(v.cursor_after(11))
    assert [e.fields["metadata"]["name"] for e in evs] == ["x", "y", "later"]
    assert [e.fields["metadata"]["name"] for e in v.read(v.cursor_after(10))] == ["up", "x", "y", "later"]
    assert v.read(v.cursor_after(12)) == []


def test_deleted_carries_the_last_served_state_with_the_new_rv() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 5, app="x")], 10)
    v.publish([("DELETED", {"metadata": {"name": "a", "namespace": "default", "resourceVersion": "11"}})], 11)
    ev = v.read(0)[0]
    assert ev.type == "DELETED"
    assert ev.object()["metadata"]["labels"] == {"app": "x"}
    assert ev.object()["metadata"]["resourceVersion"] == "11"
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
    v.publish([("ADDED", svc("a", 2))], 2)
    v.publish([("ADDED", svc("b", 3))], 3)
    v.publish([("MODIFIED", svc("a", 3)), ("MODIFIED", svc("b", 3))], 4)  # stamped 3 and 4
    # 4 events > 3: the group at 2 is gone.
    with pytest.raises(Expired):
        v.read(0)
    with pytest.raises(Expired):
        v.cursor_after(1)
    # The group at 2 held only the event that brought the view to 2: a client at 2 has it.
    assert [e.rv for e in v.read(v.cursor_after(2))] == [3, 3, 4]
    v.publish([("ADDED", svc("c", 5))], 5)  # evicts the group at 3, which a batch added to
    with pytest.raises(Expired):
        v.cursor_after(3)  # a client cut after the first event at 3 would miss the second
    assert [e.rv for e in v.read(v.cursor_after(4))] == [5]


def test_a_batch_is_stamped_with_the_views_rv_except_its_last_event_which_advances_the_view() -> None:
    v = View(ENDPOINTSLICES)
    v.reset([svc("x", 5), svc("y", 5)], 10)
    v.publish([("MODIFIED", svc("x", 5)), ("MODIFIED", svc("y", 5)), ("ADDED", svc("own", 12))], 12)
    evs = v.read(0)
    assert [(e.fields["metadata"]["name"], e.rv, e.advanced) for e in evs] == [
        ("x", 10, False), ("y", 10, False), ("own", 12, True)]
    assert [orjson.loads(e.line)["object"]["metadata"]["resourceVersion"] for e in evs] == ["10", "10", "12"]
    assert v.rv == 12


def test_a_client_that_listed_at_a_batch_rv_or_saw_the_whole_batch_gets_nothing_again() -> None:
    v = View(ENDPOINTSLICES)
    v.reset([svc("x", 5), svc("y", 5)], 10)
    v.publish([("MODIFIED", svc("x", 5)), ("MODIFIED", svc("y", 5)), ("ADDED", svc("own", 12))], 12)
    # Listed at 12 (or got the batch's last event at 12): nothing to replay.
    assert v.read(v.cursor_after(12)) == []
    # Listed at 10, before the batch: the whole batch.
    assert [e.fields["metadata"]["name"] for e in v.read(v.cursor_after(10))] == ["x", "y", "own"]


def test_a_client_cut_mid_batch_gets_the_rest_of_it() -> None:
    v = View(ENDPOINTSLICES)
    v.reset([svc("x", 5), svc("y", 5)], 10)
    v.publish([("MODIFIED", svc("x", 5)), ("MODIFIED", svc("y", 5)), ("ADDED", svc("own", 12))], 12)
    # Its last event was "x" at 10: it resumes from 10 and gets y and own (x again is harmless).
    names = [e.fields["metadata"]["name"] for e in v.read(v.cursor_after(10))]
    assert names[-2:] == ["y", "own"]


def test_a_batch_whose_deletion_is_of_an_unknown_object_advances_with_its_last_real_event() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 5)], 10)
    gone = {"metadata": {"name": "nope", "namespace": "default", "resourceVersion": "11"}}
    v.publish([("MODIFIED", svc("a", 11)), ("DELETED", gone)], 11)
    [ev] = v.read(0)
    assert ev.rv == 11 and ev.advanced
    assert v.read(v.cursor_after(11)) == []


def test_a_new_timeline_lowers_the_rv_ends_open_watches_and_refuses_rvs_it_cannot_vouch_for() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 5)], 100)
    v.publish([("ADDED", svc("b", 101))], 101)
    v.publish([("ADDED", svc("c", 110))], 110)
    open_cursor = v.head()
    v.load({"default/a": v.entry(svc("a", 5))}, 50, new_timeline=True)
    assert v.rv == 50 and list(v.objects) == ["default/a"]
    with pytest.raises(Expired):
        v.read(open_cursor)  # an open watch's next read: it gets 410
    assert v.read(v.cursor_after(50)) == []
    v.publish([("ADDED", svc("d", 101))], 101)  # the new timeline reuses 101
    v.advance(105)
    # RVs the view took on the new timeline resume normally (101 was taken on both: it cannot
    # tell them apart, and accepts it).
    assert v.read(v.cursor_after(101)) == []
    assert v.read(v.cursor_after(105)) == []
    for rv in (49, 51, 100, 104):
        # Never taken on the new timeline: 410, never silence or a replay from the wrong one.
        with pytest.raises(Expired):
            v.cursor_after(rv)
    v.publish([("ADDED", svc("e", 111))], 111)  # past the old timeline's highest RV
    assert v.read(v.cursor_after(111)) == []
    with pytest.raises(Expired):
        v.cursor_after(110)  # the old timeline's last RV: the new one never took it
    assert v.stats()["timelineResets"] == 1


def test_the_record_of_rvs_issued_since_a_new_timeline_is_bounded() -> None:
    v = View(SERVICES)
    v.reset([], 20_000)
    v.load({}, 1, new_timeline=True)
    for rv in range(2, 10_000):
        v.advance(rv)
    assert v.read(v.cursor_after(9_999)) == []
    with pytest.raises(Expired):
        v.cursor_after(2)  # forgotten: a 410 is always safe


def test_history_events_keep_the_previous_version_only_when_its_labels_differ() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 5, app="x")], 10)
    v.publish([("MODIFIED", {**svc("a", 11, app="x"), "spec": {"ports": [{"port": 80}]}})], 11)
    v.publish([("MODIFIED", svc("a", 12, app="y"))], 12)
    same, moved = v.read(0)
    # Nothing a selector reads changed: the superseded object is not pinned by the history.
    assert same.prev_fields is None and same.prev_raw is None
    assert moved.prev_fields == {"metadata": {"name": "a", "namespace": "default", "labels": {"app": "x"}}}
    assert moved.prev_raw is not None and orjson.loads(moved.prev_raw)["spec"] == {"ports": [{"port": 80}]}
    # The projection holds only what selectors read, and equal ones are shared between versions.
    assert set(moved.fields["metadata"]) == {"name", "namespace", "labels"}
    v.publish([("MODIFIED", {**svc("a", 13, app="y"), "spec": {"ports": []}})], 13)
    assert v.read(0)[2].fields is moved.fields


def test_service_projections_keep_the_selectable_spec_fields() -> None:
    v = View(SERVICES)
    v.reset([], 1)
    obj = {**svc("a", 2), "spec": {"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80}]}}
    v.publish([("ADDED", obj)], 2)
    assert v.read(0)[0].fields["spec"] == {"type": "NodePort", "clusterIP": "10.0.0.1"}


def test_views_share_one_history_budget_and_the_largest_history_gives_way() -> None:
    budget = HistoryBudget(1 << 20)
    busy, quiet = View(ENDPOINTSLICES, budget=budget), View(SERVICES, budget=budget)
    busy.reset([], 1)
    quiet.reset([], 1)
    quiet.publish([("ADDED", svc("q", 2))], 2)
    one_event = budget.used
    budget.max_bytes = 3 * one_event + one_event // 2  # room for three events of this size
    for rv in range(3, 8):
        busy.publish([("ADDED", svc(f"b{rv}", rv))], rv)
    assert budget.used <= budget.max_bytes
    assert budget.used == busy.history_bytes + quiet.history_bytes
    # The busy view evicted its own oldest events and left the quiet view's one in place.
    assert quiet.history_depth() == 1
    assert [e.rv for e in busy.read(busy.cursor_after(5))] == [6, 7]
    with pytest.raises(Expired):
        busy.cursor_after(4)
    busy.reset([], 8)  # a reset returns its history's bytes to the budget
    assert budget.used == quiet.history_bytes


async def test_wait_returns_when_an_event_arrives() -> None:
    v = View(SERVICES)
    v.reset([], 1)
    cursor = v.head()
    waiter = asyncio.create_task(v.wait(cursor, 5))
    await one_loop_step()  # the waiter is waiting
    assert not waiter.done()
    v.publish([("ADDED", svc("a", 2))], 2)
    await asyncio.wait_for(waiter, 1)
    assert len(v.read(cursor)) == 1


async def test_wait_for_rv_times_out_when_the_view_stays_behind() -> None:
    v = View(SERVICES)
    v.reset([], 1)
    assert not await v.wait_for_rv(5, 0.05)
    v.advance(5)
    assert await v.wait_for_rv(5, 0.05)


def view_on(clock: FakeClock, wake_interval: float) -> View:
    """A view whose wake-ups run on ``clock``: time passes only when the test advances it."""
    return View(SERVICES, wake_interval=wake_interval, timers=lambda: clock)


async def start_waiting(v: View) -> asyncio.Task[None]:
    """A watcher waiting (up to a minute of real time, never reached) for the view's next event."""
    task = asyncio.create_task(v.wait(v.head(), 60))
    await one_loop_step()
    assert not task.done()
    return task


async def woken(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` was released: a released waiter finishes in the loop's next step."""
    await one_loop_step()
    return task.done()


async def test_a_sparse_event_wakes_watchers_at_once() -> None:
    clock = FakeClock()
    v = view_on(clock, 0.5)
    v.reset([], 1)  # a wake
    clock.advance(0.6)  # longer ago than the interval
    waiter = await start_waiting(v)
    v.publish([("ADDED", svc("a", 2))], 2)
    assert await woken(waiter), "not held back for the interval"
    assert clock.pending == [], "no wake left to do later"


async def test_events_faster_than_the_wake_interval_wake_watchers_once_for_all_of_them() -> None:
    clock = FakeClock()
    v = view_on(clock, 0.2)
    v.reset([], 1)  # the first wake: watchers now wait up to 0.2 s for the next one
    first_wake = clock.now
    cursor = v.head()
    waiter = await start_waiting(v)
    for rv in range(2, 12):
        v.publish([("ADDED", svc(f"s{rv}", rv))], rv)
        clock.advance(0.005)
    assert not await woken(waiter), "still within the interval: no wake per event"
    assert clock.pending == [pytest.approx(first_wake + 0.2)], "one wake, due an interval after the last"
    clock.advance(first_wake + 0.2 - clock.now)
    assert await woken(waiter)
    assert len(v.read(cursor)) == 10, "one wake delivers every event since"


async def test_after_a_burst_watchers_are_woken_at_the_longer_burst_interval() -> None:
    clock = FakeClock()
    v = view_on(clock, 0.02)
    v.burst_wake_interval = 0.4
    v.reset([], 1)
    clock.advance(0.05)
    for rv in range(2, 3 + BURST_EVENTS):  # one wake at once, then one for the burst after 20 ms
        v.publish([("ADDED", svc(f"s{rv}", rv))], rv)
    clock.advance(0.1)  # the burst's wake ran (20 ms after the first) and carried BURST_EVENTS events
    assert clock.pending == []
    waiter = await start_waiting(v)
    v.publish([("ADDED", svc("late", 100))], 100)
    clock.advance(0.3)  # 0.38 s after the burst's wake: past the interval, not the burst interval
    assert not await woken(waiter), "the wake after a burst waits for the burst interval"
    clock.advance(0.05)
    assert await woken(waiter)
