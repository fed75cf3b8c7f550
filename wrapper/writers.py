"""The lines a watch stream is made of: events after this watcher's selectors, in its media type.

``EventWriter`` turns a view's entries and history events into one watcher's lines (the
resource's JSON, one-row Tables or PartialObjectMetadata). ``SelectionLines`` lets the watchers
of one selection share each event's line: it is computed by the first of them to reach the event.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from cache.reader import Entry, Event, ViewReader, stamp
from kubeapi import partial, tables
from kubeapi.negotiation import AS_IS, Target
from kubeapi.status import StatusError
from kubeapi.types import JSONDict
from wrapper.serving import Predicate

_ADDED = b'{"type":"ADDED","object":'
# Slots of events the history has dropped are let go once this many have piled up at the front.
_PRUNE_AFTER = 256


def error_line(err: StatusError) -> bytes:
    """A watch's ERROR event carrying the Status (the stream ends after it)."""
    return orjson.dumps({"type": "ERROR", "object": err.status}) + b"\n"


class SelectionLines:
    """The line each history event gives the watchers of one selection (namespace, selectors and
    media type) of one view; every kube-proxy sends the same selectors, so one line serves them all.

    Owns the lines, in slots indexed by ``Event.seq`` from ``base``; slots of events the view's
    history has dropped are let go (``prune``), so the lines never outlive the history by more
    than a few hundred events. The WatchRegistry hands one out per selection to its watchers and
    drops it with the last of them; their EventWriters fill and read it.
    """

    __slots__ = ("base", "lines", "watchers")

    def __init__(self) -> None:
        self.base = 0
        self.lines: list[bytes | None] = []
        self.watchers = 0

    def line(self, ev: Event, select: Callable[[Event], bytes]) -> bytes:
        lines = self.lines
        i = ev.seq - self.base
        if 0 <= i < len(lines):
            line = lines[i]
            if line is None:
                line = lines[i] = select(ev)
            return line
        line = select(ev)
        if not lines:
            self.base = ev.seq
            lines.append(line)
        elif i >= len(lines):
            if i > len(lines):  # events no watcher of this selection has read
                lines.extend([None] * (i - len(lines)))
            lines.append(line)
        # i < 0: older than anything kept (a watch resumed far back); not worth a slot
        return line

    def prune(self, oldest: int) -> None:
        """Let go of the lines of events before ``oldest`` (the history's oldest cursor)."""
        dead = oldest - self.base
        if dead > 0 and (dead >= _PRUNE_AFTER or dead >= len(self.lines)):
            del self.lines[:dead]
            self.base = oldest


class EventWriter:
    """Turns the view's entries and shared history events into one watcher's lines: the
    resource's JSON, one-row Tables, or PartialObjectMetadata (``target``), after selectors.

    Owned by one WatchSession; ``shared`` is its selection's SelectionLines (None for Tables,
    whose lines depend on this watcher: headers come once).
    """

    def __init__(self, view: ViewReader, pred: Predicate | None, namespace: str | None, target: Target = AS_IS,
                 shared: SelectionLines | None = None) -> None:
        self.view = view
        self.target = target
        self.table = target.table
        self.partial = target.partial
        self.plain = not (self.table or self.partial)
        self.shared = None if self.table else shared
        self._first_table = True
        self._typed_prefix = _ADDED + view.typed(b"{")  # '{"type":"ADDED","object":{"kind":..,"apiVersion":..,'
        ns = namespace
        if ns is None and pred is None:
            self.pred: Predicate | None = None
        elif ns is None:
            self.pred = pred
        else:
            def in_ns(obj: JSONDict) -> bool:
                return bool(obj["metadata"].get("namespace") == ns and (pred is None or pred(obj)))

            self.pred = in_ns

    def _line(self, type_: str, obj: JSONDict | None, raw: bytes | None) -> bytes:
        """The watch line: a table row or a PartialObjectMetadata built from ``obj`` (or
        ``raw``), or the event built from ``raw`` (or from ``obj`` when there are no bytes)."""
        if self.table:
            doc = tables.render_table(self.view.resource, [obj if obj is not None else orjson.loads(raw or b"{}")],
                                      list_rv=None, with_headers=self._first_table,
                                      api_version=self.target.api_version)
            self._first_table = False
            return orjson.dumps({"type": type_, "object": doc}) + b"\n"
        if self.partial:
            doc = partial.partial_object(obj if obj is not None else orjson.loads(raw or b"{}"),
                                         self.target.api_version)
            return orjson.dumps({"type": type_, "object": doc}) + b"\n"
        return self.view.watch_line(type_, raw if raw is not None else orjson.dumps(obj))

    def added(self, entry: Entry) -> tuple[bytes | memoryview, ...]:
        """The pieces of an entry's ADDED line (empty if it is not selected); for plain JSON
        they point into the entry's shared bytes, so the batch join is the only copy."""
        if self.pred is not None and not self.pred(entry.fields):
            return ()
        if not self.plain:
            return (self._line("ADDED", None, entry.raw),)
        return self._typed_prefix, memoryview(entry.raw)[1:], b"}\n"

    def bookmark(self, rv: int, *, initial_events_end: bool = False) -> bytes:
        if not self.partial:
            return self.view.bookmark_line(rv, initial_events_end=initial_events_end)
        meta: JSONDict = {"resourceVersion": str(rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        doc = partial.partial_object({"metadata": meta}, self.target.api_version)
        return orjson.dumps({"type": "BOOKMARK", "object": doc}) + b"\n"

    def batch(self, events: list[Event], limit: int) -> tuple[bytes, int, int]:
        """(lines joined, events consumed, lines) for the front of ``events``: up to about
        ``limit`` bytes, and at least one event."""
        if self.shared is not None:
            self.shared.prune(self.view.oldest())
        parts: list[bytes] = []
        size = consumed = 0
        for ev in events:
            consumed += 1
            line = self.event(ev)
            if line:
                parts.append(line)
                size += len(line)
                if size >= limit:
                    break
        return b"".join(parts), consumed, len(parts)

    def event(self, ev: Event) -> bytes:
        if self.pred is None and self.plain:
            return ev.line
        shared = self.shared
        if shared is None:
            return self._select(ev)
        # A bound method made per call, never kept on self: a writer must not be in a reference
        # cycle, or a finished watch's writer and its selection's lines outlive it (the heap
        # regime freezes long-lived objects, so a cycle waits for the hourly full pass).
        return shared.line(ev, self._select)

    def _select(self, ev: Event) -> bytes:
        pred = self.pred
        plain = self.plain
        if pred is None:
            return ev.line if plain else self._line(ev.type, ev.object(), None)
        new_match = pred(ev.fields)
        if ev.prev_fields is not None:  # a MODIFIED that may cross this selector's boundary
            old_match = pred(ev.prev_fields)
            if new_match and not old_match:
                return self.view.retype(ev.line, "ADDED") if plain else self._line("ADDED", ev.object(), None)
            if old_match and not new_match:
                # Leaving the selector looks like a deletion: old content, the event's RV.
                assert ev.prev_raw is not None
                return self._line("DELETED", stamp(orjson.loads(ev.prev_raw), ev.rv), None)
        if not new_match:
            return b""
        return ev.line if plain else self._line(ev.type, ev.object(), None)
