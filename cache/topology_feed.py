"""Node labels without watching every Node: from the node topology buckets, or a metadata-only watch.

A wrapper needs, of every Node but its own, only the name and the labels topology decisions read.
Watching every Node in full costs each wrapper every Node's status heartbeat (a few KB per node
every few minutes, the square of the fleet in total). So the labels come from one of two feeds,
both into ``ClusterCache.replace_node_labels`` (a full state) and ``node_labels_fed`` (one node):

- "publisher": the node topology buckets, ConfigMaps a cluster-level publisher keeps in one
  namespace (``kubeapi.node_topology``: node -> tracked labels, sharded, re-sharded by
  generation). Watching them costs nothing while no relevant label changes.
- "nodes": a metadata-only (``PartialObjectMetadata``) watch of every Node: about a third of a
  Node's bytes per event, and heartbeats still arrive, but a heartbeat that changes no label
  changes nothing in the cache (no re-filter, no client event).

The local Node is watched alone and in full by the Nodes reflector in either mode (its labels
come from it, and kube-proxy's requests for it are served from it); this feed does not touch it.

Mode ``auto`` decides from the buckets and follows them (they are watched in every mode but
"nodes", which is cheap): the bucket list comes first; while some generation is complete (all
``B`` buckets of it present) the publisher's buckets are the source, and the metadata watch of
Nodes is stopped. With no complete generation at the first list, or when the bucket list is
refused (no RBAC for ConfigMaps, say), the metadata watch of Nodes starts; buckets that later
complete a generation switch to "publisher"; the last bucket deleted switches back. Each switch
is logged once, and so is every Service that needs a label key the buckets do not track (the
publisher has not caught up with a new Service, or was started with fixed keys), once per set of
missing keys. Buckets left behind by a publisher that is gone keep being used: delete them (or
the namespace) to return to "nodes".

``NodeTopology`` owns the bucket set and the mode; ``cache.informers.Informers`` creates it, runs
its reflectors and starts or stops the Nodes one when it asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cache.cluster import ClusterCache
from kubeapi import node_topology
from kubeapi.node_topology import BucketSet, InvalidBucket
from kubeapi.resources import SERVICES, Resource
from kubeapi.rv import rv_of
from kubeapi.types import JSONDict

log = logging.getLogger(__name__)

MODES = ("auto", "publisher", "nodes")
PUBLISHER = "publisher"
NODES_MODE = "nodes"


class NodeTopology:
    """Where node labels come from, and the feeds that bring them to the cache.

    Owns the bucket set (``kubeapi.node_topology.BucketSet``) and the mode. Its two sinks,
    ``buckets`` and ``nodes``, are the sinks of the ConfigMaps reflector and of the metadata-only
    Nodes reflector that ``cache.informers.Informers`` runs; ``start_nodes``/``stop_nodes`` are
    the Informers' hooks to run or stop the latter. Read by debug pages (``describe``).
    """

    def __init__(self, cache: ClusterCache, mode: str, namespace: str, *,
                 start_nodes: Callable[[], None], stop_nodes: Callable[[], None]) -> None:
        if mode not in MODES:
            raise ValueError(f"node topology mode {mode!r}, not one of {MODES}")
        self.cache = cache
        self.requested = mode
        self.namespace = namespace
        self._start_nodes = start_nodes
        self._stop_nodes = stop_nodes
        self.bucket_set = BucketSet()
        # The source in use: "publisher", "nodes", or "" until the first decision.
        self.mode = ""
        self.switches = 0
        self.buckets = _BucketSink(self)
        self.nodes = _NodeSink(self)
        self._warned_keys: frozenset[str] = frozenset()
        self._invalid_seen: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    # ---- the Informers' side ------------------------------------------------------------------

    @property
    def watches_buckets(self) -> bool:
        return self.requested != NODES_MODE

    def start(self) -> None:
        """Decide at once where nothing needs deciding ("nodes"), and watch the Services' label
        keys for the missing-key warning."""
        if self.requested == NODES_MODE:
            self._enter(NODES_MODE, 0, "forced by --node-topology=nodes")
        self._task = asyncio.create_task(self._watch_keys(), name="node-topology-keys")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def bucket_list_failed(self, exc: BaseException) -> None:
        """The bucket reflector's request failed; before the first bucket list, an answer that
        refuses it (no RBAC for ConfigMaps, say) means the metadata watch of Nodes must do."""
        code = getattr(exc, "code", 0)  # an ApiError's: the apiserver answered
        if self.requested == "auto" and not self.mode and 400 <= code < 500 and code != 429:
            self._enter(NODES_MODE, 0, f"the node topology buckets cannot be listed ({exc})")

    def describe(self) -> dict[str, Any]:
        """The mode and the buckets, for /debug/cache."""
        newest = max((b.generation for b in self.bucket_set.buckets.values()), default=None)
        return {"requested": self.requested, "mode": self.mode, "namespace": self.namespace,
                "switches": self.switches, "buckets": sorted(self.bucket_set.buckets),
                "generation": newest, "trackedKeys": sorted(self.bucket_set.keys),
                "nodes": len(self.bucket_set.nodes)}

    # ---- buckets -------------------------------------------------------------------------------

    def _decode(self, objs: Iterable[JSONDict]) -> list[node_topology.Bucket]:
        out = []
        for obj in objs:
            try:
                out.append(node_topology.decode_bucket(obj))
            except InvalidBucket as exc:
                self._invalid(obj, exc)
        return out

    def _invalid(self, obj: JSONDict, exc: InvalidBucket) -> None:
        meta = obj.get("metadata") or {}
        seen = (str(meta.get("name")), str(meta.get("resourceVersion")))
        if seen not in self._invalid_seen:
            self._invalid_seen.add(seen)
            log.warning("node topology: ignoring ConfigMap %s/%s: %s", self.namespace, seen[0], exc)

    def buckets_listed(self, objs: Iterable[JSONDict], rv: int) -> None:
        changes = self.bucket_set.replace(self._decode(objs))
        self._buckets_changed(changes, rv, full=True)

    def bucket_event(self, type_: str, obj: JSONDict) -> None:
        rv = rv_of(obj)
        name = str((obj.get("metadata") or {}).get("name"))
        if type_ == "DELETED":
            changes = self.bucket_set.remove(name)
        else:
            try:
                changes = self.bucket_set.put(node_topology.decode_bucket(obj))
            except InvalidBucket as exc:
                self._invalid(obj, exc)
                changes = self.bucket_set.remove(name)  # what it held is no longer known
        self._buckets_changed(changes, rv, full=False)

    def _buckets_changed(self, changes: Mapping[str, node_topology.NodeLabels | None], rv: int, *,
                         full: bool) -> None:
        complete = self._complete_generation()
        if self.requested == PUBLISHER:
            if self.mode != PUBLISHER:
                self._enter(PUBLISHER, rv, "forced by --node-topology=publisher")
            elif full:
                self.cache.replace_node_labels(self.bucket_set.nodes, rv)
            else:
                self._feed(changes, rv)
            if not self.bucket_set.buckets and full:
                log.warning("node topology: no buckets in namespace %s (is the publisher running?): no node "
                            "but the local one has labels", self.namespace)
        elif self.requested == "auto":
            if self.mode != PUBLISHER and complete is not None:
                self._enter(PUBLISHER, rv, f"generation {complete} of the publisher's buckets is complete")
            elif self.mode == PUBLISHER and not self.bucket_set.buckets:
                self._enter(NODES_MODE, rv, f"no node topology bucket is left in namespace {self.namespace}")
            elif not self.mode:
                self._enter(NODES_MODE, rv, f"no complete set of node topology buckets in namespace {self.namespace}")
            elif self.mode == PUBLISHER:
                if full:
                    self.cache.replace_node_labels(self.bucket_set.nodes, rv)
                else:
                    self._feed(changes, rv)
        self._check_keys()

    def _complete_generation(self) -> int | None:
        """The newest generation whose buckets are all present, if any."""
        indexes: dict[int, set[int]] = {}
        counts: dict[int, set[int]] = {}
        for b in self.bucket_set.buckets.values():
            indexes.setdefault(b.generation, set()).add(b.index)
            counts.setdefault(b.generation, set()).add(b.buckets)
        complete = [g for g, idx in indexes.items()
                    if len(counts[g]) == 1 and idx == set(range(next(iter(counts[g]))))]
        return max(complete, default=None)

    def _feed(self, changes: Mapping[str, node_topology.NodeLabels | None], rv: int) -> None:
        for name, labels in changes.items():
            self.cache.node_labels_fed(name, labels, rv)

    # ---- metadata-only Nodes ---------------------------------------------------------------------

    def nodes_listed(self, objs: Iterable[JSONDict], rv: int) -> None:
        if self.mode != NODES_MODE:
            return  # a list that raced a switch to the buckets
        labels = {obj["metadata"]["name"]: dict(obj["metadata"].get("labels") or {}) for obj in objs}
        self.cache.replace_node_labels(labels, rv)

    def node_event(self, type_: str, obj: JSONDict) -> None:
        if self.mode != NODES_MODE:
            return
        meta = obj["metadata"]
        labels = None if type_ == "DELETED" else dict(meta.get("labels") or {})
        # A heartbeat changes no label: the cache compares and does nothing.
        self.cache.node_labels_fed(meta["name"], labels, rv_of(obj))

    # ---- switching ---------------------------------------------------------------------------------

    def _enter(self, mode: str, rv: int, why: str) -> None:
        before, self.mode = self.mode, mode
        if before:
            self.switches += 1
        if mode == PUBLISHER:
            log.info("node topology: node labels from the publisher's buckets in namespace %s (%d nodes, keys %s): "
                     "%s", self.namespace, len(self.bucket_set.nodes), sorted(self.bucket_set.keys), why)
            self._stop_nodes()
            self.cache.replace_node_labels(self.bucket_set.nodes, rv)
        else:
            log.info("node topology: node labels from a metadata-only watch of every Node: %s", why)
            # Until its first list the cache keeps the labels it has (the buckets' last, or a snapshot's).
            self._start_nodes()

    def _check_keys(self) -> None:
        """Warn, once per set, about label keys Services need that the buckets do not track."""
        if self.mode != PUBLISHER:
            return
        missing = self.cache.label_keys_read() - self.bucket_set.keys
        if missing and missing != self._warned_keys:
            log.warning("node topology: Services read node label keys %s that the publisher's buckets do not "
                        "track (tracked: %s): nodes look unlabelled for them until the publisher catches up",
                        sorted(missing), sorted(self.bucket_set.keys))
        self._warned_keys = frozenset(missing)

    async def _watch_keys(self) -> None:
        await self.cache.ready_event.wait()
        view = self.cache.views[SERVICES.plural]
        while True:
            cursor = view.head()
            self._check_keys()
            await view.wait(cursor, 3600.0)


class _BucketSink:
    """The bucket ConfigMaps reflector's sink."""

    def __init__(self, topology: NodeTopology) -> None:
        self._topology = topology

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        self._topology.buckets_listed(items, rv)

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        self._topology.bucket_event(type_, obj)

    def bookmark(self, resource: Resource, rv: int) -> None:
        pass


class _NodeSink:
    """The metadata-only Nodes reflector's sink."""

    def __init__(self, topology: NodeTopology) -> None:
        self._topology = topology

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        self._topology.nodes_listed(items, rv)

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        self._topology.node_event(type_, obj)

    def bookmark(self, resource: Resource, rv: int) -> None:
        pass
