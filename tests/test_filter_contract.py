"""The filter contract (filters/api.py, filters/pipeline.py), without a cache.

The topology filter's declarations (what it reads about Nodes) and its account of which Services
a Node change can affect are table-tested here against a fake ``NodeIndex``; test_cluster_cache
proves, with a real cache against an oracle, that these accounts never miss a Service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

import pytest

from filters.api import Filter, Malformed, NodeChange, Reads, ServedSlices, TopologyContext
from filters.discard import DISCARD_CLOUD_SERVICES
from filters.keys import TopologyKeys
from filters.nodeport import NODEPORT_ISOLATION, POOL_LABEL
from filters.pipeline import FILTERS, NO_POLICIES, Pipeline, describe, select
from filters.topology import TOPOLOGY
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, SERVICES
from kubeapi.types import Endpoints, EndpointSlice, JSONDict

LOCAL = "local"


class FakeIndex:
    """A ``filters.api.NodeIndex`` over plain tables: Services' keys, and where their endpoints are."""

    def __init__(self, nodes: Mapping[str, Mapping[str, str]], keys: Mapping[str, TopologyKeys],
                 endpoints_on: Mapping[str, set[str]],
                 other_reads: Mapping[str, Mapping[str, Reads]] | None = None) -> None:
        self.nodes = nodes
        # Service -> filter name -> what that filter's policy for it reads.
        self.reads: dict[str, dict[str, Reads]] = {svc: {TOPOLOGY.name: TOPOLOGY.reads(k)} for svc, k in keys.items()}
        for svc, by_filter in (other_reads or {}).items():
            self.reads.setdefault(svc, {}).update(by_filter)
        self.endpoints_on = endpoints_on

    @property
    def local_node(self) -> str:
        return LOCAL

    def _of(self, reader: str) -> dict[str, Reads]:
        return {s: by_filter[reader] for s, by_filter in self.reads.items() if reader in by_filter}

    def services_reading_label(self, reader: str, key: str) -> Set[str]:
        return {s for s, r in self._of(reader).items() if key in r.label_keys}

    def services_reading_presence(self, reader: str) -> Set[str]:
        return {s for s, r in self._of(reader).items() if r.node_presence}

    def services_reading_local_label(self, reader: str, key: str) -> Set[str]:
        return {s for s, r in self._of(reader).items() if key in r.local_labels}

    def services_on_node(self, node: str) -> Set[str]:
        return {s for s, nodes in self.endpoints_on.items() if node in nodes}

    def nodes_with_label(self, key: str, values: Set[str]) -> Set[str]:
        return {n for n, labels in self.nodes.items() if labels.get(key) in values}


def keys(*k: str, wildcard: bool = False) -> TopologyKeys:
    return TopologyKeys(keys=k, wildcard=wildcard, source="topologyKeys")


NODES = {LOCAL: {"location": "a"}, "a-2": {"location": "a"}, "b-1": {"location": "b"}, "c-1": {"location": "c"}}
INDEX = FakeIndex(
    NODES,
    {"by-location": keys("location"), "by-zone": keys("zone", wildcard=True),
     "by-host": keys("kubernetes.io/hostname"), "anywhere": keys(wildcard=True)},
    {"by-location": {"b-1", "c-1"}, "by-zone": {"a-2"}, "by-host": {LOCAL, "b-1"}, "anywhere": {"b-1"}},
)


@pytest.mark.parametrize(("policy", "reads"), [
    (keys("location", "zone"), Reads(frozenset({"location", "zone"}), node_presence=True)),
    (keys("kubernetes.io/hostname", wildcard=True), Reads(frozenset(), node_presence=True)),
    (keys(wildcard=True), Reads()),
])
def test_topology_declares_the_node_labels_and_presence_its_decision_reads(policy: TopologyKeys,
                                                                         reads: Reads) -> None:
    assert TOPOLOGY.reads(policy) == reads


@pytest.mark.parametrize(("change", "affected"), [
    # A remote node's relabel: the Services reading that label, with an endpoint on that node.
    (NodeChange("b-1", {"location": "b"}, {"location": "a"}, local=False), {"by-location"}),
    (NodeChange("a-2", {"location": "a"}, {"location": "c"}, local=False), set()),
    # A label no policy reads changes nothing.
    (NodeChange("b-1", {"location": "b"}, {"location": "b", "rack": "r1"}, local=False), set()),
    # A remote node that goes (or comes): every Service reading presence with an endpoint on it.
    (NodeChange("b-1", {"location": "b"}, None, local=False), {"by-location", "by-host"}),
    (NodeChange("a-2", None, {"location": "a"}, local=False), {"by-zone"}),
    # The local node moving from a to c: Services with an endpoint in domain a or c, or on it.
    (NodeChange(LOCAL, {"location": "a"}, {"location": "c"}, local=True), {"by-location"}),
    # The local node appearing: every Service reading presence.
    (NodeChange(LOCAL, None, {"location": "a"}, local=True), {"by-location", "by-zone", "by-host"}),
])
def test_topology_names_exactly_the_services_a_node_change_can_affect(change: NodeChange,
                                                                     affected: set[str]) -> None:
    assert TOPOLOGY.affected(change, INDEX) == affected


def test_one_filters_reads_never_widen_anothers_account_of_a_node_change() -> None:
    # Two Services with a topology policy on "location" and a NodePort policy on the pool label;
    # one has its endpoints far from the local node's old and new location domains.
    pool = Reads(local_labels=frozenset({POOL_LABEL}))  # a NodePort policy's (tests/test_filter_nodeport.py)
    index = FakeIndex(
        NODES, {"near": keys("location"), "far": keys("location")},
        {"near": {"a-2"}, "far": {"b-1"}},
        other_reads={"near": {NODEPORT_ISOLATION.name: pool}, "far": {NODEPORT_ISOLATION.name: pool}},
    )
    pipeline = Pipeline([TOPOLOGY, NODEPORT_ISOLATION])
    # The local node moves from a to c: only topology's near-local account, whatever else the
    # Services' other policies read (the NodePort policy reads no "location").
    relabel = NodeChange(LOCAL, {"location": "a"}, {"location": "c"}, local=True)
    assert pipeline.affected_by_node_change(relabel, index) == {"near"}
    # The local node's pool changes: both, by the NodePort filter's account.
    repool = NodeChange(LOCAL, {"location": "a", POOL_LABEL: "p1"}, {"location": "a", POOL_LABEL: "p2"}, local=True)
    assert pipeline.affected_by_node_change(repool, index) == {"near", "far"}


def test_node_change_reports_moved_labels_and_every_label_of_a_node_that_comes_or_goes() -> None:
    assert NodeChange("n", {"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}, local=False).changed_labels == {
        "b", "c"}
    gone = NodeChange("n", {"a": "1", "b": "2"}, None, local=False)
    assert gone.presence and gone.changed_labels == {"a", "b"}


def svc(annotations: dict[str, str] | None) -> JSONDict:
    meta: JSONDict = {"name": "s", "namespace": "default"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta}


def test_a_service_no_filter_parses_gets_no_policies_and_equal_ones_share_one_record() -> None:
    pipeline = Pipeline()
    assert pipeline.policies_of(svc(None)) is NO_POLICIES
    assert pipeline.policies_of(svc({"unrelated": "x"})) is NO_POLICIES
    one = pipeline.policies_of(svc({"topologyKeys": '["location"]'}))
    assert one is pipeline.policies_of(svc({"topologyKeys": '["location"]'}))
    assert one.acts_on == {ENDPOINTSLICES, ENDPOINTS} and one.reads.label_keys == {"location"}
    assert not one.touches(SERVICES)


def test_a_malformed_annotation_is_recorded_and_neither_reads_nor_acts() -> None:
    policies = Pipeline().policies_of(svc({"topologyKeys": "[]"}))
    [(f, problem)] = policies.malformed
    assert f is TOPOLOGY and isinstance(problem, Malformed) and "empty" in problem.reason
    assert not policies.applied and not policies.acts_on and policies.reads == Reads()
    [record] = Pipeline().explain("default/s", policies, svc(None), [], TopologyContext(LOCAL, NODES))
    assert record["malformed"] == problem.reason and record["filter"] == "topology"


def test_the_registered_filters_and_the_ones_a_pipeline_runs_unless_told_otherwise() -> None:
    assert FILTERS == (DISCARD_CLOUD_SERVICES, NODEPORT_ISOLATION, TOPOLOGY)
    assert Pipeline().filters == (NODEPORT_ISOLATION, TOPOLOGY)  # discarding is a policy, off by default
    assert "off by default: discard-cloud-services" in describe()


@pytest.mark.parametrize(("spec", "names"), [
    ("*", ["nodeport-isolation", "topology"]),
    ("*,discard-cloud-services", ["discard-cloud-services", "nodeport-isolation", "topology"]),
    (" * , -nodeport-isolation ", ["topology"]),
    ("topology", ["topology"]),  # without "*" only the named ones run
    ("topology,-nodeport-isolation", ["topology"]),
    ("", []),
    ("-topology", []),
])
def test_an_operator_selects_filters_as_kube_controller_manager_selects_controllers(
        spec: str, names: list[str]) -> None:
    assert [f.name for f in select(spec)] == names


@pytest.mark.parametrize(("spec", "message"), [
    ("*,topologee", "unknown filter 'topologee'"),
    ("-nope", "unknown filter 'nope'"),
    ("topology,-topology", "both added and removed"),
])
def test_a_selection_naming_an_unknown_filter_or_contradicting_itself_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select(spec)


def test_the_pipeline_counts_what_each_filter_made_of_each_object_it_served() -> None:
    pipeline = Pipeline([TOPOLOGY, HideAll()])
    ctx = TopologyContext(LOCAL, NODES)
    slices = [eslice("s-1", LOCAL, "b-1"), eslice("s-2", "a-2")]
    pipeline.serve_slices(pipeline.policies_of(svc({"topologyKeys": '["location"]'})), slices, ctx)
    assert pipeline.decisions == {("topology", "endpointslices", "rewritten"): 1,
                                  ("topology", "endpointslices", "unchanged"): 1}
    pipeline.serve_slices(pipeline.policies_of(svc({"topologyKeys": '["location"]', "test/hide": ""})), slices, ctx)
    assert pipeline.decisions[("topology", "endpointslices", "rewritten")] == 2
    assert pipeline.decisions[("hide-all", "endpointslices", "hidden")] == 2
    endpoints: Endpoints = {"metadata": {"name": "s", "namespace": "default"}, "subsets": []}
    pipeline.serve_endpoints(pipeline.policies_of(svc({"topologyKeys": '["location"]'})), endpoints, ctx)
    assert pipeline.decisions[("topology", "endpoints", "unchanged")] == 1


class HideAll(Filter[bool]):
    """A filter that hides every slice of a Service annotated ``test/hide``."""

    name = "hide-all"
    acts_on = frozenset({ENDPOINTSLICES})

    def parse(self, service: JSONDict) -> bool | None:
        return True if "test/hide" in ((service.get("metadata") or {}).get("annotations") or {}) else None

    def serve_slices(self, policy: bool, slices: Sequence[EndpointSlice], ctx: TopologyContext) -> ServedSlices:
        return ServedSlices([None] * len(slices), 0, sum(len(s.get("endpoints") or ()) for s in slices))


def eslice(name: str, *nodes: str) -> EndpointSlice:
    return {"metadata": {"name": name, "namespace": "default"}, "addressType": "IPv4",
            "endpoints": [{"addresses": [f"10.0.0.{i}"], "nodeName": n} for i, n in enumerate(nodes)]}


def test_filters_apply_in_order_and_counts_add_up_what_each_dropped() -> None:
    pipeline = Pipeline([TOPOLOGY, HideAll()])
    ctx = TopologyContext(LOCAL, NODES)
    slices = [eslice("s-1", LOCAL, "b-1"), eslice("s-2", "a-2")]
    only_topology = pipeline.serve_slices(pipeline.policies_of(svc({"topologyKeys": '["location"]'})), slices, ctx)
    assert [len(s.get("endpoints") or ()) for s in only_topology.slices if s is not None] == [1, 1]
    assert (only_topology.kept, only_topology.dropped) == (2, 1)
    both = pipeline.serve_slices(
        pipeline.policies_of(svc({"topologyKeys": '["location"]', "test/hide": ""})), slices, ctx)
    assert list(both.slices) == [None, None] and (both.kept, both.dropped) == (0, 3)


def test_a_filter_that_acts_on_nothing_serves_everything_as_it_is() -> None:
    class Inert(Filter[Any]):
        name = "inert"

        def parse(self, service: JSONDict) -> Any:
            return "policy"

    pipeline = Pipeline([Inert()])
    policies = pipeline.policies_of(svc(None))
    ctx = TopologyContext(LOCAL, NODES)
    service, slices = svc(None), [eslice("s-1", LOCAL)]
    assert pipeline.serve_service(policies, service, ctx) is service
    assert list(pipeline.serve_slices(policies, slices, ctx).slices) == slices
