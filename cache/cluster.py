"""The cluster cache: upstream state in, filtered views out.

``ClusterCache`` is the reflectors' Sink, and composes the parts that each own one concern:

* a ``Store`` per resource (``cache.store``): the upstream objects as bytes, and their declared
  indexes (``cache.indexes``) over small fact records;
* the node labels: which Nodes exist and their labels, all that filters read about Nodes;
* the ``Planner`` (``cache.planner``): which Services to re-filter after a change;
* ``Outputs`` (``cache.outputs``): what to serve for a Service's objects, asked of filters/;
* the ``Publisher`` (``cache.publisher``): each change batch into the ``View`` of its resource.

Every upstream change, before the first sync or after it, goes through the handler of its
resource (the table in ``__init__``). While the cache loads (its first sync, or a new upstream
timeline) the publisher stages what the views will serve instead of publishing events, and no
re-filter is planned: the load's end serves every filtered Service once, then loads the views.

The load waits for the resources that are not ``optional`` (an optional one, the lazily watched
Endpoints, is loaded by itself whenever its first list comes: ``unload`` forgets its view when its
informer stops) and, with a ``label_feed``, for the feed's first ``replace_node_labels``: node
labels can come from another source than the Nodes store (the node topology buckets, or a
metadata-only watch of all Nodes). A node the Nodes store holds (the local one: its reflector
watches it alone) takes its labels from its object; the feed's labels for it are not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from cache.indexes import BY_LABEL_READ, Refs, endpoints_refs, reference_indexes, service_indexes, slice_refs
from cache.outputs import Forms, Outputs
from cache.planner import Plan, Planner
from cache.publisher import Batch, Own, Publisher
from cache.store import Store, Stored
from cache.view import DEFAULT_HISTORY_BYTES, HistoryBudget, View, exact_json
from filters.api import NodeChange, TopologyContext
from filters.pipeline import NO_POLICIES, PIPELINE, Pipeline, Policies
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource, object_key
from kubeapi.rv import rv_of
from kubeapi.selectors import FieldSelector
from kubeapi.types import JSONDict

log = logging.getLogger(__name__)

DELETED = "DELETED"

F = TypeVar("F")
# How one resource's upstream changes are handled: (type, key, object, resourceVersion to publish at).
Handler = Callable[[str, str, JSONDict, int], None]
# What triggered a re-filter run, for the debug log: (what changed, its name, how).
Trigger = tuple[str, str, str]

_NO_FORMS: Forms = {}  # shared, never written


class ClusterCache:
    """The upstream state and the filtered views of one wrapper.

    Owns a ``Store`` per resource, the node labels, the ``View`` per resource, and the parts
    that turn changes into views (``Planner``, ``Outputs``, ``Publisher``). Fed by the
    reflectors of ``cache.informers`` (``replace``, ``apply``, ``bookmark``, ``start_over``) and
    by ``cache.snapshot`` (``replace``, ``clear``); read by wrapper/ (``views``, readiness,
    ``explain``, counters) and by the snapshot writer (``raw_items``, ``upstream_rv``).
    """

    def __init__(
        self, local_node: str, *, history_events: int = 20000, history_bytes: int = DEFAULT_HISTORY_BYTES,
        pipeline: Pipeline = PIPELINE, optional: Iterable[Resource] = (), label_feed: bool = False,
        scopes: Mapping[str, FieldSelector] | None = None,
    ) -> None:
        """``optional``, ``label_feed``, ``scopes``: see ``configure``."""
        self.local_node = local_node
        budget = HistoryBudget(history_bytes)
        self.views: dict[str, View] = {r.plural: View(r, max_events=history_events, budget=budget) for r in ALL}
        self._optional: frozenset[str] = frozenset()
        # Optional resources whose informer runs: a load waits for them too.
        self._active: set[str] = set()
        self._label_feed = False
        slice_indexes, endpoints_indexes = reference_indexes()
        self._nodes: Store[None] = Store(NODES)
        self._services: Store[Policies] = Store(SERVICES, service_indexes())
        self._slices: Store[Refs] = Store(ENDPOINTSLICES, slice_indexes)
        self._endpoints: Store[Refs] = Store(ENDPOINTS, endpoints_indexes)
        # By plural (a Resource's hash covers all its fields; a str caches its own).
        self._stores: dict[str, Store[Any]] = {s.resource.plural: s for s in (
            self._nodes, self._services, self._slices, self._endpoints)}
        # Read live by the filters (through the context) and the planner; only
        # node_labels_changed writes it.
        self._node_labels: dict[str, dict[str, str]] = {}
        self._pipeline = pipeline
        self._planner = Planner(pipeline, local_node, self._node_labels, self._services, self._slices)
        self._outputs = Outputs(pipeline, TopologyContext(local_node, self._node_labels), self._services,
                               self._slices, self._endpoints)
        self._publisher = Publisher(self.views)
        self._handlers: dict[str, Handler] = {
            NODES.plural: self._on_node,
            SERVICES.plural: self._on_service,
            ENDPOINTSLICES.plural: self._on_slice,
            ENDPOINTS.plural: self._on_endpoints,
        }
        cached = {r.plural for r in ALL}
        if set(self._handlers) != cached or set(self._stores) != cached:
            raise TypeError("every cached resource needs a store and a handler: "
                            f"{sorted(cached ^ (set(self._handlers) & set(self._stores)))}")
        self.ready_event = asyncio.Event()
        self._forget()
        self.configure(optional=optional, label_feed=label_feed, scopes=scopes or {})

    def configure(self, *, optional: Iterable[Resource] = (), label_feed: bool = False,
                  scopes: Mapping[str, FieldSelector] | None = None) -> None:
        """What the upstream feeds, as the informers that feed the cache decide it; only before
        anything was loaded. ``optional``: resources the cache is ready without (their informer
        may not run); ``label_feed``: node labels also come from ``replace_node_labels`` and
        ``node_labels_fed``, whose first full state the load waits for; ``scopes``: by plural,
        the objects a view holds all of (its reflector's field selector; ``ViewReader.scope``)."""
        if self._kept or self.ready_event.is_set():
            raise RuntimeError("the cache has loaded already: configure it before its first list")
        self._optional = frozenset(r.plural for r in optional)
        self._label_feed = label_feed
        self._labels_listed = not label_feed
        for plural, scope in (scopes or {}).items():
            self.views[plural].scope = scope

    def _forget(self) -> None:
        """Every upstream object, everything derived from them and every counter: as new."""
        for store in self._stores.values():
            store.clear()
        self._node_labels.clear()  # in place: the context and the planner read this dict
        self._labels_listed = not self._label_feed
        # The resources whose store holds a full list (possibly from before an optional one stopped).
        self._kept: set[str] = set()
        self._outputs.endpoint_counts.clear()
        self.ready_event.clear()  # set at the first sync, and kept when the cache starts over
        # Set by start_over: the next load is a new upstream timeline for the views.
        self._new_timeline = False
        # How many times the upstream's resourceVersions went back (start_over was called).
        self.timeline_resets = 0
        # Bumped by every upstream change; the snapshot persister saves when it moves.
        self.generation = 0
        # Counters for metrics and the debug page.
        self.refilter_runs = 0
        self.refilter_seconds = 0.0
        self.events_in: dict[str, int] = {r.plural: 0 for r in ALL}

    # ---- reflector sink --------------------------------------------------------------

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        """A full upstream list of ``resource`` at ``rv``."""
        self.generation += 1
        if self._publisher.loading:
            self._load_list(resource, items, rv)
        elif not self.views[resource.plural].synced:
            self._load_alone(resource, items, rv)
        else:
            self._relist(resource, items, rv)

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        """One upstream watch event (ADDED, MODIFIED or DELETED)."""
        rv = rv_of(obj)
        store = self._stores[resource.plural]
        self.events_in[resource.plural] += 1
        self.generation += 1
        self._handlers[resource.plural](type_, object_key(obj), obj, rv)
        store.rv = max(store.rv, rv)

    def bookmark(self, resource: Resource, rv: int) -> None:
        store = self._stores[resource.plural]
        store.rv = max(store.rv, rv)
        self._publisher.advance(resource, rv)

    def start_over(self) -> None:
        """The upstream's resourceVersions went back: load everything again from the next lists.

        Called by the informers, which make every reflector relist. Until each resource has
        listed again the views keep serving the last state and the cache is not ready; then
        every view switches to the new timeline at once.
        """
        self._new_timeline = True
        self.timeline_resets += 1
        self.generation += 1
        self._start_load()

    def activate(self, resource: Resource) -> None:
        """The informer of an optional ``resource`` started: until ``unload``, a load (a new
        upstream timeline) waits for its list too."""
        if resource.plural not in self._optional:
            raise ValueError(f"{resource.plural} is not optional: the cache needs it")
        self._active.add(resource.plural)

    def unload(self, resource: Resource) -> None:
        """The informer of an optional ``resource`` stopped: its view empties and readers wait for
        its next list (which loads it by itself). The store keeps the last state it listed, for
        the snapshot."""
        if resource.plural not in self._optional:
            raise ValueError(f"{resource.plural} is not optional: the cache needs it")
        self._active.discard(resource.plural)
        self._stores[resource.plural].listed = False
        self._publisher.unload(resource)

    def replace_node_labels(self, labels: Mapping[str, Mapping[str, str]], rv: int) -> None:
        """The label feed's full state: every node it names has these labels, and a node it does
        not name is gone, except the nodes the Nodes store holds (their objects say). The first
        one counts towards the cache's load; later ones re-filter what changed, at ``rv``."""
        self.generation += 1
        held = self._nodes.objects
        for name in [n for n in self._node_labels if n not in labels and n not in held]:
            self.node_labels_changed(name, None, rv)
        for name, node_labels in labels.items():
            if name not in held:
                self.node_labels_changed(name, node_labels, rv)
        if not self._labels_listed:
            self._labels_listed = True
            if self._publisher.loading and self._all_listed():
                self._finish_load()

    def node_labels_fed(self, name: str, labels: Mapping[str, str] | None, rv: int) -> None:
        """One node's labels from the label feed (None: gone); ignored for a node the Nodes store holds."""
        if name in self._nodes.objects:
            return
        self.generation += 1
        self.node_labels_changed(name, labels, rv)

    def clear(self) -> None:
        """Forget everything, the views' contents included: back to a new cache's state.

        For a load that failed part-way (``cache.snapshot.restore``), before any client has read
        the cache; a cache that serves clients starts over instead.
        """
        self._forget()
        self._publisher.clear()
        self._start_load()

    def node_labels_changed(self, name: str, labels: Mapping[str, str] | None, rv: int) -> None:
        """What the cache knows of one Node's labels (None: the Node is gone). The one entry for
        node labels, whatever their source (today the Nodes' handler); re-filters what the
        filters say the change can affect, at ``rv``."""
        old = self._node_labels.get(name)
        new = None if labels is None else dict(labels)
        if new is None:
            self._node_labels.pop(name, None)
        else:
            self._node_labels[name] = new
        if old == new or self._publisher.loading:
            return
        local = name == self.local_node
        self._refilter(self._planner.after_node_change(NodeChange(name, old, new, local)), rv,
                       ("local node" if local else "node", name,
                        "added" if old is None else "removed" if new is None else "relabeled"))

    # ---- queries -----------------------------------------------------------------------

    def upstream_rv(self, resource: Resource) -> int:
        return self._stores[resource.plural].rv

    @property
    def ready(self) -> bool:
        """Whether every resource has been listed and the views serve the result (not while a
        load, the first sync or a new upstream timeline, is under way)."""
        return not self._publisher.loading

    @property
    def resyncing(self) -> bool:
        """Whether the cache is relisting everything after the upstream's RVs went back."""
        return self._new_timeline

    @property
    def node_labels(self) -> Mapping[str, Mapping[str, str]]:
        """Every known Node's labels, by name."""
        return self._node_labels

    def fed_node_labels(self) -> dict[str, Mapping[str, str]] | None:
        """The labels of the nodes the Nodes store does not hold (the label feed's), for the
        snapshot; None while the feed has not listed (or there is none)."""
        if not self._label_feed or not self._labels_listed:
            return None
        held = self._nodes.objects
        return {name: labels for name, labels in self._node_labels.items() if name not in held}

    @property
    def label_feed(self) -> bool:
        """Whether node labels also come from a feed (``replace_node_labels``), which the load waits for."""
        return self._label_feed

    def is_optional(self, resource: Resource) -> bool:
        """Whether the cache is ready without ``resource`` (its informer may not run)."""
        return resource.plural in self._optional

    def keeps(self, resource: Resource) -> bool:
        """Whether ``resource``'s store holds a full list: what a snapshot persists (an optional
        resource's may be the last it had before its informer stopped)."""
        return resource.plural in self._kept

    def label_keys_read(self) -> frozenset[str]:
        """The node label keys some Service's filters read (their declared ``Reads``)."""
        return frozenset(self._services.index.values(BY_LABEL_READ))

    @property
    def local_node_known(self) -> bool:
        """Whether --hostname names a Node of the cache (False until the first sync)."""
        return self.ready_event.is_set() and self.local_node in self._node_labels

    @property
    def synthetic_events(self) -> int:
        return self._publisher.synthetic_events

    @property
    def filter_decisions(self) -> Mapping[tuple[str, str, str], int]:
        """How many objects each filter served unchanged, rewrote or hid, by (filter, resource, outcome)."""
        return self._pipeline.decisions

    def filtered_endpoints(self) -> tuple[int, int]:
        """Endpoints of the Services whose slices some filter acts on: (kept, dropped) now."""
        counts = self._outputs.endpoint_counts.values()
        return sum(k for k, _ in counts), sum(d for _, d in counts)

    def raw_items(self, resource: Resource) -> list[bytes]:
        """The JSON of every upstream object of ``resource`` (after the first sync)."""
        return self._stores[resource.plural].raw_items()

    def explain(self, service: str | None = None) -> dict[str, Any]:
        """What the local node sees for each Service some filter is involved in, and why: one record
        per (Service, filter), in the running filters' order, malformed annotations included."""
        keys = [service] if service is not None else sorted(self._services.objects)
        return {
            "localNode": self.local_node,
            "localNodeKnown": self.local_node in self._node_labels,
            "localLabels": self._node_labels.get(self.local_node, {}),
            "filters": [f.name for f in self._pipeline.filters],
            "services": [record for key in keys for record in self._outputs.explain(key)],
        }

    # ---- lists -------------------------------------------------------------------------

    def _load_list(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        """While loading: each listed object is handled as ``items`` yields it, so a reflector
        that decodes its pages one at a time never has the whole list decoded; what the list
        lacks is deleted after."""
        # No event is published while loading: there is no resourceVersion to publish at (0).
        self._take_list(resource, items, rv)
        if self._all_listed():
            self._finish_load()

    def _take_list(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        """Put a whole list of ``resource`` in its store, through its handler, as it is consumed;
        what the list lacks of what the store held is deleted."""
        store, handle = self._stores[resource.plural], self._handlers[resource.plural]
        if not store.objects:  # the first list of a resource: nothing to replace or delete
            for obj in items:
                handle("ADDED", object_key(obj), obj, 0)
        else:
            seen: set[str] = set()
            for obj in items:
                key = object_key(obj)
                seen.add(key)
                handle("MODIFIED" if key in store.objects else "ADDED", key, obj, 0)
            for key in [k for k in store.objects if k not in seen]:
                handle(DELETED, key, store.objects[key].obj(), 0)
        store.rv = rv
        store.listed = True
        self._kept.add(resource.plural)

    def _all_listed(self) -> bool:
        """Whether everything the load waits for has listed: the stores of the resources that
        are not optional or whose informer runs, and the label feed if there is one."""
        return self._labels_listed and all(s.listed for p, s in self._stores.items()
                                           if p not in self._optional or p in self._active)

    def _load_alone(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        """A list of an optional resource whose view is not loaded (its informer just started):
        staged and loaded by itself, while the other views go on publishing. What the list lacks
        of what the store kept is deleted."""
        self._publisher.start_alone(resource)
        self._take_list(resource, items, rv)
        self._publisher.finish_alone(resource, rv)
        log.info("cache %s: loaded %d objects at resourceVersion %d", resource.plural,
                 len(self._stores[resource.plural].objects), rv)

    def _relist(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        """After the first sync: what changed since the store's state, as events.

        Deletions go first, carrying the view's RV as it was (the list does not say when they
        happened); then changed objects in their own resourceVersion order, carrying their real
        RVs (a client may write them back). So the last event of the relist is the one that
        advances the view, and a client that lists at the list's RV afterwards gets none again.
        """
        store, handle = self._stores[resource.plural], self._handlers[resource.plural]
        new = {object_key(o): o for o in items}
        for key, stored in list(store.objects.items()):
            if key not in new:
                handle(DELETED, key, stored.obj(), self._publisher.rv(resource))
        changed: list[tuple[int, str, str, JSONDict]] = []
        for key, obj in new.items():
            prev = store.get(key)
            if prev is None:
                changed.append((rv_of(obj), "ADDED", key, obj))
            elif prev.rv != rv_of(obj):
                changed.append((rv_of(obj), "MODIFIED", key, obj))
        changed.sort(key=lambda c: c[0])
        for obj_rv, type_, key, obj in changed:
            handle(type_, key, obj, min(obj_rv, rv))
        store.rv = max(store.rv, rv)
        self._publisher.advance(resource, rv)

    def _start_load(self) -> None:
        for store in self._stores.values():
            store.listed = False
        self._labels_listed = not self._label_feed
        self._publisher.start_load()

    def _finish_load(self) -> None:
        """Everything has listed: serve every filtered Service, then load the views at once (an
        optional resource that has not listed keeps its view; on a new timeline it is unloaded)."""
        new_timeline, self._new_timeline = self._new_timeline, False
        self._outputs.endpoint_counts.clear()
        plan = self._planner.after_load()
        started = time.perf_counter()
        self._serve_again(plan, 0)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("re-filter (%s): %d Services served, %.2f ms", "a new upstream timeline" if new_timeline
                      else "the first sync", len(plan), (time.perf_counter() - started) * 1000)
        self._publisher.finish_load({plural: s.rv for plural, s in self._stores.items() if s.listed},
                                    new_timeline=new_timeline)
        if new_timeline:
            for plural in self._optional:
                if not self._stores[plural].listed:
                    # Its view and what its store kept are of the old timeline.
                    self._publisher.unload(self._stores[plural].resource)
                    self._kept.discard(plural)
        self.ready_event.set()
        log.info(
            "cache %s: %d nodes, %d services, %d endpointslices, %d endpoints",
            "resynced on the apiserver's new resourceVersions (open watches get 410 and relist)"
            if new_timeline else "synced",
            *(len(s.objects) for s in (self._nodes, self._services, self._slices, self._endpoints)),
        )

    # ---- per-resource handlers -----------------------------------------------------------

    def _on_node(self, type_: str, key: str, obj: JSONDict, rv: int) -> None:
        old, new = self._keep(self._nodes, type_, key, obj, _no_facts)
        if old is None and new is None:
            return
        self._emit(NODES, type_, key, obj, new, rv)
        self.node_labels_changed(key, None if new is None else (obj["metadata"].get("labels") or {}), rv)

    # While loading, nothing is served again with a change (``group`` stays empty) and nothing
    # is re-filtered: the load's end serves every filtered Service once.

    def _on_service(self, type_: str, key: str, obj: JSONDict, rv: int) -> None:
        old, new = self._keep(self._services, type_, key, obj, self._policies_of)
        if old is None and new is None:
            return
        after = new.facts if new is not None else NO_POLICIES
        live = not self._publisher.loading
        self._emit(SERVICES, type_, key, obj, new, rv, (key,) if live and after.touches(SERVICES) else ())
        if live:
            before = old.facts if old is not None else NO_POLICIES
            self._refilter(self._planner.after_service_change(key, before, after), rv, ("service", key, type_))

    def _on_slice(self, type_: str, key: str, obj: JSONDict, rv: int) -> None:
        old, new = self._keep(self._slices, type_, key, obj, slice_refs)
        if old is None and new is None:
            return
        group: list[str] = []
        if not self._publisher.loading:
            owners = {r.facts.service for r in (old, new) if r is not None and r.facts.service is not None}
            # A Service no filter acts on serves its slices as stored: the siblings of this one
            # cannot have changed, so they are neither decoded nor compared.
            group = [s for s in sorted(owners) if self._outputs.policies(s).touches(ENDPOINTSLICES)]
        if group and log.isEnabledFor(logging.DEBUG):
            with self._run_logged(("endpointslice", key, type_), len(group)):
                self._emit(ENDPOINTSLICES, type_, key, obj, new, rv, group)
            return
        self._emit(ENDPOINTSLICES, type_, key, obj, new, rv, group)

    def _on_endpoints(self, type_: str, key: str, obj: JSONDict, rv: int) -> None:
        old, new = self._keep(self._endpoints, type_, key, obj, endpoints_refs)
        if old is None and new is None:
            return
        live = not self._publisher.loading
        group = (key,) if live and self._outputs.policies(key).touches(ENDPOINTS) else ()
        if group and log.isEnabledFor(logging.DEBUG):
            with self._run_logged(("endpoints", key, type_), 1):
                self._emit(ENDPOINTS, type_, key, obj, new, rv, group)
            return
        self._emit(ENDPOINTS, type_, key, obj, new, rv, group)

    def _keep(self, store: Store[F], type_: str, key: str, obj: JSONDict,
              facts: Callable[[str, JSONDict], F]) -> tuple[Stored[F] | None, Stored[F] | None]:
        """Record an upstream change in ``store``: its (previous, new) records, new None when deleted."""
        if type_ == DELETED:
            return store.delete(key), None
        new = Stored(exact_json(obj), rv_of(obj), facts(key, obj))
        return store.put(key, new), new

    def _policies_of(self, key: str, service: JSONDict) -> Policies:
        policies = self._pipeline.policies_of(service)
        for f, problem in policies.malformed:
            # Parsing happens once per Service version, so this logs once per version.
            log.warning(
                "service %s (resourceVersion %s): ignoring malformed %s annotation %r: %s; %s",
                key, (service.get("metadata") or {}).get("resourceVersion"), problem.source, problem.value[:200],
                problem.reason, f.if_malformed,
            )
        return policies

    def _emit(self, resource: Resource, type_: str, key: str, obj: JSONDict, new: Stored[Any] | None, rv: int,
              group: Iterable[str] = ()) -> None:
        """Publish one upstream change as one batch: the objects of ``group`` (Services) of the
        same resource served again with it, then its own event, last."""
        derived: Forms = _NO_FORMS
        served: JSONDict | None = obj
        if group:
            derived = {}
            fresh = (key, obj) if new is not None else None
            for service in group:
                derived.update(self._outputs.of(resource, service, fresh))
            if new is not None:
                served = derived.pop(key, obj)
        own = (Own(type_, key, served, obj, new.raw, new.rv) if new is not None and served is obj
               else Own(type_, key, served, obj))
        self._publisher.publish(Batch(resource, rv, derived, own))

    # ---- re-filtering ---------------------------------------------------------------------

    def _refilter(self, plan: Plan, rv: int, why: Trigger) -> None:
        """Serve the planned Services' objects again after the change ``why`` (a Node's or a Service's)."""
        if not plan or self._publisher.loading:
            return
        self.refilter_runs += 1
        events = self._publisher.synthetic_events
        started = time.perf_counter()
        try:
            self._serve_again(plan, rv)
        finally:
            took = time.perf_counter() - started
            self.refilter_seconds += took
        if log.isEnabledFor(logging.DEBUG):
            log.debug("re-filter (%s %s %s): %d Services, %d events, %.2f ms", *why, len(plan),
                      self._publisher.synthetic_events - events, took * 1000)

    @contextlib.contextmanager
    def _run_logged(self, why: Trigger, services: int) -> Iterator[None]:
        """At debug: one line for the re-filter run in the block (a slice's or an Endpoints' change
        served again with its Service's other objects): what triggered it, how many Services, how
        many objects it changed (events beyond the upstream object's own), how long it took."""
        events = self._publisher.synthetic_events
        started = time.perf_counter()
        yield
        log.debug("re-filter (%s %s %s): %d Services, %d events, %.2f ms", *why, services,
                  self._publisher.synthetic_events - events, (time.perf_counter() - started) * 1000)

    def _serve_again(self, plan: Plan, rv: int) -> None:
        """Serve the planned Services' objects again, one batch per resource, at ``rv``."""
        for resource in (SERVICES, ENDPOINTSLICES, ENDPOINTS):
            derived: Forms = {}
            for service, resources in plan.items():
                if resource in resources:
                    derived.update(self._outputs.of(resource, service))
            if derived:
                self._publisher.publish(Batch(resource, rv, derived))


def _no_facts(_key: str, _obj: JSONDict) -> None:
    return None
