"""NodePort isolation per pool (filters/nodeport.py), without a cache: the annotation's rules as a
table, the ClusterIP form a disabled pool is served, and what kube-proxy makes of it.

``kube_proxy_listens`` restates, from kube-proxy's source, which addresses and ports of a Service it
accepts traffic on: k/k pkg/proxy/serviceport.go ``newBaseServiceInfo`` reads each port's
``nodePort`` and the status's VIP-mode ingress IPs whatever ``spec.type`` says, and a health check
node port for a LoadBalancer with ``externalTrafficPolicy: Local``; the iptables, ipvs and nftables
proxiers open a node port for every ``NodePort() != 0`` and capture every LB VIP and external IP;
a Service with a ClusterIP gets its ClusterIP rules (``ShouldSkipService`` skips only ``None``,
empty and ExternalName).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from filters.api import Malformed, Reads, TopologyContext
from filters.nodeport import (
    LISTEN_ANNOTATION,
    NODEPORT_ISOLATION,
    POOL_LABEL,
    ListenPools,
    parse_listen,
    without_node_ports,
)
from kubeapi.types import JSONDict

LOCAL = "edge-1"


def kube_proxy_listens(service: JSONDict) -> dict[str, Any]:
    """What kube-proxy programs for ``service`` on a node (see the module docstring)."""
    spec, status = service.get("spec") or {}, service.get("status") or {}
    cluster_ip = spec.get("clusterIP")
    if spec.get("type") == "ExternalName" or cluster_ip in (None, "", "None"):
        return {"service": False}
    ingress = ((status.get("loadBalancer") or {}).get("ingress")) or []
    health = (spec.get("healthCheckNodePort")
              if spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local" else None)
    return {
        "service": True,
        "clusterIPs": spec.get("clusterIPs") or [cluster_ip],
        "nodePorts": sorted(p["nodePort"] for p in spec.get("ports") or [] if p.get("nodePort")),
        "loadBalancerVIPs": sorted(i["ip"] for i in ingress if i.get("ip") and i.get("ipMode", "VIP") == "VIP"),
        "healthCheckNodePort": health or None,
        "externalIPs": sorted(spec.get("externalIPs") or []),
    }


def service(type_: str = "NodePort", listen: str | None = "pool-a", **spec: Any) -> JSONDict:
    meta: JSONDict = {"name": "web", "namespace": "default", "resourceVersion": "7"}
    if listen is not None:
        meta["annotations"] = {LISTEN_ANNOTATION: listen}
    return {"metadata": meta, "spec": {
        "type": type_, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}],
        "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], **spec}}


LOAD_BALANCER = service(
    "LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=31999, allocateLoadBalancerNodePorts=True,
    loadBalancerClass="example.com/lb", loadBalancerIP="203.0.113.7", loadBalancerSourceRanges=["198.51.100.0/24"])
LOAD_BALANCER["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.7", "ipMode": "VIP"}]},
                           "conditions": [{"type": "Ready", "status": "True"}]}


def ctx(pool: str | None, known: bool = True) -> TopologyContext:
    labels = {} if pool is None else {POOL_LABEL: pool}
    return TopologyContext(LOCAL, {LOCAL: labels, "other": {POOL_LABEL: "pool-z"}} if known else {})


# (annotation value, local pool, node ports open?, reason contains)
RULES = [
    ("pool-a", "pool-a", True, "is listed"),
    ("pool-a", "pool-b", False, "not listed"),
    (" pool-a , pool-b ", "pool-b", True, "is listed"),  # entries are trimmed
    ("*", "pool-b", True, '"*"'),
    ("*,-pool-b", "pool-b", False, "excluded"),
    ("*,-pool-b", "pool-a", True, '"*"'),
    ("-pool-b", "pool-a", False, "not listed"),  # an exclusion alone enables nothing
    ("-pool-b", "pool-b", False, "excluded"),
    ("pool-a,-pool-a", "pool-a", True, "explicit name wins"),
    ("-pool-a,pool-a", "pool-a", True, "explicit name wins"),
    ("pool-a,*", "pool-a", True, "is listed"),
    ("", "pool-a", False, "names no pool"),  # an empty value disables everywhere
    (" , ,", "pool-a", False, "names no pool"),
    ("Pool-A", "pool-a", False, "not listed"),  # label values are case-sensitive
]


@pytest.mark.parametrize(("value", "pool", "open_", "why"), RULES)
def test_the_annotation_opens_node_ports_only_in_the_pools_it_enables(
        value: str, pool: str, open_: bool, why: str) -> None:
    policy = parse_listen(value)
    assert isinstance(policy, ListenPools)
    verdict, reason = policy.decide(pool)
    assert verdict == ("open" if open_ else "closed") and why in reason
    served = NODEPORT_ISOLATION.serve_service(policy, service(listen=value), ctx(pool))
    assert (kube_proxy_listens(served)["nodePorts"] == [30080]) is open_


@pytest.mark.parametrize("node", ["no pool label", "empty pool label", "not in the cache"])
def test_a_node_without_a_pool_is_left_unfiltered(node: str) -> None:
    policy = parse_listen("pool-a")
    assert isinstance(policy, ListenPools)
    context = ctx(None) if node == "no pool label" else ctx("") if node == "empty pool label" else ctx(None, False)
    svc = service()
    assert NODEPORT_ISOLATION.serve_service(policy, svc, context) is svc
    assert policy.decide(None)[0] == "unfiltered"


@pytest.mark.parametrize(("value", "why"), [
    ("-*", "excludes nothing"),
    ("pool a", "not a node pool name"),
    ("pool-a,pool/b", "not a node pool name"),
    ("--pool-a", "not a node pool name"),
    ("p" * 64, "not a node pool name"),
    ("pool-a,-", "not a node pool name"),
])
def test_an_entry_that_can_never_name_a_pool_makes_the_annotation_malformed(value: str, why: str) -> None:
    parsed = NODEPORT_ISOLATION.parse(service(listen=value))
    assert isinstance(parsed, Malformed) and why in parsed.reason and LISTEN_ANNOTATION in parsed.reason
    record = NODEPORT_ISOLATION.explain_malformed("default/web", parsed)
    assert record["malformed"] == parsed.reason and record["result"] == "its node ports stay open on every node"


@pytest.mark.parametrize(("svc", "involved"), [
    (service("NodePort"), True),
    (service("LoadBalancer"), True),
    (service("ClusterIP"), False),  # OpenYurt applies it to NodePort and LoadBalancer Services only
    (service("ExternalName"), False),
    (service("NodePort", listen=None), False),
    ({"metadata": {"name": "bare", "namespace": "default", "annotations": {LISTEN_ANNOTATION: "a"}}}, False),
])
def test_only_nodeport_and_load_balancer_services_with_the_annotation_are_involved(
        svc: JSONDict, involved: bool) -> None:
    assert isinstance(NODEPORT_ISOLATION.parse(svc), ListenPools) is involved


def test_the_decision_reads_only_the_local_nodes_pool_label() -> None:
    policy = parse_listen("pool-a")
    assert isinstance(policy, ListenPools)
    assert NODEPORT_ISOLATION.reads(policy) == Reads(local_labels=frozenset({POOL_LABEL}))


def test_a_disabled_pool_gets_the_clusterip_service_the_apiserver_would_hold_after_a_type_change() -> None:
    before = copy.deepcopy(LOAD_BALANCER)
    closed = without_node_ports(LOAD_BALANCER)
    assert before == LOAD_BALANCER  # the cached object is never mutated
    spec = closed["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    for field in ("healthCheckNodePort", "allocateLoadBalancerNodePorts", "loadBalancerClass", "loadBalancerIP",
                  "loadBalancerSourceRanges", "externalTrafficPolicy"):
        assert field not in spec, field
    kept = ("clusterIP", "clusterIPs", "selector", "sessionAffinity", "internalTrafficPolicy", "ipFamilies")
    assert {k: spec[k] for k in kept} == {k: LOAD_BALANCER["spec"][k] for k in kept}
    assert closed["status"] == {"loadBalancer": {}, "conditions": [{"type": "Ready", "status": "True"}]}
    assert closed["metadata"] is LOAD_BALANCER["metadata"]


def test_kube_proxy_opens_no_node_port_and_no_load_balancer_ip_for_it_and_keeps_its_clusterip() -> None:
    assert kube_proxy_listens(LOAD_BALANCER) == {
        "service": True, "clusterIPs": ["10.96.0.10"], "nodePorts": [30080], "loadBalancerVIPs": ["203.0.113.7"],
        "healthCheckNodePort": 31999, "externalIPs": []}
    assert kube_proxy_listens(without_node_ports(LOAD_BALANCER)) == {
        "service": True, "clusterIPs": ["10.96.0.10"], "nodePorts": [], "loadBalancerVIPs": [],
        "healthCheckNodePort": None, "externalIPs": []}


def test_rewriting_the_type_alone_would_leave_the_node_port_and_the_vip_open() -> None:
    # Why the rewrite clears the ports and the status: kube-proxy does not look at spec.type for them.
    type_only = copy.deepcopy(LOAD_BALANCER)
    type_only["spec"]["type"] = "ClusterIP"
    listens = kube_proxy_listens(type_only)
    assert listens["nodePorts"] == [30080] and listens["loadBalancerVIPs"] == ["203.0.113.7"]


def test_external_ips_are_not_node_ports_and_keep_their_traffic_policy() -> None:
    svc = service(externalIPs=["192.0.2.50"], externalTrafficPolicy="Local")
    closed = without_node_ports(svc)
    assert kube_proxy_listens(closed)["nodePorts"] == [] and closed["spec"]["externalIPs"] == ["192.0.2.50"]
    assert closed["spec"]["externalTrafficPolicy"] == "Local"  # still externally accessible, as the apiserver keeps


def test_odd_shapes_are_served_without_a_traceback() -> None:
    odd = {"metadata": {"name": "odd", "namespace": "default"},
           "spec": {"type": "NodePort", "ports": ["not-a-port", {"port": 1, "nodePort": 30001}]},
           "status": "not-an-object"}
    closed = without_node_ports(odd)
    assert closed["spec"]["ports"] == ["not-a-port", {"port": 1}] and closed["status"] == "not-an-object"
    assert without_node_ports({"metadata": {"name": "x"}})["spec"] == {"type": "ClusterIP"}


def test_the_explanation_names_the_pool_the_rule_and_the_ports_it_closed() -> None:
    policy = parse_listen("*,-pool-b")
    assert isinstance(policy, ListenPools)
    closed = NODEPORT_ISOLATION.explain("default/web", policy, LOAD_BALANCER, [], ctx("pool-b"))
    assert closed["filter"] == "nodeport-isolation" and closed["localPool"] == "pool-b"
    assert closed["nodePorts"] == "closed" and "excluded (-pool-b)" in closed["reason"]
    assert "[30080, 31999]" in closed["result"] and "ClusterIP kept" in closed["result"]
    unfiltered = NODEPORT_ISOLATION.explain("default/web", policy, LOAD_BALANCER, [], ctx(None))
    assert unfiltered["nodePorts"] == "open" and "no apps.openyurt.io/nodepool label" in unfiltered["reason"]
    assert unfiltered["result"] == "served unchanged"
