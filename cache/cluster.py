"""The cluster cache: upstream state in, filtered views out.

Reflectors feed raw upstream events for nodes, services, endpointslices and endpoints. This
module keeps the raw objects, asks ``filters`` what the local node should see, and publishes
the result into one ``View`` per resource. Re-filtering is incremental: a node relabel only
revisits the Services whose topology keys use a changed label, and only objects whose
filtered content changed get an event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cache.compact import compact_endpoints, compact_slice
from cache.view import View
from filters.keys import MalformedKeys, TopologyKeys, parse_topology_keys
from filters.topology import TopologyContext, filter_endpoint_slices, filter_endpoints
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.types import Endpoints, EndpointSlice, JSONDict

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Pseudo label key: a node appearing or disappearing changes what hostname keys match.
_NODE_PRESENCE = "\x00presence"

Keys = TopologyKeys | MalformedKeys | None


@dataclass
class _Raw:
    objects: dict[str, JSONDict] = field(default_factory=dict)
    rv: int = 0
    listed: bool = False


def _rv_of(obj: JSONDict) -> int:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return 0


def _key(obj: JSONDict) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


def _service_of_slice(obj: JSONDict) -> str | None:
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return f"{meta.get('namespace', '')}/{name}" if name else None


def _nodes_of_slice(obj: JSONDict) -> frozenset[str]:
    return frozenset(n for e in obj.get("endpoints") or () if (n := e.get("nodeName")))


def _nodes_of_endpoints(obj: JSONDict) -> frozenset[str]:
    return frozenset(
        n for sub in obj.get("subsets") or ()
        for field in ("addresses", "notReadyAddresses") for a in sub.get(field) or () if (n := a.get("nodeName"))
    )


def _compact(resource: Resource, obj: JSONDict) -> None:
    if resource is ENDPOINTSLICES:
        compact_slice(obj)
    elif resource is ENDPOINTS:
        compact_endpoints(obj)


def _same_content(a: JSONDict, b: JSONDict) -> bool:
    """Equal apart from metadata.resourceVersion (served copies carry the event's RV)."""
    if a is b:
        return True
    if a.keys() != b.keys():
        return False
    for k, v in a.items():
        if k == "metadata":
            ma, mb = v, b[k]
            if ma.keys() != mb.keys() or any(ma[m] != mb[m] for m in ma if m != "resourceVersion"):
                return False
        elif v != b[k]:
            return False
    return True


class ClusterCache:
    def __init__(self, local_node: str, *, history_events: int = 20000, history_bytes: int = 64 << 20) -> None:
        self.local_node = local_node
        self.views: dict[str, View] = {
            r.plural: View(r, max_events=history_events, max_bytes=history_bytes) for r in ALL
        }
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

    def replace(self, resource: Resource, items: list[JSONDict], rv: int) -> None:
        """A full upstream list. Before the first full sync it just loads; after, it diffs."""
        raw = self._raw[resource.plural]
        self.generation += 1
        for obj in items:
            _compact(resource, obj)
        if not self.ready:
            raw.objects = {_key(o): o for o in items}
            raw.rv = rv
            raw.listed = True
            if all(r.listed for r in self._raw.values()):
                self._build()
            return
        new = {_key(o): o for o in items}
        old = raw.objects
        # Changed objects go out in their own resourceVersion order, carrying their real RVs
        # (a client may write them back); deletions, whose RV the list doesn't say, at the list's.
        changed: list[tuple[int, str, JSONDict]] = []
        for key, obj in new.items():
            prev = old.get(key)
            if prev is None:
                changed.append((_rv_of(obj), "ADDED", obj))
            elif _rv_of(prev) != _rv_of(obj):
                changed.append((_rv_of(obj), "MODIFIED", obj))
        changed.sort(key=lambda c: c[0])
        for obj_rv, type_, obj in changed:
            self._apply(resource, type_, obj, min(obj_rv, rv), synthetic=True)
        for key, obj in list(old.items()):
            if key not in new:
                self._apply(resource, "DELETED", obj, rv, synthetic=True)
        raw.rv = max(raw.rv, rv)
        self.views[resource.plural].advance(rv)

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        """One upstream watch event (ADDED, MODIFIED or DELETED)."""
        rv = _rv_of(obj)
        raw = self._raw[resource.plural]
        self.events_in[resource.plural] += 1
        _compact(resource, obj)
        self.generation += 1
        if not self.ready:
            # Still loading: the first full build computes everything at once.
            if type_ == "DELETED":
                raw.objects.pop(_key(obj), None)
            else:
                raw.objects[_key(obj)] = obj
            raw.rv = max(raw.rv, rv)
            return
        self._apply(resource, type_, obj, rv, synthetic=False)
        raw.rv = max(raw.rv, rv)

    def bookmark(self, resource: Resource, rv: int) -> None:
        raw = self._raw[resource.plural]
        raw.rv = max(raw.rv, rv)
        if self.ready:
            self.views[resource.plural].advance(rv)

    # ---- queries -----------------------------------------------------------------------

    def upstream_rv(self, resource: Resource) -> int:
        return self._raw[resource.plural].rv

    def raw_objects(self, resource: Resource) -> dict[str, JSONDict]:
        return self._raw[resource.plural].objects

    def context(self) -> TopologyContext:
        # One context for the cache's life: it reads node_labels live, and building one per
        # refiltered Service showed in storm profiles.
        return self._context

    def slices_of(self, svc_key: str) -> list[EndpointSlice]:
        raw = self._raw[ENDPOINTSLICES.plural].objects
        return [raw[k] for k in sorted(self._slices_by_service.get(svc_key, ()))]  # type: ignore[misc]

    # ---- internals ---------------------------------------------------------------------

    def _build(self) -> None:
        """First full sync: derive every view from the raw state, with no events."""
        for node in self._raw[NODES.plural].objects.values():
            self.node_labels[_key(node)] = dict(node["metadata"].get("labels") or {})
        for key, svc in self._raw[SERVICES.plural].objects.items():
            self._index_service(key, svc)
        for key, sl in self._raw[ENDPOINTSLICES.plural].objects.items():
            owner = _service_of_slice(sl)
            if owner:
                self._slices_by_service.setdefault(owner, set()).add(key)
            self._track("s/" + key, owner, _nodes_of_slice(sl))
        for key, ep in self._raw[ENDPOINTS.plural].objects.items():
            self._track("e/" + key, key, _nodes_of_endpoints(ep))
        for res in (NODES, SERVICES):
            raw = self._raw[res.plural]
            self.views[res.plural].reset(raw.objects.values(), raw.rv)
        slices = self._raw[ENDPOINTSLICES.plural]
        filtered: dict[str, JSONDict] = dict(slices.objects)
        for svc_key in self._slices_by_service:
            filtered.update(self._filtered_slices(svc_key))
        self.views[ENDPOINTSLICES.plural].reset(filtered.values(), slices.rv)
        eps = self._raw[ENDPOINTS.plural]
        self.views[ENDPOINTS.plural].reset((self._filtered_endpoints(k, o) for k, o in eps.objects.items()), eps.rv)
        self.ready = True
        self.ready_event.set()
        log.info(
            "cache synced: %d nodes, %d services, %d endpointslices, %d endpoints",
            *(len(self._raw[r.plural].objects) for r in (NODES, SERVICES, ENDPOINTSLICES, ENDPOINTS)),
        )

    def _apply(self, resource: Resource, type_: str, obj: JSONDict, rv: int, *, synthetic: bool) -> None:
        raw = self._raw[resource.plural].objects
        key = _key(obj)
        old = raw.get(key)
        if type_ == "DELETED":
            if old is None:
                return
            del raw[key]
        else:
            raw[key] = obj
        view = self.views[resource.plural]
        if resource is NODES:
            view.publish([(type_, obj)], rv, synthetic=synthetic)
            self._node_changed(key, None if type_ == "DELETED" else obj, rv)
        elif resource is SERVICES:
            view.publish([(type_, obj)], rv, synthetic=synthetic)
            self._service_changed(key, None if type_ == "DELETED" else obj, rv)
        elif resource is ENDPOINTSLICES:
            self._slice_changed(key, type_, old, obj, rv, synthetic)
        else:
            self._track("e/" + key, key, frozenset() if type_ == "DELETED" else _nodes_of_endpoints(obj))
            out = obj if type_ == "DELETED" else self._filtered_endpoints(key, obj)
            view.publish([(type_, out)], rv, synthetic=synthetic)

    def _slice_changed(
        self, key: str, type_: str, old: JSONDict | None, obj: JSONDict, rv: int, synthetic: bool
    ) -> None:
        old_svc = _service_of_slice(old) if old else None
        new_svc = None if type_ == "DELETED" else _service_of_slice(obj)
        if old_svc and old_svc != new_svc:
            group = self._slices_by_service.get(old_svc)
            if group:
                group.discard(key)
                if not group:
                    del self._slices_by_service[old_svc]
        if new_svc:
            self._slices_by_service.setdefault(new_svc, set()).add(key)
        self._track("s/" + key, new_svc, frozenset() if type_ == "DELETED" else _nodes_of_slice(obj))
        view = self.views[ENDPOINTSLICES.plural]
        outputs: dict[str, JSONDict] = {}
        for svc in {old_svc, new_svc} - {None}:
            assert svc is not None
            if isinstance(self.service_keys.get(svc), TopologyKeys):
                outputs.update(self._filtered_slices(svc))
            else:
                # Unfiltered siblings are served as they are and cannot have changed; this
                # skips a deep compare of every sibling on each event of a plain Service.
                self.topology_counts.pop(svc, None)
        if type_ == "DELETED":
            view.publish([("DELETED", obj)], rv, synthetic=synthetic)
        else:
            view.publish([(type_, outputs.get(key, obj))], rv, synthetic=synthetic)
        self._publish_changed(view, outputs, rv, skip=key)

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
        ep_outputs = {svc: self._filtered_endpoints(svc, raw_eps[svc]) for svc in services if svc in raw_eps}
        self._publish_changed(eps_view, ep_outputs, rv)

    def _publish_changed(self, view: View, outputs: dict[str, JSONDict], rv: int, skip: str | None = None) -> None:
        changes = []
        for key in sorted(outputs):
            if key == skip:
                continue
            served = view.objects.get(key)
            if served is None or not _same_content(served.obj, outputs[key]):
                changes.append(("MODIFIED", outputs[key]))
        if changes:
            self.synthetic_events += view.publish(changes, rv, synthetic=True)

    def _filtered_slices(self, svc_key: str) -> dict[str, JSONDict]:
        """The served form of every slice of one Service."""
        keys = self.service_keys.get(svc_key)
        slices = self.slices_of(svc_key)
        if not isinstance(keys, TopologyKeys):
            self.topology_counts.pop(svc_key, None)
            return {_key(s): s for s in slices}  # type: ignore[misc,arg-type]
        decision = filter_endpoint_slices(self.context(), keys, slices, detail=False)
        self.topology_counts[svc_key] = (decision.kept, decision.dropped)
        return {_key(s): s for s in decision.slices}  # type: ignore[misc,arg-type]

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
