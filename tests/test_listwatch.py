"""The reflector's decisions, table-tested without a server, a socket or the wall clock.

``ListWatch`` (cache/listwatch.py) is fed list pages, watch events, ends and errors; what it does is
read from its outputs only: the Sink calls, the next action (request parameters or a back-off) and
the ``state`` it publishes. Time and chance are injected.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from cache.apierrors import ApiError, ReadTimeout, TransportError, UnreadableStream
from cache.listwatch import (
    VERY_SHORT_WATCH,
    Action,
    ListPage,
    ListWatch,
    ReflectorSettings,
    Selection,
    Sleep,
    Watch,
    duration,
)
from cache.reflector import log_say
from kubeapi.resources import NODES, Resource
from kubeapi.types import JSONDict
from tests.support.fake_clock import FakeClock

# Lists only, no jitter: the list-then-watch decisions (streaming lists and jitter: further down).
SETTINGS = ReflectorSettings(page_size=2, backoff_initial=0.5, backoff_max=4.0, watch_timeout_min=300,
                             watch_timeout_max=600, streaming=False, relist_jitter=0.0)
FIRST_LIST = ListPage({"resourceVersion": "0", "limit": "2"})  # the watch cache's; the server may page
CONSISTENT = ListPage({"limit": "2"})  # from etcd, paged


@dataclass
class FakeRandom:
    """Records every draw; ``uniform`` returns the point ``frac`` of the way from a to b."""

    frac: float = 1.0
    uniforms: list[tuple[float, float]] = field(default_factory=list)
    randints: list[tuple[int, int]] = field(default_factory=list)

    def uniform(self, a: float, b: float) -> float:
        self.uniforms.append((a, b))
        return a + (b - a) * self.frac

    def randint(self, a: int, b: int) -> int:
        self.randints.append((a, b))
        return b


@dataclass
class RecordingSink:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        self.calls.append(("replace", [o["metadata"]["name"] for o in items], rv))

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        self.calls.append(("apply", type_, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    def bookmark(self, resource: Resource, rv: int) -> None:
        self.calls.append(("bookmark", rv))


@dataclass
class Said:
    """What the machine told the operator: (level, line) in order, and when (on ``clock``)."""

    clock: FakeClock
    lines: list[tuple[int, str]] = field(default_factory=list)
    times: list[tuple[int, float]] = field(default_factory=list)

    def __call__(self, level: int, message: str, exc: BaseException | None = None) -> None:
        self.lines.append((level, message))
        self.times.append((level, self.clock.now))

    def at(self, level: int) -> list[str]:
        return [line for lvl, line in self.lines if lvl == level]

    def take(self) -> list[tuple[int, str]]:
        """Everything said since the last take."""
        out, self.lines = self.lines, []
        return out


@dataclass
class Rig:
    machine: ListWatch
    sink: RecordingSink
    clock: FakeClock
    rng: FakeRandom
    regressions: list[tuple[int, int]]
    said: Said


def rig(frac: float = 1.0, settings: ReflectorSettings = SETTINGS) -> Rig:
    sink, clock, rng = RecordingSink(), FakeClock(), FakeRandom(frac)
    said = Said(clock)
    regressions: list[tuple[int, int]] = []
    m = ListWatch(NODES, sink, settings, clock=clock, rng=rng, say=said,
                  on_regression=lambda had, got: regressions.append((had, got)))
    return Rig(m, sink, clock, rng, regressions, said)


def node(name: str, rv: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "resourceVersion": str(rv)}, **extra}


def page(rv: int, *names: str, token: str = "") -> bytes:
    meta: dict[str, str] = {"resourceVersion": str(rv)}
    if token:
        meta["continue"] = token
    return orjson.dumps({"kind": "NodeList", "apiVersion": "v1", "metadata": meta,
                         "items": [node(n, rv) for n in names]})


def status(code: int, reason: str, message: str = "", **details: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                          "reason": reason, "message": message}
    if details:
        st["details"] = details
    return st


def http_error(code: int, st: dict[str, Any] | None = None, retry_after: str | None = None) -> ApiError:
    return ApiError.from_response(code, orjson.dumps(st) if st is not None else b"not a status", retry_after)


TOO_LARGE_CAUSE = {"causes": [{"type": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                   "retryAfterSeconds": 1}
TOO_LARGE = "Too large resource version: 999, current: 9"


def synced(r: Rig, rv: int = 10) -> None:
    """List (one page) and open the watch, as after start-up."""
    assert isinstance(r.machine.next_action(), ListPage)
    r.machine.list_page(page(rv, "a", "b"))
    assert isinstance(r.machine.next_action(), Watch)
    r.machine.watch_opened()


def next_request(r: Rig) -> Action:
    """The next request, skipping (and returning nothing of) a back-off."""
    action = r.machine.next_action()
    return r.machine.next_action() if isinstance(action, Sleep) else action


# ---- requests ----------------------------------------------------------------------------------------


def test_a_list_is_asked_in_pages_and_reaches_the_sink_whole_at_the_first_pages_rv() -> None:
    r = rig()
    assert r.machine.next_action() == FIRST_LIST
    r.machine.list_page(page(7, "a", "b", token="tok-1"))
    assert r.sink.calls == [], "nothing reaches the sink before the last page"
    assert r.machine.next_action() == ListPage({"limit": "2", "continue": "tok-1"})
    r.machine.list_page(page(8, "c"))
    assert r.sink.calls == [("replace", ["a", "b", "c"], 7)]
    assert r.machine.rv == 7 and r.machine.state.synced_once and r.machine.state.connected
    assert (r.machine.state.lists, r.machine.state.relists) == (1, 0)


def test_the_watch_resumes_from_the_list_rv_with_bookmarks_and_a_jittered_server_timeout() -> None:
    r = rig()
    r.machine.next_action()
    r.machine.list_page(page(42, "a"))
    assert r.machine.next_action() == Watch({"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": "42",
                                             "timeoutSeconds": "600"}, deadline=600 + SETTINGS.watch_deadline_margin)
    assert r.rng.randints == [(300, 600)]


def test_watch_timeout_seconds_stay_within_the_configured_range() -> None:
    m = ListWatch(NODES, RecordingSink(), SETTINGS, clock=FakeClock(), say=log_say, rng=random.Random(13))
    m.next_action()
    m.list_page(page(1, "a"))
    seen = set()
    for _ in range(500):
        action = m.next_action()
        assert isinstance(action, Watch)
        seen.add(int(action.params["timeoutSeconds"]))
    assert min(seen) >= 300 and max(seen) <= 600 and len(seen) > 100


# ---- events --------------------------------------------------------------------------------------------


def test_events_reach_the_sink_without_kind_and_advance_the_rv() -> None:
    r = rig()
    synced(r, 10)
    assert r.machine.event({"type": "ADDED", "object": node("c", 11)})
    assert r.machine.event({"type": "MODIFIED", "object": node("a", 12)})
    assert r.machine.event({"type": "DELETED", "object": node("b", 13)})
    assert r.sink.calls[1:] == [("apply", "ADDED", "c", "11"), ("apply", "MODIFIED", "a", "12"),
                                ("apply", "DELETED", "b", "13")]
    assert r.machine.rv == 13 and r.machine.state.events == 3


def test_a_bookmark_advances_the_rv_that_the_next_watch_resumes_from() -> None:
    r = rig()
    synced(r, 10)
    assert r.machine.event({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
                                                           "metadata": {"resourceVersion": "25"}}})
    assert r.sink.calls[-1] == ("bookmark", 25)
    assert r.machine.rv == 25 and r.machine.state.events == 0
    r.clock.advance(2)
    r.machine.watch_ended()
    action = r.machine.next_action()
    assert isinstance(action, Watch) and action.params["resourceVersion"] == "25"


def test_an_older_event_never_moves_the_rv_back() -> None:
    r = rig()
    synced(r, 10)
    r.machine.event({"type": "MODIFIED", "object": node("a", 20)})
    r.machine.event({"type": "MODIFIED", "object": node("b", 15)})
    assert r.machine.rv == 20


UNTRUSTED: dict[str, object] = {
    "not-an-object": [1, 2, "three"],
    "object-not-an-object": {"type": "MODIFIED", "object": "x"},
    "wrong-kind": {"type": "MODIFIED", "object": {**node("a", 11), "kind": "Service"}},
    "missing-rv": {"type": "MODIFIED", "object": {"kind": "Node", "metadata": {"name": "a"}}},
    "rv-not-digits": {"type": "MODIFIED", "object": node("a", 11) | {"metadata": {"name": "a",
                                                                                  "resourceVersion": "1_0"}}},
    "rv-of-5000-digits": {"type": "MODIFIED", "object": node("a", 11) | {"metadata": {"name": "a",
                                                                                      "resourceVersion": "9" * 5000}}},
    "metadata-not-an-object": {"type": "MODIFIED", "object": {"kind": "Node", "metadata": ["a"]}},
    "no-name": {"type": "ADDED", "object": {"kind": "Node", "metadata": {"resourceVersion": "11"}}},
    "unknown-type": {"type": "EXPLODED", "object": node("a", 11)},
}


@pytest.mark.parametrize("case", sorted(UNTRUSTED))
def test_an_untrusted_event_ends_the_watch_and_relists_after_a_back_off(case: str) -> None:
    r = rig()
    synced(r, 10)
    assert r.machine.event(UNTRUSTED[case]) is False
    assert r.sink.calls == [("replace", ["a", "b"], 10)], "nothing of it reached the sink"
    assert r.machine.rv == 10
    assert isinstance(r.machine.next_action(), Sleep)
    assert r.machine.next_action() == ListPage({"resourceVersion": "10"}), "not older than: the watch cache's"
    r.machine.list_page(page(12, "a"))
    assert r.machine.state.relists == 1


def test_an_undecodable_line_resumes_the_watch_from_the_last_applied_rv_without_a_relist() -> None:
    r = rig()
    synced(r, 10)
    r.machine.event({"type": "MODIFIED", "object": node("a", 11)})
    r.machine.undecodable(ValueError("unexpected end of data"))
    assert not r.machine.state.connected and "undecodable" in r.machine.state.last_error
    action = next_request(r)
    assert isinstance(action, Watch) and action.params["resourceVersion"] == "11"


# ---- answers that reject the resourceVersion -----------------------------------------------------------

REJECTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "http-410-expired": ("http", status(410, "Expired", "too old resource version: 1 (5)")),
    "http-410-gone": ("http", status(410, "Gone", "gone")),
    "http-504-too-large-cause": ("http", status(504, "Timeout", TOO_LARGE, **TOO_LARGE_CAUSE)),
    "http-504-too-large-message-only": ("http", status(504, "Timeout", TOO_LARGE)),
    "event-410-expired": ("event", status(410, "Expired", "too old resource version: 1 (5)")),
    "event-410-unknown-reason": ("event", status(410, "SomethingNew", "")),
    "event-504-too-large-cause": ("event", status(504, "Timeout", TOO_LARGE, **TOO_LARGE_CAUSE)),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_an_answer_that_rejects_the_rv_relists_from_the_watch_cache_unless_the_rv_is_too_large(case: str) -> None:
    how, st = REJECTIONS[case]
    r = rig()
    synced(r, 10)
    if how == "http":
        r.machine.failed(http_error(st["code"], st))
    else:
        assert r.machine.event({"type": "ERROR", "object": st}) is False
    assert r.machine.state.reconnects == 0, "not a lost connection"
    assert isinstance(r.machine.next_action(), Sleep)
    if "too-large" in case:
        # The apiserver has not reached the RV (an etcd restore?): a consistent list.
        assert r.machine.next_action() == CONSISTENT
    else:
        # As client-go after a watch's 410: a list "not older than" the RV, whole, from the watch cache.
        assert r.machine.next_action() == ListPage({"resourceVersion": "10"})
    r.machine.list_page(page(30, "a"))
    assert r.sink.calls[-1] == ("replace", ["a"], 30) and r.machine.state.relists == 1
    assert r.regressions == []


@pytest.mark.parametrize("case", ["http-410-expired", "http-504-too-large-cause"])
def test_a_relist_whose_rv_is_rejected_too_lists_consistently_at_once(case: str) -> None:
    _how, st = REJECTIONS[case]
    r = rig()
    synced(r, 10)
    r.machine.failed(http_error(410, status(410, "Expired", "too old resource version: 10 (20)")))
    next_request(r)
    r.machine.failed(http_error(st["code"], st))
    assert next_request(r) == CONSISTENT
    r.machine.list_page(page(30, "a"))
    assert r.machine.rv == 30
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))  # the watch from 30
    assert next_request(r) == ListPage({"resourceVersion": "30"}), "a good list makes the RV usable again"


def test_a_504_that_is_not_about_the_rv_is_a_lost_connection_not_a_relist() -> None:
    r = rig()
    synced(r, 10)
    r.machine.failed(http_error(504, status(504, "Timeout", "request timed out")))
    assert r.machine.state.reconnects == 1 and "HTTP 504" in r.machine.state.last_error
    assert isinstance(next_request(r), Watch)


# ---- other errors: back off and retry where it was -----------------------------------------------------


@pytest.mark.parametrize("error", [
    http_error(500, status(500, "InternalError", "etcd is sad")),
    http_error(503, None),
    TransportError("Cannot connect to host 127.0.0.1:6443"),
    ReadTimeout("no data within the read timeout (SocketTimeoutError)"),
], ids=["500", "503-no-status", "unreachable", "read-timeout"])
def test_a_failed_watch_backs_off_and_resumes_from_its_rv(error: Exception) -> None:
    r = rig()
    synced(r, 10)
    r.machine.event({"type": "MODIFIED", "object": node("a", 14)})
    r.clock.now = 1234.0
    r.machine.failed(error)
    st = r.machine.state
    assert not st.connected and st.reconnects == 1 and st.disconnected_since == 1234.0
    assert st.last_error == str(error)
    action = r.machine.next_action()
    assert isinstance(action, Sleep)
    action = r.machine.next_action()
    assert isinstance(action, Watch) and action.params["resourceVersion"] == "14"
    assert st.relists == 0


def test_a_read_timeout_says_so_in_the_last_error() -> None:
    r = rig()
    synced(r)
    r.machine.failed(ReadTimeout("no data within the read timeout (SocketTimeoutError)"))
    assert "read timeout" in r.machine.state.last_error


def test_a_failure_in_the_middle_of_a_paged_list_starts_the_list_over() -> None:
    r = rig()
    r.machine.next_action()
    r.machine.list_page(page(7, "a", "b", token="tok-1"))
    assert r.machine.next_action() == ListPage({"limit": "2", "continue": "tok-1"})
    r.machine.failed(TransportError("connection reset"))
    assert next_request(r) == FIRST_LIST
    r.machine.list_page(page(9, "z"))
    assert r.sink.calls == [("replace", ["z"], 9)], "no page of the abandoned list"


@pytest.mark.parametrize(("body", "says"), [
    (b'{"kind":"NodeList","items":[', "not JSON"),
    (b'["a list"]', "not a list object"),
    (orjson.dumps({"kind": "NodeList", "items": [], "metadata": {}}), "resourceVersion"),
    (orjson.dumps({"kind": "NodeList", "items": [], "metadata": "x"}), "resourceVersion"),
    (orjson.dumps({"kind": "NodeList", "items": {}, "metadata": {"resourceVersion": "3"}}), "not a list object"),
])
def test_a_malformed_list_answer_is_a_failure_and_the_list_is_asked_again(body: bytes, says: str) -> None:
    r = rig()
    r.machine.next_action()
    r.machine.list_page(body)
    st = r.machine.state
    assert says in st.last_error and st.reconnects == 1 and not st.synced_once
    assert next_request(r) == FIRST_LIST
    assert r.sink.calls == []


def test_malformed_list_items_are_skipped_and_the_rest_reaches_the_sink() -> None:
    r = rig()
    r.machine.next_action()
    r.machine.list_page(orjson.dumps({"metadata": {"resourceVersion": "5"},
                                      "items": [node("a", 5), {"metadata": {"name": ""}}, 7, node("b", 5)]}))
    assert r.sink.calls == [("replace", ["a", "b"], 5)]


def test_an_unreadable_stream_relists() -> None:
    r = rig()
    synced(r)
    r.clock.now = 2000.0
    r.machine.failed(UnreadableStream("Got more than 4194304 bytes when reading"))
    assert not r.machine.state.connected and r.machine.state.disconnected_since == 2000.0
    assert next_request(r) == ListPage({"resourceVersion": "10"})


def test_an_unexpected_error_relists_rather_than_stopping() -> None:
    r = rig()
    synced(r)
    r.machine.failed(KeyError("a bug somewhere"))
    assert not r.machine.state.connected
    assert next_request(r) == ListPage({"resourceVersion": "10"})


# ---- Retry-After -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "at_least"), [
    (http_error(429, status(429, "TooManyRequests", "slow down"), retry_after="7"), 7.0),
    (http_error(429, status(429, "TooManyRequests", "slow down", retryAfterSeconds=3)), 3.0),
    (http_error(429, status(429, "TooManyRequests", "", retryAfterSeconds=3), retry_after="9"), 9.0),
    (http_error(429, None, retry_after="99999999"), 3600.0),
    (http_error(503, None, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"), 0.0),
    (http_error(503, None, retry_after="1_0"), 0.0),
    (http_error(503, None, retry_after="\u0661\u0662"), 0.0),
    (http_error(503, None, retry_after="-5"), 0.0),
], ids=["header", "status-details", "header-first", "capped", "http-date", "underscore", "arabic-digits",
        "negative"])
def test_429_retry_after_is_honoured_when_it_is_delay_seconds(error: ApiError, at_least: float) -> None:
    assert error.retry_after == at_least
    r = rig(frac=0.0)  # the jitter alone would wait backoff_initial / 2
    synced(r)
    r.machine.failed(error)
    assert r.machine.next_action() == Sleep(max(at_least, SETTINGS.backoff_initial / 2))
    assert isinstance(r.machine.next_action(), Watch), "a throttled watch is retried, not relisted"


def test_a_throttled_watch_error_event_waits_its_retry_after_seconds() -> None:
    r = rig(frac=0.0)
    synced(r)
    st = status(429, "TooManyRequests", "slow down", retryAfterSeconds=5)
    assert r.machine.event({"type": "ERROR", "object": st}) is False
    assert r.machine.state.reconnects == 1 and "slow down" in r.machine.state.last_error
    assert r.machine.next_action() == Sleep(5.0)
    assert isinstance(r.machine.next_action(), Watch)


# ---- back-off -----------------------------------------------------------------------------------------------


def test_back_off_doubles_with_full_jitter_up_to_the_cap_and_resets_after_a_healthy_watch() -> None:
    r = rig(frac=0.5)
    synced(r)
    sleeps = []
    for _ in range(6):
        r.machine.failed(TransportError("refused"))
        action = r.machine.next_action()
        assert isinstance(action, Sleep)
        sleeps.append(action.seconds)
        assert isinstance(r.machine.next_action(), Watch)
    assert r.rng.uniforms == [(0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.0, 4.0), (2.0, 4.0)]
    assert sleeps == [0.375, 0.75, 1.5, 3.0, 3.0, 3.0]
    # A watch that lasted, or delivered anything, resets it.
    r.machine.watch_opened()
    r.clock.advance(VERY_SHORT_WATCH + 0.5)
    r.machine.watch_ended()
    assert isinstance(r.machine.next_action(), Watch), "a normal end resumes at once"
    r.machine.failed(TransportError("refused"))
    assert r.rng.uniforms[-1] == (0.25, 0.5)


@pytest.mark.parametrize("seed", range(5))
def test_back_off_sleeps_stay_within_their_jitter_bounds(seed: int) -> None:
    m = ListWatch(NODES, RecordingSink(), SETTINGS, clock=FakeClock(), say=log_say, rng=random.Random(seed))
    bound = SETTINGS.backoff_initial
    for _ in range(12):
        m.failed(TransportError("refused"))
        action = m.next_action()
        assert isinstance(action, Sleep) and bound / 2 <= action.seconds <= bound
        m.next_action()
        bound = min(bound * 2, SETTINGS.backoff_max)


def test_a_normal_watch_end_resumes_at_once_from_the_last_rv() -> None:
    r = rig()
    synced(r, 10)
    r.machine.event({"type": "MODIFIED", "object": node("a", 11)})  # any event: a healthy watch
    r.machine.watch_ended()
    action = r.machine.next_action()
    assert isinstance(action, Watch) and action.params["resourceVersion"] == "11"
    assert r.machine.state.connected and r.machine.state.relists == 0


def test_a_very_short_empty_watch_backs_off_before_watching_again() -> None:
    r = rig()
    synced(r, 10)
    r.clock.advance(VERY_SHORT_WATCH / 2)
    r.machine.watch_ended()
    assert isinstance(r.machine.next_action(), Sleep)
    action = r.machine.next_action()
    assert isinstance(action, Watch) and action.params["resourceVersion"] == "10", "no relist"
    r.machine.watch_opened()
    r.machine.watch_ended()  # again at once: the back-off grows
    assert r.rng.uniforms == [(0.25, 0.5), (0.5, 1.0)]


# ---- the timeline going back ------------------------------------------------------------------------------


def test_a_list_below_an_rv_already_seen_reports_the_timeline_went_back_then_takes_the_list() -> None:
    r = rig()
    synced(r, 100)
    r.machine.event({"type": "MODIFIED", "object": node("a", 120)})
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))
    next_request(r)
    r.machine.list_page(page(40, "a"))
    assert r.regressions == [(120, 40)]
    assert r.sink.calls[-1] == ("replace", ["a"], 40) and r.machine.rv == 40


def test_a_snapshot_rv_counts_as_seen_for_the_first_list() -> None:
    r = rig()
    r.machine.rv = 500  # what Informers.start does with a restored cache
    r.machine.next_action()
    r.machine.list_page(page(40, "a"))
    assert r.regressions == [(500, 40)]


def test_after_forget_rv_a_lower_list_is_the_new_timeline_not_a_regression() -> None:
    r = rig()
    synced(r, 100)
    r.machine.forget_rv()
    assert r.machine.next_action() == ListPage({"limit": "2"})
    r.machine.list_page(page(40, "a"))
    assert r.regressions == [] and r.machine.rv == 40


def test_forget_rv_in_the_middle_of_a_paged_list_drops_its_pages() -> None:
    r = rig()
    r.machine.next_action()
    r.machine.list_page(page(7, "a", "b", token="tok-1"))
    r.machine.forget_rv()
    assert r.machine.next_action() == ListPage({"limit": "2"})
    r.machine.list_page(page(3, "z"))
    assert r.sink.calls == [("replace", ["z"], 3)]


# ---- state ----------------------------------------------------------------------------------------------------


def test_the_state_tracks_connection_and_events_on_the_injected_clock() -> None:
    r = rig()
    assert (r.machine.state.disconnected_since, r.machine.state.connected) == (1000.0, False)
    synced(r)
    r.clock.now = 1500.0
    r.machine.event({"type": "ADDED", "object": node("z", 11)})
    assert r.machine.state.last_event_at == 1500.0
    r.clock.now = 1600.0
    r.machine.failed(TransportError("reset"))
    assert r.machine.state.disconnected_since == 1600.0
    r.clock.now = 1700.0
    r.machine.failed(TransportError("refused"))
    assert r.machine.state.disconnected_since == 1600.0, "lost once, not at every retry"
    next_request(r)
    r.machine.watch_opened()
    assert r.machine.state.connected and r.machine.state.last_error == ""


# ---- what the operator is told: every change of state, and retries at a bounded rate ------------------------

WARNING, INFO, DEBUG = 30, 20, 10


def fail_until(r: Rig, until: float, error: Exception) -> int:
    """Fail every attempt, each after the back-off the machine asked for, until the clock passes ``until``."""
    failures = 0
    while r.clock.now < until:
        action = r.machine.next_action()
        if isinstance(action, Sleep):
            r.clock.advance(action.seconds)
            continue
        r.machine.failed(error)
        failures += 1
    return failures


def test_an_unreachable_apiserver_is_said_once_then_still_retrying_once_a_minute_then_one_recovery_line() -> None:
    r = rig()
    refused = TransportError("cannot connect to the apiserver: connection refused")
    assert r.said.take() == [], "nothing said before the first request"
    r.machine.next_action()
    assert r.said.take() == [(INFO, "upstream nodes: syncing with a list at resourceVersion 0 (from the watch cache)")]
    r.machine.failed(refused)
    assert r.said.take() == [(WARNING, "upstream nodes: cannot sync: cannot connect to the apiserver: connection "
                                       "refused; next attempt in 0.50s")]
    # Back-offs of at most 4 s: about fifteen more failures within the minute, none of them said.
    fail_until(r, 1000.0 + 59.9, refused)
    assert r.said.take() == []
    # The first failure past the minute: still retrying, with the last error and the next attempt.
    fail_until(r, 1000.0 + 60.0, refused)
    r.machine.next_action()
    r.clock.advance(4.0)
    failed_before = r.machine.state.failures
    r.machine.failed(TransportError("cannot connect to the apiserver: timed out"))
    [(level, line)] = r.said.take()
    assert level == WARNING
    assert line.startswith("upstream nodes: still retrying, last error: cannot connect to the apiserver: timed out; "
                           "next attempt in 4.0s (")
    assert line.endswith(f"({failed_before + 1} failed attempts in {duration(r.clock.now - 1000.0)}; "
                         f"{failed_before - 1} failed attempts more since the last report)")
    # The apiserver answers: one line, with how long it took and what the last error was.
    assert isinstance(next_request(r), ListPage)
    r.machine.list_page(page(7, "a"))
    said = r.said.take()
    assert said[0][0] == INFO and said[0][1].startswith(f"upstream nodes: connected after {failed_before + 1} failed "
                                                        "attempts in ")
    assert said[0][1].endswith("(last error: cannot connect to the apiserver: timed out)")
    assert said[1] == (INFO, "upstream nodes: listed 1 object at resourceVersion 7 (a list); watching from there")
    assert len(said) == 2
    r.machine.next_action()
    r.machine.watch_opened()
    assert r.said.at(INFO) == [] and r.said.at(WARNING) == []


@pytest.mark.parametrize(("every", "minutes"), [(0.5, 3), (4.0, 10), (59.0, 10), (61.0, 10), (600.0, 60)])
def test_failures_are_said_at_most_once_per_report_interval_however_often_they_come(every: float, minutes: int) -> None:
    """A table of failure rates: the lines said stay within one per minute, and a failure is said
    at once when none was said in the last minute."""
    r = rig(settings=ReflectorSettings(page_size=2, backoff_initial=every, backoff_max=every, streaming=False,
                                       relist_jitter=0.0))
    r.machine.next_action()
    r.said.take()
    failures = fail_until(r, 1000.0 + minutes * 60, TransportError("refused"))
    warnings = r.said.at(WARNING)
    assert all("next attempt in" in w for w in warnings)
    when = [t for level, t in r.said.times if level == WARNING]
    assert when[0] == 1000.0, "the first failure is said at once"
    gaps = [b - a for a, b in itertools.pairwise(when)]
    assert all(gap >= 60.0 for gap in gaps), "at most once a minute"
    assert all(gap < 60.0 + every + 1e-9 for gap in gaps), "the first failure past the minute is said"
    if every >= 60:
        assert len(warnings) == failures


def test_the_state_names_the_last_error_the_failures_and_the_next_attempt_until_an_answer() -> None:
    r = rig()
    r.machine.next_action()
    r.machine.failed(http_error(403, status(403, "Forbidden", "nodes is forbidden")))
    st = r.machine.state
    assert (st.failing_since, st.failures, st.retry_at) == (1000.0, 1, 1000.5)
    assert "403" in st.last_error and "nodes is forbidden" in st.last_error
    r.clock.advance(0.5)
    next_request(r)
    r.machine.failed(TransportError("reset"))
    assert (st.failing_since, st.failures, st.retry_at, st.last_error) == (1000.0, 2, 1001.5, "reset")
    next_request(r)
    r.machine.list_page(page(3, "a"))
    assert (st.failing_since, st.failures, st.retry_at, st.last_error, st.connected) == (None, 0, None, "", True)


def test_a_lost_watch_is_said_with_its_error_and_its_recovery_once() -> None:
    r = rig()
    synced(r, 10)
    r.said.take()
    r.machine.failed(TransportError("connection reset by peer"))
    assert r.said.take() == [(WARNING, "upstream nodes: connection lost: connection reset by peer; next attempt in "
                                       "0.50s")]
    next_request(r)
    r.machine.watch_opened()
    assert r.said.take() == [(INFO, "upstream nodes: connected after 1 failed attempt in 0.00s (last error: connection "
                                    "reset by peer), watching from resourceVersion 10")]


def test_a_flapping_connection_is_said_once_a_minute_with_the_count_of_the_rest() -> None:
    r = rig()
    synced(r, 10)
    r.said.take()
    for _ in range(20):  # lost and back every two seconds
        r.machine.failed(TransportError("reset"))
        r.clock.advance(2.0)
        next_request(r)
        r.machine.watch_opened()
    said = r.said.take()
    assert [level for level, _ in said if level >= INFO] == [WARNING, INFO], said
    r.clock.advance(30.0)
    r.machine.failed(TransportError("reset"))
    [(level, line)] = r.said.take()
    assert level == WARNING and line.startswith("upstream nodes: connection lost: reset; next attempt in ")
    assert line.endswith("; 19 failed attempts more since the last report")


def test_every_sync_round_is_said_once_however_often_its_requests_fail() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.failed(TransportError("refused"))
    next_request(r)
    r.machine.failed(TransportError("refused"))
    next_request(r)
    infos = r.said.at(INFO)
    assert infos == ["upstream nodes: syncing with a streaming list (consistent: from the latest)"]
    r.machine.watch_opened()
    r.machine.event(bookmark(7, end=True))
    r.machine.event({"type": "ERROR", "object": status(410, "Expired", "too old")})
    next_request(r)
    assert r.said.at(INFO)[-3:] == [
        "upstream nodes: listed 0 objects at resourceVersion 7 (a streaming list); watching from there",
        "upstream nodes: resourceVersion 7 not valid upstream (watch ERROR 410: too old); relisting",
        "upstream nodes: syncing with a streaming list not older than resourceVersion 7",
    ]


def test_malformed_list_items_are_said_once_per_list_not_once_per_item() -> None:
    r = rig()
    r.machine.next_action()
    body = orjson.dumps({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
                         "items": [node("a", 5), *({"metadata": {"name": 7}} for _ in range(50))]})
    r.machine.list_page(body)
    assert r.said.at(WARNING) == ["upstream nodes: skipped 50 malformed list items; took the rest"]


# ---- streaming lists (client-go's watchList) and their fallbacks ---------------------------------------------

STREAMING = ReflectorSettings(page_size=2, backoff_initial=0.5, backoff_max=4.0, watch_timeout_min=300,
                              watch_timeout_max=600, relist_jitter=0.0, stream_retry_after=600.0)
STREAM_PARAMS = {"watch": "1", "allowWatchBookmarks": "true", "sendInitialEvents": "true",
                 "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "600"}
DEADLINE = 600 + STREAMING.watch_deadline_margin
RPC_DISABLED = status(500, "InternalError", "a watch stream was requested by the client but the required storage "
                      "feature RequestWatchProgress is disabled")
GATE_OFF = status(422, "Invalid", "ListOptions.meta.k8s.io is invalid: sendInitialEvents: Forbidden: "
                  "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled")


def stream_rig(**kw: Any) -> Rig:
    return rig(settings=STREAMING, **kw)


def bookmark(rv: int, end: bool = False, kind: str = "Node") -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1", "metadata": meta}}


def streamed(r: Rig, rv: int = 10, *names: str) -> None:
    """A first sync by streaming list, as after start-up against an apiserver that serves them."""
    action = r.machine.next_action()
    assert isinstance(action, Watch) and action.params.get("sendInitialEvents") == "true"
    r.machine.watch_opened()
    for n in names or ("a", "b"):
        assert r.machine.event({"type": "ADDED", "object": node(n, rv - 1)})
    assert r.machine.event(bookmark(rv, end=True))


def replaced(r: Rig) -> list[tuple[list[str], int]]:
    return [(sorted(c[1]), c[2]) for c in r.sink.calls if c[0] == "replace"]


def test_the_first_sync_is_a_streaming_list_that_reaches_the_sink_at_its_bookmark_and_goes_on_as_the_watch() -> None:
    r = stream_rig()
    assert r.machine.next_action() == Watch(STREAM_PARAMS, deadline=DEADLINE), "no RV yet: a consistent stream"
    r.machine.watch_opened()
    assert r.machine.event({"type": "ADDED", "object": node("a", 4)})
    assert r.machine.event({"type": "ADDED", "object": node("b", 5)})
    assert r.machine.event(bookmark(6)), "a plain bookmark in the burst ends nothing"
    assert r.sink.calls == [], "nothing reaches the sink before the initial-events-end bookmark"
    assert r.machine.event(bookmark(7, end=True))
    assert replaced(r) == [(["a", "b"], 7)] and r.machine.rv == 7
    st = r.machine.state
    assert (st.lists, st.streamed, st.sync_mode, st.synced_once, st.connected) == (1, 1, "stream", True, True)
    # The same stream goes on as the watch: no second request.
    assert r.machine.event({"type": "MODIFIED", "object": node("a", 8)})
    assert r.sink.calls[-1] == ("apply", "MODIFIED", "a", "8")
    r.clock.now += 5
    r.machine.watch_ended()
    assert r.machine.next_action() == Watch({"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": "8",
                                             "timeoutSeconds": "600"}, deadline=DEADLINE), "a normal end resumes"


def test_a_streaming_relist_asks_not_older_than_the_last_rv() -> None:
    r = stream_rig()
    streamed(r, 10)
    assert r.machine.event({"type": "ERROR", "object": status(410, "Expired", "too old")}) is False
    action = next_request(r)
    assert action == Watch({**STREAM_PARAMS, "resourceVersion": "10"}, deadline=DEADLINE)


def test_initial_events_deleted_or_modified_in_the_burst_reach_the_sink_as_they_ended() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.watch_opened()
    for ev in ({"type": "ADDED", "object": node("a", 3)}, {"type": "ADDED", "object": node("b", 3)},
               {"type": "MODIFIED", "object": node("a", 4)}, {"type": "DELETED", "object": node("b", 5)}):
        assert r.machine.event(ev)
    r.machine.event(bookmark(5, end=True))
    assert r.sink.calls == [("replace", ["a"], 5)]


@pytest.mark.parametrize(("case", "feed"), [
    ("gate-off-422", lambda m: m.failed(http_error(422, GATE_OFF))),
    ("not-found-404", lambda m: m.failed(http_error(404, status(404, "NotFound", "the server could not find")))),
    ("accepted-then-error", lambda m: (m.watch_opened(), m.event({"type": "ERROR", "object": RPC_DISABLED}))),
    ("ended-before-the-bookmark", lambda m: (m.watch_opened(), m.event({"type": "ADDED", "object": node("a", 3)}),
                                             m.watch_ended())),
    ("very-short-empty-stream", lambda m: (m.watch_opened(), m.watch_ended())),
])
def test_a_refused_streaming_list_falls_back_to_a_list_at_once_and_for_a_while(case: str, feed: Any) -> None:
    r = stream_rig()
    r.machine.next_action()
    feed(r.machine)
    assert r.machine.next_action() == FIRST_LIST, "at once, no back-off: resourceVersion=0 from the watch cache"
    assert r.machine.state.stream_refused and r.machine.state.reconnects == 0
    r.machine.list_page(page(10, "a", "b"))
    assert replaced(r) == [(["a", "b"], 10)] and r.machine.state.sync_mode == "list"
    r.machine.watch_opened()
    # A relist within stream_retry_after lists at once, from the watch cache ...
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))
    assert next_request(r) == ListPage({"resourceVersion": "10"})
    r.machine.list_page(page(20, "a"))
    r.machine.watch_opened()
    # ... and one after it tries the stream again (the apiserver may have been upgraded).
    r.clock.now += STREAMING.stream_retry_after
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))
    assert next_request(r) == Watch({**STREAM_PARAMS, "resourceVersion": "20"}, deadline=DEADLINE)


def test_a_5xx_answer_to_a_streaming_list_falls_back_for_this_round_only() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.failed(http_error(503, status(503, "ServiceUnavailable", "starting")))
    assert r.machine.next_action() == FIRST_LIST
    r.machine.list_page(page(10, "a"))
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))
    action = next_request(r)
    assert isinstance(action, Watch) and action.params.get("sendInitialEvents") == "true"


@pytest.mark.parametrize("how", ["http", "event"])
def test_a_throttled_streaming_list_backs_off_its_retry_after_and_streams_again(how: str) -> None:
    r = stream_rig(frac=0.0)
    r.machine.next_action()
    st = status(429, "TooManyRequests", "slow down", retryAfterSeconds=6)
    if how == "http":
        r.machine.failed(http_error(429, st))
    else:
        r.machine.watch_opened()
        assert r.machine.event({"type": "ERROR", "object": st}) is False
    assert r.machine.next_action() == Sleep(6.0)
    assert r.machine.next_action() == Watch(STREAM_PARAMS, deadline=DEADLINE)
    assert not r.machine.state.stream_refused


def test_a_rejected_rv_streams_again_from_the_latest_then_falls_back_if_that_is_rejected_too() -> None:
    r = stream_rig()
    streamed(r, 10)
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))  # the watch
    assert next_request(r) == Watch({**STREAM_PARAMS, "resourceVersion": "10"}, deadline=DEADLINE)
    r.machine.watch_opened()
    assert r.machine.event({"type": "ERROR", "object": status(504, "Timeout", TOO_LARGE, **TOO_LARGE_CAUSE)}) is False
    assert r.machine.next_action() == Watch(STREAM_PARAMS, deadline=DEADLINE), "client-go: at once, with no RV"
    r.machine.watch_opened()
    r.machine.event({"type": "ERROR", "object": status(410, "Expired", "too old")})
    assert r.machine.next_action() == CONSISTENT, "no RV left to drop: this apiserver cannot stream it"


def test_a_connection_lost_in_the_burst_drops_its_events_and_streams_again() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.watch_opened()
    r.machine.event({"type": "ADDED", "object": node("a", 3)})
    r.machine.failed(TransportError("connection reset by peer"))
    assert r.machine.state.reconnects == 1 and not r.machine.state.stream_refused
    assert next_request(r) == Watch(STREAM_PARAMS, deadline=DEADLINE)
    r.machine.watch_opened()
    r.machine.event({"type": "ADDED", "object": node("b", 4)})
    r.machine.event(bookmark(4, end=True))
    assert r.sink.calls == [("replace", ["b"], 4)], "nothing of the broken stream"


def test_an_unreadable_stream_in_the_burst_lists_instead_this_round() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.watch_opened()
    r.machine.failed(UnreadableStream("Got more than 2097152 bytes when reading"))
    assert r.machine.next_action() == FIRST_LIST
    r.machine.list_page(page(10, "a"))
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))
    assert isinstance(next_request(r), Watch), "not remembered: the next round streams"


def test_malformed_initial_events_are_skipped_like_list_items() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.watch_opened()
    assert r.machine.event({"type": "ADDED", "object": node("a", 3)})
    nameless = {"kind": "Node", "metadata": {"name": "", "resourceVersion": "3"}}
    assert r.machine.event({"type": "ADDED", "object": nameless})
    assert r.machine.event({"type": "ADDED", "object": {**node("c", 3), "kind": "Service"}})
    assert r.machine.event(bookmark(4, end=True))
    assert r.sink.calls == [("replace", ["a"], 4)]


@pytest.mark.parametrize("feed", [
    lambda m: m.event([1, 2]),
    lambda m: m.event({"kind": "NodeList", "apiVersion": "v1", "items": []}),  # a list for a watch
    lambda m: m.event({"type": "EXPLODED", "object": node("a", 3)}),
    lambda m: m.undecodable(ValueError("unexpected end of data")),
], ids=["not-an-object", "a-list-body", "unknown-type", "undecodable"])
def test_a_stream_that_is_no_watch_stream_lists_instead_this_round(feed: Any) -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.watch_opened()
    feed(r.machine)
    assert r.machine.next_action() == FIRST_LIST
    r.machine.list_page(page(10, "a"))
    r.machine.failed(http_error(410, status(410, "Expired", "too old")))
    assert isinstance(next_request(r), Watch), "not remembered: the next round streams"


def test_a_streaming_list_below_an_rv_already_seen_reports_the_timeline_went_back() -> None:
    r = stream_rig()
    r.machine.rv = 500  # a restored snapshot's
    action = r.machine.next_action()
    assert isinstance(action, Watch) and action.params["resourceVersion"] == "500"
    r.machine.watch_opened()
    r.machine.event({"type": "ERROR", "object": status(504, "Timeout", TOO_LARGE, **TOO_LARGE_CAUSE)})
    r.machine.next_action()
    r.machine.watch_opened()
    r.machine.event({"type": "ADDED", "object": node("a", 30)})
    r.machine.event(bookmark(40, end=True))
    assert r.regressions == [(500, 40)] and r.machine.rv == 40


def test_streaming_off_lists_first() -> None:
    r = rig()
    assert r.machine.next_action() == FIRST_LIST


# ---- selections: selectors and metadata only ----------------------------------------------------------------------


def test_a_selection_goes_with_every_request() -> None:
    sel = Selection(label_selector="a=b", field_selector="metadata.name=bj-1")
    m = ListWatch(NODES, RecordingSink(), SETTINGS, selection=sel, clock=FakeClock(), say=log_say, rng=FakeRandom())
    sel_params = {"labelSelector": "a=b", "fieldSelector": "metadata.name=bj-1"}
    assert m.next_action() == ListPage({**sel_params, "resourceVersion": "0", "limit": "2"})
    m.list_page(page(7, "bj-1", token="t"))
    assert m.next_action() == ListPage({**sel_params, "limit": "2", "continue": "t"})
    m.list_page(page(7))
    action = m.next_action()
    assert isinstance(action, Watch) and action.params.items() >= sel_params.items()
    streaming = ListWatch(NODES, RecordingSink(), STREAMING, selection=sel, clock=FakeClock(), say=log_say,
                          rng=FakeRandom())
    action = streaming.next_action()
    assert isinstance(action, Watch) and action.params.items() >= sel_params.items()


def partial(name: str, rv: int) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"name": name, "resourceVersion": str(rv), "labels": {"zone": name}}}


def test_metadata_only_asks_for_partial_object_metadata_and_takes_it_as_the_resource() -> None:
    sink = RecordingSink()
    m = ListWatch(NODES, sink, SETTINGS, selection=Selection(metadata_only=True), clock=FakeClock(), say=log_say,
                  rng=FakeRandom())
    action = m.next_action()
    assert isinstance(action, ListPage) and action.accept.startswith(
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
    m.list_page(orjson.dumps({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                              "metadata": {"resourceVersion": "5"}, "items": [partial("a", 4), partial("b", 5)]}))
    assert sink.calls == [("replace", ["a", "b"], 5)]
    action = m.next_action()
    assert isinstance(action, Watch) and action.accept.startswith(
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    m.watch_opened()
    assert m.event({"type": "MODIFIED", "object": partial("a", 6)})
    assert m.event({"type": "BOOKMARK", "object": partial("", 7)})
    assert m.event({"type": "MODIFIED", "object": node("b", 8)}), "a server that sends whole objects is taken too"
    assert sink.calls[1:] == [("apply", "MODIFIED", "a", "6"), ("bookmark", 7), ("apply", "MODIFIED", "b", "8")]
    assert m.event({"type": "MODIFIED", "object": {**partial("a", 9), "kind": "Service"}}) is False


def test_metadata_only_streaming_lists_take_partial_objects_and_an_empty_list_is_null_items() -> None:
    sink = RecordingSink()
    m = ListWatch(NODES, sink, STREAMING, selection=Selection(metadata_only=True), clock=FakeClock(), say=log_say,
                  rng=FakeRandom())
    m.next_action()
    m.watch_opened()
    m.event({"type": "ADDED", "object": partial("a", 4)})
    m.event({"type": "BOOKMARK", "object": {**partial("", 5), "metadata": {
        "resourceVersion": "5", "annotations": {"k8s.io/initial-events-end": "true"}}}})
    assert sink.calls == [("replace", ["a"], 5)]
    empty = ListWatch(NODES, RecordingSink(), SETTINGS, selection=Selection(metadata_only=True), clock=FakeClock(),
                      say=log_say, rng=FakeRandom())
    empty.next_action()
    empty.list_page(b'{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1",'
                    b'"metadata":{"resourceVersion":"3"},"items":null}')
    assert empty.state.synced_once and empty.rv == 3


# ---- jitter: no fleet relists in lockstep ---------------------------------------------------------------------------


def test_every_relist_waits_a_random_part_of_the_jitter_window_and_the_first_sync_only_when_asked() -> None:
    jittered = ReflectorSettings(page_size=2, backoff_initial=0.5, streaming=False, relist_jitter=8.0)
    sink, clock, rng = RecordingSink(), FakeClock(), FakeRandom(0.75)
    m = ListWatch(NODES, sink, jittered, clock=clock, say=log_say, rng=rng)
    assert isinstance(m.next_action(), ListPage), "a wrapper with nothing to serve syncs at once"
    m.list_page(page(10, "a"))
    m.failed(http_error(410, status(410, "Expired", "too old")))
    assert m.next_action() == Sleep(6.0) and (0.0, 8.0) in rng.uniforms
    restored = ListWatch(NODES, RecordingSink(), jittered, clock=clock, say=log_say, rng=FakeRandom(0.5))
    restored.spread()
    assert restored.next_action() == Sleep(4.0), "a wrapper that already serves a snapshot spreads its first sync"
    # A lost connection is not a relist: the watch resumes after its back-off alone.
    m.next_action()
    m.list_page(page(20, "a"))
    rng.uniforms.clear()
    m.failed(TransportError("refused"))
    assert isinstance(m.next_action(), Sleep) and (0.0, 8.0) not in rng.uniforms


def first_request(r: Rig) -> Any:
    """The next request, past any back-off or jitter."""
    action = r.machine.next_action()
    while isinstance(action, Sleep):
        action = r.machine.next_action()
    return action


def test_a_restored_resource_resumes_its_watch_from_the_snapshots_rv_and_syncs_only_once_refused() -> None:
    r = rig()
    r.machine.resume(42)
    action = first_request(r)
    assert isinstance(action, Watch)
    assert action.params["resourceVersion"] == "42" and "sendInitialEvents" not in action.params
    r.machine.watch_opened()
    assert r.machine.event({"type": "MODIFIED", "object": node("a", 43)})
    assert r.sink.calls == [("apply", "MODIFIED", "a", "43")]  # on top of the restored state
    r.machine.failed(http_error(410, status(410, "Expired", "too old resource version: 43 (50)")))
    assert isinstance(first_request(r), ListPage)  # the history is gone: a sync round, as after any 410


def test_nothing_to_resume_from_means_a_sync_first() -> None:
    r = rig()
    r.machine.resume(0)
    assert isinstance(first_request(r), ListPage)


def added_line(obj: dict[str, Any]) -> bytes:
    """An initial event as the apiserver writes it (``metav1.WatchEvent``: type, then object)."""
    return orjson.dumps({"type": "ADDED", "object": obj})


def test_initial_added_events_are_taken_undecoded_and_reach_the_sink_decoded_checked_and_once() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.watch_opened()
    for line in (added_line(node("a", 4)), added_line(node("b", 5)), added_line(node("a", 4)),  # sent twice
                 added_line(node("Not_A_Name", 5)), b'{"type":"ADDED","object":{torn'):
        assert r.machine.initial_line(line)
    # Decoded on arrival, as the loop does for any other line: a MODIFIED and a DELETED supersede.
    assert not r.machine.initial_line(orjson.dumps({"object": node("c", 6), "type": "ADDED"}))
    assert r.machine.event({"object": node("c", 6), "type": "ADDED"})
    assert r.machine.event({"type": "MODIFIED", "object": node("b", 7, spec={"unschedulable": True})})
    assert r.machine.event({"type": "DELETED", "object": node("a", 8)})
    assert r.sink.calls == []
    assert r.machine.event(bookmark(9, end=True))
    assert replaced(r) == [(["b", "c"], 9)]
    assert r.said.at(logging.WARNING) == ["upstream nodes: skipped 2 malformed initial events; took the rest"]
    assert any("listed 2 objects at resourceVersion 9" in line for line in r.said.at(logging.INFO))
    # Past the bookmark the stream is the watch: lines are decoded on arrival again.
    assert not r.machine.initial_line(added_line(node("d", 10)))


def test_the_undecoded_initial_events_keep_the_later_version_of_an_object_changed_in_the_burst() -> None:
    r = stream_rig()
    r.machine.next_action()
    r.machine.watch_opened()
    assert r.machine.initial_line(added_line(node("a", 4, spec={"v": 1})))
    assert r.machine.event({"type": "MODIFIED", "object": node("a", 5, spec={"v": 2})})
    assert r.machine.event(bookmark(6, end=True))
    assert [c for c in r.sink.calls if c[0] == "replace"] == [("replace", ["a"], 6)]
    assert r.machine.rv == 6
