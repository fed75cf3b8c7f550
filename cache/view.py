"""What the wrapper serves for one resource: current objects and a bounded event history.

Every object is serialized once, when it enters the view; lists and watch events are then
built by joining bytes. Watchers do not get queues of their own: each one keeps a cursor
into the shared history and wakes when it grows. A watcher whose cursor falls out of the
history has fallen too far behind and must relist (410), so memory never grows per client.

resourceVersions are the apiserver's. An event's object always carries the event's RV, and
RVs never go backwards within a view. Changes come in batches (an upstream event plus the
re-filtered objects it affects; a node relabel re-filters many slices at the node's RV): every
event of a batch but the last is stamped with the view's RV as it was, and only the last one
is stamped with the batch's RV and advances the view to it. A watch resuming from RV R starts
at the first event at or after R, skipping the one event that advanced the view to R: a client
that listed at R, or saw a whole batch ending at R, gets nothing at R again; a client cut
mid-batch (its last RV is the view's RV before the batch) gets the rest, at worst with a
harmless duplicate, never with a gap.

When the upstream's resourceVersions go back (an etcd restore, a cluster rebuilt behind the
same address), the cache loads the new state as a new timeline: the view's RV drops, its
history is cleared and every open watch gets 410. RVs of the two timelines overlap
numerically, so the view remembers the highest RV it served before (``old_max``) and which
RVs up to it it has taken since; a resume from any other RV up to ``old_max`` gets 410.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cache.timers import Timers
from kubeapi.resources import Resource, object_key
from kubeapi.rv import rv_of
from kubeapi.selectors import FieldSelector
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
    # True for the event that moved the view's RV to ``rv`` (the last of its batch): a client
    # at ``rv`` has seen it. Other events at ``rv`` came after the view reached it.
    advanced: bool

    def object(self) -> JSONDict:
        """The event's whole object (decoded again: only table watchers need it)."""
        obj: JSONDict = orjson.loads(self.line)["object"]
        return obj


class Expired(Exception):
    """The requested resourceVersion is older than the history can replay, or from another timeline."""

    def __init__(self, requested: int, oldest: int, message: str = "") -> None:
        super().__init__(message or f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


# The default bound on all views' watch histories together. At 3-4 KB per EndpointSlice event
# that is about 10,000 events: far more than a resuming kube-proxy needs.
DEFAULT_HISTORY_BYTES = 32 << 20
_TRIM_EVERY = 512
# Watchers are woken at most this often (seconds), longer after a wake that carried
# BURST_EVENTS or more; see View.wake (figures: bench/, event latency at 2,000 events/s).
DEFAULT_WAKE_INTERVAL = 0.003
BURST_WAKE_INTERVAL = 0.008
BURST_EVENTS = 4
# Per event beyond its bytes: the Event, its projection dicts and the history list's slot.
_EVENT_OVERHEAD = 600
# After a timeline reset: how many RVs up to the old timeline's highest one a view remembers
# having taken. Older ones are forgotten, and a resume from them gets 410, which is always safe.
ISSUED_RVS_KEPT = 4096


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


def exact_json(obj: JSONDict) -> bytes:
    """``obj`` as JSON bytes of exactly its length: orjson's result keeps its spare buffer
    capacity (about 3.5 times the JSON for typical objects), and the cache keeps these bytes."""
    return memoryview(orjson.dumps(obj)).tobytes()


def stamp(obj: JSONDict, rv: int) -> JSONDict:
    """A shallow copy of ``obj`` whose metadata.resourceVersion is ``rv``."""
    meta = dict(obj.get("metadata") or {})
    meta["resourceVersion"] = str(rv)
    out = dict(obj)
    out["metadata"] = meta
    return out


class View:
    """One resource's served objects, as JSON bytes, and their bounded event history.

    Owns the served entries, the history and the wake-ups of waiting watchers. Written only
    through ``cache.publisher.Publisher`` (``publish``, ``load``, ``advance``, ``clear``) for
    ``cache.cluster.ClusterCache``; the HTTP front reads it only through ``cache.reader.ViewReader``,
    which this class implements.
    """

    def __init__(
        self, resource: Resource, *, max_events: int = 20000, budget: HistoryBudget | None = None,
        wake_interval: float = DEFAULT_WAKE_INTERVAL, timers: Callable[[], Timers] = asyncio.get_running_loop,
        scope: FieldSelector | None = None,
    ) -> None:
        self.resource = resource
        # The objects this view holds all of (None: the whole collection), as its upstream
        # reflector selects them (ClusterCache's ``scopes``).
        self.scope = scope
        self.objects: dict[str, Entry] = {}
        self.rv = 0
        self.synced = False
        self.max_events = max_events
        self.budget = budget if budget is not None else HistoryBudget(DEFAULT_HISTORY_BYTES)
        self.budget.views.append(self)
        self._events: list[Event] = []
        self._start = 0  # index of the oldest live event in _events (trimmed lazily)
        self.history_bytes = 0
        self.resets = 0  # with head() and rv, identifies the served state (``version``)
        self._next_seq = 0
        # A client resuming from an RV below this has lost events to eviction.
        self._expired_below = 0
        # After the upstream's RVs went back: the highest RV served on an earlier timeline, and
        # the RVs up to it this view has taken since (insertion-ordered, bounded).
        self.old_max = 0
        self._issued: dict[int, None] = {}
        self.timeline_resets = 0
        self._changed = asyncio.Event()
        self._waiters: set[asyncio.Future[None]] = set()
        self.wake_interval = wake_interval
        self.burst_wake_interval = max(wake_interval, BURST_WAKE_INTERVAL)
        self._last_wake = -self.burst_wake_interval
        self._seq_at_wake = 0
        self._last_batch = 0  # events the last wake carried
        self._wake_handle: object | None = None
        # The wake-ups' clock and timers: the running loop (tests: a fake clock they advance).
        self._timers = timers
        self._sorted_keys: list[str] | None = None
        self._kind_prefix = orjson.dumps({"kind": resource.kind, "apiVersion": resource.api_version})[:-1] + b","

    # ---- serialization -------------------------------------------------------------

    def entry(self, obj: JSONDict, fields: JSONDict | None = None) -> Entry:
        return Entry(exact_json(obj), rv_of(obj), fields if fields is not None else selectable(self.resource, obj))

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
        self.load({object_key(obj): self.entry(obj) for obj in objects}, rv)

    def load(self, entries: dict[str, Entry], rv: int, *, new_timeline: bool = False) -> None:
        """Load a full state without events: the first sync, or a snapshot at start-up.

        ``new_timeline``: the upstream's resourceVersions went back and this is its state on the
        new timeline. The view's RV becomes ``rv`` even if lower, and every open watch ends
        with 410 (its cursor now points before the history), so clients relist.
        """
        self.objects = entries
        self._sorted_keys = None
        self.resets += 1
        if new_timeline and self.synced:
            self.old_max = max(self.old_max, self.rv)
            self._issued.clear()
            self.rv = rv
            self.timeline_resets += 1
            self._next_seq += 1
        else:
            self.rv = max(self.rv, rv)
        self._note_rv(self.rv)
        # Nothing before this state can be replayed.
        self._expired_below = self.rv
        self._forget_old_timeline()
        self._events.clear()
        self._start = 0
        self.budget.used -= self.history_bytes
        self.history_bytes = 0
        self.synced = True
        self.wake()

    def publish(self, changes: Sequence[tuple[str, JSONDict]], rv: int, *,
                encoded: Mapping[str, bytes] | None = None) -> int:
        """Record one batch of ``(type, obj)`` changes that together bring the view to ``rv``.

        Every event but the last is stamped with the view's RV as it was; the last is stamped
        ``rv`` and advances the view to it (an ``rv`` older than the view's is raised to it, and
        then no event advances). Callers put the upstream object's own event last. ``encoded``:
        the JSON of objects the caller already holds, by key, reused (not copied) where the
        stamp leaves the object as it is. Returns the number of events recorded.
        """
        current = self.rv
        target = max(rv, current)
        # Deletions of objects the view does not hold make no event, and must not be "last".
        batch = [(t, o) for t, o in changes if t != "DELETED" or object_key(o) in self.objects]
        last = len(batch) - 1
        for i, (type_, obj) in enumerate(batch):
            ev_rv = target if i == last else current
            key = object_key(obj)
            old = self.objects.get(key)
            if type_ == "DELETED":
                assert old is not None
                # Deletions carry the last served state (filtered), like the apiserver's.
                entry = Entry(exact_json(stamp(old.obj, ev_rv)), ev_rv, old.fields)
                del self.objects[key]
                self._sorted_keys = None
            else:
                raw = encoded.get(key) if encoded else None
                if raw is not None and obj["metadata"].get("resourceVersion") == str(ev_rv):
                    entry = Entry(raw, ev_rv, selectable(self.resource, obj))
                else:  # the stamp sets the RV: known, not parsed back
                    entry = Entry(exact_json(stamp(obj, ev_rv)), ev_rv, selectable(self.resource, obj))
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
            ev = Event(self._next_seq, ev_rv, type_, self.watch_line(type_, entry.raw), entry.fields, prev_fields,
                       prev_raw, i == last and target > current)
            self._next_seq += 1
            self._events.append(ev)
            fp = _footprint(ev)
            self.history_bytes += fp
            self.budget.used += fp
        self._set_rv(target)
        self._evict()
        if batch:
            self.wake()
        return len(batch)

    def advance(self, rv: int) -> None:
        """Move the view's RV forward without an event (an upstream bookmark)."""
        if rv > self.rv:
            self._set_rv(rv)
            self.wake()

    def clear(self) -> None:
        """Back to a new view's state: no objects, no history, not synced, RV 0. For a cache
        that forgets a load that failed part-way, before any client has read it."""
        self.objects = {}
        self._sorted_keys = None
        self.resets += 1
        self.rv = 0
        self.synced = False
        self._expired_below = 0
        self.old_max = 0
        self._issued.clear()
        self._events.clear()
        self._start = 0
        self.budget.used -= self.history_bytes
        self.history_bytes = 0

    # ---- reads (cache.reader.ViewReader: the HTTP front calls these) ------------------

    @property
    def version(self) -> tuple[int, int, int]:
        return (self.resets, self._next_seq, self.rv)

    def get(self, key: str) -> Entry | None:
        return self.objects.get(key)

    def count(self) -> int:
        return len(self.objects)

    def oldest(self) -> int:
        return self._events[self._start].seq if self._start < len(self._events) else self._next_seq

    def sorted_entries(self) -> Iterator[Entry]:
        if self._sorted_keys is None:
            self._sorted_keys = sorted(self.objects)
        objects = self.objects
        for k in self._sorted_keys:
            yield objects[k]

    def cursor_after(self, rv: int) -> int:
        """The history position from which a watch resuming at ``rv`` (not above the view's) starts.

        Raises Expired when events after ``rv`` have been evicted, or when ``rv`` may belong to
        an earlier upstream timeline.
        """
        if rv < self._expired_below:
            raise Expired(rv, self._expired_below)
        if rv <= self.old_max and rv not in self._issued:
            raise Expired(rv, self._expired_below, f"too old resource version: {rv} ({self._expired_below}): "
                          "the apiserver's resourceVersions went back since it was issued; relist")
        events = self._events
        i = bisect.bisect_left(events, rv, lo=self._start, key=_ev_rv)
        # The event that brought the view to rv has been seen by any client at rv (it listed,
        # or got a bookmark or an event at rv, after it); later events at rv came after.
        if i < len(events) and events[i].rv == rv and events[i].advanced:
            i += 1
        return events[i].seq if i < len(events) else self._next_seq

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

        A bare future and a timer, not ``asyncio.wait_for`` (a task per call on Python 3.11):
        every watcher waits once per batch (figures: bench/, event latency, 20 watchers).
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
            "timelineResets": self.timeline_resets,
        }

    # ---- internals -------------------------------------------------------------------

    def _set_rv(self, rv: int) -> None:
        self.rv = rv
        self._note_rv(rv)

    def _note_rv(self, rv: int) -> None:
        """Remember ``rv`` as taken on this timeline while it overlaps an earlier one's RVs.

        Every RV a client can get from the view (list, bookmark, event) is one the view's RV
        took: the last event of a batch sets it, the others carry the RV it already had.
        """
        if rv <= self.old_max and rv not in self._issued:
            self._issued[rv] = None
            if len(self._issued) > ISSUED_RVS_KEPT:
                del self._issued[next(iter(self._issued))]

    def _forget_old_timeline(self) -> None:
        # Once every RV up to old_max is expired anyway, the record has nothing left to decide.
        if self.old_max and self._expired_below > self.old_max:
            self.old_max = 0
            self._issued.clear()

    def wake(self) -> None:
        """Wake the waiting watchers: at once, unless they were woken less than
        ``wake_interval`` ago (``burst_wake_interval`` after a burst); then once when it has
        passed, for every event since. One wake per interval whatever the rate, at most an
        interval of added latency, none when events are sparse (figures: bench/, event latency).
        """
        if self._wake_handle is not None:
            return  # a wake is already due; it will cover this event too
        try:
            loop = self._timers()
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
        self._last_wake = self._timers().time()
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
        # A client at rv has seen the event that advanced the view to rv, not necessarily the
        # others at rv: if there were others, rv itself can no longer be resumed.
        only_advancing = True
        while self._start < len(events) and events[self._start].rv == rv:
            ev = events[self._start]
            only_advancing &= ev.advanced
            fp = _footprint(ev)
            self.history_bytes -= fp
            self.budget.used -= fp
            self._start += 1
        self._expired_below = max(self._expired_below, rv if only_advancing else rv + 1)
        self._forget_old_timeline()
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
