"""Cloud-only LoadBalancer Services hidden at the edge: OpenYurt's ``svc.openyurt.io/discard``.

A LoadBalancer Service annotated ``svc.openyurt.io/discard: "true"`` (exactly, as OpenYurt compares
it) has backends that edge nodes cannot reach. This filter hides it, with its EndpointSlices and
Endpoints, from every client of the wrapper: kube-proxy then programs nothing for it on this node,
and a CoreDNS or an ingress controller reading the same view does not route to it either.
OpenYurt hides only the Service, from kube-proxy only, and also a hard-coded ClusterIP Service of
its retired tunnel (``kube-system/x-tunnel-server-internal-svc``), which is not copied here: annotate
such a Service instead.

It is a policy, off by default: an operator switches it on for edge nodes
(``--filters=*,discard-cloud-services``), as OpenYurt runs it in its edge mode only; a wrapper on a
cloud node must keep serving these Services. The decision reads nothing about Nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from filters.api import Filter, Malformed, ServedSlices, TopologyContext
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, SERVICES
from kubeapi.types import Endpoints, EndpointSlice, JSONDict

DISCARD_ANNOTATION = "svc.openyurt.io/discard"


@dataclass(frozen=True, slots=True)
class CloudOnly:
    """The Service is a cloud-only LoadBalancer: hidden, whatever the node."""


CLOUD_ONLY = CloudOnly()


class DiscardCloudServicesFilter(Filter[CloudOnly]):
    """Hides cloud-only LoadBalancer Services and their endpoints; off unless switched on."""

    name = "discard-cloud-services"
    on_by_default = False
    acts_on = frozenset({SERVICES, ENDPOINTSLICES, ENDPOINTS})

    def parse(self, service: JSONDict) -> CloudOnly | Malformed | None:
        if (service.get("spec") or {}).get("type") != "LoadBalancer":
            return None
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        return CLOUD_ONLY if annotations.get(DISCARD_ANNOTATION) == "true" else None

    def serve_service(self, policy: CloudOnly, service: JSONDict, ctx: TopologyContext) -> JSONDict | None:
        return None  # hidden, whatever the node

    def serve_slices(self, policy: CloudOnly, slices: Sequence[EndpointSlice], ctx: TopologyContext) -> ServedSlices:
        return ServedSlices([None] * len(slices), 0, sum(len(s.get("endpoints") or ()) for s in slices))

    def serve_endpoints(self, policy: CloudOnly, endpoints: Endpoints, ctx: TopologyContext) -> Endpoints | None:
        return None  # hidden with its Service

    def explain(self, service: str, policy: CloudOnly, obj: JSONDict, slices: Sequence[EndpointSlice],
                ctx: TopologyContext) -> JSONDict:
        return {
            "service": service,
            "filter": self.name,
            "annotation": DISCARD_ANNOTATION,
            "value": "true",
            "reason": "a LoadBalancer Service marked cloud-only: edge nodes cannot reach its backends",
            "result": f"hidden with its {len(slices)} EndpointSlice(s) and its Endpoints",
        }


DISCARD_CLOUD_SERVICES = DiscardCloudServicesFilter()
