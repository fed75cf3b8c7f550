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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from aiohttp import web

from cache.view import Entry, Event, Expired, View, stamp
from kubeapi import partial, status, tables
from kubeapi.listoptions import ListOptions
from kubeapi.negotiation import AS_IS, PARTIAL, PARTIAL_LIST, Target, accepts_gzip
from kubeapi.resources import key_of
from kubeapi.status import StatusError
from kubeapi.types import JSONDict
from wrapper.failures import failures_of

log = logging.getLogger(__name__)

JSON = "application/json"
WRITE_BATCH_BYTES = 256 * 1024


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
    # A client that takes longer than this to accept one write has stopped reading: cut it off
    # (--watch-write-timeout).
    write_timeout: float = 30.0
    # Watch writes are batches of about this many bytes (one more event at most): the bound on
    # what one watcher holds beyond the shared history and objects.
    write_batch_bytes: int = WRITE_BATCH_BYTES


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


LIST_TOO_OLD = "The resourceVersion for the provided list is too old."


async def _check_list_rv(view: View, opts: ListOptions, settings: ServeSettings) -> None:
    rv = opts.resource_version
    if opts.resource_version_match == "Exact":
        assert rv is not None  # validation: Exact needs a resourceVersion (and not "0")
        # The apiserver reads exactly rv from etcd: 504 ResourceVersionTooLarge (no retry hint)
        # for a revision etcd has not reached, 410 for one it compacted. This view only holds
        # its current state, and may lag the apiserver a moment: wait for it as for any
        # too-new RV, then serve only if it stopped exactly at rv.
        if rv > view.rv and not await view.wait_for_rv(rv, settings.too_large_wait):
            raise status.too_large_rv(rv, view.rv, retry_after=0)
        if rv != view.rv:
            raise status.expired(LIST_TOO_OLD)
    elif rv:
        await ensure_rv(view, rv, settings)


async def serve_list(
    request: web.Request, view: View, opts: ListOptions, settings: ServeSettings, namespace: str | None,
    target: Target = AS_IS,
) -> web.StreamResponse:
    await wait_synced(view, settings)
    await _check_list_rv(view, opts, settings)
    pred = predicate(opts)
    res = view.resource
    if target.table:
        entries = _matching(_in_namespace(view, namespace), pred)
        doc = tables.render_table(
            res, [e.obj for e in entries], list_rv=str(view.rv),
            include_object=request.query.get("includeObject", "Metadata"), api_version=target.api_version,
        )
        return json_response(orjson.dumps(doc))
    if target.kind == PARTIAL:
        raise partial.list_is_not_an_object(res)
    gzip_ok = accepts_gzip(request.headers.get("Accept-Encoding"))
    body, gzipped = _list_body(view, namespace, opts, pred, gzip_ok, target=target)
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
    view: View, namespace: str | None, opts: ListOptions, pred: Predicate | None, gzip_ok: bool,
    *, target: Target = AS_IS,
) -> tuple[bytes, bool]:
    """The list's JSON (gzipped if allowed and large), as the resource's list or as a
    PartialObjectMetadataList (``target``)."""
    version = (view.resets, view.head(), view.rv)
    cached_version, per_view = _LIST_CACHE.get(view, (None, {}))
    if cached_version != version:
        per_view = {}
        _LIST_CACHE[view] = (version, per_view)
    key = (namespace, opts.label, opts.field, target)
    cached = per_view.get(key)
    if cached is None:
        res = view.resource
        entries = _matching(_in_namespace(view, namespace), pred)
        list_meta: JSONDict = {"resourceVersion": str(view.rv)}
        if target.kind == PARTIAL_LIST:
            body = partial.partial_list_bytes(target.api_version, list_meta,
                                              (partial.partial_bytes(e.raw, target.api_version) for e in entries))
        else:
            head = orjson.dumps({"kind": res.list_kind, "apiVersion": res.api_version, "metadata": list_meta})
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
    request: web.Request, view: View, settings: ServeSettings, namespace: str | None, name: str,
    target: Target = AS_IS,
) -> web.StreamResponse:
    await wait_synced(view, settings)
    key = key_of(namespace, name)
    entry = view.objects.get(key)
    res = view.resource
    if entry is None:
        raise status.not_found(res.group, res.plural, name)
    if target.table:
        doc = tables.render_table(res, [entry.obj], list_rv=None,
                                  include_object=request.query.get("includeObject", "Metadata"),
                                  api_version=target.api_version)
        return json_response(orjson.dumps(doc))
    if target.kind == PARTIAL_LIST:
        raise partial.object_is_not_a_list(res)
    if target.kind == PARTIAL:
        return json_response(partial.partial_bytes(entry.raw, target.api_version))
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


# Why the wrapper ended a client's watch on its own (metric label values).
CUT_OFF_WRITE_TIMEOUT = "write_timeout"  # no progress writing for the write timeout: connection aborted
CUT_OFF_FELL_BEHIND = "fell_behind"  # too far behind the history: 410 Expired, the client relists


class WatchRegistry:
    """Open watch responses, so shutdown can end them, and debug pages, metrics and tests can
    count them. The HTTP front owns one; serve_watch registers each stream in it."""

    def __init__(self) -> None:
        self.open: weakref.WeakSet[web.StreamResponse] = weakref.WeakSet()
        self.tasks: set[asyncio.Task[object]] = set()
        self.watches: dict[asyncio.Task[object], WatchInfo] = {}
        self.closing = False
        self.events_out = 0
        self.cut_off: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.tasks)


async def serve_watch(
    request: web.Request,
    view: View,
    opts: ListOptions,
    settings: ServeSettings,
    namespace: str | None,
    registry: WatchRegistry,
    target: Target = AS_IS,
) -> web.StreamResponse:
    """Stream a watch: initial state if asked for, then the view's history, within bounded memory.

    Per watcher the wrapper holds a cursor into the shared history, at most one write batch
    (``ServeSettings.write_batch_bytes`` plus one event) being built, and what the transport
    buffers until the client reads it (one batch plus aiohttp's 64 KiB drain threshold). While
    it sends the initial state it also holds a reference to the RV-ordered list of the state
    it started from (one pointer per object, shared by every watch that started at the same
    state). A client that takes longer than ``write_timeout`` to accept one batch is cut off.
    """
    if target.kind == PARTIAL_LIST:
        # The apiserver cannot encode single watch events as a list either (its stream ends
        # at the first event); say so before the stream starts.
        raise partial.object_is_not_a_list(view.resource)
    if target.table:
        tables.check_include_object(request.query.get("includeObject", ""))
    await wait_synced(view, settings)
    writer = _EventWriter(view, predicate(opts), namespace, target,
                          selection=sys.intern(repr((namespace, opts.label, opts.field, target))))
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
        # The chunked body's end is a write too: a client that stopped reading must not pin
        # this handler (and the buffered batch) forever.
        async with asyncio.timeout(settings.write_timeout):
            await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    except (_ClientStalled, TimeoutError):
        registry.cut_off[CUT_OFF_WRITE_TIMEOUT] += 1
        log.warning("watch %s from %s: the client accepted nothing for %gs; cut off (%d events sent)",
                    request.path_qs[:200], request.remote, settings.write_timeout, info.events_out)
        if request.transport is not None:
            request.transport.abort()
    except Exception as exc:
        # A bug: the log gets one traceback per failure site, the client an InternalError
        # event and the end of the stream, as the apiserver sends for a failed watch.
        failures_of(request).record(exc, f"WATCH {request.path_qs[:300]}")
        try:
            await _write(resp, _error_line(StatusError(status.failure(
                500, "Internal error occurred: the watch failed; see the wrapper's log", "InternalError"))), settings)
        except (_ClientStalled, ConnectionResetError):
            if request.transport is not None:
                request.transport.abort()
    finally:
        view.watchers -= 1
        registry.tasks.discard(task)
        registry.watches.pop(task, None)
        log.debug("watch end %s: %d events in %.1fs", request.path_qs, info.events_out, time.time() - info.started)
    return resp


def _watch_timeout(opts: ListOptions, settings: ServeSettings) -> float:
    """timeoutSeconds, or when it is absent or 0 the server's own limit with jitter, as the
    apiserver does with --min-request-timeout: [min, 2*min)."""
    if opts.timeout_seconds:
        return float(opts.timeout_seconds)
    return settings.default_watch_timeout * (1 + random.random())


def _replays_state(opts: ListOptions) -> bool:
    """Whether the watch starts with the current state as ADDED events (api-concepts
    "Semantics for watch"): always with sendInitialEvents=true; never with
    sendInitialEvents=false (RV unset: from the most recent, "0": from any, N: after N);
    without it, for RV unset ("get state and start at most recent") and "0" ("at any")."""
    if opts.send_initial_events is not None:
        return opts.send_initial_events
    return not opts.resource_version


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
    deadline = loop.time() + _watch_timeout(opts, settings)
    rv = opts.resource_version
    try:
        if rv:
            await ensure_rv(view, rv, settings)
        if _replays_state(opts):
            # "Get state and start at most recent": the current objects as ADDED, oldest RV first
            # so the stream's RVs never go backwards; then changes from here on. Cursor, state and
            # its RV are taken together, with no await in between.
            cursor, state_rv, state = _state_by_rv(view)
            info.cursor = cursor
            await _write_state(resp, state, writer, settings, registry, info)
            del state
            if opts.send_initial_events:
                await _write(resp, writer.bookmark(state_rv, initial_events_end=True), settings)
        elif not rv:
            cursor = view.head()  # sendInitialEvents=false: from now on, without the state
        else:
            cursor = view.cursor_after(rv)
        info.cursor = cursor
    except StatusError as err:
        await _write(resp, _error_line(err), settings)
        return
    except Expired as exp:
        await _write(resp, _error_line(status.expired(str(exp))), settings)
        return

    interval = settings.bookmark_interval
    next_bookmark = loop.time() + interval
    while not registry.closing:
        if view.head() - cursor > settings.max_backlog:
            log.info("watch on %s fell %d events behind; sending 410 so it relists", view.resource.plural,
                     view.head() - cursor)
            registry.cut_off[CUT_OFF_FELL_BEHIND] += 1
            await _write(resp, _error_line(status.expired(
                f"too old resource version: the watch fell too far behind; relist (current {view.rv})")), settings)
            return
        try:
            events = view.read(cursor, _READ_EVENTS)
        except Expired:
            # This watcher fell behind the history: make it relist rather than miss events.
            registry.cut_off[CUT_OFF_FELL_BEHIND] += 1
            await _write(resp, _error_line(status.expired(
                f"too old resource version: the watch fell behind; relist (current {view.rv})")), settings)
            return
        if events:
            body, consumed, lines = writer.batch(events, settings.write_batch_bytes)
            cursor = events[consumed - 1].seq + 1
            del events  # hold no history events while the write waits for the client
            if body:
                info.events_out += lines
                registry.events_out += lines
                await _write(resp, body, settings)
            info.cursor = cursor
            continue
        now = loop.time()
        if now >= deadline:
            break
        if opts.allow_bookmarks and now >= next_bookmark:
            await _write(resp, writer.bookmark(view.rv), settings)
            next_bookmark = now + interval
        wait = deadline - now
        if opts.allow_bookmarks:
            wait = min(wait, max(next_bookmark - now, 0.0))
        await view.wait(cursor, wait)


# History events read per step; a write batch stops earlier once it holds write_batch_bytes.
_READ_EVENTS = 256

# The view's state ordered by resourceVersion, for the current version of each view: watches
# that start while nothing changes share one list (pointers to the view's own entries).
_STATES: weakref.WeakKeyDictionary[View, tuple[tuple[int, int, int], list[Entry]]] = weakref.WeakKeyDictionary()


def _state_by_rv(view: View) -> tuple[int, int, list[Entry]]:
    """(cursor, resourceVersion, entries oldest RV first) of the view's current state."""
    version = (view.resets, view.head(), view.rv)
    cached = _STATES.get(view)
    if cached is None or cached[0] != version:
        cached = (version, sorted(view.sorted_entries(), key=_entry_rv))
        _STATES[view] = cached
    return view.head(), view.rv, cached[1]


async def _write_state(
    resp: web.StreamResponse, state: list[Entry], writer: _EventWriter, settings: ServeSettings,
    registry: WatchRegistry, info: WatchInfo,
) -> None:
    """The state as ADDED events, in batches of about ``write_batch_bytes``, each awaited."""
    limit = settings.write_batch_bytes
    parts: list[bytes | memoryview] = []
    size = lines = 0
    for entry in state:
        piece = writer.added(entry)
        if not piece:
            continue
        parts.extend(piece)
        size += sum(len(x) for x in piece)
        lines += 1
        if size >= limit:
            await _flush(resp, parts, lines, settings, registry, info)
            parts, size, lines = [], 0, 0
    if parts:
        await _flush(resp, parts, lines, settings, registry, info)


async def _flush(resp: web.StreamResponse, parts: list[bytes | memoryview], lines: int, settings: ServeSettings,
                 registry: WatchRegistry, info: WatchInfo) -> None:
    body = b"".join(parts)
    parts.clear()  # the batch is now only the joined body
    info.events_out += lines
    registry.events_out += lines
    await _write(resp, body, settings)


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


_ADDED = b'{"type":"ADDED","object":'


class _EventWriter:
    """Turns the view's entries and shared history events into this watcher's lines: the
    resource's JSON, one-row Tables, or PartialObjectMetadata (``target``), after selectors."""

    def __init__(self, view: View, pred: Predicate | None, namespace: str | None, target: Target = AS_IS,
                 selection: str | None = None):
        self.view = view
        self.target = target
        self.table = target.table
        self.partial = target.partial
        # Table lines depend on per-watcher state (headers once), so they are never shared.
        self.selection = None if self.table else selection
        self.namespace = namespace
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
        if self.table or self.partial:
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
        pred = self.pred
        if pred is None and not (self.table or self.partial):
            return ev.line
        sel = self.selection
        if sel is None:
            return self._select(ev, pred)
        if ev.selected is None:
            ev.selected = {}
        line = ev.selected.get(sel)
        if line is None:
            line = ev.selected[sel] = self._select(ev, pred)
        return line

    def _select(self, ev: Event, pred: Predicate | None) -> bytes:
        plain = not (self.table or self.partial)
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
