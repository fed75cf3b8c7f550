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
    """One served object: its JSON bytes (list-item form, no kind/apiVersion), its
    resourceVersion, and what selectors read. The decoded object is not kept: at edge scale
    decoded JSON is most of the process's memory, and every young one costs the garbage
    collector a scan; the few readers that need it (tables, deletions) decode the bytes."""

    raw: bytes
    rv: int
    # The selectable projection; equal projections of successive versions are one shared dict.
    fields: JSONDict

    @property
    def obj(self) -> JSONDict:
        decoded: JSONDict = orjson.loads(self.raw)
        return decoded


@dataclass(slots=True)
class Event:
    """One history event. It keeps bytes and a small selectable projection, not decoded objects:
    a history of thousands of events would otherwise pin thousands of superseded object
    versions (about ten times their JSON in CPython)."""

    seq: int  # position in the view's history, increasing by one per event
    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    line: bytes  # the whole watch line, built once and shared by every watcher
    # What selectors read (name, namespace, labels and the resource's selectable fields).
    fields: JSONDict
    # For a MODIFIED that changed what selectors read: the previous projection and the previous
    # served bytes (shared with its Entry, not copied), since a watcher whose selector the
    # object leaves gets the old object as DELETED, as the apiserver's cacher sends. None when
    # no selector can tell the two versions apart, which is almost always.
    prev_fields: JSONDict | None
    prev_raw: bytes | None
    synthetic: bool
    # Per selection (namespace and selectors), the line its watchers get; many watchers share
    # one selection (every kube-proxy sends the same selectors), so each is computed once.
    selected: dict[str, bytes] | None = None

    def object(self) -> JSONDict:
        """The event's whole object (decoded again: only table watchers need it)."""
        obj: JSONDict = orjson.loads(self.line)["object"]
        return obj


class Expired(Exception):
    """The requested resourceVersion is older than the history can replay."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


# The default bound on all views' watch histories together. At 3-4 KB per EndpointSlice event
# that is about 10,000 events: far more than a resuming kube-proxy needs.
DEFAULT_HISTORY_BYTES = 32 << 20
_TRIM_EVERY = 512
# Watchers are woken at most this often (seconds); see View.wake. Under a burst (the last
# wake carried BURST_EVENTS or more) the interval stretches: at 2,000 events/s the per-write
# cost of twenty watchers dominated, and that rate's latency budget (20 ms) has room.
DEFAULT_WAKE_INTERVAL = 0.003
BURST_WAKE_INTERVAL = 0.008
BURST_EVENTS = 4
# Per event beyond its bytes: the Event, its projection dicts and the history list's slot.
_EVENT_OVERHEAD = 600


def _footprint(ev: Event) -> int:
    return len(ev.line) + (len(ev.prev_raw) if ev.prev_raw is not None else 0) + _EVENT_OVERHEAD


_SELECTABLE_META = ("name", "namespace", "labels")


def selectable(resource: Resource, obj: JSONDict) -> JSONDict:
    """The parts of ``obj`` selectors can read: metadata and the resource's extra fields."""
    meta = obj.get("metadata") or {}
    # Only what selectors read, so a superseded version's annotations and owners are not pinned.
    out: JSONDict = {"metadata": {k: meta[k] for k in _SELECTABLE_META if k in meta}}
    for path in resource.extra_fields:
        top, _, sub = path.partition(".")  # every selectable extra field is two levels deep
        src = obj.get(top)
        if isinstance(src, dict) and sub in src:
            out.setdefault(top, {})[sub] = src[sub]
    return out


def rv_of(obj: JSONDict) -> int:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return 0


def stamp(obj: JSONDict, rv: int) -> JSONDict:
    """A shallow copy of ``obj`` whose metadata.resourceVersion is ``rv``."""
    meta = dict(obj.get("metadata") or {})
    meta["resourceVersion"] = str(rv)
    out = dict(obj)
    out["metadata"] = meta
    return out


class View:
    def __init__(
        self, resource: Resource, *, max_events: int = 20000, budget: HistoryBudget | None = None,
        wake_interval: float = DEFAULT_WAKE_INTERVAL,
    ) -> None:
        self.resource = resource
        self.objects: dict[str, Entry] = {}
        self.rv = 0
        self.synced = False
        self.max_events = max_events
        self.budget = budget if budget is not None else HistoryBudget(DEFAULT_HISTORY_BYTES)
        self.budget.views.append(self)
        self._events: list[Event] = []
        self._start = 0  # index of the oldest live event in _events (trimmed lazily)
        self.history_bytes = 0
        self.resets = 0  # with head() and rv, identifies the served state (list bodies are cached by it)
        self._next_seq = 0
        # A client resuming from an RV below this has lost events to eviction.
        self._expired_below = 0
        self._changed = asyncio.Event()
        self._waiters: set[asyncio.Future[None]] = set()
        self.wake_interval = wake_interval
        self.burst_wake_interval = max(wake_interval, BURST_WAKE_INTERVAL)
        self._last_wake = -self.burst_wake_interval
        self._seq_at_wake = 0
        self._last_batch = 0  # events the last wake carried
        self._wake_handle: asyncio.TimerHandle | None = None
        self._sorted_keys: list[str] | None = None
        self._kind_prefix = orjson.dumps({"kind": resource.kind, "apiVersion": resource.api_version})[:-1] + b","
        self.watchers = 0

    # ---- serialization -------------------------------------------------------------

    def entry(self, obj: JSONDict, fields: JSONDict | None = None) -> Entry:
        # orjson's buffer keeps its spare capacity (about 3.5 times the JSON for typical
        # objects); an exact copy costs well under a microsecond and the cache keeps these bytes.
        raw = memoryview(orjson.dumps(obj)).tobytes()
        return Entry(raw, rv_of(obj), fields if fields is not None else selectable(self.resource, obj))

    def typed(self, raw: bytes) -> bytes:
        """Item bytes with kind and apiVersion added, as single GETs and watch events need."""
        return self._kind_prefix + raw[1:]

    def watch_line(self, type_: str, raw: bytes) -> bytes:
        return b'{"type":"' + type_.encode() + b'","object":' + self.typed(raw) + b"}\n"

    @staticmethod
    def retype(line: bytes, type_: str) -> bytes:
        """The same watch line with another event type (a selector transition)."""
        return b'{"type":"' + type_.encode() + b'",' + line[line.index(b'"object":'):]

    def bookmark_line(self, rv: int, *, initial_events_end: bool = False) -> bytes:
        meta: JSONDict = {"resourceVersion": str(rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.resource.kind, "apiVersion": self.resource.api_version, "metadata": meta}
        return orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

    # ---- writes (the cache calls these) ----------------------------------------------

    def reset(self, objects: Iterable[JSONDict], rv: int) -> None:
        """Load a full state of decoded objects without events (the cache itself builds its
        entries and calls ``load``)."""
        self.load({_key(obj): self.entry(obj) for obj in objects}, rv)

    def load(self, entries: dict[str, Entry], rv: int) -> None:
        """Load a full state without events: the first sync, or a snapshot at start-up."""
        self.objects = entries
        self._sorted_keys = None
        self.resets += 1
        self.rv = max(self.rv, rv)
        # Nothing before this state can be replayed.
        self._expired_below = self.rv
        self._events.clear()
        self._start = 0
        self.budget.used -= self.history_bytes
        self.history_bytes = 0
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
                entry = self.entry(stamp(old.obj, rv), old.fields)
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
            prev_fields: JSONDict | None = None
            prev_raw: bytes | None = None
            if type_ == "MODIFIED" and old is not None:
                if old.fields == entry.fields:
                    entry.fields = old.fields
                else:  # a label or selectable field changed
                    prev_fields, prev_raw = old.fields, old.raw
            ev = Event(self._next_seq, rv, type_, self.watch_line(type_, entry.raw), entry.fields, prev_fields,
                       prev_raw, synthetic)
            self._next_seq += 1
            self._events.append(ev)
            fp = _footprint(ev)
            self.history_bytes += fp
            self.budget.used += fp
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
            "historyBytes": self.history_bytes,
            "oldestResumableRV": str(self._expired_below),
            "watchers": self.watchers,
        }

    # ---- internals -------------------------------------------------------------------

    def wake(self) -> None:
        """Wake the waiting watchers: at once, unless they were woken less than
        ``wake_interval`` ago; then once when it has passed, for every event since.

        At 2,000 events/s each upstream event arrives on its own, and waking twenty watchers
        per event costs twenty task steps and socket writes per event, more CPU than the
        events themselves. Coalescing bounds that to one wake per interval whatever the rate,
        for at most ``wake_interval`` of added latency (``burst_wake_interval`` while the
        previous wake carried a burst), and none when events are sparse.
        """
        if self._wake_handle is not None:
            return  # a wake is already due; it will cover this event too
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): nobody can be waiting
            self._release_waiters()
            return
        now = loop.time()
        burst = self._last_batch >= BURST_EVENTS
        due = self._last_wake + (self.burst_wake_interval if burst else self.wake_interval)
        if now >= due:
            self._last_wake = now
            self._release_waiters()
        else:
            self._wake_handle = loop.call_at(due, self._due_wake)

    def _due_wake(self) -> None:
        self._wake_handle = None
        self._last_wake = asyncio.get_running_loop().time()
        self._release_waiters()

    def _release_waiters(self) -> None:
        self._last_batch = self._next_seq - self._seq_at_wake
        self._seq_at_wake = self._next_seq
        self._changed.set()
        self._changed = asyncio.Event()
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            _release(fut)

    def _evict(self) -> None:
        while self.history_depth() > self.max_events:
            self.evict_oldest_group()
        budget = self.budget
        while budget.used > budget.max_bytes:
            # The view holding the most history gives way, whichever view just grew.
            victim = max(budget.views, key=_history_size)
            if not victim.history_depth():
                break
            victim.evict_oldest_group()

    def evict_oldest_group(self) -> None:
        """Drop the oldest RV group: whole groups, so no client gets half of a synthesized burst."""
        events = self._events
        rv = events[self._start].rv
        had_synthetic = False
        while self._start < len(events) and events[self._start].rv == rv:
            ev = events[self._start]
            had_synthetic |= ev.synthetic
            fp = _footprint(ev)
            self.history_bytes -= fp
            self.budget.used -= fp
            self._start += 1
        self._expired_below = max(self._expired_below, rv + 1 if had_synthetic else rv)
        # Evicted events stay in the list until this cut (a memmove of the live pointers), so
        # keep the dead prefix short: it holds the events' bytes, not just pointers.
        if self._start >= _TRIM_EVERY:
            del events[: self._start]
            self._start = 0


class HistoryBudget:
    """One memory bound for the watch histories of all views (real bytes, estimated)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.views: list[View] = []


def _history_size(view: View) -> int:
    return view.history_bytes


def _release(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _ev_rv(ev: Event) -> int:
    return ev.rv


def _key(obj: JSONDict) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])
