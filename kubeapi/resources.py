"""The API resources this project caches and serves, the others it talks to, and how their URLs look.

``ALL`` is what the wrapper caches and serves from its cache (and ``match_path`` matches by
default); ``CONFIGMAPS`` and ``LEASES`` are only read and written upstream (the node topology
buckets, the topology publisher's leader election), never served by the wrapper.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Resource:
    """One REST resource: enough to build paths, kinds and list kinds."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    # Field selectors the apiserver accepts beyond metadata.name/metadata.namespace.
    extra_fields: tuple[str, ...] = ()

    def __hash__(self) -> int:
        # Consistent with the generated __eq__ (equal resources have equal plurals), and a
        # third of the cost of hashing every field: filters and the cache test membership of
        # resources in sets per re-filtered object (thousands per relabel storm).
        return hash(self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def prefix(self) -> str:
        """Path prefix of the group version, e.g. ``/api/v1`` or ``/apis/discovery.k8s.io/v1``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def supported_fields(self) -> tuple[str, ...]:
        base = ("metadata.name", "metadata.namespace") if self.namespaced else ("metadata.name",)
        return base + self.extra_fields

    def collection_path(self, namespace: str | None = None) -> str:
        if namespace and self.namespaced:
            return f"{self.prefix}/namespaces/{namespace}/{self.plural}"
        return f"{self.prefix}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{name}"


NODES = Resource("", "v1", "nodes", "Node", namespaced=False, short_names=("no",))
SERVICES = Resource(
    "", "v1", "services", "Service", namespaced=True, short_names=("svc",),
    extra_fields=("spec.clusterIP", "spec.type"),
)
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints", namespaced=True, short_names=("ep",))
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", namespaced=True)

# Not in ALL: the wrapper does not serve them (the simulator does, apisim.server.SERVED).
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True, short_names=("cm",))
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)

ALL: tuple[Resource, ...] = (NODES, SERVICES, ENDPOINTS, ENDPOINTSLICES)
BY_PLURAL: dict[str, Resource] = {r.plural: r for r in ALL}


@dataclass(frozen=True, slots=True)
class ResourcePath:
    """A request path that names one of our resources."""

    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


_PATH = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<g>[^/]+)/(?P<gv>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?/?$"
)


def match_path(path: str, by_plural: Mapping[str, Resource] = BY_PLURAL) -> ResourcePath | None:
    """Parse ``path`` if it names one of ``by_plural``'s resources (default: ``ALL``), as a
    collection, an object or a subresource."""
    m = _PATH.match(path)
    if m is None:
        return None
    group = m.group("g") or ""
    version = m.group("cv") or m.group("gv")
    res = by_plural.get(m.group("plural"))
    if res is None or res.group != group or res.version != version:
        return None
    ns = m.group("ns")
    if ns is not None and not res.namespaced:
        return None
    return ResourcePath(res, ns, m.group("name"), m.group("sub"))


def key_of(namespace: str | None, name: str) -> str:
    """The cache key of an object: ``namespace/name``, or ``name`` for cluster-scoped objects."""
    return f"{namespace}/{name}" if namespace else name


def object_key(obj: Mapping[str, Any]) -> str:
    """The cache key of a decoded object (see ``key_of``).

    Objects reach the cache only through ``kubeapi.validation`` (upstream, snapshot), so their
    ``metadata.name`` is a non-empty string; anything else raises KeyError or TypeError here.
    """
    meta = obj["metadata"]
    return key_of(meta.get("namespace"), meta["name"])
