"""The cluster cache: upstream state in, filtered views out.

Reflectors feed raw upstream events for nodes, services, endpointslices and endpoints. This
module keeps the upstream objects (as JSON bytes), asks ``filters`` what the local node
should see, and publishes the result into one ``View`` per resource. Re-filtering is
incremental: a node relabel only revisits the Services whose topology keys use a changed
label, and only objects whose filtered content changed get an event.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cache.view import DEFAULT_HISTORY_BYTES, Entry, HistoryBudget, View, selectable, stamp
from filters.keys import MalformedKeys, TopologyKeys, parse_topology_keys
from filters.topology import TopologyContext, filter_endpoint_slices, filter_endpoints
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource, key_of, object_key
from kubeapi.rv import rv_of
from kubeapi.types import Endpoints, EndpointSlice, JSONDict

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Pseudo label key: a node appearing or disappearing changes what hostname keys match.
_NODE_PRESENCE = "\x00presence"

Keys = TopologyKeys | MalformedKeys | None
_intern = sys.intern


@dataclass(slots=True)
class _Stored:
    """An upstream object as kept after the first sync: its JSON, not the decoded dict.

    Decoded JSON costs about ten times its text and, being young, a garbage-collector scan
    per event; only a topology-aware Service's objects are ever needed decoded again (to
    re-filter them), and decoding those on demand is cheap next to filtering them.
    """

    raw: bytes
    rv: int
    owner: str | None  # an EndpointSlice's Service

    def obj(self) -> JSONDict:
        decoded: JSONDict = orjson.loads(self.raw)
        return decoded


@dataclass(slots=True)
class _Loaded:
    """What the first full build needs of one object beyond its bytes, taken as it arrives."""

    fields: JSONDict  # its selectable projection, for the view entry
    nodes: frozenset[str]  # EndpointSlices and Endpoints: nodes with endpoints
    meta: JSONDict  # Nodes (labels) and Services (annotations): the metadata


@dataclass
class _Raw:
    objects: dict[str, _Stored] = field(default_factory=dict)
    # Until the first full sync: per object, what _build needs (the decoded objects are not
    # kept, so the memory they took is reused while the list is still being converted).
    loaded: dict[str, _Loaded] = field(default_factory=dict)
    rv: int = 0
    listed: bool = False


def _service_of_slice(obj: JSONDict) -> str | None:
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return key_of(meta.get("namespace"), name) if name else None


def _nodes_of_slice(obj: JSONDict) -> frozenset[str]:
    # Interned: the same few node names are held by thousands of index entries.
    return frozenset(_intern(n) for e in obj.get("endpoints") or () if (n := e.get("nodeName")))


def _nodes_of_endpoints(obj: JSONDict) -> frozenset[str]:
    return frozenset(
        _intern(n) for sub in obj.get("subsets") or ()
        for field in ("addresses", "notReadyAddresses") for a in sub.get(field) or () if (n := a.get("nodeName"))
    )


def _exact_json(obj: JSONDict) -> bytes:
    # orjson's result keeps its spare buffer capacity; a kept copy should be exact.
    return memoryview(orjson.dumps(obj)).tobytes()


class ClusterCache:
    def __init__(
        self, local_node: str, *, history_events: int = 20000, history_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        self.local_node = local_node
        budget = HistoryBudget(history_bytes)
        self.views: dict[str, View] = {r.plural: View(r, max_events=history_events, budget=budget) for r in ALL}
        self._raw: dict[str, _Raw] = {r.plural: _Raw() for r in ALL}
        self.node_labels: dict[str, dict[str, str]] = {}
        self._context = TopologyContext(local_node=local_node, nodes=self.node_labels)
        self.service_keys: dict[str, Keys] = {}
        self._slices_by_service: dict[str, set[str]] = {}
        self._services_by_label: dict[str, set[str]] = {}
        # Which Services have endpoints on which node: a remote node's relabel only matters to those.
        self._node_refs: dict[str, tuple[str, frozenset[str]]] = {}
        self._services_on_node: dict[str, dict[str, int]] = {}
        self.ready = False
        self.ready_event = asyncio.Event()
        # Set by start_over: the next full build loads a new upstream timeline into the views.
        self._new_timeline = False
        # How many times the upstream's resourceVersions went back (start_over was called).
        self.timeline_resets = 0
        # Bumped by every upstream change; the snapshot persister saves when it moves.
        self.generation = 0
        # Counters for metrics and the debug page.
        self.refilter_runs = 0
        self.refilter_seconds = 0.0
        self.synthetic_events = 0
        self.events_in: dict[str, int] = {r.plural: 0 for r in ALL}
        # Per opted-in Service: (endpoints kept, endpoints dropped) in its slices right now.
        self.topology_counts: dict[str, tuple[int, int]] = {}

    # ---- reflector sink --------------------------------------------------------------

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        """A full upstream list. Before the first full sync it just loads; after, it diffs.

        Before the first sync each object is converted as ``items`` yields it and not kept
        decoded, so a reflector that decodes its pages one at a time never holds the whole
        list decoded.
        """
        raw = self._raw[resource.plural]
        self.generation += 1
        if not self.ready:
            raw.objects, raw.loaded = {}, {}
            for obj in items:
                self._load(resource, obj)
            raw.rv = rv
            raw.listed = True
            if all(r.listed for r in self._raw.values()):
                self._build()
            return
        new = {object_key(o): o for o in items}
        old = raw.objects
        # Deletions go first, carrying the view's RV as it was (the list does not say when they
        # happened); then changed objects in their own resourceVersion order, carrying their real
        # RVs (a client may write them back). So the last event of the relist is the one that
        # advances the view, and a client that lists at the list's RV afterwards gets none again.
        view = self.views[resource.plural]
        for key, stored in list(old.items()):
            if key not in new:
                self._apply(resource, "DELETED", stored.obj(), view.rv)
        changed: list[tuple[int, str, JSONDict]] = []
        for key, obj in new.items():
            prev = old.get(key)
            if prev is None:
                changed.append((rv_of(obj), "ADDED", obj))
            elif prev.rv != rv_of(obj):
                changed.append((rv_of(obj), "MODIFIED", obj))
        changed.sort(key=lambda c: c[0])
        for obj_rv, type_, obj in changed:
            self._apply(resource, type_, obj, min(obj_rv, rv))
        raw.rv = max(raw.rv, rv)
        view.advance(rv)

    def start_over(self) -> None:
        """The upstream's resourceVersions went back: rebuild everything from the next lists.

        Called by the informers, which make every reflector relist. Until each resource has
        listed again, the views keep serving the last state and the cache is not ready; then
        every view switches to the new timeline at once (``_build``).
        """
        self.ready = False
        self._new_timeline = True
        self.timeline_resets += 1
        self.generation += 1
        for raw in self._raw.values():
            raw.listed = False

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        """One upstream watch event (ADDED, MODIFIED or DELETED)."""
        rv = rv_of(obj)
        raw = self._raw[resource.plural]
        self.events_in[resource.plural] += 1
        self.generation += 1
        if not self.ready:
            # Still loading: the first full build computes everything at once.
            if type_ == "DELETED":
                raw.objects.pop(object_key(obj), None)
                raw.loaded.pop(object_key(obj), None)
            else:
                self._load(resource, obj)
            raw.rv = max(raw.rv, rv)
            return
        self._apply(resource, type_, obj, rv)
        raw.rv = max(raw.rv, rv)

    def bookmark(self, resource: Resource, rv: int) -> None:
        raw = self._raw[resource.plural]
        raw.rv = max(raw.rv, rv)
        if self.ready:
            self.views[resource.plural].advance(rv)

    # ---- queries -----------------------------------------------------------------------

    def upstream_rv(self, resource: Resource) -> int:
        return self._raw[resource.plural].rv

    @property
    def resyncing(self) -> bool:
        """Whether the cache is relisting everything after the upstream's RVs went back."""
        return self._new_timeline

    @property
    def local_node_known(self) -> bool:
        """Whether --hostname names a Node of the cache (False until the first sync)."""
        return self.ready_event.is_set() and self.local_node in self.node_labels

    def raw_items(self, resource: Resource) -> list[bytes]:
        """The JSON of every upstream object of ``resource`` (after the first sync)."""
        return [stored.raw for stored in self._raw[resource.plural].objects.values()]

    def context(self) -> TopologyContext:
        # One context for the cache's life: it reads node_labels live, and building one per
        # refiltered Service showed in storm profiles.
        return self._context

    def slices_of(self, svc_key: str, fresh: JSONDict | None = None) -> list[EndpointSlice]:
        """The upstream slices of one Service, decoded (``fresh``: one just received, not yet stored)."""
        raw = self._raw[ENDPOINTSLICES.plural].objects
        fresh_key = object_key(fresh) if fresh is not None else None
        out: list[EndpointSlice] = []
        for k in sorted(self._slices_by_service.get(svc_key, ())):
            out.append(fresh if k == fresh_key else raw[k].obj())  # type: ignore[arg-type]
        return out

    # ---- internals ---------------------------------------------------------------------

    def _load(self, resource: Resource, obj: JSONDict) -> None:
        """Before the first sync: keep an object as bytes plus what ``_build`` will need."""
        key = object_key(obj)
        meta = obj.get("metadata") or {}
        nodes: frozenset[str] = frozenset()
        if resource is ENDPOINTSLICES:
            nodes = _nodes_of_slice(obj)
        elif resource is ENDPOINTS:
            nodes = _nodes_of_endpoints(obj)
        raw = self._raw[resource.plural]
        raw.objects[key] = _Stored(_exact_json(obj), rv_of(obj),
                                   _service_of_slice(obj) if resource is ENDPOINTSLICES else None)
        raw.loaded[key] = _Loaded(selectable(resource, obj), nodes,
                                  meta if resource is NODES or resource is SERVICES else {})

    def _build(self) -> None:
        """A full sync: derive every view from the loaded state, with no events.

        The first sync, or the rebuild after ``start_over``, which loads a new timeline into
        the views.
        """
        new_timeline, self._new_timeline = self._new_timeline, False
        if new_timeline:
            self._clear_indexes()
        loaded = {r.plural: self._raw[r.plural].loaded for r in ALL}
        for name, info in loaded[NODES.plural].items():
            self.node_labels[name] = dict(info.meta.get("labels") or {})
        for key, info in loaded[SERVICES.plural].items():
            self._index_service(key, {"metadata": info.meta})
        for key, stored in self._raw[ENDPOINTSLICES.plural].objects.items():
            if stored.owner:
                self._slices_by_service.setdefault(stored.owner, set()).add(key)
            self._track("s/" + key, stored.owner, loaded[ENDPOINTSLICES.plural][key].nodes)
        for key, info in loaded[ENDPOINTS.plural].items():
            self._track("e/" + key, key, info.nodes)
        # Topology-aware Services' objects are served filtered (decoded again, one Service at a
        # time); everything else is served as it came, sharing the stored bytes.
        filtered: dict[str, dict[str, JSONDict]] = {r.plural: {} for r in ALL}
        for svc_key, keys in self.service_keys.items():
            if isinstance(keys, TopologyKeys):
                filtered[ENDPOINTSLICES.plural].update(self._filtered_slices(svc_key))
                stored_ep = self._raw[ENDPOINTS.plural].objects.get(svc_key)
                if stored_ep is not None:
                    filtered[ENDPOINTS.plural][svc_key] = self._filtered_endpoints(svc_key, stored_ep.obj())
        for r in ALL:
            raw = self._raw[r.plural]
            view = self.views[r.plural]
            entries: dict[str, Entry] = {}
            for key, stored in raw.objects.items():
                out = filtered[r.plural].get(key)
                entries[key] = view.entry(out) if out is not None else Entry(
                    stored.raw, stored.rv, raw.loaded[key].fields)
            view.load(entries, raw.rv, new_timeline=new_timeline)
            raw.loaded = {}
        self.ready = True
        self.ready_event.set()
        log.info(
            "cache %s: %d nodes, %d services, %d endpointslices, %d endpoints",
            "resynced on the apiserver's new resourceVersions (open watches get 410 and relist)"
            if new_timeline else "synced",
            *(len(self._raw[r.plural].objects) for r in (NODES, SERVICES, ENDPOINTSLICES, ENDPOINTS)),
        )

    def _clear_indexes(self) -> None:
        """Forget everything derived from the objects, before a rebuild derives it again."""
        self.node_labels.clear()  # cleared in place: the topology context reads this dict
        self.service_keys.clear()
        self._slices_by_service.clear()
        self._services_by_label.clear()
        self._node_refs.clear()
        self._services_on_node.clear()
        self.topology_counts.clear()

    def _store(self, resource: Resource, key: str, obj: JSONDict, *, served_as_is: bool) -> None:
        """Keep an upstream object as bytes, sharing the served entry's bytes when they are equal.

        They are when the view serves the object unchanged and stamped with its own RV, as it
        does for every object of a Service without topology keys.
        """
        rv = rv_of(obj)
        entry = self.views[resource.plural].objects.get(key) if served_as_is else None
        if entry is not None and entry.rv == rv and obj["metadata"].get("resourceVersion") == str(rv):
            raw = entry.raw
        else:
            raw = _exact_json(obj)
        owner = _service_of_slice(obj) if resource is ENDPOINTSLICES else None
        self._raw[resource.plural].objects[key] = _Stored(raw, rv, owner)

    def _apply(self, resource: Resource, type_: str, obj: JSONDict, rv: int) -> None:
        raw = self._raw[resource.plural].objects
        key = object_key(obj)
        old = raw.get(key)
        deleted = type_ == "DELETED"
        if deleted:
            if old is None:
                return
            del raw[key]
        view = self.views[resource.plural]
        if resource is NODES or resource is SERVICES:
            view.publish([(type_, obj)], rv)
            if not deleted:
                self._store(resource, key, obj, served_as_is=True)
            if resource is NODES:
                self._node_changed(key, None if deleted else obj, rv)
            else:
                self._service_changed(key, None if deleted else obj, rv)
        elif resource is ENDPOINTSLICES:
            self._slice_changed(key, type_, old, obj, rv)
        else:
            self._track("e/" + key, key, frozenset() if deleted else _nodes_of_endpoints(obj))
            out = obj if deleted else self._filtered_endpoints(key, obj)
            view.publish([(type_, out)], rv)
            if not deleted:
                self._store(resource, key, obj, served_as_is=out is obj)

    def _slice_changed(self, key: str, type_: str, old: _Stored | None, obj: JSONDict, rv: int) -> None:
        deleted = type_ == "DELETED"
        old_svc = old.owner if old else None
        new_svc = None if deleted else _service_of_slice(obj)
        if old_svc and old_svc != new_svc:
            group = self._slices_by_service.get(old_svc)
            if group:
                group.discard(key)
                if not group:
                    del self._slices_by_service[old_svc]
        if new_svc:
            self._slices_by_service.setdefault(new_svc, set()).add(key)
        self._track("s/" + key, new_svc, frozenset() if deleted else _nodes_of_slice(obj))
        view = self.views[ENDPOINTSLICES.plural]
        outputs: dict[str, JSONDict] = {}
        for svc in {old_svc, new_svc} - {None}:
            assert svc is not None
            if isinstance(self.service_keys.get(svc), TopologyKeys):
                outputs.update(self._filtered_slices(svc, None if deleted else obj))
            else:
                # Unfiltered siblings are served as they are and cannot have changed; this
                # skips decoding and comparing every sibling on each event of a plain Service.
                self.topology_counts.pop(svc, None)
        # One batch: the re-filtered siblings, then the slice's own event, which goes last so
        # that it is the one carrying (and advancing the view to) the upstream RV.
        siblings = self._changed(view, outputs, skip=key)
        self.synthetic_events += len(siblings)
        out = obj if deleted else outputs.get(key, obj)
        view.publish([*siblings, (type_, out)], rv)
        if not deleted:
            self._store(ENDPOINTSLICES, key, obj, served_as_is=out is obj)

    def _node_changed(self, name: str, node: JSONDict | None, rv: int) -> None:
        old = self.node_labels.get(name)
        new = None if node is None else dict(node["metadata"].get("labels") or {})
        if new is None:
            self.node_labels.pop(name, None)
        else:
            self.node_labels[name] = new
        if old == new:
            return
        if old is None or new is None:
            changed = set(old or new or ()) | {_NODE_PRESENCE}
        else:
            changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        affected: set[str] = set()
        for label in changed:
            affected |= self._services_by_label.get(label, set())
        if name != self.local_node:
            # A remote node only matters to Services with endpoints on it.
            affected.intersection_update(self._services_on_node.get(name, ()))
        elif old is not None and new is not None:
            affected.intersection_update(self._services_near_local(changed, old, new))
        if affected:
            self._refilter(affected, rv)

    def _services_near_local(self, changed: set[str], old: dict[str, str], new: dict[str, str]) -> set[str]:
        """Services that may see a change when the local node's ``changed`` labels move.

        A key whose local value goes from A to B can only change the outcome of a Service
        with an endpoint in domain A or B: for any other its win status stays "no match"
        under both values, and nothing it keeps depends on A or B. The local node itself is
        in both domains. (Node presence is not in ``changed`` here: old and new both exist.)
        """
        values = {label: {old.get(label), new.get(label)} - {None} for label in changed}
        nodes = {self.local_node}
        for node, labels in self.node_labels.items():
            if any(labels.get(label) in vals for label, vals in values.items()):
                nodes.add(node)
        services: set[str] = set()
        for node in nodes:
            services.update(self._services_on_node.get(node, ()))
        return services

    def _track(self, ref: str, service: str | None, nodes: frozenset[str]) -> None:
        """Record that ``ref`` (a slice or Endpoints) of ``service`` has endpoints on ``nodes``."""
        old = self._node_refs.pop(ref, None)
        if old is not None:
            old_svc, old_nodes = old
            for node in old_nodes:
                counts = self._services_on_node[node]
                counts[old_svc] -= 1
                if not counts[old_svc]:
                    del counts[old_svc]
                    if not counts:
                        del self._services_on_node[node]
        if service and nodes:
            self._node_refs[ref] = (service, nodes)
            for node in nodes:
                counts = self._services_on_node.setdefault(node, {})
                counts[service] = counts.get(service, 0) + 1

    def _service_changed(self, key: str, svc: JSONDict | None, rv: int) -> None:
        before = self.service_keys.get(key)
        self._unindex_service(key)
        if svc is not None:
            self._index_service(key, svc)
        after = self.service_keys.get(key)
        if before != after:
            self._refilter({key}, rv)

    def _index_service(self, key: str, svc: JSONDict) -> None:
        keys = parse_topology_keys((svc.get("metadata") or {}).get("annotations"))
        if isinstance(keys, MalformedKeys):
            # Parsing happens once per Service version, so this logs once per version.
            log.warning(
                "service %s (resourceVersion %s): ignoring malformed %s annotation %r: %s; "
                "its endpoints pass unfiltered",
                key, (svc.get("metadata") or {}).get("resourceVersion"), keys.source, keys.value[:200], keys.reason,
            )
        self.service_keys[key] = keys
        if isinstance(keys, TopologyKeys):
            for label in self._labels_of(keys):
                self._services_by_label.setdefault(label, set()).add(key)

    def _unindex_service(self, key: str) -> None:
        keys = self.service_keys.pop(key, None)
        if isinstance(keys, TopologyKeys):
            for label in self._labels_of(keys):
                group = self._services_by_label.get(label)
                if group:
                    group.discard(key)
                    if not group:
                        del self._services_by_label[label]

    @staticmethod
    def _labels_of(keys: TopologyKeys) -> Iterable[str]:
        yield from keys.label_keys
        # Any key that reads labels also depends on which nodes exist.
        if keys.label_keys or keys.uses_hostname:
            yield _NODE_PRESENCE

    def _refilter(self, services: set[str], rv: int) -> None:
        self.refilter_runs += 1
        started = time.perf_counter()
        try:
            self._refilter_services(services, rv)
        finally:
            self.refilter_seconds += time.perf_counter() - started

    def _refilter_services(self, services: set[str], rv: int) -> None:
        slices_view = self.views[ENDPOINTSLICES.plural]
        outputs: dict[str, JSONDict] = {}
        for svc in services:
            outputs.update(self._filtered_slices(svc))
        self._publish_changed(slices_view, outputs, rv)
        eps_view = self.views[ENDPOINTS.plural]
        raw_eps = self._raw[ENDPOINTS.plural].objects
        ep_outputs = {svc: self._filtered_endpoints(svc, raw_eps[svc].obj()) for svc in services if svc in raw_eps}
        self._publish_changed(eps_view, ep_outputs, rv)

    def _publish_changed(self, view: View, outputs: dict[str, JSONDict], rv: int) -> None:
        changes = self._changed(view, outputs)
        if changes:
            self.synthetic_events += view.publish(changes, rv)

    @staticmethod
    def _changed(view: View, outputs: dict[str, JSONDict], skip: str | None = None) -> list[tuple[str, JSONDict]]:
        """MODIFIED changes for the ``outputs`` that differ from what ``view`` serves."""
        changes: list[tuple[str, JSONDict]] = []
        for key in sorted(outputs):
            if key == skip:
                continue
            served = view.objects.get(key)
            # Unchanged apart from the RV (served objects carry their event's) means no event.
            if served is None or served.raw != _exact_json(stamp(outputs[key], served.rv)):
                changes.append(("MODIFIED", outputs[key]))
        return changes

    def _filtered_slices(self, svc_key: str, fresh: JSONDict | None = None) -> dict[str, JSONDict]:
        """The served form of every slice of one Service (``fresh``: see ``slices_of``)."""
        keys = self.service_keys.get(svc_key)
        slices = self.slices_of(svc_key, fresh)
        if not isinstance(keys, TopologyKeys):
            self.topology_counts.pop(svc_key, None)
            return {object_key(s): s for s in slices}  # type: ignore[misc]
        decision = filter_endpoint_slices(self.context(), keys, slices, detail=False)
        self.topology_counts[svc_key] = (decision.kept, decision.dropped)
        return {object_key(s): s for s in decision.slices}  # type: ignore[misc]

    def _filtered_endpoints(self, key: str, obj: JSONDict) -> JSONDict:
        keys = self.service_keys.get(key)
        if not isinstance(keys, TopologyKeys):
            return obj
        ep: Endpoints = obj  # type: ignore[assignment]
        return filter_endpoints(self.context(), keys, ep, detail=False).endpoints  # type: ignore[return-value]

    # ---- explanations (the debug page) --------------------------------------------------

    def explain(self, service: str | None = None) -> dict[str, Any]:
        """What the local node sees for each opted-in Service, and why, endpoint by endpoint."""
        ctx = self.context()
        report: list[dict[str, Any]] = []
        for key in sorted(self.service_keys):
            if service is not None and key != service:
                continue
            keys = self.service_keys[key]
            if isinstance(keys, MalformedKeys):
                report.append({"service": key, "annotation": keys.source, "value": keys.value,
                               "malformed": keys.reason, "result": "passes unfiltered"})
                continue
            if keys is None:
                continue
            slices = self.slices_of(key)
            decision = filter_endpoint_slices(ctx, keys, slices)
            report.append({
                "service": key,
                "annotation": keys.source,
                "keys": list(keys.keys) + (["*"] if keys.wildcard else []),
                "families": [
                    {"family": f.family, "winner": f.winner, "tier": f.tier, "candidates": f.candidates,
                     "total": f.total, "kept": f.kept, "notes": list(f.notes)}
                    for f in decision.families
                ],
                "endpoints": [
                    {"slice": d.origin, "addresses": list(d.addresses), "nodeName": d.node_name,
                     "family": d.family, "ready": d.ready, "kept": d.kept, "reason": d.reason}
                    for d in decision.endpoints_detail
                ],
            })
        return {
            "localNode": self.local_node,
            "localNodeKnown": self.local_node in self.node_labels,
            "localLabels": self.node_labels.get(self.local_node, {}),
            "services": report,
        }
