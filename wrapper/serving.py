"""List, get and watch answered from a View, following the apiserver's wire protocol.

This module knows HTTP and the List/Watch protocol; what the objects contain (topology)
was decided upstream of it, in the cache.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from aiohttp import web

from cache.view import Entry, Event, Expired, View, stamp
from kubeapi import status, tables
from kubeapi.status import StatusError
from kubeapi.types import JSONDict
from wrapper.query import ListOptions

log = logging.getLogger(__name__)

JSON = "application/json"


@dataclass
class ServeSettings:
    bookmark_interval: float = 60.0
    # How long a request waits for a view that is behind the client's RV (the apiserver: 3 s).
    too_large_wait: float = 3.0
    # How long a request waits for the first sync before answering 429.
    sync_wait: float = 3.0
    # Watches without timeoutSeconds end after [min, 2*min), like the apiserver's minRequestTimeout.
    default_watch_timeout: float = 1800.0
    # A watcher further behind than this many history events gets a 410 and relists.
    max_backlog: int = 10_000
    # A client that takes longer than this to accept one write has stopped reading: drop it.
    write_timeout: float = 30.0


Predicate = Callable[[JSONDict], bool]


def predicate(opts: ListOptions) -> Predicate | None:
    label, field = opts.label, opts.field
    if label is None and field is None:
        return None

    def match(obj: JSONDict) -> bool:
        if label is not None and not label.matches((obj.get("metadata") or {}).get("labels")):
            return False
        return field is None or field.matches(obj)

    return match


def json_response(body: bytes, status_code: int = 200) -> web.Response:
    return web.Response(body=body, status=status_code, content_type=JSON)


def status_response(err: StatusError) -> web.Response:
    resp = json_response(orjson.dumps(err.status), err.code)
    retry = (err.status.get("details") or {}).get("retryAfterSeconds")
    if retry:
        resp.headers["Retry-After"] = str(retry)
    return resp


async def wait_synced(view: View, settings: ServeSettings) -> None:
    if view.synced:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.sync_wait
    while not view.synced and loop.time() < deadline:
        await view.wait(view.head(), deadline - loop.time())
    if not view.synced:
        # What the apiserver's cacher answers while it initializes; clients retry.
        raise StatusError(status.failure(429, "storage is (re)initializing", "TooManyRequests",
                                         {"retryAfterSeconds": 1}))


async def ensure_rv(view: View, rv: int, settings: ServeSettings) -> None:
    if rv > view.rv and not await view.wait_for_rv(rv, settings.too_large_wait):
        raise status.too_large_rv(rv, view.rv)


def _matching(entries: Iterable[Entry], pred: Predicate | None) -> list[Entry]:
    if pred is None:
        return list(entries)
    return [e for e in entries if pred(e.fields)]


async def serve_list(
    request: web.Request, view: View, opts: ListOptions, settings: ServeSettings, namespace: str | None
) -> web.StreamResponse:
    await wait_synced(view, settings)
    if opts.resource_version and opts.resource_version_match != "Exact":
        await ensure_rv(view, opts.resource_version, settings)
    if opts.resource_version_match == "Exact" and opts.resource_version != view.rv:
        # Only the current state is kept; older exact snapshots are gone.
        raise status.expired(f"too old resource version: {opts.resource_version} ({view.rv})")
    pred = predicate(opts)
    res = view.resource
    table = tables.wants_table(request.headers.get("Accept"))
    if table:
        entries = _matching(_in_namespace(view, namespace), pred)
        doc = tables.render_table(
            res, [e.obj for e in entries], list_rv=str(view.rv),
            include_object=request.query.get("includeObject", "Metadata"),
            api_version=tables.table_api_version(request.headers.get("Accept")),
        )
        return json_response(orjson.dumps(doc))
    gzip_ok = "gzip" in request.headers.get("Accept-Encoding", "")
    body, gzipped = _list_body(view, namespace, opts, pred, gzip_ok)
    resp = json_response(body)
    if gzipped:
        resp.headers["Content-Encoding"] = "gzip"
        resp.headers["Vary"] = "Accept-Encoding"
    return resp


# List bodies of each view's current version, per selection: kube-proxies and kubectl ask for
# the same lists again and again between changes, so joining (and gzipping) them once per view
# version is enough. Bodies of older versions can never be served again and are dropped at once
# (an EndpointSlice list is megabytes).
_ListKey = tuple[object, ...]
_LIST_CACHE: weakref.WeakKeyDictionary[View, tuple[_ListKey, dict[_ListKey, tuple[bytes, bytes | None]]]] = (
    weakref.WeakKeyDictionary()
)
_LIST_CACHE_SIZE = 8  # selections per version
GZIP_MIN_BYTES = 128 * 1024  # the apiserver compresses non-watch responses above this size


def _list_body(
    view: View, namespace: str | None, opts: ListOptions, pred: Predicate | None, gzip_ok: bool
) -> tuple[bytes, bool]:
    version = (view.resets, view.head(), view.rv)
    cached_version, per_view = _LIST_CACHE.get(view, (None, {}))
    if cached_version != version:
        per_view = {}
        _LIST_CACHE[view] = (version, per_view)
    key = (namespace, opts.label, opts.field)
    cached = per_view.get(key)
    if cached is None:
        res = view.resource
        entries = _matching(_in_namespace(view, namespace), pred)
        head = orjson.dumps({"kind": res.list_kind, "apiVersion": res.api_version,
                             "metadata": {"resourceVersion": str(view.rv)}})
        body = head[:-1] + b',"items":[' + b",".join(e.raw for e in entries) + b"]}"
        cached = (body, None)
        if len(per_view) >= _LIST_CACHE_SIZE:
            per_view.pop(next(iter(per_view)))
        per_view[key] = cached
    body, compressed = cached
    if not gzip_ok or len(body) <= GZIP_MIN_BYTES:
        return body, False
    if compressed is None:
        compressed = gzip.compress(body, compresslevel=1)
        per_view[key] = (body, compressed)
    return compressed, True


def _in_namespace(view: View, namespace: str | None) -> Iterable[Entry]:
    if not namespace:
        return view.sorted_entries()
    return (e for e in view.sorted_entries() if e.fields["metadata"].get("namespace") == namespace)


async def serve_get(
    request: web.Request, view: View, settings: ServeSettings, namespace: str | None, name: str
) -> web.StreamResponse:
    await wait_synced(view, settings)
    key = f"{namespace}/{name}" if namespace else name
    entry = view.objects.get(key)
    res = view.resource
    if entry is None:
        raise status.not_found(res.group, res.plural, name)
    if tables.wants_table(request.headers.get("Accept")):
        doc = tables.render_table(res, [entry.obj], list_rv=None,
                                  include_object=request.query.get("includeObject", "Metadata"),
                                  api_version=tables.table_api_version(request.headers.get("Accept")))
        return json_response(orjson.dumps(doc))
    return json_response(view.typed(entry.raw))


@dataclass
class WatchInfo:
    """One open client watch, for the debug page and metrics."""

    resource: str
    query: str
    peer: str
    started: float
    view: View
    cursor: int = 0
    events_out: int = 0

    @property
    def backlog(self) -> int:
        """History events not yet sent to this client (selectors may skip some)."""
        return max(self.view.head() - self.cursor, 0)


class WatchRegistry:
    """Open watch responses, so shutdown can end them, and debug pages and tests can count them."""

    def __init__(self) -> None:
        self.open: weakref.WeakSet[web.StreamResponse] = weakref.WeakSet()
        self.tasks: set[asyncio.Task[object]] = set()
        self.watches: dict[asyncio.Task[object], WatchInfo] = {}
        self.closing = False
        self.events_out = 0

    def __len__(self) -> int:
        return len(self.tasks)


async def serve_watch(
    request: web.Request,
    view: View,
    opts: ListOptions,
    settings: ServeSettings,
    namespace: str | None,
    registry: WatchRegistry,
) -> web.StreamResponse:
    await wait_synced(view, settings)
    accept = request.headers.get("Accept")
    table = tables.wants_table(accept)
    writer = _EventWriter(view, predicate(opts), namespace, table, tables.table_api_version(accept) if table else "",
                          selection=sys.intern(repr((namespace, opts.label, opts.field))))
    resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
    # Headers go out now: clients must see a quiet watch as open, not hung.
    await resp.prepare(request)
    task = asyncio.current_task()
    assert task is not None
    registry.open.add(resp)
    registry.tasks.add(task)
    info = WatchInfo(view.resource.plural, request.query_string, str(request.remote), time.time(), view, view.head())
    registry.watches[task] = info
    view.watchers += 1
    log.debug("watch start %s from %s", request.path_qs, request.remote)
    try:
        await _stream(resp, view, opts, settings, writer, registry, info)
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    except _ClientStalled:
        log.info("watch %s from %s: client stopped reading for %.0fs; closing it", request.path_qs[:200],
                 request.remote, settings.write_timeout)
        if request.transport is not None:
            request.transport.abort()
    finally:
        view.watchers -= 1
        registry.tasks.discard(task)
        registry.watches.pop(task, None)
        log.debug("watch end %s: %d events in %.1fs", request.path_qs, info.events_out, time.time() - info.started)
    return resp


async def _stream(
    resp: web.StreamResponse,
    view: View,
    opts: ListOptions,
    settings: ServeSettings,
    writer: _EventWriter,
    registry: WatchRegistry,
    info: WatchInfo,
) -> None:
    loop = asyncio.get_running_loop()
    if opts.timeout_seconds is not None:
        timeout = float(opts.timeout_seconds)
    else:
        timeout = settings.default_watch_timeout * (1 + random.random())
    deadline = loop.time() + timeout
    rv = opts.resource_version
    try:
        if rv:
            await ensure_rv(view, rv, settings)
        if opts.send_initial_events or not rv:
            # "Get state and start at most recent": the current objects as ADDED, oldest RV first
            # so the stream's RVs never go backwards; then changes from here on.
            cursor = view.head()
            snapshot = sorted(_in_namespace(view, writer.namespace), key=_entry_rv)
            lines = [writer.added(e) for e in snapshot]
            if opts.send_initial_events:
                lines.append(view.bookmark_line(view.rv, initial_events_end=True))
            body = b"".join(x for x in lines if x)
            if body:
                info.events_out += len(lines)
                registry.events_out += len(lines)
                await resp.write(body)
        else:
            cursor = view.cursor_after(rv)
        info.cursor = cursor
    except StatusError as err:
        await resp.write(_error_line(err))
        return
    except Expired as exp:
        await resp.write(_error_line(status.expired(str(exp))))
        return

    interval = settings.bookmark_interval
    next_bookmark = loop.time() + interval
    while not registry.closing:
        if view.head() - cursor > settings.max_backlog:
            log.info("watch on %s fell %d events behind; sending 410 so it relists", view.resource.plural,
                     view.head() - cursor)
            await _write(resp, _error_line(status.expired(
                f"too old resource version: the watch fell too far behind; relist (current {view.rv})")), settings)
            return
        try:
            events = view.read(cursor)
        except Expired:
            # This watcher fell behind the history: make it relist rather than miss events.
            await resp.write(_error_line(status.expired(
                f"too old resource version: the watch fell behind; relist (current {view.rv})")))
            return
        if events:
            cursor = events[-1].seq + 1
            body = b"".join(writer.event(ev) for ev in events)
            if body:
                info.events_out += len(events)
                registry.events_out += len(events)
                await _write(resp, body, settings)
            info.cursor = cursor
            continue
        now = loop.time()
        if now >= deadline:
            break
        if opts.allow_bookmarks and now >= next_bookmark:
            await _write(resp, view.bookmark_line(view.rv), settings)
            next_bookmark = now + interval
        wait = deadline - now
        if opts.allow_bookmarks:
            wait = min(wait, max(next_bookmark - now, 0.0))
        await view.wait(cursor, wait)


class _ClientStalled(Exception):
    pass


async def _write(resp: web.StreamResponse, body: bytes, settings: ServeSettings) -> None:
    try:
        # A timeout scope, not wait_for: no task per write on the hot path.
        async with asyncio.timeout(settings.write_timeout):
            await resp.write(body)
    except TimeoutError:
        raise _ClientStalled from None


def _entry_rv(e: Entry) -> int:
    return e.rv


def _error_line(err: StatusError) -> bytes:
    return orjson.dumps({"type": "ERROR", "object": err.status}) + b"\n"


class _EventWriter:
    """Turns shared history events into this watcher's lines (selectors, tables)."""

    def __init__(self, view: View, pred: Predicate | None, namespace: str | None, table: bool, table_version: str,
                 selection: str | None = None):
        self.view = view
        # Table lines depend on per-watcher state (headers once), so they are never shared.
        self.selection = None if table else selection
        self.namespace = namespace
        self.table = table
        self.table_version = table_version
        self._first_table = True
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
        """The watch line: a table row built from ``obj``, or the event built from ``raw``
        (or from ``obj`` when there are no bytes)."""
        if self.table:
            assert obj is not None
            doc = tables.render_table(self.view.resource, [obj], list_rv=None, with_headers=self._first_table,
                                      api_version=self.table_version)
            self._first_table = False
            return orjson.dumps({"type": type_, "object": doc}) + b"\n"
        return self.view.watch_line(type_, raw if raw is not None else orjson.dumps(obj))

    def added(self, entry: Entry) -> bytes:
        if self.pred is not None and not self.pred(entry.fields):
            return b""
        return self._line("ADDED", entry.obj if self.table else None, entry.raw)

    def event(self, ev: Event) -> bytes:
        pred = self.pred
        if pred is None:
            return ev.line if not self.table else self._line(ev.type, ev.object(), None)
        sel = self.selection
        if sel is None:
            return self._select(ev, pred)
        if ev.selected is None:
            ev.selected = {}
        line = ev.selected.get(sel)
        if line is None:
            line = ev.selected[sel] = self._select(ev, pred)
        return line

    def _select(self, ev: Event, pred: Predicate) -> bytes:
        new_match = pred(ev.fields)
        if ev.prev_fields is not None:  # a MODIFIED that may cross this selector's boundary
            old_match = pred(ev.prev_fields)
            if new_match and not old_match:
                return self._line("ADDED", ev.object(), None) if self.table else self.view.retype(ev.line, "ADDED")
            if old_match and not new_match:
                # Leaving the selector looks like a deletion: old content, the event's RV.
                assert ev.prev_raw is not None
                return self._line("DELETED", stamp(orjson.loads(ev.prev_raw), ev.rv), None)
        if not new_match:
            return b""
        return ev.line if not self.table else self._line(ev.type, ev.object(), None)
