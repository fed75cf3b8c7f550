"""Watch requests answered from a view: the initial state if asked for, then the view's history.

Within bounded memory: per watcher the wrapper holds a cursor into the shared history, at most
one write batch (``ServeSettings.write_batch_bytes`` plus one event) being built, and what the
transport buffers until the client reads it (one batch plus aiohttp's 64 KiB drain threshold).
While it sends the initial state it also holds a reference to the RV-ordered list of the state
it started from (one pointer per object, shared by every watch that started at the same state).
A client that takes longer than ``write_timeout`` to accept one batch is cut off.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time

from aiohttp import web

from cache.reader import Entry, Expired, ViewReader
from kubeapi import partial, status, tables
from kubeapi.listoptions import ListOptions
from kubeapi.negotiation import AS_IS, PARTIAL_LIST, Target
from kubeapi.status import StatusError
from wrapper import requestlog
from wrapper.failures import failures_of
from wrapper.responses import JSON
from wrapper.serving import ServeSettings, ensure_rv, predicate, wait_synced
from wrapper.watch_registry import CUT_OFF_FELL_BEHIND, CUT_OFF_WRITE_TIMEOUT, WatchInfo, WatchRegistry
from wrapper.writers import EventWriter, error_line

log = logging.getLogger(__name__)

# History events read per step; a write batch stops earlier once it holds write_batch_bytes.
_READ_EVENTS = 256


async def serve_watch(
    request: web.Request, view: ViewReader, opts: ListOptions, settings: ServeSettings, namespace: str | None,
    registry: WatchRegistry, target: Target = AS_IS,
) -> web.StreamResponse:
    """Check the request, then stream the watch to its end (see ``WatchSession``)."""
    if target.kind == PARTIAL_LIST:
        # The apiserver cannot encode single watch events as a list either (its stream ends
        # at the first event); say so before the stream starts.
        raise partial.object_is_not_a_list(view.resource)
    if target.table:
        tables.check_include_object(request.query.get("includeObject", ""))
    await wait_synced(view, settings)
    return await WatchSession(request, view, opts, settings, namespace, registry, target).run()


class _ClientStalled(Exception):
    pass


class WatchSession:
    """One client's watch, from its response headers to the end of its stream.

    Owns the response, the watcher's cursor into the view's history (in its ``WatchInfo``), its
    EventWriter and its deadline; it opens the watch in the front's WatchRegistry and closes it
    at the end, whichever way the stream ends (its timeout, shutdown, 410, the client leaving or
    stalling, a bug). Created and run by ``serve_watch`` for each watch request the front routes.
    """

    def __init__(
        self, request: web.Request, view: ViewReader, opts: ListOptions, settings: ServeSettings,
        namespace: str | None, registry: WatchRegistry, target: Target = AS_IS,
    ) -> None:
        self.request = request
        self.view = view
        self.opts = opts
        self.settings = settings
        self.registry = registry
        self.namespace = namespace
        self.target = target
        # Watchers of one selection share their lines (Tables excepted: headers come once per watcher).
        self.selection = None if target.table else sys.intern(repr((namespace, opts.label, opts.field, target)))
        self.resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
        # Set once the response has started (``run``): the watch is open from then on.
        self.info: WatchInfo
        self.writer: EventWriter

    async def run(self) -> web.StreamResponse:
        request, resp, registry, view = self.request, self.resp, self.registry, self.view
        # Headers go out now: clients must see a quiet watch as open, not hung.
        await resp.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self.info = info = WatchInfo(view.resource.plural, request.query_string, str(request.remote), time.time(),
                                     view, view.head())
        registry.open_watch(task, resp, info)
        shared = registry.join(view, self.selection) if self.selection is not None else None
        self.writer = EventWriter(view, predicate(self.opts), self.namespace, self.target, shared)
        if requestlog.enabled():
            requestlog.log.debug("watch %s: started at resourceVersion %d", requestlog.described(request), view.rv)
        try:
            await self._stream()
            # The chunked body's end is a write too: a client that stopped reading must not pin
            # this handler (and the buffered batch) forever.
            async with asyncio.timeout(self.settings.write_timeout):
                await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        except (_ClientStalled, TimeoutError):
            registry.cut_off[CUT_OFF_WRITE_TIMEOUT] += 1
            log.warning("watch %s from %s: the client accepted nothing for %gs; cut off (%d events sent)",
                        request.path_qs[:200], request.remote, self.settings.write_timeout, info.events_out)
            if request.transport is not None:
                request.transport.abort()
        except Exception as exc:
            # A bug: the log gets one traceback per failure site, the client an InternalError
            # event and the end of the stream, as the apiserver sends for a failed watch.
            failures_of(request).record(exc, f"WATCH {request.path_qs[:300]}")
            try:
                await self._write(error_line(status.internal_error("the watch failed; see the wrapper's log")))
            except (_ClientStalled, ConnectionResetError):
                if request.transport is not None:
                    request.transport.abort()
        finally:
            registry.close_watch(task, info)
            if self.selection is not None:
                registry.leave(self.view, self.selection)
            if requestlog.enabled():
                requestlog.log.debug("watch %s: ended after %d events sent in %.1fs", requestlog.described(request),
                                     info.events_out, time.time() - info.started)
        return resp

    async def _stream(self) -> None:
        deadline = asyncio.get_running_loop().time() + _watch_timeout(self.opts, self.settings)
        try:
            cursor = await self._start()
        except StatusError as err:
            await self._write(error_line(err))
            return
        except Expired as exp:
            await self._write(error_line(status.expired(str(exp))))
            return
        await self._follow(cursor, deadline)

    async def _follow(self, cursor: int, deadline: float) -> None:
        """The history from ``cursor`` on, with bookmarks, until the deadline, shutdown or a 410."""
        view, opts, settings, writer, registry, info = (self.view, self.opts, self.settings, self.writer,
                                                        self.registry, self.info)
        loop = asyncio.get_running_loop()
        interval = settings.bookmark_interval
        next_bookmark = loop.time() + interval
        while not registry.closing:
            if view.head() - cursor > settings.max_backlog:
                log.info("watch on %s fell %d events behind; sending 410 so it relists", view.resource.plural,
                         view.head() - cursor)
                await self._fell_behind(f"too old resource version: the watch fell too far behind; relist "
                                        f"(current {view.rv})")
                return
            try:
                events = view.read(cursor, _READ_EVENTS)
            except Expired:
                # This watcher fell behind the history: make it relist rather than miss events.
                await self._fell_behind(f"too old resource version: the watch fell behind; relist (current {view.rv})")
                return
            if events:
                body, consumed, lines = writer.batch(events, settings.write_batch_bytes)
                cursor = events[consumed - 1].seq + 1
                del events  # hold no history events while the write waits for the client
                if body:
                    info.events_out += lines
                    registry.events_out += lines
                    await self._write(body)
                info.cursor = cursor
                continue
            now = loop.time()
            if now >= deadline:
                break
            if opts.allow_bookmarks and now >= next_bookmark:
                await self._write(writer.bookmark(view.rv))
                next_bookmark = now + interval
            wait = deadline - now
            if opts.allow_bookmarks:
                wait = min(wait, max(next_bookmark - now, 0.0))
            await view.wait(cursor, wait)

    async def _start(self) -> int:
        """Send the initial state if the request asks for it; the history cursor to go on from."""
        view, opts = self.view, self.opts
        rv = opts.resource_version
        if rv:
            await ensure_rv(view, rv, self.settings)
        if _replays_state(opts):
            # "Get state and start at most recent": the current objects as ADDED, oldest RV first
            # so the stream's RVs never go backwards; then changes from here on. Cursor, state and
            # its RV are taken together, with no await in between.
            cursor, state_rv, state = self.registry.state_by_rv(view)
            self.info.cursor = cursor
            await self._write_state(state)
            del state
            if opts.send_initial_events:
                await self._write(self.writer.bookmark(state_rv, initial_events_end=True))
        elif not rv:
            cursor = view.head()  # sendInitialEvents=false: from now on, without the state
        else:
            cursor = view.cursor_after(rv)
        self.info.cursor = cursor
        return cursor

    async def _write_state(self, state: list[Entry]) -> None:
        """The state as ADDED events, in batches of about ``write_batch_bytes``, each awaited."""
        limit = self.settings.write_batch_bytes
        writer = self.writer
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
                await self._flush(parts, lines)
                parts, size, lines = [], 0, 0
        if parts:
            await self._flush(parts, lines)

    async def _flush(self, parts: list[bytes | memoryview], lines: int) -> None:
        body = b"".join(parts)
        parts.clear()  # the batch is now only the joined body
        self.info.events_out += lines
        self.registry.events_out += lines
        await self._write(body)

    async def _fell_behind(self, message: str) -> None:
        self.registry.cut_off[CUT_OFF_FELL_BEHIND] += 1
        await self._write(error_line(status.expired(message)))

    async def _write(self, body: bytes) -> None:
        try:
            # A timeout scope, not wait_for: no task per write on the hot path.
            async with asyncio.timeout(self.settings.write_timeout):
                await self.resp.write(body)
        except TimeoutError:
            raise _ClientStalled from None


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
