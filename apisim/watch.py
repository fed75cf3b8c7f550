"""WATCH streams: synthetic initial state, resume from history, bookmarks, selector transitions.

One newline-terminated JSON event per line; every embedded object carries kind/apiVersion.
Errors after the stream started (too old / too large RV) are sent as an ERROR event, the
way the apiserver's cacher does, then the stream ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from apisim.listing import Filter
from apisim.store import Entry, Event, HistoryExpired, Notifier, Store, encode, with_type
from kubeapi import status, tables
from kubeapi.partial import partial_object
from kubeapi.resources import Resource
from kubeapi.status import StatusError
from kubeapi.types import JSONDict

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_BATCH = 500  # events per socket write during the initial burst


@dataclass(slots=True)
class WatchControl:
    """Shared switches the fault hooks flip; watchers wake on ``notifier``."""

    bookmark_interval: float = 60.0
    paused: bool = False
    stopping: bool = False
    notifier: Notifier = field(default_factory=Notifier)
    requests: dict[int, web.BaseRequest] = field(default_factory=dict)  # requests are unhashable

    def poke(self) -> None:
        self.notifier.notify()

    def close_all(self) -> int:
        """Drop every open watch connection without ending the chunked body (a broken stream)."""
        n = 0
        for req in list(self.requests.values()):
            if req.transport is not None:
                req.transport.close()
                n += 1
        self.requests.clear()
        self.poke()
        return n


@dataclass(frozen=True, slots=True)
class TableMode:
    api_version: str
    include_object: str


@dataclass(slots=True)
class WatchRequest:
    resource: Resource
    flt: Filter
    resource_version: int | None
    send_initial_events: bool | None
    allow_bookmarks: bool
    timeout: float
    table: TableMode | None = None
    # Non-empty: every event object is a PartialObjectMetadata in this apiVersion.
    partial: str = ""


def _line(etype: str, obj_bytes: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (etype.encode(), obj_bytes)


def error_line(err: StatusError) -> bytes:
    return _line("ERROR", orjson.dumps(err.status))


class Encoder:
    """Turns stored entries into watch lines: JSON objects, one-row Tables, or
    PartialObjectMetadata (``partial``: its apiVersion)."""

    def __init__(self, resource: Resource, table: TableMode | None, partial: str = "") -> None:
        self.resource = resource
        self.table = table
        self.partial = partial
        self._headers_sent = False

    def entry(self, etype: str, entry: Entry) -> bytes:
        if self.partial:
            return _line(etype, orjson.dumps(partial_object(entry.obj, self.partial)))
        if self.table is None:
            return _line(etype, with_type(self.resource, entry.raw))
        return _line(etype, orjson.dumps(self._table([entry.obj])))

    def event(self, ev: Event) -> bytes:
        if self.table is not None or self.partial:
            return self.entry(ev.type, ev.entry)
        if ev.line is None:
            ev.line = self.entry(ev.type, ev.entry)
        return ev.line

    def _table(self, objs: list[JSONDict]) -> JSONDict:
        assert self.table is not None
        # Only the first event of a Table watch carries the column definitions.
        first, self._headers_sent = not self._headers_sent, True
        return tables.render_table(self.resource, objs, list_rv=None, include_object=self.table.include_object,
                                   with_headers=first, api_version=self.table.api_version)

    def bookmark(self, rv: int, initial_end: bool = False) -> bytes:
        meta: JSONDict = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        if self.partial:
            obj: JSONDict = partial_object({"metadata": meta}, self.partial)
        elif self.table is not None:
            obj = {"kind": "Table", "apiVersion": self.table.api_version, "metadata": meta,
                   "columnDefinitions": None, "rows": None}
        else:
            obj = {"kind": self.resource.kind, "apiVersion": self.resource.api_version, "metadata": meta}
        return _line("BOOKMARK", orjson.dumps(obj))


def convert(ev: Event, flt: Filter, enc: Encoder) -> bytes | None:
    """The line a watcher with ``flt`` sees for ``ev``, or None.

    An object leaving the selection is sent as DELETED with its previous content and the new
    RV; one entering it as ADDED (apiserver cache_watcher.convertToWatchEvent).
    """
    if not flt.narrows:
        return enc.event(ev)
    now = flt.matches(ev.entry)
    if ev.type != "MODIFIED":
        return enc.event(ev) if now else None
    before = ev.prev is not None and flt.matches(ev.prev)
    if now and before:
        return enc.event(ev)
    if now:
        return enc.entry("ADDED", ev.entry)
    if before:
        assert ev.prev is not None
        obj = orjson.loads(ev.prev.raw)
        obj["metadata"]["resourceVersion"] = str(ev.rv)
        return enc.entry("DELETED", Entry(obj, encode(obj), ev.rv))
    return None


def _chunks(lines: Iterable[bytes]) -> Iterable[bytes]:
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= _BATCH:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)


async def run_watch(resp: web.StreamResponse, store: Store, ctl: WatchControl, req: WatchRequest,
                    wait_rv: Callable[[int], Awaitable[bool]]) -> None:
    """Stream events into an already prepared response until timeout, stop or an error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + req.timeout
    rs = store.of(req.resource)
    enc = Encoder(req.resource, req.table, req.partial)
    rv = req.resource_version

    if rv:
        # Both resume and "not older than" need the store to have reached rv.
        reached = await wait_rv(rv)
        if not reached:
            await resp.write(error_line(status.too_large_rv(rv, store.rv)))
            return

    if req.send_initial_events or (req.send_initial_events is None and not rv):
        # Synthetic ADDED for the current state (RV unset/"0", or a WatchList).
        snapshot_rv = store.rv
        entries = [rs.objects[k] for k in rs.sorted_keys()]
        lines = (enc.entry("ADDED", e) for e in entries if not req.flt.narrows or req.flt.matches(e))
        for chunk in _chunks(lines):
            await resp.write(chunk)
        cursor = snapshot_rv
        if req.send_initial_events:
            await resp.write(enc.bookmark(cursor, initial_end=True))
    elif req.send_initial_events is False:
        cursor = rv or store.rv
    else:
        assert rv is not None
        cursor = rv

    next_bookmark = loop.time() + ctl.bookmark_interval
    while not ctl.stopping:
        if ctl.paused:
            # Half-open simulation: the connection stays up and nothing is sent, not even bookmarks
            # or the end of the stream at its timeout.
            await asyncio.wait({ctl.notifier.future()})
            continue
        now = loop.time()
        if now >= deadline:
            return
        try:
            events = rs.events_after(cursor)
        except HistoryExpired as exc:
            await resp.write(error_line(status.expired(str(exc))))
            return
        # No await between reading the history and this: every event of this resource up to
        # store.rv has been read, so the cursor (and a bookmark) may advance to it.
        caught_up = store.rv
        out = [line for line in (convert(ev, req.flt, enc) for ev in events) if line is not None]
        cursor = caught_up
        if out:
            for chunk in _chunks(out):
                await resp.write(chunk)
        now = loop.time()
        if req.allow_bookmarks and now >= next_bookmark:
            await resp.write(enc.bookmark(cursor))
            next_bookmark = now + ctl.bookmark_interval
        if rs.events and rs.events[-1].rv > cursor:
            continue  # more arrived while writing
        wake = min(deadline, next_bookmark) if req.allow_bookmarks else deadline
        await asyncio.wait({rs.notifier.future(), ctl.notifier.future()}, timeout=max(0.0, wake - loop.time()),
                           return_when=asyncio.FIRST_COMPLETED)  # the default waits for *all* futures
