"""Prometheus metrics, one registry per wrapper instance.

Request metrics are counted as requests finish. Everything the cache and the reflectors
already count is read at scrape time by a collector, so the hot paths keep plain integers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from cache.buildinfo import IMPLEMENTATION, PYTHON, VERSION
from kubeapi.resources import match_path
from wrapper.watch_registry import CUT_OFF_FELL_BEHIND, CUT_OFF_WRITE_TIMEOUT

if TYPE_CHECKING:
    from cache.cluster import ClusterCache
    from cache.informers import Informers
    from wrapper.watch_registry import WatchRegistry

NS = "application_grid_wrapper"

# prometheus-client adds a ``*_created`` timestamp series to every counter and histogram: twice the
# series for nothing a dashboard reads (Prometheus itself does not need them).
disable_created_metrics()  # type: ignore[no-untyped-call]


def request_labels(request: web.Request) -> tuple[str, str]:
    """(verb, resource) as the apiserver names them; other paths are "proxy" or "other"."""
    rp = match_path(request.path)
    if rp is None:
        if request.path.startswith(("/healthz", "/livez", "/readyz")):
            return request.method.lower(), "health"
        return "proxy", "other"
    if request.method not in ("GET", "HEAD") or rp.subresource is not None:
        return "proxy", rp.resource.plural
    if rp.name is not None:
        return "get", rp.resource.plural
    watch = request.query.get("watch", "").lower() in ("1", "true", "t")
    return ("watch" if watch else "list"), rp.resource.plural


class _StateCollector(Collector):
    """Reads the cache's, the reflectors' and the watches' counters at each scrape."""

    def __init__(self, cache: ClusterCache, informers: Informers | None, watches: WatchRegistry) -> None:
        self.cache = cache
        self.informers = informers
        self.watches = watches

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        objects = GaugeMetricFamily(f"{NS}_cache_objects", "Objects served from the cache", labels=["resource"])
        watchers = GaugeMetricFamily(f"{NS}_open_watches", "Client watches open now", labels=["resource"])
        history = GaugeMetricFamily(f"{NS}_history_events", "Events kept for watch resumption",
                                    labels=["resource"])
        for name, view in cache.views.items():
            objects.add_metric([name], view.count())
            watchers.add_metric([name], self.watches.watchers(name))
            history.add_metric([name], view.history_depth())
        yield from (objects, watchers, history)
        events_in = CounterMetricFamily(f"{NS}_upstream_events", "Watch events received from the apiserver",
                                        labels=["resource"])
        for name, count in cache.events_in.items():
            events_in.add_metric([name], count)
        yield events_in
        yield CounterMetricFamily(f"{NS}_events_sent", "Watch events sent to clients", value=self.watches.events_out)
        cut = CounterMetricFamily(
            f"{NS}_watch_clients_cut_off",
            "Client watches the wrapper ended itself: write_timeout (accepted nothing for --watch-write-timeout; "
            "connection aborted), fell_behind (too far behind the history; 410 Expired sent)", labels=["reason"])
        for reason in (CUT_OFF_WRITE_TIMEOUT, CUT_OFF_FELL_BEHIND):
            cut.add_metric([reason], self.watches.cut_off[reason])
        yield cut
        yield CounterMetricFamily(f"{NS}_synthetic_events", "Re-filtered MODIFIED events the wrapper emitted",
                                  value=cache.synthetic_events)
        yield CounterMetricFamily(f"{NS}_refilter_runs", "Topology re-filter runs", value=cache.refilter_runs)
        yield CounterMetricFamily(f"{NS}_refilter_seconds", "Time spent re-filtering",
                                  value=cache.refilter_seconds)
        decisions = CounterMetricFamily(
            f"{NS}_filter_decisions", "Objects each filter served: unchanged, rewritten or hidden (a hidden object "
            "reaches watchers as DELETED)", labels=["filter", "resource", "outcome"])
        for (name, resource, outcome), count in sorted(cache.filter_decisions.items()):
            decisions.add_metric([name, resource, outcome], count)
        yield decisions
        kept, dropped = cache.filtered_endpoints()
        topo = GaugeMetricFamily(f"{NS}_topology_endpoints", "Endpoints of opted-in Services, kept or dropped",
                                 labels=["decision"])
        topo.add_metric(["kept"], kept)
        topo.add_metric(["dropped"], dropped)
        yield topo
        yield GaugeMetricFamily(f"{NS}_cache_ready", "1 once every cache has synced", value=int(cache.ready))
        yield CounterMetricFamily(f"{NS}_upstream_timeline_resets",
                                  "Times the apiserver's resourceVersions went back and everything was relisted",
                                  value=cache.timeline_resets)
        yield GaugeMetricFamily(f"{NS}_local_node_known",
                                "1 while --hostname names a Node of the synced cache (0: check --hostname)",
                                value=int(cache.local_node_known))
        if self.informers is None:
            return
        connected = GaugeMetricFamily(f"{NS}_upstream_connected", "1 while the watch on the apiserver is up",
                                      labels=["resource"])
        relists = CounterMetricFamily(f"{NS}_upstream_relists", "Full relists from the apiserver",
                                      labels=["resource"])
        reconnects = CounterMetricFamily(f"{NS}_upstream_reconnects", "Watch reconnects to the apiserver",
                                         labels=["resource"])
        for name, reflector in self.informers.reflectors.items():
            connected.add_metric([name], int(reflector.state.connected))
            relists.add_metric([name], reflector.state.relists)
            reconnects.add_metric([name], reflector.state.reconnects)
        yield from (connected, relists, reconnects)


class Metrics:
    """The wrapper's Prometheus registry: request counts and latencies (its middleware), and the
    cache's and reflectors' own counters read at scrape time. Created by ``wrapper.compose``;
    rendered by the /metrics page of ``wrapper.debug``."""

    def __init__(self, cache: ClusterCache, informers: Informers | None, watches: WatchRegistry) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(f"{NS}_requests", "Requests by verb, resource and code",
                                ["verb", "resource", "code"], registry=self.registry)
        self.latency = Histogram(
            f"{NS}_request_duration_seconds", "Latency of non-watch requests", ["verb", "resource"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(_StateCollector(cache, informers, watches))
        build = Gauge(f"{NS}_build_info", "Always 1; the labels say which build runs on which Python",
                      ["version", "python_version", "python_implementation"], registry=self.registry)
        build.labels(VERSION, PYTHON, IMPLEMENTATION).set(1)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def count(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            started = time.perf_counter()
            code = 500
            try:
                resp = await handler(request)
                code = resp.status
                return resp
            except web.HTTPException as exc:
                code = exc.status
                raise
            finally:
                verb, resource = request_labels(request)
                self.requests.labels(verb, resource, str(code)).inc()
                if verb != "watch":
                    self.latency.labels(verb, resource).observe(time.perf_counter() - started)

        return count
