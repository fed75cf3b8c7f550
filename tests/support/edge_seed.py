"""OpenYurt's node-pool example plus a Service for each edge filter, for the filter tests.

* ``svc-nodeport``: NodePort 30080, ``nodeport.openyurt.io/listen: hangzhou``: its node port is
  open on hangzhou's node (kind-worker) and closed on shanghai's (kind-worker2);
* ``cloud-lb``: a LoadBalancer with a VIP, ``svc.openyurt.io/discard: "true"``: hidden, with its
  slice and Endpoints, where the operator runs the discard policy.
"""

from __future__ import annotations

from apisim.seeds import Backend, SeedList, endpoint_slice, endpoints, openyurt_demo, service
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, SERVICES
from kubeapi.types import JSONDict

HANGZHOU, SHANGHAI = "kind-worker", "kind-worker2"  # pools hangzhou and shanghai
NODEPORT_SVC, CLOUD_LB = "svc-nodeport", "cloud-lb"
NODE_PORT = 30080
LB_VIP = "203.0.113.7"


def nodeport_service(listen: str = "hangzhou") -> JSONDict:
    svc = service("default", NODEPORT_SVC, "10.96.120.20", 80, 8080, selector={"app": "web"},
                  annotations={"nodeport.openyurt.io/listen": listen})
    svc["spec"]["type"] = "NodePort"
    svc["spec"]["externalTrafficPolicy"] = "Cluster"
    svc["spec"]["ports"][0]["nodePort"] = NODE_PORT
    return svc


def cloud_lb_service() -> JSONDict:
    svc = service("default", CLOUD_LB, "10.96.120.30", 443, 8443, selector={"app": "cloud"},
                  annotations={"svc.openyurt.io/discard": "true"})
    svc["spec"].update(type="LoadBalancer", externalTrafficPolicy="Cluster", allocateLoadBalancerNodePorts=True)
    svc["spec"]["ports"][0]["nodePort"] = 31443
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": LB_VIP, "ipMode": "VIP"}]}}
    return svc


def _with(svc: JSONDict, backends: list[Backend], port: int) -> SeedList:
    return [(SERVICES, svc), (ENDPOINTSLICES, endpoint_slice(svc, backends, port)),
            (ENDPOINTS, endpoints(svc, backends, port))]


def edge_filters_demo() -> SeedList:
    out = openyurt_demo()
    out += _with(nodeport_service(), [Backend("10.244.2.20", HANGZHOU), Backend("10.244.1.20", SHANGHAI)], 8080)
    out += _with(cloud_lb_service(), [Backend("10.8.0.5", "kind-control-plane")], 8443)
    return out
