"""Runs the reflectors that feed one ClusterCache: what the wrapper watches upstream, and when.

- The local Node alone, in full (``fieldSelector=metadata.name=<local node>``): the Nodes view
  holds it and nothing else (its scope), and the local node's labels come from it.
- Services and EndpointSlices, cluster-wide.
- Every other node's labels from the node topology feed (``cache.topology_feed``): the bucket
  ConfigMaps a cluster-level publisher keeps, or a metadata-only watch of every other Node.
- core/v1 Endpoints (kube-proxy has not read them for years): "on" (always watched), "off" (never:
  the front passes Endpoints requests through to the apiserver) or "lazy" (the default). A lazy
  informer starts on the first Endpoints request (``touch``, or ``watching`` for the length of a
  watch: the ``cache.reader.Demand`` the HTTP front is given) and stops once no Endpoints request
  came and no Endpoints watch was open for ``endpoints_idle`` seconds. Its view is then unloaded,
  so the next reader waits for a fresh sync; the store keeps the last state for the snapshot.

It uses the apiserver client it is given; whoever created the client closes it.

It owns the reflectors' tasks, so it is also where they are coordinated: when one reflector
finds that the upstream's resourceVersions went back (a sync below an RV already seen), every
resource has to be listed again on the new timeline, since RVs are one cluster-wide counter.
The cache is told to start over, and the other reflectors are restarted to relist at once
(their watches may still look healthy: the old RV can be valid on the new timeline too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cache.apiclient import ApiClient
from cache.cluster import ClusterCache
from cache.listwatch import Clock, Phase, Selection, Sink, duration
from cache.reflector import Reflector, ReflectorSettings
from cache.topology_feed import MODES as TOPOLOGY_MODES
from cache.topology_feed import NODES_MODE, NodeTopology
from kubeapi import node_topology
from kubeapi.resources import ALL, CONFIGMAPS, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.selectors import FieldSelector, parse_field_selector

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_ENDPOINTS_IDLE", "DEFAULT_TOPOLOGY_NAMESPACE", "ENDPOINTS_MODES", "TOPOLOGY_MODES", "Informers",
           "UpstreamOptions"]

ENDPOINTS_MODES = ("lazy", "on", "off")
DEFAULT_ENDPOINTS_IDLE = 600.0
DEFAULT_TOPOLOGY_NAMESPACE = "edge-system"
# Reflector names beyond the cached resources' plurals (metrics, logs, debug pages).
BUCKETS = "node-topology-buckets"
NODE_LABELS = "node-labels"


@dataclass(frozen=True)
class UpstreamOptions:
    """What the wrapper watches upstream (``--node-topology``, ``--node-topology-namespace``,
    ``--endpoints-informer``, ``--endpoints-idle-timeout``)."""

    node_topology: str = "auto"
    topology_namespace: str = DEFAULT_TOPOLOGY_NAMESPACE
    endpoints: str = "lazy"
    endpoints_idle: float = DEFAULT_ENDPOINTS_IDLE

    def __post_init__(self) -> None:
        if self.node_topology not in TOPOLOGY_MODES:
            raise ValueError(f"node topology mode {self.node_topology!r}, not one of {TOPOLOGY_MODES}")
        if self.endpoints not in ENDPOINTS_MODES:
            raise ValueError(f"endpoints informer mode {self.endpoints!r}, not one of {ENDPOINTS_MODES}")


def local_node_scope(local_node: str) -> FieldSelector:
    """What the Nodes reflector watches, and so all the Nodes view holds: the local Node."""
    return parse_field_selector(f"metadata.name={local_node}", NODES.supported_fields)


class Informers:
    """Owns the reflectors and their tasks, and the node topology feed. Created, started and
    stopped by ``wrapper.compose``; the HTTP front calls ``touch``/``watching`` (its Demand);
    read by /readyz, metrics and debug pages (``reflectors``, ``node_topology``).

    It configures the cache it feeds (``ClusterCache.configure``, before anything is loaded):
    Endpoints optional unless "on", node labels from the feed, and the Nodes view's scope (the
    local Node)."""

    def __init__(self, client: ApiClient, cache: ClusterCache, settings: ReflectorSettings | None = None,
                 *, options: UpstreamOptions | None = None, clock: Clock = time.monotonic) -> None:
        self.client = client
        self.cache = cache
        self.settings = settings or ReflectorSettings()
        self.options = options = options or UpstreamOptions()
        cache.configure(optional=(ENDPOINTS,) if options.endpoints != "on" else (), label_feed=True,
                        scopes={NODES.plural: local_node_scope(cache.local_node)})
        self._clock = clock
        # The running reflectors, by name (a cached resource's plural, BUCKETS or NODE_LABELS).
        self.reflectors: dict[str, Reflector] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.node_topology = NodeTopology(cache, self.options.node_topology, self.options.topology_namespace,
                                          start_nodes=self._start_node_labels, stop_nodes=self._stop_node_labels)
        local = Selection(field_selector=f"metadata.name={cache.local_node}")
        self._add(self._reflector(NODES, cache, selection=local))
        self._add(self._reflector(SERVICES, cache))
        self._add(self._reflector(ENDPOINTSLICES, cache))
        if self.options.endpoints == "on":
            self._add(self._reflector(ENDPOINTS, cache))
        if self.node_topology.watches_buckets:
            self._add(self._reflector(CONFIGMAPS, self.node_topology.buckets, name=BUCKETS,
                                      selection=Selection(label_selector=node_topology.LABEL_SELECTOR),
                                      namespace=self.options.topology_namespace,
                                      on_failed=self.node_topology.bucket_list_failed))
        # The lazy Endpoints informer: when a request last asked for Endpoints, and the open watches.
        self._endpoints_used = clock()
        self._endpoints_watches = 0

    def _reflector(self, resource: Resource, sink: Sink, *, name: str = "", selection: Selection | None = None,
                   namespace: str | None = None,
                   on_failed: Callable[[BaseException], None] | None = None) -> Reflector:
        return Reflector(self.client, resource, sink, self.settings, on_regression=self._timeline_went_back,
                         selection=selection or Selection(), namespace=namespace, name=name, on_failed=on_failed,
                         clock=self._clock)

    def _add(self, reflector: Reflector) -> None:
        self.reflectors[reflector.name] = reflector

    # ---- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        # A cache restored from disk already serves: its first syncs are spread over the relist
        # jitter (a fleet restarting together must not list in lockstep); one without syncs at once.
        restored = self.cache.ready
        watchers = Counter(r.resource for r in self.reflectors.values())
        for name, reflector in self.reflectors.items():
            if reflector.resource in ALL:
                # A first list below a restored cache's RVs means the apiserver went back.
                reflector.rv = max(reflector.rv, self.cache.upstream_rv(reflector.resource))
                if restored and watchers[reflector.resource] == 1:
                    # The snapshot holds this resource's state at its RV: resume, not list (a
                    # fleet restarting its wrappers then costs the apiserver the changes only).
                    # Not where two reflectors share a resource's store (the Nodes, in the nodes
                    # mode): its RV is the higher of theirs, so the other could miss events.
                    reflector.machine.resume(self.cache.upstream_rv(reflector.resource))
            if restored:
                reflector.machine.spread()
            self._tasks[name] = self._spawn(reflector)
        self.node_topology.start()

    def _spawn(self, reflector: Reflector) -> asyncio.Task[None]:
        return asyncio.create_task(reflector.run(), name=f"reflector:{reflector.name}")

    def _run(self, reflector: Reflector) -> None:
        """Start ``reflector`` now (at run time: the lazy Endpoints, the metadata-only Nodes)."""
        if self._stopped or reflector.name in self.reflectors:
            return
        self._add(reflector)
        self._tasks[reflector.name] = self._spawn(reflector)

    def _halt(self, name: str) -> None:
        """Stop the reflector ``name`` (its task ends at its next await point)."""
        self.reflectors.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            self._cancelled.add(task)
            task.add_done_callback(self._cancelled.discard)

    def _timeline_went_back(self, source: Reflector, had: int, got: int) -> None:
        """``source`` synced at ``got`` after seeing ``had``: relist everything on the new timeline."""
        log.warning("the apiserver's resourceVersions went back (%s: %d, then %d): relisting every resource; "
                    "clients' watches will be ended with 410 Expired so they relist too",
                    source.name, had, got)
        self.cache.start_over()
        for name, reflector in list(self.reflectors.items()):
            if reflector is source:
                continue
            reflector.forget_rv()
            task = self._tasks.get(name)
            if task is not None and not task.done():
                # Whatever it is doing (a healthy-looking watch, a list, a back-off) is on the old
                # timeline. Cancelling at an await point never leaves the cache half-applied.
                task.cancel()
                self._cancelled.add(task)
                task.add_done_callback(self._cancelled.discard)
            self._tasks[name] = self._spawn(reflector)

    async def stop(self) -> None:
        self._stopped = True
        await self.node_topology.stop()
        tasks = [*self._tasks.values(), *self._cancelled]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # ---- the node topology feed's metadata-only Nodes ----------------------------------------------------

    def _start_node_labels(self) -> None:
        # Every Node but the local one, which the Nodes reflector watches in full: its heartbeats
        # would otherwise reach this wrapper twice (bench/: 3.7 KB more per heartbeat of a real Node).
        others = Selection(field_selector=f"metadata.name!={self.cache.local_node}", metadata_only=True)
        self._run(self._reflector(NODES, self.node_topology.nodes, name=NODE_LABELS, selection=others))

    def _stop_node_labels(self) -> None:
        self._halt(NODE_LABELS)

    # ---- the lazy Endpoints informer (cache.reader.Demand) ------------------------------------------------

    def lazy(self, resource: Resource) -> bool:
        """Whether ``resource``'s informer runs only while something reads it."""
        return resource.plural == ENDPOINTS.plural and self.options.endpoints == "lazy"

    def touch(self, resource: Resource) -> None:
        """A client asked for ``resource``: start its lazy informer if it is not running."""
        if not self.lazy(resource):
            return
        self._endpoints_used = self._clock()
        if ENDPOINTS.plural in self.reflectors or self._stopped:
            return
        self.cache.activate(ENDPOINTS)
        reflector = self._reflector(ENDPOINTS, self.cache)
        reflector.rv = self.cache.upstream_rv(ENDPOINTS)  # "not older than" what it had
        log.info("upstream endpoints: a client asked for Endpoints; starting their informer (it stops after %gs "
                 "without Endpoints requests or watches)", self.options.endpoints_idle)
        self._run(reflector)
        idle = asyncio.create_task(self._stop_when_idle(reflector), name="endpoints-idle")
        self._tasks["endpoints-idle"] = idle

    @contextlib.contextmanager
    def watching(self, resource: Resource) -> Iterator[None]:
        """Hold ``resource``'s lazy informer for the length of a watch."""
        self.touch(resource)
        if not self.lazy(resource):
            yield
            return
        self._endpoints_watches += 1
        try:
            yield
        finally:
            self._endpoints_watches -= 1
            self._endpoints_used = self._clock()

    async def _stop_when_idle(self, reflector: Reflector) -> None:
        idle = self.options.endpoints_idle
        while True:
            left = idle - (self._clock() - self._endpoints_used)
            if not self._endpoints_watches and left <= 0:
                break
            await asyncio.sleep(left if not self._endpoints_watches else idle)
        if self.reflectors.get(ENDPOINTS.plural) is not reflector:
            return
        log.info("upstream endpoints: no Endpoints request or watch for %gs; stopping their informer", idle)
        self._halt(ENDPOINTS.plural)
        self._tasks.pop("endpoints-idle", None)
        self.cache.unload(ENDPOINTS)

    # ---- state -------------------------------------------------------------------------------------

    def _essential(self) -> list[Reflector]:
        """The reflectors the cache's state depends on: all but the bucket watch while the labels
        come from the Nodes' metadata (buckets refused with 403 must not look like being offline)."""
        aside = BUCKETS if self.node_topology.mode == NODES_MODE else None
        return [r for name, r in self.reflectors.items() if name != aside]

    @property
    def connected(self) -> bool:
        return all(r.state.connected for r in self._essential())

    def upstream_note(self, plural: str, synced: bool) -> str:
        """What /readyz?verbose adds to the line of the view ``plural``: for a view that has not
        synced, why (its reflector's last error and when it tries again, the sync under way, or
        the other reflectors the cache's load waits for); for a synced one, that its reflector
        lost the apiserver. "" when there is nothing to say."""
        own = self.reflectors.get(plural)
        mine = self._trouble(own, syncing=not synced) if own is not None else ""
        if synced or mine:
            return mine
        waiting = [f"{name} ({trouble})" for name, r in self.reflectors.items()
                   if r is not own and r in self._essential() and (trouble := self._trouble(r, syncing=True))]
        return f"waiting for {', '.join(waiting)}" if waiting else ""

    def _trouble(self, reflector: Reflector, *, syncing: bool) -> str:
        """A reflector's failure (its last error, and the next attempt), or with ``syncing`` the
        sync it has under way; "" if it is watching."""
        wait = reflector.machine.next_attempt_in()
        if wait is not None:
            return f"{reflector.state.last_error}; retrying in {duration(wait)}"
        phase = reflector.machine.phase
        if syncing and phase is not Phase.WATCH:
            return "a streaming list under way" if phase is Phase.STREAM else "a list under way"
        return ""

    def offline_for(self) -> float:
        """Seconds since some reflector lost the apiserver (0 while all are connected)."""
        since = [r.state.disconnected_since for r in self._essential() if not r.state.connected]
        return self._clock() - min(since) if since else 0.0
