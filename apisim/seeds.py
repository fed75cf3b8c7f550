"""Clusters to load into the simulator: the two documented demos and a large synthetic one.

A seed is a list of (Resource, object); ``Simulator(seed=...)`` or ``sim.load(...)`` creates them.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.types import JSONDict

SeedList = list[tuple[Resource, JSONDict]]

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
SUPEREDGE_TOPOLOGY = "topologyKeys"
OPENYURT_TOPOLOGY = "openyurt.io/topologyKeys"
NODEPOOL = "apps.openyurt.io/nodepool"  # the node label OpenYurt puts on every pool member
# The annotation value OpenYurt documents for "same node pool" (openyurt.io/topologyKeys); the label
# key above is not a valid value.
OPENYURT_SAME_POOL = "openyurt.io/nodepool"
HEADLESS = "service.kubernetes.io/headless"


@dataclass(frozen=True, slots=True)
class Backend:
    """One pod behind a service."""

    ip: str
    node: str
    zone: str = ""
    pod: str = ""


def node(name: str, ip: str, labels: dict[str, str] | None = None, pod_cidr: str = "") -> JSONDict:
    lbls = {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", HOSTNAME: name, **(labels or {})}
    obj: JSONDict = {
        "metadata": {"name": name, "labels": lbls},
        "spec": {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": "2025-01-01T00:00:00Z",
                            "lastTransitionTime": "2025-01-01T00:00:00Z"}],
            "nodeInfo": {"kubeletVersion": "v1.33.0", "kubeProxyVersion": "v1.33.0", "osImage": "Ubuntu 24.04 LTS",
                         "containerRuntimeVersion": "containerd://2.0.0", "kernelVersion": "6.8.0",
                         "operatingSystem": "linux", "architecture": "amd64"},
        },
    }
    if pod_cidr:
        obj["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    return obj


def service(namespace: str, name: str, cluster_ip: str, port: int, target_port: int, *,
            port_name: str = "", selector: dict[str, str] | None = None, labels: dict[str, str] | None = None,
            annotations: dict[str, str] | None = None) -> JSONDict:
    meta: JSONDict = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    p: JSONDict = {"port": port, "targetPort": target_port, "protocol": "TCP"}
    if port_name:
        p["name"] = port_name
    spec: JSONDict = {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [p],
                      "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                      "internalTrafficPolicy": "Cluster"}
    if selector:
        spec["selector"] = dict(selector)
    return {"metadata": meta, "spec": spec}


def endpoint_slice(svc: JSONDict, backends: Sequence[Backend], port: int, *, name: str = "",
                   port_name: str = "") -> JSONDict:
    """The slice the EndpointSlice controller would write for ``svc`` (labels mirrored)."""
    meta = svc["metadata"]
    labels = {**meta.get("labels", {}), SERVICE_NAME: meta["name"], MANAGED_BY: SLICE_CONTROLLER}
    if svc["spec"].get("clusterIP") == "None":
        labels[HEADLESS] = ""
    eps: list[JSONDict] = []
    for b in backends:
        ep: JSONDict = {"addresses": [b.ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                        "nodeName": b.node}
        if b.zone:
            ep["zone"] = b.zone
        if b.pod:
            ep["targetRef"] = {"kind": "Pod", "namespace": meta["namespace"], "name": b.pod}
        eps.append(ep)
    return {
        "metadata": {"name": name or f"{meta['name']}-{_suffix(meta['name'])}", "namespace": meta["namespace"],
                     "labels": labels},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def endpoints(svc: JSONDict, backends: Sequence[Backend], port: int, port_name: str = "") -> JSONDict:
    meta = svc["metadata"]
    addrs: list[JSONDict] = []
    for b in backends:
        a: JSONDict = {"ip": b.ip, "nodeName": b.node}
        if b.pod:
            a["targetRef"] = {"kind": "Pod", "namespace": meta["namespace"], "name": b.pod}
        addrs.append(a)
    p: JSONDict = {"port": port, "protocol": "TCP"}
    if port_name:
        p["name"] = port_name
    return {"metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta.get("labels", {}))},
            "subsets": [{"addresses": addrs, "ports": [p]}] if addrs else []}


def _suffix(name: str) -> str:
    # Deterministic stand-in for the controller's random generateName suffix.
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    h = sum((i + 1) * ord(c) for i, c in enumerate(name))
    return "".join(alphabet[(h // len(alphabet) ** i) % len(alphabet)] for i in range(5))


def _with_backends(svc: JSONDict, backends: Sequence[Backend], target_port: int, port_name: str = "") -> SeedList:
    return [
        (SERVICES, svc),
        (ENDPOINTSLICES, endpoint_slice(svc, backends, target_port, port_name=port_name)),
        (ENDPOINTS, endpoints(svc, backends, target_port, port_name)),
    ]


def _kubernetes_service(cluster_ip: str, apiserver_ip: str) -> SeedList:
    svc = service("default", "kubernetes", cluster_ip, 443, 6443, port_name="https",
                  labels={"component": "apiserver", "provider": "kubernetes"})
    slice_ = endpoint_slice(svc, [Backend(apiserver_ip, "")], 6443, name="kubernetes", port_name="https")
    slice_["metadata"]["labels"] = {SERVICE_NAME: "kubernetes"}  # written by the apiserver, not the controller
    for ep in slice_["endpoints"]:
        ep.pop("nodeName", None)
    eps = endpoints(svc, [Backend(apiserver_ip, "")], 6443, "https")
    eps["subsets"][0]["addresses"] = [{"ip": apiserver_ip}]
    return [(SERVICES, svc), (ENDPOINTSLICES, slice_), (ENDPOINTS, eps)]


def servicegrid_demo() -> SeedList:
    """SuperEdge ServiceGrid example: two NodeUnits (location=beijing/guangzhou), one grid service."""
    units = {"bj-1": ("beijing", "192.168.10.12", "10.0.0.64/26"), "bj-3": ("beijing", "192.168.10.15", "10.0.1.64/26"),
             "gz-2": ("guangzhou", "172.16.32.211", "10.0.0.128/26"),
             "gz-3": ("guangzhou", "172.16.35.193", "10.0.1.0/26")}
    out: SeedList = [(NODES, node(n, ip, {"location": loc, ZONE: loc}, cidr)) for n, (loc, ip, cidr) in units.items()]
    out += _kubernetes_service("172.16.33.1", "192.168.10.2")
    grid = service("default", "servicegrid-demo-svc", "172.16.33.231", 80, 8080, selector={"appGrid": "echo"},
                   labels={"superedge.io/grid-selector": "servicegrid-demo", "superedge.io/grid-uniq-key": "location"},
                   annotations={SUPEREDGE_TOPOLOGY: '["location"]'})
    pods = [Backend("10.0.0.70", "bj-1", "beijing", "deploymentgrid-demo-beijing-65d669b7d-wrx7r"),
            Backend("10.0.1.72", "bj-3", "beijing", "deploymentgrid-demo-beijing-65d669b7d-v9zdr"),
            Backend("10.0.0.139", "gz-2", "guangzhou", "deploymentgrid-demo-guangzhou-5d599854c8-hhmt2"),
            Backend("10.0.1.8", "gz-3", "guangzhou", "deploymentgrid-demo-guangzhou-5d599854c8-k9gc7")]
    out += _with_backends(grid, pods, 8080)
    plain = service("default", "plain-svc", "172.16.33.100", 80, 8080, selector={"app": "plain"})
    out += _with_backends(plain, [Backend("10.0.0.71", "bj-1", "beijing", "plain-7d4b9c8f6d-x2c9z"),
                                  Backend("10.0.0.140", "gz-2", "guangzhou", "plain-7d4b9c8f6d-q8w4m")], 8080)
    return out


def openyurt_demo() -> SeedList:
    """OpenYurt service topology example: node pools beijing (cloud), hangzhou and shanghai (edge)."""
    pools = {"kind-control-plane": ("beijing", "172.18.0.2", "10.244.0.0/24"),
             "kind-worker": ("hangzhou", "172.18.0.3", "10.244.2.0/24"),
             "kind-worker2": ("shanghai", "172.18.0.4", "10.244.1.0/24")}
    out: SeedList = []
    for name, (pool, ip, cidr) in pools.items():
        labels = {NODEPOOL: pool, "apps.openyurt.io/desired-nodepool": pool}
        if name == "kind-control-plane":
            labels["node-role.kubernetes.io/control-plane"] = ""
        out.append((NODES, node(name, ip, labels, cidr)))
    out += _kubernetes_service("10.96.0.1", "172.18.0.2")
    ud1 = service("default", "svc-ud1", "10.96.120.11", 80, 9376, selector={"app": "united-deployment1"},
                  annotations={OPENYURT_TOPOLOGY: OPENYURT_SAME_POOL})
    out += _with_backends(ud1, [
        Backend("10.244.2.3", "kind-worker", pod="united-deployment1-hangzhou-fv6th-66ff6fd958-f2694"),
        Backend("10.244.2.2", "kind-worker", pod="united-deployment1-hangzhou-fv6th-66ff6fd958-twf95"),
        Backend("10.244.1.3", "kind-worker2", pod="united-deployment1-shanghai-5p8zk-84bdd476b6-hr6xt"),
        Backend("10.244.1.2", "kind-worker2", pod="united-deployment1-shanghai-5p8zk-84bdd476b6-wjck2"),
    ], 9376)
    ud2 = service("default", "svc-ud2", "10.96.120.12", 80, 80, selector={"app": "united-deployment2"})
    out += _with_backends(ud2, [
        Backend("10.244.2.4", "kind-worker", pod="united-deployment2-hangzhou-lpkzg-6d958b67b6-gf847"),
        Backend("10.244.2.5", "kind-worker", pod="united-deployment2-hangzhou-lpkzg-6d958b67b6-lbnwl"),
        Backend("10.244.1.5", "kind-worker2", pod="united-deployment2-shanghai-tqgd4-57f7555494-9jvjb"),
        Backend("10.244.1.4", "kind-worker2", pod="united-deployment2-shanghai-tqgd4-57f7555494-rn8n8"),
    ], 80)
    return out


def scale_cluster(seed: int, nodes: int = 1000, zones: int = 10, units: int = 20, services: int = 5000,
                  annotated_fraction: float = 0.5, endpoints: int = 50000, *, namespaces: int = 20,
                  headless_fraction: float = 0.02, big_slice: int = 100, with_endpoints: bool = False) -> SeedList:
    """A reproducible large cluster: nodes in ``zones`` zones and ``units`` NodeUnits (label
    ``location``), ``services`` services with one slice each holding ``endpoints`` in total;
    1 % of the services get ``big_slice`` endpoints, the rest share the remainder evenly.
    """
    rng = random.Random(seed)
    out: SeedList = []
    node_names: list[str] = []
    node_zone: list[str] = []
    for i in range(nodes):
        name = f"node-{i:05d}"
        zone = f"zone-{i % zones:02d}"
        node_names.append(name)
        node_zone.append(zone)
        ip = str(ipaddress.ip_address(int(ipaddress.ip_address("172.20.0.0")) + i + 10))
        out.append((NODES, node(name, ip, {"location": f"unit-{i % units:02d}", ZONE: zone})))

    n_big = min(services, max(1, services // 100)) if endpoints >= big_slice else 0
    rest = max(0, endpoints - n_big * big_slice)
    n_small = services - n_big
    per, extra = (divmod(rest, n_small) if n_small else (0, 0))
    sizes = [big_slice] * n_big + [per + (1 if i < extra else 0) for i in range(n_small)]
    rng.shuffle(sizes)

    pod_ip = int(ipaddress.ip_address("10.128.0.0"))
    svc_ip = int(ipaddress.ip_address("10.96.0.0")) + 1000
    for s in range(services):
        ns = f"ns-{s % namespaces:02d}"
        name = f"svc-{s:05d}"
        headless = rng.random() < headless_fraction
        annotations = {SUPEREDGE_TOPOLOGY: '["location"]'} if rng.random() < annotated_fraction else None
        svc = service(ns, name, "None" if headless else _ip(svc_ip + s), 80, 8080, port_name="http",
                      selector={"app": name}, annotations=annotations)
        if headless:
            svc["spec"]["clusterIPs"] = ["None"]
        backends: list[Backend] = []
        for e in range(sizes[s]):
            k = rng.randrange(nodes) if nodes else 0
            backends.append(Backend(_ip(pod_ip), node_names[k] if nodes else "", node_zone[k] if nodes else "",
                                    f"{name}-{e:03d}"))
            pod_ip += 1
        out.append((SERVICES, svc))
        out.append((ENDPOINTSLICES, endpoint_slice(svc, backends, 8080, port_name="http")))
        if with_endpoints:
            out.append((ENDPOINTS, _endpoints_of(svc, backends)))
    return out


def _ip(n: int) -> str:
    return str(ipaddress.ip_address(n))


def _endpoints_of(svc: JSONDict, backends: Sequence[Backend]) -> JSONDict:
    return endpoints(svc, backends, 8080, "http")


SEEDS: dict[str, Callable[[], SeedList]] = {
    "servicegrid": servicegrid_demo,
    "openyurt": openyurt_demo,
    "empty": list,
}
