"""Watch lines are computed once per selection and event, shared by the selection's watchers,
and let go with the history's events and with the selection's last watcher."""

from __future__ import annotations

import gc
import weakref

import orjson

from cache.view import View
from kubeapi.listoptions import ListOptions
from kubeapi.resources import SERVICES
from kubeapi.selectors import parse_label_selector
from wrapper.serving import predicate
from wrapper.watch_registry import WatchRegistry
from wrapper.writers import EventWriter

APP_X = ListOptions(label=parse_label_selector("app=x"))


def svc(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv), "labels": labels}}


def test_watchers_of_one_selection_get_the_same_line_computed_once() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 1, app="y")], 1)
    registry = WatchRegistry()
    first = EventWriter(v, predicate(APP_X), None, shared=registry.join(v, "app=x"))
    second = EventWriter(v, predicate(APP_X), None, shared=registry.join(v, "app=x"))
    cursor = v.head()
    v.publish([("MODIFIED", svc("a", 2, app="x"))], 2)  # enters the selection: ADDED for these watchers
    line_1, _, _ = first.batch(v.read(cursor), 1 << 20)
    line_2, _, _ = second.batch(v.read(cursor), 1 << 20)
    assert orjson.loads(line_1)["type"] == "ADDED"
    assert line_2 == line_1
    assert second.event(v.read(cursor)[0]) is first.event(v.read(cursor)[0]), "one line object for both"


def test_other_selections_and_namespaces_compute_their_own_lines() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 1, app="y")], 1)
    registry = WatchRegistry()
    selected = EventWriter(v, predicate(APP_X), None, shared=registry.join(v, "app=x"))
    everything = EventWriter(v, None, None, shared=registry.join(v, "all"))
    elsewhere = EventWriter(v, predicate(APP_X), "other", shared=registry.join(v, "other/app=x"))
    cursor = v.head()
    v.publish([("MODIFIED", svc("a", 2, app="x"))], 2)
    ev = v.read(cursor)[0]
    assert orjson.loads(selected.event(ev))["type"] == "ADDED"
    assert orjson.loads(everything.event(ev))["type"] == "MODIFIED"
    assert elsewhere.event(ev) == b""


def test_shared_lines_do_not_outlive_the_history() -> None:
    v = View(SERVICES, max_events=50)
    v.reset([], 1)
    registry = WatchRegistry()
    shared = registry.join(v, "app=x")
    writer = EventWriter(v, predicate(APP_X), None, shared=shared)
    cursor = v.head()
    for i in range(2, 3000):
        v.publish([("ADDED", svc(f"s{i % 40}", i, app="x" if i % 2 else "y"))], i)
        events = v.read(cursor)
        writer.batch(events, 1 << 20)
        cursor = events[-1].seq + 1
        assert len(shared.lines) <= v.history_depth() + 256 + 1, "lines of dropped events are let go"


def test_the_last_watcher_of_a_selection_takes_its_lines_along() -> None:
    v = View(SERVICES)
    v.reset([], 1)
    registry = WatchRegistry()
    shared = registry.join(v, "app=x")
    assert registry.join(v, "app=x") is shared
    registry.leave(v, "app=x")
    assert registry.join(v, "app=x") is shared, "one watcher still holds it"
    registry.leave(v, "app=x")
    registry.leave(v, "app=x")
    assert registry.join(v, "app=x") is not shared


def test_a_finished_watchers_writer_and_lines_are_freed_without_the_cycle_collector() -> None:
    """The heap regime freezes long-lived objects: a writer in a reference cycle would pin its
    selection's lines (a history's worth of events) until the hourly full collection."""
    v = View(SERVICES)
    v.reset([], 1)
    registry = WatchRegistry()
    shared = registry.join(v, "app=x")
    writer = EventWriter(v, predicate(APP_X), None, shared=shared)
    cursor = v.head()
    for i in range(2, 50):
        v.publish([("ADDED", svc(f"s{i}", i, app="x"))], i)
    writer.batch(v.read(cursor), 1 << 20)
    gone = weakref.ref(writer)
    enabled = gc.isenabled()
    gc.disable()
    try:
        registry.leave(v, "app=x")
        del writer
        assert gone() is None, "freed by reference counting alone"
        assert not shared.lines, "the last watcher's leaving lets go of the lines"
    finally:
        if enabled:
            gc.enable()
