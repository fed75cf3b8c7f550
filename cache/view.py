"""What the wrapper serves for one resource: current objects and a bounded event history.

Every object is serialized once, when it enters the view; lists and watch events are then
built by joining bytes. Watchers do not get queues of their own: each one keeps a cursor
into the shared history and wakes when it grows. A watcher whose cursor falls out of the
history has fallen too far behind and must relist (410), so memory never grows per client.

resourceVersions are the apiserver's. An event's object always carries the event's RV, and
RVs never go backwards within a view. Several events may share one RV when the wrapper
synthesizes them (a node relabel re-filters many slices at the node's RV; a relist sends
differences at the list's RV). A client resuming from RV R therefore gets everything after R
plus the synthesized events at exactly R: at worst a harmless duplicate, never a gap.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from kubeapi.resources import Resource
from kubeapi.types import JSONDict


@dataclass(slots=True)
class Entry:
    """One served object: the dict (list-item form, no kind/apiVersion) and its JSON bytes."""

    obj: JSONDict
    raw: bytes


@dataclass(slots=True)
class Event:
    seq: int  # position in the view's history, increasing by one per event
    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    entry: Entry  # the new object (for DELETED: the last state, stamped with the event RV)
    prev: JSONDict | None  # the previous served object, for selector transitions
    synthetic: bool
    line: bytes  # the whole watch line, built once and shared by every watcher
    # Per selection (namespace and selectors), the line its watchers get; many watchers share
    # one selection (every kube-proxy sends the same selectors), so each is computed once.
    selected: dict[str, bytes] | None = None


class Expired(Exception):
    """The requested resourceVersion is older than the history can replay."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


# Decoded JSON costs about ten times its serialized size in CPython (measured on EndpointSlices);
# a history event pins its line, its entry (object and bytes) and the previous object.
_DECODED_FACTOR = 11


def _footprint(ev: Event) -> int:
    return len(ev.line) * (1 + _DECODED_FACTOR)


def stamp(obj: JSONDict, rv: int) -> JSONDict:
    """A shallow copy of ``obj`` whose metadata.resourceVersion is ``rv``."""
    meta = dict(obj.get("metadata") or {})
    meta["resourceVersion"] = str(rv)
    out = dict(obj)
    out["metadata"] = meta
    return out


class View:
    def __init__(self, resource: Resource, *, max_events: int = 20000, max_bytes: int = 64 << 20) -> None:
        self.resource = resource
        self.objects: dict[str, Entry] = {}
        self.rv = 0
        self.synced = False
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: list[Event] = []
        self._start = 0  # index of the oldest live event in _events (trimmed lazily)
        self._bytes = 0
        self.resets = 0  # with head() and rv, identifies the served state (list bodies are cached by it)
        self._next_seq = 0
        # A client resuming from an RV below this has lost events to eviction.
        self._expired_below = 0
        self._changed = asyncio.Event()
        self._waiters: set[asyncio.Future[None]] = set()
        self._sorted_keys: list[str] | None = None
        self._kind_prefix = orjson.dumps({"kind": resource.kind, "apiVersion": resource.api_version})[:-1] + b","
        self.watchers = 0

    # ---- serialization -------------------------------------------------------------

    def entry(self, obj: JSONDict) -> Entry:
        # orjson's buffer keeps its spare capacity (about 3.5 times the JSON for typical
        # objects); an exact copy costs well under a microsecond and the cache keeps these bytes.
        return Entry(obj, memoryview(orjson.dumps(obj)).tobytes())

    def typed(self, raw: bytes) -> bytes:
        """Item bytes with kind and apiVersion added, as single GETs and watch events need."""
        return self._kind_prefix + raw[1:]

    def watch_line(self, type_: str, raw: bytes) -> bytes:
        return b'{"type":"' + type_.encode() + b'","object":' + self.typed(raw) + b"}\n"

    def bookmark_line(self, rv: int, *, initial_events_end: bool = False) -> bytes:
        meta: JSONDict = {"resourceVersion": str(rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.resource.kind, "apiVersion": self.resource.api_version, "metadata": meta}
        return orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

    # ---- writes (the cache calls these) ----------------------------------------------

    def reset(self, objects: Iterable[JSONDict], rv: int) -> None:
        """Load a full state without events: the first sync, or a snapshot at start-up."""
        self.objects = {}
        for obj in objects:
            self.objects[_key(obj)] = self.entry(obj)
        self._sorted_keys = None
        self.resets += 1
        self.rv = max(self.rv, rv)
        # Nothing before this state can be replayed.
        self._expired_below = self.rv
        self._events.clear()
        self._start = 0
        self._bytes = 0
        self.synced = True
        self.wake()

    def publish(self, changes: Iterable[tuple[str, JSONDict]], rv: int, *, synthetic: bool) -> int:
        """Record ``(type, obj)`` changes at ``rv`` (raised to the view's RV if older).

        Objects are stamped with the event RV. Returns the number of events recorded.
        """
        if rv < self.rv:
            # Raised to keep RVs monotonic: a client at self.rv may not have seen it yet.
            rv, synthetic = self.rv, True
        n = 0
        for type_, obj in changes:
            key = _key(obj)
            old = self.objects.get(key)
            if type_ == "DELETED":
                if old is None:
                    continue
                # Deletions carry the last served state (filtered), like the apiserver's.
                entry = self.entry(stamp(old.obj, rv))
                del self.objects[key]
                self._sorted_keys = None
            else:
                entry = self.entry(stamp(obj, rv))
                if old is None:
                    type_ = "ADDED"
                    self._sorted_keys = None
                elif type_ == "ADDED":
                    type_ = "MODIFIED"
                self.objects[key] = entry
            ev = Event(
                self._next_seq, rv, type_, entry, old.obj if old else None, synthetic,
                self.watch_line(type_, entry.raw),
            )
            self._next_seq += 1
            self._events.append(ev)
            self._bytes += _footprint(ev)
            n += 1
        self.rv = rv
        self._evict()
        if n:
            self.wake()
        return n

    def advance(self, rv: int) -> None:
        """Move the view's RV forward without an event (an upstream bookmark)."""
        if rv > self.rv:
            self.rv = rv
            self.wake()

    # ---- reads (the HTTP front calls these) ------------------------------------------

    def sorted_entries(self) -> Iterator[Entry]:
        if self._sorted_keys is None:
            self._sorted_keys = sorted(self.objects)
        objects = self.objects
        for k in self._sorted_keys:
            yield objects[k]

    def cursor_after(self, rv: int) -> int:
        """The history position from which a watch resuming at ``rv`` starts.

        Raises Expired when events after ``rv`` have been evicted.
        """
        if rv < self._expired_below:
            raise Expired(rv, self._expired_below)
        live = self._events[self._start:]
        i = bisect.bisect_left(live, rv, key=_ev_rv)
        # Events at exactly rv: the client has seen the upstream one, not necessarily
        # every synthesized one, so replay only those.
        while i < len(live) and live[i].rv == rv and not live[i].synthetic:
            i += 1
        return live[i].seq if i < len(live) else self._next_seq

    def head(self) -> int:
        """The cursor for "from now on"."""
        return self._next_seq

    def read(self, cursor: int, limit: int = 1000) -> list[Event]:
        """Events from ``cursor`` on; raises Expired when ``cursor`` was evicted."""
        if cursor >= self._next_seq:
            return []
        first = self._events[self._start].seq if self._start < len(self._events) else self._next_seq
        if cursor < first:
            raise Expired(0, self._expired_below)
        i = self._start + (cursor - first)
        return self._events[i:i + limit]

    async def wait(self, cursor: int, timeout: float) -> None:
        """Wait until an event at or after ``cursor`` exists, or ``timeout`` passes.

        A bare future and a timer per wait: every watcher waits once per event batch, and
        ``asyncio.wait_for`` (a task per call on Python 3.11) cost more than the event itself
        with twenty watchers at 2,000 events/s.
        """
        if cursor < self._next_seq:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        timer = loop.call_later(max(timeout, 0.0), _release, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiters.discard(fut)

    async def wait_for_rv(self, rv: int, timeout: float) -> bool:
        """Wait until the view has caught up with ``rv`` (a client's RV may be ahead of us)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.rv < rv:
            left = deadline - loop.time()
            if left <= 0:
                return False
            ev = self._changed
            try:
                await asyncio.wait_for(ev.wait(), left)
            except TimeoutError:
                return self.rv >= rv
        return True

    def history_depth(self) -> int:
        return len(self._events) - self._start

    def stats(self) -> dict[str, Any]:
        return {
            "objects": len(self.objects),
            "resourceVersion": str(self.rv),
            "synced": self.synced,
            "historyEvents": self.history_depth(),
            "historyBytes": self._bytes,
            "oldestResumableRV": str(self._expired_below),
            "watchers": self.watchers,
        }

    # ---- internals -------------------------------------------------------------------

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            _release(fut)

    def _evict(self) -> None:
        events = self._events
        live = len(events) - self._start
        if live <= self.max_events and self._bytes <= self.max_bytes:
            return
        while self._start < len(events) and (
            len(events) - self._start > self.max_events or self._bytes > self.max_bytes
        ):
            # Evict whole RV groups, so no client is left with half of a synthesized burst.
            rv = events[self._start].rv
            had_synthetic = False
            while self._start < len(events) and events[self._start].rv == rv:
                had_synthetic |= events[self._start].synthetic
                self._bytes -= _footprint(events[self._start])
                self._start += 1
            self._expired_below = max(self._expired_below, rv + 1 if had_synthetic else rv)
        if self._start > 4096 and self._start * 2 > len(events):
            del events[: self._start]
            self._start = 0


def _release(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _ev_rv(ev: Event) -> int:
    return ev.rv


def _key(obj: JSONDict) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])
