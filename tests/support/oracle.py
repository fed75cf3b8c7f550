"""The filtered truth, computed straight from the simulator's state with the pure filters.

This is what every client of the wrapper must converge to: the simulator's objects with
topology-annotated Services' endpoints cut down by ``filters`` for the local node, then
narrowed by the client's own selectors (kube-proxy's, for instance).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from apisim.server import Simulator
from filters.keys import TopologyKeys, parse_topology_keys
from filters.topology import TopologyContext, filter_endpoint_slices, filter_endpoints
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.selectors import parse_field_selector, parse_label_selector
from kubeapi.types import Endpoints, EndpointSlice

JSONDict = dict[str, Any]
SERVICE_NAME = "kubernetes.io/service-name"
PROXY_LABELS = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
PROXY_SERVICE_FIELDS = "spec.clusterIP!=None"


def key_of(obj: JSONDict) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def strip_rv(obj: JSONDict) -> JSONDict:
    """The object without kind/apiVersion and metadata.resourceVersion (synthesized events restamp it)."""
    out = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return out


def comparable(store: dict[str, JSONDict]) -> dict[str, JSONDict]:
    return {k: strip_rv(v) for k, v in store.items()}


def holds(want: dict[str, JSONDict]) -> Callable[[dict[str, JSONDict]], bool]:
    """A client-store predicate (``ReflectorModel.wait_until``): it holds ``want``, resourceVersions aside."""
    return lambda store: comparable(store) == want


def _keys_by_service(sim: Simulator) -> dict[str, TopologyKeys]:
    out: dict[str, TopologyKeys] = {}
    for svc in sim.list(SERVICES):
        keys = parse_topology_keys(svc["metadata"].get("annotations"))
        if isinstance(keys, TopologyKeys):
            out[key_of(svc)] = keys
    return out


def _context(sim: Simulator, local_node: str) -> TopologyContext:
    return TopologyContext(local_node, {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {})
                                        for n in sim.list(NODES)})


def served_state(sim: Simulator, resource: Resource, local_node: str) -> dict[str, JSONDict]:
    """What a wrapper for ``local_node`` answers to the request ``faultkit.list_items`` sends: its
    filtered state, and of Nodes the local one alone (all the wrapper holds of them)."""
    state = filtered_state(sim, resource, local_node)
    return {k: v for k, v in state.items() if k == local_node} if resource is NODES else state


def filtered_state(sim: Simulator, resource: Resource, local_node: str) -> dict[str, JSONDict]:
    """Every object of ``resource`` as the wrapper for ``local_node`` should serve it."""
    objects = {key_of(o): o for o in sim.list(resource)}
    if resource not in (ENDPOINTSLICES, ENDPOINTS):
        return objects
    keys = _keys_by_service(sim)
    ctx = _context(sim, local_node)
    if resource is ENDPOINTS:
        for k, ep in objects.items():
            if k in keys:
                ep_typed: Endpoints = ep  # type: ignore[assignment]
                objects[k] = dict(filter_endpoints(ctx, keys[k], ep_typed).endpoints)
        return objects
    groups: dict[str, list[str]] = {}
    for k in sorted(objects):
        meta = objects[k]["metadata"]
        svc = (meta.get("labels") or {}).get(SERVICE_NAME)
        if svc:
            groups.setdefault(f"{meta.get('namespace', '')}/{svc}", []).append(k)
    for svc_key, slice_keys in groups.items():
        if svc_key not in keys:
            continue
        slices: list[EndpointSlice] = [objects[k] for k in slice_keys]  # type: ignore[misc]
        decision = filter_endpoint_slices(ctx, keys[svc_key], slices)
        for k, out in zip(slice_keys, decision.slices, strict=True):
            objects[k] = dict(out)
    return objects


def select(resource: Resource, objects: dict[str, JSONDict], label_selector: str = "", field_selector: str = "",
           namespace: str | None = None) -> dict[str, JSONDict]:
    label = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, resource.supported_fields)
    out: dict[str, JSONDict] = {}
    for k, obj in objects.items():
        meta = obj["metadata"]
        if namespace is not None and meta.get("namespace") != namespace:
            continue
        if not label.empty and not label.matches(meta.get("labels")):
            continue
        if not fields.empty and not fields.matches(obj):
            continue
        out[k] = obj
    return out


def kube_proxy_truth(sim: Simulator, local_node: str) -> dict[str, dict[str, JSONDict]]:
    """What kube-proxy's informers (plus a core Endpoints watcher) must hold, per resource plural."""
    return {
        "services": comparable(select(SERVICES, filtered_state(sim, SERVICES, local_node), PROXY_LABELS,
                                      PROXY_SERVICE_FIELDS)),
        "endpointslices": comparable(select(ENDPOINTSLICES, filtered_state(sim, ENDPOINTSLICES, local_node),
                                            PROXY_LABELS)),
        "nodes": comparable(select(NODES, filtered_state(sim, NODES, local_node),
                                   field_selector=f"metadata.name={local_node}")),
        "endpoints": comparable(filtered_state(sim, ENDPOINTS, local_node)),
    }


def deep(obj: JSONDict) -> JSONDict:
    return copy.deepcopy(obj)
