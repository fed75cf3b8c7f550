"""Object storage with one etcd-style resourceVersion counter and per-resource event history.

Every write bumps the single global counter, like etcd revisions, so RVs are comparable
across resources. Each stored object keeps its serialized bytes (without kind/apiVersion,
as list items are served) so lists and watches never re-serialize it.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field

import orjson

from kubeapi.resources import Resource
from kubeapi.types import JSONDict


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored object version. ``obj`` is never mutated after it is stored."""

    obj: JSONDict
    raw: bytes  # orjson of obj, without kind/apiVersion
    rv: int


@dataclass(slots=True)
class Event:
    """One change. For DELETED, ``entry`` is the final object stamped with the delete RV."""

    rv: int
    type: str
    key: str
    entry: Entry
    prev: Entry | None  # the object before the change (None for ADDED)
    line: bytes | None = None  # the watch line, built once on first use and shared by all watchers


class HistoryExpired(Exception):
    """A requested RV is older than the retained history (answered as 410 Expired)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Notifier:
    """Wakes every current waiter on ``notify``; futures are made lazily inside the running loop."""

    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    def future(self) -> asyncio.Future[None]:
        if self._fut is None or self._fut.done():
            self._fut = asyncio.get_running_loop().create_future()
        return self._fut

    def notify(self) -> None:
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)
        self._fut = None


async def wait_for_change(notifier: Notifier, timeout: float) -> None:
    """Wait until ``notifier`` fires or ``timeout`` passes; never cancels the shared future."""
    if timeout <= 0:
        return
    await asyncio.wait({notifier.future()}, timeout=timeout)


def encode(obj: JSONDict) -> bytes:
    return orjson.dumps(obj)


def with_type(resource: Resource, raw: bytes) -> bytes:
    """Object bytes with kind/apiVersion prepended, by splicing (no re-serialization)."""
    head = b'{"kind":"%s","apiVersion":"%s"' % (resource.kind.encode(), resource.api_version.encode())
    return head + (b"," + raw[1:] if len(raw) > 2 else b"}")


class ResourceStore:
    """Current objects and bounded history of one resource."""

    def __init__(self, resource: Resource, history_limit: int) -> None:
        self.resource = resource
        self.history_limit = max(1, history_limit)
        self._trim_step = max(1, min(256, self.history_limit // 4))
        self.objects: dict[str, Entry] = {}
        self.events: list[Event] = []
        self._event_rvs: list[int] = []  # parallel to events, for bisect
        # Watches may resume from any RV >= floor: all events after it are retained.
        self.floor = 0
        self.notifier = Notifier()
        self._sorted: list[str] | None = None

    def sorted_keys(self) -> list[str]:
        # Cached: lists at scale would otherwise sort thousands of keys per request.
        if self._sorted is None:
            self._sorted = sorted(self.objects)
        return self._sorted

    def append(self, event: Event) -> None:
        if event.type == "DELETED":
            if self.objects.pop(event.key, None) is not None:
                self._sorted = None
        else:
            if event.key not in self.objects:
                self._sorted = None
            self.objects[event.key] = event.entry
        self.events.append(event)
        self._event_rvs.append(event.rv)
        # Trim in small steps: dropping half the history at once freed tens of thousands of
        # events in one go and stalled the loop for 50-100 ms (the benchmark saw it as latency).
        # A step still moves only pointers, so trimming stays cheap per event.
        if len(self.events) > self.history_limit + self._trim_step:
            self._drop(len(self.events) - self.history_limit)
        self.notifier.notify()

    def _drop(self, count: int) -> None:
        if count <= 0:
            return
        self.floor = max(self.floor, self._event_rvs[count - 1])
        del self.events[:count]
        del self._event_rvs[:count]

    def reset(self, objects: dict[str, Entry], floor: int) -> None:
        """Hold ``objects`` and no history: resumes from below ``floor`` are expired."""
        self.objects = dict(objects)
        self._sorted = None
        self.events.clear()
        self._event_rvs.clear()
        self.floor = floor
        self.notifier.notify()

    def compact(self, rv: int) -> None:
        self._drop(bisect.bisect_right(self._event_rvs, rv))
        self.floor = max(self.floor, rv)

    def events_after(self, rv: int) -> list[Event]:
        """Events with RV > ``rv``; raises HistoryExpired if some of them were dropped."""
        if rv < self.floor:
            raise HistoryExpired(rv, self.floor + 1)
        i = bisect.bisect_right(self._event_rvs, rv)
        return self.events[i:] if i < len(self.events) else []

    def snapshot_at(self, rv: int) -> dict[str, Entry]:
        """The objects as they were at ``rv``, rebuilt by undoing later events."""
        later = self.events_after(rv)
        if not later:
            return self.objects
        state = dict(self.objects)
        for ev in reversed(later):
            if ev.prev is None:
                state.pop(ev.key, None)
            else:
                state[ev.key] = ev.prev
        return state


@dataclass(frozen=True, slots=True)
class SavedState:
    """The objects of every resource and the revision counter at one instant (an etcd backup)."""

    rv: int
    objects: dict[str, dict[str, Entry]]


@dataclass(slots=True)
class Store:
    """All resources plus the global revision counter."""

    history_limit: int = 10_000
    rv: int = 1
    compacted: int = 0
    resources: dict[str, ResourceStore] = field(default_factory=dict)
    changed: Notifier = field(default_factory=Notifier)

    def of(self, resource: Resource) -> ResourceStore:
        rs = self.resources.get(resource.plural)
        if rs is None:
            rs = self.resources[resource.plural] = ResourceStore(resource, self.history_limit)
            rs.floor = self.compacted
        return rs

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def commit(self, resource: Resource, etype: str, key: str, obj: JSONDict, prev: Entry | None, rv: int) -> Entry:
        """Store ``obj`` (already stamped with ``rv``) and publish the event."""
        entry = Entry(obj, encode(obj), rv)
        self.of(resource).append(Event(rv, etype, key, entry, prev))
        self.changed.notify()
        return entry

    def save(self) -> SavedState:
        # Entries are immutable, so copying the dicts is a consistent copy.
        return SavedState(self.rv, {name: dict(rs.objects) for name, rs in self.resources.items()})

    def restore(self, state: SavedState) -> None:
        """Go back to ``state``, as etcd restored from a backup: the revision counter goes back,
        and the history is gone (a resume from an older RV gets 410, from a newer one waits)."""
        self.rv = state.rv
        self.compacted = state.rv
        for name, rs in self.resources.items():
            rs.reset(state.objects.get(name, {}), state.rv)
        self.changed.notify()

    def compact(self, rv: int | None = None) -> int:
        target = self.rv if rv is None else min(rv, self.rv)
        self.compacted = max(self.compacted, target)
        for rs in self.resources.values():
            rs.compact(target)
        return target
