"""NodePort isolation per node pool: OpenYurt's ``nodeport.openyurt.io/listen``.

A NodePort or LoadBalancer Service carrying the annotation names, as a comma list, the node pools
(node label ``apps.openyurt.io/nodepool``) whose nodes accept its external traffic:

* ``pool`` enables that pool, ``-pool`` disables it, ``*`` enables every pool;
* for the local node's pool, an explicit name wins, then an exclusion, then ``*``;
* a pool not mentioned is disabled, and so an empty value disables every pool;
* a node without a pool label (or unknown to the cache) is left unfiltered, as in plain Kubernetes.

Entries are trimmed and empty ones skipped (as OpenYurt does). An entry that can never name a pool
(not a label value, or ``-*``) makes the annotation malformed: the Service is then served as it is
and the cache logs why, once per Service version.

Where the local pool is disabled, the Service is served as the ``type: ClusterIP`` Service the
apiserver would hold after a type change (its ``dropTypeDependentFields``): no ``nodePort``, no
``healthCheckNodePort``, none of the load balancer fields, ``externalTrafficPolicy`` only while
``externalIPs`` keep it externally reachable, and an empty ``status.loadBalancer``. kube-proxy reads
each port's ``nodePort`` and the status's ingress IPs whatever the type (``newBaseServiceInfo``,
k/k pkg/proxy/serviceport.go), so the type alone would not do: this closes every node port and load
balancer VIP on this node while the ClusterIP keeps working. OpenYurt drops the whole Service
instead, which also takes its ClusterIP (and its DNS name, for a CoreDNS reading the same view) away
from every pod of the pool. README "NodePort isolation" has the evidence.

The decision reads only the local node's pool label (``Reads.local_labels``), so a change of the
local node's pool serves the Service again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from filters.api import Filter, Malformed, Reads, TopologyContext
from filters.keys import OPENYURT_NODEPOOL_LABEL
from kubeapi.resources import SERVICES
from kubeapi.types import EndpointSlice, JSONDict

LISTEN_ANNOTATION = "nodeport.openyurt.io/listen"
POOL_LABEL = OPENYURT_NODEPOOL_LABEL
WILDCARD = "*"
EXTERNAL_TYPES = frozenset({"NodePort", "LoadBalancer"})

# A pool name is compared with a label value (k8s.io/apimachinery IsValidLabelValue).
_LABEL_VALUE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE_MAX = 63
# The spec fields that only a NodePort or LoadBalancer Service carries (besides ports' nodePort).
_LOAD_BALANCER_FIELDS = ("healthCheckNodePort", "allocateLoadBalancerNodePorts", "loadBalancerClass",
                         "loadBalancerIP", "loadBalancerSourceRanges")

Verdict = Literal["open", "closed", "unfiltered"]


@dataclass(frozen=True, slots=True)
class ListenPools:
    """A parsed ``nodeport.openyurt.io/listen``: the pools named, excluded, and whether ``*`` is there."""

    value: str
    listed: frozenset[str]
    excluded: frozenset[str]
    wildcard: bool

    def decide(self, pool: str | None) -> tuple[Verdict, str]:
        """Whether node ports are open on a node of ``pool`` (None: no pool label), and why."""
        if not pool:
            return "unfiltered", f"the local node has no {POOL_LABEL} label: node ports open, as without the filter"
        if pool in self.listed:
            if pool in self.excluded:
                return "open", f"pool {pool} is both listed and excluded; the explicit name wins"
            return "open", f"pool {pool} is listed"
        if pool in self.excluded:
            return "closed", f"pool {pool} is excluded (-{pool})"
        if self.wildcard:
            return "open", f'"*" enables every pool not excluded, {pool} included'
        if not (self.listed or self.excluded):
            return "closed", "the value names no pool: node ports closed in every pool"
        return "closed", f"pool {pool} is not listed"


def parse_listen(value: str) -> ListenPools | str:
    """The pools of an annotation value, or why it is unusable."""
    listed: set[str] = set()
    excluded: set[str] = set()
    wildcard = False
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == WILDCARD:
            wildcard = True
            continue
        name = entry[1:] if entry.startswith("-") else entry
        if name == WILDCARD:
            return f'"{entry}" excludes nothing: an empty value closes node ports in every pool'
        if len(name) > _LABEL_VALUE_MAX or not _LABEL_VALUE.fullmatch(name):
            return f"{entry[:80]!r} is not a node pool name (a label value of {POOL_LABEL})"
        (excluded if entry.startswith("-") else listed).add(name)
    return ListenPools(value, frozenset(listed), frozenset(excluded), wildcard)


def without_node_ports(service: JSONDict) -> JSONDict:
    """``service`` as a ClusterIP Service, as the apiserver stores a Service switched to ClusterIP.

    A shallow copy: only the dicts and lists it changes are new, the input is never mutated.
    """
    spec = dict(service.get("spec") or {})
    spec["type"] = "ClusterIP"
    ports = spec.get("ports")
    if isinstance(ports, list):
        spec["ports"] = [{k: v for k, v in p.items() if k != "nodePort"} if isinstance(p, dict) else p
                         for p in ports]
    for field in _LOAD_BALANCER_FIELDS:
        spec.pop(field, None)
    if not spec.get("externalIPs"):  # no longer externally accessible: the policy goes too
        spec.pop("externalTrafficPolicy", None)
    out = dict(service)
    out["spec"] = spec
    status = service.get("status")
    if isinstance(status, dict) and "loadBalancer" in status:
        status = dict(status)
        status["loadBalancer"] = {}
        out["status"] = status
    return out


def node_ports(service: JSONDict) -> list[int]:
    """The node ports a Service asks for (each port's, and the health check's)."""
    spec = service.get("spec") or {}
    ports = spec.get("ports")
    out = [p["nodePort"] for p in ports if isinstance(p, dict) and isinstance(p.get("nodePort"), int)
           and p["nodePort"]] if isinstance(ports, list) else []
    health = spec.get("healthCheckNodePort")
    if isinstance(health, int) and health:
        out.append(health)
    return out


def local_pool(ctx: TopologyContext) -> str | None:
    labels = ctx.nodes.get(ctx.local_node)
    return labels.get(POOL_LABEL) if labels is not None else None


class NodePortIsolationFilter(Filter[ListenPools]):
    """Closes a NodePort/LoadBalancer Service's node ports on nodes of pools its annotation disables."""

    name = "nodeport-isolation"
    acts_on = frozenset({SERVICES})
    if_malformed = "its node ports stay open on every node"

    def parse(self, service: JSONDict) -> ListenPools | Malformed | None:
        spec = service.get("spec") or {}
        if spec.get("type") not in EXTERNAL_TYPES:
            return None
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        value: Any = annotations.get(LISTEN_ANNOTATION)
        if value is None:
            return None
        if not isinstance(value, str):
            return Malformed(LISTEN_ANNOTATION, str(value), f"{LISTEN_ANNOTATION}: not a string")
        parsed = parse_listen(value)
        if isinstance(parsed, str):
            return Malformed(LISTEN_ANNOTATION, value, f"{LISTEN_ANNOTATION}: {parsed}")
        return parsed

    def reads(self, policy: ListenPools) -> Reads:
        return Reads(local_labels=frozenset({POOL_LABEL}))

    def serve_service(self, policy: ListenPools, service: JSONDict, ctx: TopologyContext) -> JSONDict:
        verdict, _ = policy.decide(local_pool(ctx))
        return without_node_ports(service) if verdict == "closed" else service

    def explain(self, service: str, policy: ListenPools, obj: JSONDict, slices: Sequence[EndpointSlice],
                ctx: TopologyContext) -> JSONDict:
        pool = local_pool(ctx)
        verdict, reason = policy.decide(pool)
        ports = node_ports(obj)
        return {
            "service": service,
            "filter": self.name,
            "annotation": LISTEN_ANNOTATION,
            "value": policy.value,
            "type": (obj.get("spec") or {}).get("type"),
            "localPool": pool,
            "nodePorts": verdict if verdict != "unfiltered" else "open",
            "reason": reason,
            "result": (f"served as type ClusterIP: node ports {ports} and load balancer IPs closed on this node, "
                       "the ClusterIP kept") if verdict == "closed" else "served unchanged",
        }


NODEPORT_ISOLATION = NodePortIsolationFilter()
