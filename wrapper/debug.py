"""The debug listener: pprof-style profiling, task dumps, cache state, topology decisions, metrics.

It runs on its own port (loopback by default) so kube-proxy's port never serves it.
"""

from __future__ import annotations

import asyncio
import html
import io
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubeapi import status
from kubeapi.status import StatusError
from kubeapi.strconv import parse_decimal
from wrapper.responses import status_response
from wrapper.watch_registry import WatchRegistry

if TYPE_CHECKING:
    from pyinstrument.frame import Frame

    from cache.cluster import ClusterCache
    from cache.informers import Informers
    from wrapper.metrics import Metrics

MAX_PROFILE_SECONDS = 300
PROFILE_FORMATS = ("html", "speedscope", "collapsed")

@dataclass(frozen=True)
class Page:
    """One page of the debug listener, as its index lists it."""

    path: str
    link: str  # the path with example query parameters
    what: str  # HTML: one sentence
    profiling: bool = False  # served only with --profiling


PAGES: tuple[Page, ...] = (
    Page("/debug/topology", "/debug/topology", "the local node, the filters running, and for each Service a filter "
         "is involved in, each filter's decision and its reason, down to every endpoint kept or dropped "
         "(<code>?service=ns/name</code>)"),
    Page("/debug/cache", "/debug/cache", "objects, resourceVersion, sync state, history, upstream state and open "
         "watches per resource"),
    Page("/metrics", "/metrics", "Prometheus metrics"),
    Page("/debug/pprof/", "/debug/pprof/", "this index, under its pprof name", profiling=True),
    Page("/debug/pprof/profile", "/debug/pprof/profile?seconds=30", "CPU profile of the whole process "
         "(<code>?seconds=N</code>, 1&ndash;300, default 30; <code>?format=html|speedscope|collapsed</code>)",
         profiling=True),
    Page("/debug/pprof/heap", "/debug/pprof/heap", "top allocations (tracemalloc; starts tracing on first use, "
         "<code>?stop=1</code> stops it)", profiling=True),
    Page("/debug/pprof/tasks", "/debug/pprof/tasks", "every asyncio task with its own coroutine stack",
         profiling=True),
)


def index_html(node: str, profiling: bool) -> str:
    items = "\n".join(f'<li><a href="{p.link}">{p.path}</a>: {p.what}</li>'
                      for p in PAGES if profiling or not p.profiling)
    return (f"<!doctype html>\n<html><head><title>application-grid-wrapper debug</title></head><body>\n"
            f"<h1>application-grid-wrapper debug pages</h1>\n<ul>\n{items}\n</ul>\n"
            f"<p>Local node: {html.escape(node)}</p>\n</body></html>\n")


def coroutine_stack(coro: object, limit: int = 50) -> list[str]:
    """The frames a task is suspended in, outermost first: the task's coroutine and every coroutine,
    generator or async generator it awaits (``Task.print_stack`` shows only the outermost one, which
    for a request handler is aiohttp's, not ours)."""
    lines: list[str] = []
    seen: set[int] = set()
    while coro is not None and id(coro) not in seen and len(lines) < limit:
        seen.add(id(coro))
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    if coro is not None and id(coro) not in seen and len(lines) < limit:
        lines.append(f"  awaiting {type(coro).__name__}")  # a future or another awaitable object
    return lines




def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc, option=orjson.OPT_INDENT_2), content_type="application/json")


def collapsed_stacks(root: Frame | None) -> str:
    """Brendan Gregg's folded format (``a;b;c <microseconds>``), for flamegraph tools."""
    lines: list[str] = []

    def walk(frame: Frame, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], float]]:
        name = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        here = (*path, name.replace(";", ":"))
        own = frame.total_self_time
        if own > 0:
            yield here, own
        for child in frame.children:
            yield from walk(child, here)

    if root is not None:
        for stack, seconds in walk(root, ()):
            lines.append(f"{';'.join(stack)} {round(seconds * 1e6)}")
    return "\n".join(lines) + "\n"


class Debug:
    """The debug listener's pages; built by ``wrapper.compose`` when a debug address is set. It reads
    the cache (the topology page's explanations come from filters/, through ``ClusterCache.explain``),
    the reflectors, the watch registry and the metrics; it owns only the profiler lock."""

    def __init__(
        self,
        cache: ClusterCache,
        informers: Informers | None,
        watches: WatchRegistry,
        metrics: Metrics,
        *,
        profiling: bool = True,
    ) -> None:
        self.cache = cache
        self.informers = informers
        self.watches = watches
        self.metrics = metrics
        self.profiling = profiling
        self._profile_lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_status_errors])
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/debug", self.index)
        r.add_get("/debug/", self.index)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/debug/cache", self.cache_page)
        r.add_get("/debug/topology", self.topology_page)
        if self.profiling:
            r.add_get("/debug/pprof/", self.index)
            r.add_get("/debug/pprof", self.index)
            r.add_get("/debug/pprof/profile", self.profile)
            r.add_get("/debug/pprof/heap", self.heap)
            r.add_get("/debug/pprof/tasks", self.tasks)
        return app

    async def index(self, _request: web.Request) -> web.Response:
        return web.Response(text=index_html(self.cache.local_node, self.profiling), content_type="text/html")

    async def metrics_page(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def profile(self, request: web.Request) -> web.Response:
        raw = request.query.get("seconds", "30")
        seconds = parse_decimal(raw)  # ASCII only: float() reads "١٢", "1_0" and "nan"
        if seconds is None:
            raise status.bad_request(f"seconds: {raw[:32]!r} is not a number")
        if not 0 < seconds <= MAX_PROFILE_SECONDS:
            raise status.bad_request(f"seconds must be in (0, {MAX_PROFILE_SECONDS}], got {raw[:32]}")
        fmt = request.query.get("format", "html")
        if fmt not in PROFILE_FORMATS:
            raise status.bad_request(f"format must be one of {', '.join(PROFILE_FORMATS)}")
        if self._profile_lock.locked():
            raise status.conflict("a profile is already running; try again when it ends")
        from pyinstrument import Profiler
        from pyinstrument.renderers import SpeedscopeRenderer

        async with self._profile_lock:
            # Sampling the event loop's thread covers the whole process: all our work runs there.
            profiler = Profiler(interval=0.001, async_mode="disabled")
            profiler.start()
            try:
                await asyncio.sleep(seconds)
            finally:
                session = profiler.stop()
        if fmt == "speedscope":
            return web.Response(text=profiler.output(renderer=SpeedscopeRenderer()), content_type="application/json")
        if fmt == "collapsed":
            return web.Response(text=collapsed_stacks(session.root_frame()), content_type="text/plain")
        return web.Response(text=profiler.output_html(), content_type="text/html")

    async def heap(self, request: web.Request) -> web.Response:
        if request.query.get("stop") in ("1", "true"):
            tracemalloc.stop()
            return web.Response(text="tracemalloc stopped\n")
        if not tracemalloc.is_tracing():
            tracemalloc.start(10)
            return web.Response(text="tracemalloc started: allocations from now on are traced; "
                                     "request this page again to see the top allocations\n")
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("lineno")
        current, peak = tracemalloc.get_traced_memory()
        out = io.StringIO()
        out.write(f"traced: {current / 2**20:.1f} MiB now, {peak / 2**20:.1f} MiB peak\n")
        out.write(f"top {min(len(stats), 50)} allocation sites by size:\n")
        for stat in stats[:50]:
            out.write(f"{stat.size / 1024:10.1f} KiB {stat.count:8d} blocks  {stat.traceback}\n")
        return web.Response(text=out.getvalue())

    async def tasks(self, _request: web.Request) -> web.Response:
        out = io.StringIO()
        tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
        out.write(f"{len(tasks)} asyncio tasks\n\n")
        for task in tasks:
            coro = task.get_coro()
            state = "done" if task.done() else "running" if task is asyncio.current_task() else "waiting"
            out.write(f"task {task.get_name()} ({state}): {getattr(coro, '__qualname__', coro)!r}\n")
            out.write("\n".join(coroutine_stack(coro)) + "\n\n")
        return web.Response(text=out.getvalue())

    async def cache_page(self, _request: web.Request) -> web.Response:
        now = time.time()
        resources: dict[str, Any] = {}
        for name, view in self.cache.views.items():
            entry: dict[str, Any] = view.stats()
            entry["watchers"] = self.watches.watchers(name)
            entry["upstreamResourceVersion"] = str(self.cache.upstream_rv(view.resource))
            reflector = self.informers.reflectors.get(name) if self.informers is not None else None
            if reflector is not None:
                st = reflector.state
                entry["upstream"] = {"connected": st.connected, "syncedOnce": st.synced_once,
                                     "lists": st.lists, "relists": st.relists, "reconnects": st.reconnects,
                                     "events": st.events, "lastError": st.last_error,
                                     "syncMode": st.sync_mode, "streamRefused": st.stream_refused,
                                     "failedAttempts": st.failures}
                wait = reflector.machine.next_attempt_in()
                if wait is not None:
                    entry["upstream"]["nextAttemptInSeconds"] = round(wait, 3)
            elif self.informers is not None:
                entry["upstream"] = {"running": False}
            entry["watches"] = [
                {"query": w.query, "peer": w.peer, "ageSeconds": round(now - w.started, 1),
                 "eventsSent": w.events_out, "backlog": w.backlog}
                for w in self.watches.watches.values() if w.resource == name
            ]
            resources[name] = entry
        return _json({"localNode": self.cache.local_node, "localNodeKnown": self.cache.local_node_known,
                      "ready": self.cache.ready, "resyncing": self.cache.resyncing,
                      "timelineResets": self.cache.timeline_resets, "resources": resources,
                      "refilterRuns": self.cache.refilter_runs,
                      "refilterSeconds": round(self.cache.refilter_seconds, 6),
                      "syntheticEvents": self.cache.synthetic_events,
                      "nodeTopology": self.informers.node_topology.describe() if self.informers is not None else None})

    async def topology_page(self, request: web.Request) -> web.Response:
        service = request.query.get("service")
        if service is not None and (service.count("/") != 1 or not all(service.split("/"))):
            raise status.bad_request(f"service must be namespace/name, got {service[:128]!r}")
        report = self.cache.explain(service)
        if service is not None and not report["services"]:
            raise StatusError(status.failure(
                404, f"service {service} carries no annotation of a running filter (or does not exist); it is "
                "served unfiltered", "NotFound"))
        return _json(report)


@web.middleware
async def _status_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except StatusError as err:
        return status_response(err)
