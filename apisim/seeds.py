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


# A realistic Node's content, as a kubeadm-installed node with flannel and containerd carries it (kubelet
# 1.34): about 10 KB of JSON, of which about 3.4 KB is metadata (the managedFields most of it), what a
# metadata-only watch still gets per Node update.
_IMAGES = (
    ("registry.k8s.io/kube-proxy", "v1.34.1", 31_000_000), ("registry.k8s.io/pause", "3.10", 320_000),
    ("docker.io/flannel/flannel", "v0.26.4", 32_500_000), ("docker.io/flannel/flannel-cni-plugin", "v1.6.2", 4_900_000),
    ("registry.k8s.io/coredns/coredns", "v1.12.0", 20_900_000), ("registry.k8s.io/metrics-server/metrics-server",
                                                                    "v0.7.2", 19_500_000),
    ("ghcr.io/edge/application-grid-wrapper", "0.1.0", 61_000_000), ("docker.io/library/nginx", "1.27.3", 72_000_000),
    ("quay.io/prometheus/node-exporter", "v1.8.2", 11_700_000), ("docker.io/calico/node", "v3.29.1", 143_000_000),
    ("registry.k8s.io/ingress-nginx/controller", "v1.12.0", 105_000_000), ("docker.io/library/busybox", "1.37.0",
                                                                            2_200_000),
    ("docker.io/library/redis", "7.4.1", 45_000_000), ("docker.io/library/postgres", "17.2", 158_000_000),
    ("quay.io/jetstack/cert-manager-controller", "v1.16.2", 22_000_000), ("docker.io/grafana/promtail", "3.3.2",
                                                                          77_000_000),
    ("registry.k8s.io/sig-storage/csi-node-driver-registrar", "v2.12.0", 10_800_000),
    ("registry.k8s.io/sig-storage/livenessprobe", "v2.14.0", 10_300_000),
    ("docker.io/openyurt/yurthub", "v1.5.0", 31_000_000), ("docker.io/superedge/lite-apiserver", "v0.9.0", 28_000_000),
    ("docker.io/library/alpine", "3.21.0", 3_600_000), ("docker.io/library/python", "3.11.11-slim", 46_000_000),
    ("registry.k8s.io/etcd", "3.5.16-0", 57_000_000), ("docker.io/bitnami/kubectl", "1.34.1", 81_000_000),
)
_NODE_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)
_KUBELET_STATUS_FIELDS = {
    "f:status": {
        "f:allocatable": {f"f:{k}": {} for k in ("cpu", "ephemeral-storage", "memory", "pods")},
        "f:capacity": {f"f:{k}": {} for k in ("cpu", "ephemeral-storage", "memory", "pods")},
        "f:conditions": {f'k:{{"type":"{t}"}}': {".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                                                   "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}
                         for t, *_ in _NODE_CONDITIONS},
        "f:daemonEndpoints": {"f:kubeletEndpoint": {"f:Port": {}}},
        "f:features": {".": {}, "f:supplementalGroupsPolicy": {}},
        "f:images": {}, "f:nodeInfo": {"f:bootID": {}, "f:containerRuntimeVersion": {}, "f:kernelVersion": {},
                                       "f:kubeProxyVersion": {}, "f:kubeletVersion": {}, "f:machineID": {},
                                       "f:osImage": {}, "f:systemUUID": {}},
        "f:runtimeHandlers": {},
    },
}


def realistic_node(name: str, ip: str, labels: dict[str, str], pod_cidr: str, index: int,
                   heartbeat: str = "2025-06-01T00:00:00Z") -> JSONDict:
    """A Node as the apiserver stores a kubeadm node's (images, conditions, addresses, capacity,
    managedFields): about 10 KB of JSON. ``index`` varies its identifiers; ``heartbeat`` is the
    time of its last status update (``node_heartbeat`` moves it)."""
    hexid = f"{index:08x}" * 4
    boot = f"{hexid[:8]}-{hexid[8:12]}-{hexid[12:16]}-{hexid[16:20]}-{hexid[20:32]}"
    since = "2025-01-01T00:00:00Z"
    lbls = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            HOSTNAME: name, "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "edge.c4m8",
            "superedge.io/node-edge": "enable", **labels}
    annotations = {
        "flannel.alpha.coreos.com/backend-data": f'{{"VNI":1,"VtepMAC":"{hexid[:2]}:{hexid[2:4]}:{hexid[4:6]}:'
                                                 f'{hexid[6:8]}:{hexid[8:10]}:{hexid[10:12]}"}}',
        "flannel.alpha.coreos.com/backend-type": "vxlan", "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": ip,
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    }
    managed = [
        {"manager": "kubeadm", "operation": "Update", "apiVersion": "v1", "time": since, "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:kubeadm.alpha.kubernetes.io/cri-socket": {}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": since,
         "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:node.alpha.kubernetes.io/ttl": {}}},
                      "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, f'v:"{pod_cidr}"': {}}}}},
        {"manager": "flanneld", "operation": "Update", "apiVersion": "v1", "time": since, "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {f"f:flannel.alpha.coreos.com/{k}": {} for k in (
             "backend-data", "backend-type", "kube-subnet-manager", "public-ip")}}},
         "subresource": "status"},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": since, "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:volumes.kubernetes.io/controller-managed-attach-"
                                                                "detach": {}},
                                     "f:labels": {".": {}, **{f"f:{k}": {} for k in lbls}}},
                      "f:spec": {"f:providerID": {}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": heartbeat, "fieldsType": "FieldsV1",
         "fieldsV1": _KUBELET_STATUS_FIELDS, "subresource": "status"},
    ]
    resources = {"cpu": "4", "ephemeral-storage": "102400Mi", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                 "memory": "8029648Ki", "pods": "110"}
    conditions: list[JSONDict] = [{"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                                   "message": "Flannel is running on this node", "lastHeartbeatTime": since,
                                   "lastTransitionTime": since}]
    conditions += [{"type": t, "status": st, "reason": reason, "message": message, "lastHeartbeatTime": heartbeat,
                    "lastTransitionTime": since} for t, st, reason, message in _NODE_CONDITIONS]
    images = [{"names": [f"{repo}@sha256:{(hexid + repo.encode().hex())[:64]}", f"{repo}:{tag}"],
               "sizeBytes": size + index % 997} for repo, tag, size in _IMAGES]
    return {
        "metadata": {"name": name, "labels": lbls, "annotations": annotations, "managedFields": managed},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "providerID": f"edge://{name}"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "allocatable": {**resources, "cpu": "3800m", "memory": "7927248Ki"}, "capacity": resources,
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "features": {"supplementalGroupsPolicy": True},
            "images": images,
            "nodeInfo": {"architecture": "amd64", "bootID": boot, "containerRuntimeVersion": "containerd://2.0.2",
                         "kernelVersion": "6.8.0-51-generic", "kubeProxyVersion": "v1.34.1",
                         "kubeletVersion": "v1.34.1", "machineID": hexid, "operatingSystem": "linux",
                         "osImage": "Ubuntu 24.04.1 LTS", "systemUUID": boot},
            "runtimeHandlers": [{"name": "", "features": {"recursiveReadOnlyMounts": True, "userNamespaces": True}},
                                {"name": "runc", "features": {"recursiveReadOnlyMounts": True,
                                                              "userNamespaces": True}}],
        },
    }


def node_heartbeat(obj: JSONDict, at: str) -> JSONDict:
    """``obj`` (a ``realistic_node``) after the kubelet's periodic status update at time ``at``: the
    conditions it owns have a new ``lastHeartbeatTime`` and its status entry of managedFields a new
    ``time``, as the apiserver stores a heartbeat that changes nothing else. Returns a new object."""
    meta = dict(obj["metadata"])
    meta["managedFields"] = [
        {**m, "time": at} if m.get("manager") == "kubelet" and m.get("subresource") == "status" else m
        for m in meta.get("managedFields") or []]
    status = dict(obj["status"])
    status["conditions"] = [{**c, "lastHeartbeatTime": at} if c.get("type") != "NetworkUnavailable" else c
                            for c in status.get("conditions") or []]
    return {**obj, "metadata": meta, "status": status}


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
                  headless_fraction: float = 0.02, big_slice: int = 100, with_endpoints: bool = False,
                  realistic_nodes: bool = False) -> SeedList:
    """A reproducible large cluster: nodes in ``zones`` zones and ``units`` NodeUnits (label
    ``location``), ``services`` services with one slice each holding ``endpoints`` in total;
    1 % of the services get ``big_slice`` endpoints, the rest share the remainder evenly.
    ``realistic_nodes``: Nodes as a real cluster stores them (``realistic_node``, about 10 KB
    each) instead of the lean ones.
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
        labels = {"location": f"unit-{i % units:02d}", ZONE: zone}
        if realistic_nodes:
            cidr = f"10.{64 + i // 256 % 64}.{i % 256}.0/24"
            out.append((NODES, realistic_node(name, ip, {**labels, "topology.kubernetes.io/region": "edge"}, cidr, i)))
        else:
            out.append((NODES, node(name, ip, labels)))

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
