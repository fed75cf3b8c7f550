"""Topology hints on slices the topology filter has cut: kept as they are, and never a cause of zero
endpoints where the documented rules keep some.

``kube_proxy_cluster_endpoints`` restates kube-proxy's ``CategorizeEndpoints`` for Cluster traffic
(k/k pkg/proxy/topology.go), in the three forms kube-proxy 1.30-1.34+ run:

* 1.30 (``canUseTopology``; ServiceTrafficDistribution off by default): zone hints are used only
  if the Service carries a ``service.kubernetes.io/topology-mode`` annotation other than Disabled,
  the node has a ``topology.kubernetes.io/zone`` label, every ready endpoint has a zone hint and at
  least one names the node's zone;
* 1.31-1.33 (``topologyModeFromHints``, PreferSameTrafficDistribution off): the same without the
  annotation;
* 1.34+ (PreferSameTrafficDistribution on): first node hints, if every ready endpoint has one and
  at least one names this node; else zone hints as above.

The chosen endpoints are the ready ones the mode allows; if none, the serving-and-terminating ones,
ignoring hints. Every mode needs a ready endpoint hinted for this node or zone, which it then keeps,
so hints can narrow what the wrapper serves but never empty it; and they never widen it, since
kube-proxy only ever chooses among the endpoints it was sent.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.keys import TopologyKeys
from filters.topology import TopologyContext, filter_endpoint_slices
from kubeapi.types import EndpointSlice

Version = Literal["1.30", "1.33", "1.34"]
VERSIONS: tuple[Version, ...] = ("1.30", "1.33", "1.34")
ZONE = "topology.kubernetes.io/zone"
LOCAL = "bj-1"
# Two units (location), each over two zones; the local node is bj-1 in zone z1.
NODES = {
    "bj-1": {"location": "beijing", ZONE: "z1"}, "bj-2": {"location": "beijing", ZONE: "z2"},
    "bj-3": {"location": "beijing", ZONE: "z1"},
    "gz-1": {"location": "guangzhou", ZONE: "z3"}, "gz-2": {"location": "guangzhou", ZONE: "z4"},
}
CTX = TopologyContext(LOCAL, NODES)


def ready(ep: dict[str, Any]) -> bool:
    return (ep.get("conditions") or {}).get("ready") is not False


def serving_terminating(ep: dict[str, Any]) -> bool:
    cond = ep.get("conditions") or {}
    return cond.get("serving") is not False and cond.get("terminating") is True


def zone_hints(ep: dict[str, Any]) -> set[str]:
    return {h["name"] for h in (ep.get("hints") or {}).get("forZones") or []}


def node_hints(ep: dict[str, Any]) -> set[str]:
    return {h["name"] for h in (ep.get("hints") or {}).get("forNodes") or []}


def kube_proxy_cluster_endpoints(endpoints: list[dict[str, Any]], version: Version, *,
                                 topology_mode_annotation: bool = True) -> list[dict[str, Any]]:
    """The endpoints kube-proxy ``version`` on LOCAL sends Cluster traffic to (module docstring)."""
    zone = NODES[LOCAL].get(ZONE, "")
    ready_eps = [ep for ep in endpoints if ready(ep)]
    mode = ""
    if ready_eps and (version != "1.30" or topology_mode_annotation):
        if version == "1.34" and all(node_hints(ep) for ep in ready_eps) and any(
                LOCAL in node_hints(ep) for ep in ready_eps):
            mode = "node"
        elif all(zone_hints(ep) for ep in ready_eps) and any(zone in zone_hints(ep) for ep in ready_eps):
            mode = "zone"
    chosen = [ep for ep in ready_eps if mode == "" or (mode == "node" and LOCAL in node_hints(ep))
              or (mode == "zone" and zone in zone_hints(ep))]
    return chosen or [ep for ep in endpoints if serving_terminating(ep)]


def ep(node: str, *, zones: tuple[str, ...] | None = None, nodes: tuple[str, ...] | None = None,
       is_ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [f"10.0.{len(node)}.{sum(map(ord, node)) % 250}"], "nodeName": node,
                           "conditions": {"ready": is_ready, "serving": is_ready or terminating,
                                          "terminating": terminating}}
    hints: dict[str, Any] = {}
    if zones is not None:
        hints["forZones"] = [{"name": z} for z in zones]
    if nodes is not None:
        hints["forNodes"] = [{"name": n} for n in nodes]
    if hints:
        out["hints"] = hints
    return out


def one_slice(*endpoints: dict[str, Any]) -> EndpointSlice:
    doc: Any = {"metadata": {"name": "web-abcde", "namespace": "default", "labels": {
        "kubernetes.io/service-name": "web"}}, "addressType": "IPv4", "endpoints": list(endpoints)}
    return cast(EndpointSlice, doc)


LOCATION = TopologyKeys(("location",), False, "topologyKeys")


def served(keys: TopologyKeys, *endpoints: dict[str, Any]) -> list[dict[str, Any]]:
    [out] = filter_endpoint_slices(CTX, keys, [one_slice(*endpoints)]).slices
    return [cast(dict[str, Any], e) for e in out.get("endpoints") or []]


def nodes_of(endpoints: list[dict[str, Any]]) -> list[str]:
    return [e["nodeName"] for e in endpoints]


def test_a_slice_the_filter_leaves_alone_keeps_its_hints_as_the_very_object() -> None:
    s = one_slice(ep("bj-1", zones=("z1",)), ep("bj-2", zones=("z2",)))
    [out] = filter_endpoint_slices(CTX, LOCATION, [s]).slices
    assert out is s


# (case, endpoints upstream, kube-proxy version, nodes kube-proxy uses)
CASES = [
    ("zone hints for the local zone narrow to it inside the unit",
     [ep("bj-1", zones=("z1",)), ep("bj-2", zones=("z2",)), ep("gz-1", zones=("z3",))], "1.33", ["bj-1"]),
    ("the local zone's endpoints cut away: the hints name no kept endpoint for z1, so all kept ones serve",
     [ep("bj-2", zones=("z2",)), ep("gz-1", zones=("z1",)), ep("gz-2", zones=("z4",))], "1.33", ["bj-2"]),
    ("Auto hints donated every unit endpoint to other zones: ignored, the unit serves",
     [ep("bj-2", zones=("z3",)), ep("bj-3", zones=("z4",)), ep("gz-1", zones=("z1",))], "1.33", ["bj-2", "bj-3"]),
    ("a kept endpoint without a hint: hints ignored",
     [ep("bj-1", zones=("z1",)), ep("bj-2"), ep("gz-1", zones=("z1",))], "1.33", ["bj-1", "bj-2"]),
    ("node hints (PreferSameNode, 1.34) pick the local node's endpoint",
     [ep("bj-1", zones=("z1",), nodes=("bj-1",)), ep("bj-2", zones=("z2",), nodes=("bj-2",)),
      ep("gz-1", zones=("z3",), nodes=("gz-1",))], "1.34", ["bj-1"]),
    ("node hints with no endpoint on this node fall back to zone hints",
     [ep("bj-3", zones=("z1",), nodes=("bj-3",)), ep("bj-2", zones=("z2",), nodes=("bj-2",))], "1.34", ["bj-3"]),
    ("node hints are ignored by 1.33 (its gate is off): zone hints",
     [ep("bj-2", zones=("z2",), nodes=("bj-2",)), ep("bj-3", zones=("z1",), nodes=("bj-3",))], "1.33", ["bj-3"]),
    ("1.30 with the topology-mode annotation uses zone hints too",
     [ep("bj-1", zones=("z1",)), ep("bj-2", zones=("z2",))], "1.30", ["bj-1"]),
    ("the only ready local-zone endpoint is not ready: hints over the ready ones, none for z1: all ready",
     [ep("bj-1", zones=("z1",), is_ready=False), ep("bj-2", zones=("z2",)), ep("bj-3", zones=("z2",))],
     "1.33", ["bj-2", "bj-3"]),
    ("nothing ready in the unit, one terminating: kube-proxy falls back to it, ignoring hints",
     [ep("bj-2", zones=("z2",), is_ready=False, terminating=True), ep("gz-1", zones=("z1",), is_ready=False)],
     "1.34", ["bj-2"]),
]


@pytest.mark.parametrize(("case", "upstream", "version", "uses"), CASES, ids=[c[0] for c in CASES])
def test_kube_proxy_applies_the_kept_hints_inside_the_unit_and_never_ends_with_none(
        case: str, upstream: list[dict[str, Any]], version: Version, uses: list[str]) -> None:
    kept = served(LOCATION, *upstream)
    assert all(e["nodeName"].startswith("bj-") for e in kept)
    # Kept as they are: every kept endpoint is the upstream endpoint object, hints and all.
    assert all(any(k is u for u in upstream) for k in kept)
    assert nodes_of(kube_proxy_cluster_endpoints(kept, version)) == uses


def test_no_matching_key_and_no_wildcard_leaves_no_endpoint_as_documented_and_hints_change_nothing() -> None:
    kept = served(TopologyKeys(("rack",), False, "topologyKeys"), ep("bj-1", zones=("z1",)))
    assert kept == [] and kube_proxy_cluster_endpoints(kept, "1.34") == []


HINTED_NODE = st.sampled_from([*sorted(NODES), "gone"])
ZONES = st.sampled_from(["z1", "z2", "z3", "z4"])


@st.composite
def endpoint(draw: st.DrawFn) -> dict[str, Any]:
    zones = draw(st.none() | st.lists(ZONES, max_size=2, unique=True).map(tuple))
    nodes = draw(st.none() | st.lists(HINTED_NODE, max_size=2, unique=True).map(tuple))
    state = draw(st.sampled_from(["ready", "not-ready", "terminating"]))
    return ep(draw(HINTED_NODE), zones=zones, nodes=nodes, is_ready=state == "ready",
              terminating=state == "terminating")


KEYS = st.sampled_from([LOCATION, TopologyKeys(("kubernetes.io/hostname", "location"), False, "topologyKeys"),
                        TopologyKeys(("location",), True, "topologyKeys"),
                        TopologyKeys((ZONE, "location"), True, "topologyKeys"),
                        TopologyKeys(("kubernetes.io/hostname",), False, "topologyKeys")])


@settings(max_examples=400, deadline=None)
@given(upstream=st.lists(endpoint(), max_size=6), keys=KEYS, version=st.sampled_from(VERSIONS),
       annotated=st.booleans())
def test_hints_on_a_cut_slice_narrow_what_was_kept_but_never_empty_it(
        upstream: list[dict[str, Any]], keys: TopologyKeys, version: Version, annotated: bool) -> None:
    decision = filter_endpoint_slices(CTX, keys, [one_slice(*upstream)])
    kept = [cast(dict[str, Any], e) for e in decision.slices[0].get("endpoints") or []]
    used = kube_proxy_cluster_endpoints(kept, version, topology_mode_annotation=annotated)
    assert all(any(u is k for k in kept) for u in used)  # never wider than the cut
    usable_upstream = any(ready(e) or serving_terminating(e) for e in upstream)
    [family] = decision.families or [None]
    if usable_upstream and family is not None and family.winner is not None:
        assert used, "the rules kept a usable endpoint, and kube-proxy ended with none"
        # The local node's own endpoints survive any winning key (externalTrafficPolicy: Local needs them).
        assert all(any(k is e for k in kept) for e in upstream if e["nodeName"] == LOCAL)
