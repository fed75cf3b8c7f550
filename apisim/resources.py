"""What the simulator serves: the wrapper's cached resources, and the ones only written upstream.

``kubeapi.resources.ALL`` is what the wrapper caches; the simulator stands in for the apiserver
of everything the project talks to, so it also serves the node topology buckets (ConfigMaps) and
the topology publisher's leader election (Leases).
"""

from __future__ import annotations

from kubeapi.resources import ALL, CONFIGMAPS, LEASES, Resource

SERVED: tuple[Resource, ...] = (*ALL, CONFIGMAPS, LEASES)
SERVED_BY_PLURAL: dict[str, Resource] = {r.plural: r for r in SERVED}
# ConfigMaps and Leases have no /status subresource (404 at the apiserver).
WITHOUT_STATUS: frozenset[Resource] = frozenset({CONFIGMAPS, LEASES})
