"""Discovery documents (legacy, unaggregated form) so kubectl can map kinds to paths.

kubectl asks for aggregated discovery first; answering the plain documents with
``Content-Type: application/json`` makes client-go fall back to the legacy form.
"""

from __future__ import annotations

import orjson

from kubeapi.types import JSONDict

GIT_VERSION = "v1.33.0-apisim"
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_STATUS_VERBS = ["get", "patch", "update"]


def _res(name: str, singular: str, kind: str, namespaced: bool, short: tuple[str, ...] = (),
         verbs: list[str] | None = None, categories: tuple[str, ...] = ()) -> JSONDict:
    doc: JSONDict = {"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
                     "verbs": verbs or _VERBS}
    if short:
        doc["shortNames"] = list(short)
    if categories:
        doc["categories"] = list(categories)
    return doc


def _sub(name: str, kind: str, namespaced: bool) -> JSONDict:
    return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": _STATUS_VERBS}


def _resource_list(group_version: str, resources: list[JSONDict]) -> JSONDict:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _group(name: str, version: str = "v1") -> JSONDict:
    gv = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


CORE_V1 = _resource_list("v1", [
    _res("configmaps", "configmap", "ConfigMap", True, ("cm",)),
    _res("endpoints", "endpoints", "Endpoints", True, ("ep",)),
    _res("events", "event", "Event", True, ("ev",)),
    _res("namespaces", "namespace", "Namespace", False, ("ns",), ["get", "list", "watch"]),
    _sub("namespaces/status", "Namespace", False),
    _res("nodes", "node", "Node", False, ("no",)),
    _sub("nodes/status", "Node", False),
    _res("services", "service", "Service", True, ("svc",), categories=("all",)),
    _sub("services/status", "Service", True),
])
DISCOVERY_V1 = _resource_list("discovery.k8s.io/v1", [
    _res("endpointslices", "endpointslice", "EndpointSlice", True),
])
EVENTS_V1 = _resource_list("events.k8s.io/v1", [
    _res("events", "event", "Event", True, ("ev",)),
])
COORDINATION_V1 = _resource_list("coordination.k8s.io/v1", [
    _res("leases", "lease", "Lease", True),
])
GROUPS = ("coordination.k8s.io", "discovery.k8s.io", "events.k8s.io")


def version() -> JSONDict:
    return {"major": "1", "minor": "33", "gitVersion": GIT_VERSION, "gitCommit": "0" * 40,
            "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2",
            "compiler": "gc", "platform": "linux/amd64"}


def document(path: str, server_address: str) -> bytes | None:
    """The discovery document for ``path``, or None if it is not a discovery path."""
    path = path.rstrip("/") or "/"
    doc: JSONDict | None = None
    if path == "/version":
        doc = version()
    elif path == "/api":
        doc = {"kind": "APIVersions", "versions": ["v1"],
               "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}
    elif path == "/api/v1":
        doc = CORE_V1
    elif path == "/apis":
        doc = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(g) for g in GROUPS]}
    elif path == "/apis/discovery.k8s.io/v1":
        doc = DISCOVERY_V1
    elif path == "/apis/events.k8s.io/v1":
        doc = EVENTS_V1
    elif path == "/apis/coordination.k8s.io/v1":
        doc = COORDINATION_V1
    elif path.startswith("/apis/") and path.count("/") == 2 and path[6:] in GROUPS:
        doc = {"kind": "APIGroup", "apiVersion": "v1", **_group(path[6:])}
    return None if doc is None else orjson.dumps(doc)
