"""Topology keys parsing and endpoint filtering (the pure ``filters`` package)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.keys import (
    OPENYURT_ANNOTATION,
    SUPEREDGE_ANNOTATION,
    MalformedKeys,
    TopologyKeys,
    parse_topology_keys,
)
from filters.topology import (
    EndpointsDecision,
    SliceDecision,
    TopologyContext,
    filter_endpoint_slices,
    filter_endpoints,
)
from kubeapi.types import Endpoint, Endpoints, EndpointSlice

HOST = "kubernetes.io/hostname"
POOL = "apps.openyurt.io/nodepool"

# --- helpers ------------------------------------------------------------------------------


def ep(
    ip: str,
    node: str | None,
    ready: bool | None = None,
    serving: bool | None = None,
    terminating: bool | None = None,
) -> Endpoint:
    e: Endpoint = {"addresses": [ip], "conditions": {}}
    if node is not None:
        e["nodeName"] = node
    if ready is not None:
        e["conditions"]["ready"] = ready
    if serving is not None:
        e["conditions"]["serving"] = serving
    if terminating is not None:
        e["conditions"]["terminating"] = terminating
    return e


def eslice(name: str, endpoints: list[Endpoint] | None, family: str = "IPv4") -> EndpointSlice:
    return {
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def keys(*names: str) -> TopologyKeys:
    parsed = parse_topology_keys({SUPEREDGE_ANNOTATION: json.dumps(list(names))})
    assert isinstance(parsed, TopologyKeys), parsed
    return parsed


def kept_ips(decision: SliceDecision) -> list[str]:
    return [e["addresses"][0] for s in decision.slices for e in (s.get("endpoints") or [])]


def winners(decision: SliceDecision | EndpointsDecision) -> dict[str, str | None]:
    return {f.family: f.winner for f in decision.families}


# The SuperEdge ServiceGroup example (seed 001): two NodeUnits keyed by label "location".
SEED_NODES: dict[str, dict[str, str]] = {
    "bj-1": {"location": "beijing", "region": "north", HOST: "bj-1"},
    "bj-3": {"location": "beijing", "region": "north", HOST: "bj-3"},
    "gz-2": {"location": "guangzhou", "region": "south", HOST: "gz-2"},
    "gz-3": {"location": "guangzhou", "region": "south", HOST: "gz-3"},
}
SEED_ENDPOINTS = [
    ("10.0.1.72", "bj-3"),
    ("10.0.0.70", "bj-1"),
    ("10.0.0.139", "gz-2"),
    ("10.0.1.8", "gz-3"),
]


def seed_slice() -> EndpointSlice:
    return eslice("servicegrid-demo-svc-abcde", [ep(ip, node) for ip, node in SEED_ENDPOINTS])


def ctx(local: str, nodes: dict[str, dict[str, str]] | None = None) -> TopologyContext:
    return TopologyContext(local_node=local, nodes=SEED_NODES if nodes is None else nodes)


# --- parse_topology_keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, None),
        ({}, None),
        ({"unrelated": "x"}, None),
        ({SUPEREDGE_ANNOTATION: '["location"]'}, TopologyKeys(("location",), False, SUPEREDGE_ANNOTATION)),
        (
            {SUPEREDGE_ANNOTATION: '[ "kubernetes.io/hostname", "topology.kubernetes.io/zone", "*" ]'},
            TopologyKeys((HOST, "topology.kubernetes.io/zone"), True, SUPEREDGE_ANNOTATION),
        ),
        ({SUPEREDGE_ANNOTATION: '["*"]'}, TopologyKeys((), True, SUPEREDGE_ANNOTATION)),
        ({SUPEREDGE_ANNOTATION: json.dumps([f"k{i}" for i in range(16)])}, TopologyKeys(
            tuple(f"k{i}" for i in range(16)), False, SUPEREDGE_ANNOTATION)),
        ({OPENYURT_ANNOTATION: "kubernetes.io/hostname"}, TopologyKeys((HOST,), False, OPENYURT_ANNOTATION)),
        ({OPENYURT_ANNOTATION: "openyurt.io/nodepool"}, TopologyKeys((POOL,), False, OPENYURT_ANNOTATION)),
        ({OPENYURT_ANNOTATION: "kubernetes.io/zone"}, TopologyKeys((POOL,), False, OPENYURT_ANNOTATION)),
        ({OPENYURT_ANNOTATION: "  openyurt.io/nodepool\n"}, TopologyKeys((POOL,), False, OPENYURT_ANNOTATION)),
    ],
    ids=[
        "no-annotations",
        "empty-annotations",
        "unrelated-annotation",
        "superedge-single-key",
        "superedge-ordered-with-wildcard",
        "superedge-wildcard-only",
        "superedge-sixteen-keys-allowed",
        "openyurt-hostname",
        "openyurt-nodepool",
        "openyurt-zone-means-nodepool",
        "openyurt-value-trimmed",
    ],
)
def test_valid_annotations_parse_to_ordered_keys(
    annotations: dict[str, str] | None, expected: TopologyKeys | None
) -> None:
    assert parse_topology_keys(annotations) == expected


@pytest.mark.parametrize(
    ("annotations", "reason_part"),
    [
        ({SUPEREDGE_ANNOTATION: "location"}, "not valid JSON"),
        ({SUPEREDGE_ANNOTATION: ""}, "not valid JSON"),
        ({SUPEREDGE_ANNOTATION: '{"location": 1}'}, "must be a JSON list"),
        ({SUPEREDGE_ANNOTATION: '"location"'}, "must be a JSON list"),
        ({SUPEREDGE_ANNOTATION: "[]"}, "empty"),
        ({SUPEREDGE_ANNOTATION: '["location", 3]'}, "not a string"),
        ({SUPEREDGE_ANNOTATION: '[null]'}, "not a string"),
        ({SUPEREDGE_ANNOTATION: '["location", ""]'}, "is empty"),
        ({SUPEREDGE_ANNOTATION: '["*", "location"]'}, '"*" must be the last key'),
        ({SUPEREDGE_ANNOTATION: '["location", "location"]'}, "duplicate"),
        ({SUPEREDGE_ANNOTATION: '["location", "*", "*"]'}, '"*" must be the last key'),
        ({SUPEREDGE_ANNOTATION: json.dumps([f"k{i}" for i in range(17)])}, "at most 16"),
        ({SUPEREDGE_ANNOTATION: '["-location"]'}, "not a valid label key"),
        ({SUPEREDGE_ANNOTATION: '["location-"]'}, "not a valid label key"),
        ({SUPEREDGE_ANNOTATION: '["loc ation"]'}, "not a valid label key"),
        ({SUPEREDGE_ANNOTATION: json.dumps(["a" * 64])}, "longer than 63"),
        ({SUPEREDGE_ANNOTATION: '["Example.com/zone"]'}, "prefix is not a lowercase DNS subdomain"),
        ({SUPEREDGE_ANNOTATION: '["/zone"]'}, "empty prefix"),
        ({SUPEREDGE_ANNOTATION: '["example.com/"]'}, "empty name"),
        ({SUPEREDGE_ANNOTATION: '["a/b/c"]'}, "at most one '/'"),
        ({SUPEREDGE_ANNOTATION: json.dumps(["a" * 254 + "/zone"])}, "prefix is longer than 253"),
        ({OPENYURT_ANNOTATION: "topology.kubernetes.io/zone"}, "unsupported value"),
        ({OPENYURT_ANNOTATION: ""}, "unsupported value"),
        ({OPENYURT_ANNOTATION: '["kubernetes.io/hostname"]'}, "unsupported value"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_annotations_are_reported_not_raised(annotations: dict[str, str], reason_part: str) -> None:
    result = parse_topology_keys(annotations)
    assert isinstance(result, MalformedKeys)
    [(source, value)] = annotations.items()
    assert result.source == source
    assert result.value == value
    assert reason_part in result.reason
    assert result.reason.startswith(f"{source}: ")


@pytest.mark.parametrize("source", [SUPEREDGE_ANNOTATION, OPENYURT_ANNOTATION])
def test_non_string_annotation_value_is_malformed_not_a_crash(source: str) -> None:
    result = parse_topology_keys(cast(dict[str, str], {source: ["location"]}))
    assert isinstance(result, MalformedKeys)
    assert "must be a string" in result.reason


def test_star_not_last_reason_is_human_readable() -> None:
    result = parse_topology_keys({SUPEREDGE_ANNOTATION: '["*", "location"]'})
    assert result == MalformedKeys(SUPEREDGE_ANNOTATION, '["*", "location"]', 'topologyKeys: "*" must be the last key')


def test_valid_label_keys_with_prefix_dots_and_underscores_are_accepted() -> None:
    parsed = keys("example.com/my_zone.v1", "a", "A-b_c.D", "x" * 63)
    assert parsed.keys == ("example.com/my_zone.v1", "a", "A-b_c.D", "x" * 63)


def test_superedge_annotation_takes_precedence_over_openyurt() -> None:
    both = {SUPEREDGE_ANNOTATION: '["location"]', OPENYURT_ANNOTATION: "kubernetes.io/hostname"}
    assert parse_topology_keys(both) == TopologyKeys(("location",), False, SUPEREDGE_ANNOTATION)


def test_malformed_superedge_annotation_still_wins_over_a_valid_openyurt_one() -> None:
    both = {SUPEREDGE_ANNOTATION: "[]", OPENYURT_ANNOTATION: "kubernetes.io/hostname"}
    result = parse_topology_keys(both)
    assert isinstance(result, MalformedKeys)
    assert result.source == SUPEREDGE_ANNOTATION


def test_topology_keys_are_hashable_value_objects_with_label_and_hostname_views() -> None:
    a = keys(HOST, "location", "*")
    b = TopologyKeys(keys=a.keys, wildcard=a.wildcard, source=a.source)
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != keys(HOST, "location")
    assert a.label_keys == frozenset({"location"})
    assert a.uses_hostname
    assert not keys("location").uses_hostname
    assert keys("*").label_keys == frozenset()
    assert len({a, b}) == 1


def test_services_that_carry_the_same_short_annotation_share_one_parsed_policy() -> None:
    # Thousands of Services carry the same value: it is parsed once (and the Services' policies
    # are one object). A long value is parsed each time, so hostile ones cannot grow the memo.
    value = json.dumps([HOST, "location", "*"])
    assert parse_topology_keys({SUPEREDGE_ANNOTATION: value}) is parse_topology_keys({SUPEREDGE_ANNOTATION: value})
    bad = json.dumps(["x" * 20])[:-1]  # not JSON: a malformed value is remembered too
    first = parse_topology_keys({SUPEREDGE_ANNOTATION: bad})
    assert isinstance(first, MalformedKeys) and parse_topology_keys({SUPEREDGE_ANNOTATION: bad}) is first
    long_value = json.dumps(["location", *(f"k{i}" for i in range(300))])
    once, again = (parse_topology_keys({SUPEREDGE_ANNOTATION: long_value}) for _ in range(2))
    assert isinstance(once, MalformedKeys) and once == again and once is not again


# --- filtering: table of scenarios -------------------------------------------------------

OY_NODES: dict[str, dict[str, str]] = {
    "kind-control-plane": {POOL: "beijing"},
    "kind-worker": {POOL: "hangzhou"},
    "kind-worker2": {POOL: "shanghai"},
}
OY_ENDPOINTS = [
    ("10.244.2.3", "kind-worker"),
    ("10.244.2.2", "kind-worker"),
    ("10.244.1.3", "kind-worker2"),
    ("10.244.1.2", "kind-worker2"),
]


def oy_keys(value: str) -> TopologyKeys:
    parsed = parse_topology_keys({OPENYURT_ANNOTATION: value})
    assert isinstance(parsed, TopologyKeys)
    return parsed


def oy_slice() -> EndpointSlice:
    return eslice("svc-ud1-xyz", [ep(ip, node) for ip, node in OY_ENDPOINTS])


Nodes = dict[str, dict[str, str]]
Scenario = tuple[str, str, TopologyKeys, list[EndpointSlice], Nodes | None, list[str], str | None]
SCENARIOS: list[Scenario] = [
    # (id, local node, keys, slices, nodes or None for SEED_NODES, expected kept IPs, IPv4 winner)
    ("seed-beijing-sees-only-beijing", "bj-1", keys("location"), [seed_slice()], None,
     ["10.0.1.72", "10.0.0.70"], "location"),
    ("seed-guangzhou-sees-only-guangzhou", "gz-3", keys("location"), [seed_slice()], None,
     ["10.0.0.139", "10.0.1.8"], "location"),
    ("openyurt-hangzhou-pool", "kind-worker", oy_keys("openyurt.io/nodepool"), [oy_slice()], OY_NODES,
     ["10.244.2.3", "10.244.2.2"], POOL),
    ("openyurt-shanghai-pool-via-zone-value", "kind-worker2", oy_keys("kubernetes.io/zone"), [oy_slice()], OY_NODES,
     ["10.244.1.3", "10.244.1.2"], POOL),
    ("openyurt-pool-without-endpoints-gets-none", "kind-control-plane", oy_keys("openyurt.io/nodepool"),
     [oy_slice()], OY_NODES, [], None),
    ("openyurt-hostname", "kind-worker2", oy_keys("kubernetes.io/hostname"), [oy_slice()], OY_NODES,
     ["10.244.1.3", "10.244.1.2"], HOST),
    ("hostname-key-keeps-local-node-only", "bj-1", keys(HOST), [seed_slice()], None, ["10.0.0.70"], HOST),
    ("hostname-falls-back-to-location", "bj-1", keys(HOST, "location"),
     [eslice("s", [ep("10.0.1.72", "bj-3"), ep("10.0.1.8", "gz-3")])], None, ["10.0.1.72"], "location"),
    ("falls-back-through-two-keys-to-region", "bj-1", keys(HOST, "location", "region", "*"),
     [eslice("s", [ep("10.0.9.1", "bj-9"), ep("10.0.1.8", "gz-3")])],
     {**SEED_NODES, "bj-9": {"location": "beijing-2", "region": "north"}}, ["10.0.9.1"], "region"),
    ("falls-back-to-star", "bj-1", keys(HOST, "location", "*"), [eslice("s", [ep("10.0.1.8", "gz-3")])], None,
     ["10.0.1.8"], "*"),
    ("no-match-without-star-gets-nothing", "bj-1", keys(HOST, "location"),
     [eslice("s", [ep("10.0.1.8", "gz-3"), ep("10.0.0.139", "gz-2")])], None, [], None),
    ("star-first-keeps-everything", "bj-1", keys("*"), [seed_slice()], None, [ip for ip, _ in SEED_ENDPOINTS], "*"),
    ("local-node-without-label-skips-key", "bj-1", keys("rack", "location"), [seed_slice()],
     {**SEED_NODES, "gz-2": {**SEED_NODES["gz-2"], "rack": "r1"}}, ["10.0.1.72", "10.0.0.70"], "location"),
    ("local-node-without-any-label-matches-nothing", "bj-1", keys("rack"), [seed_slice()], None, [], None),
    ("endpoint-node-without-label-is-dropped", "bj-1", keys("location"),
     [eslice("s", [ep("10.0.0.70", "bj-1"), ep("10.0.5.5", "bare")])], {**SEED_NODES, "bare": {}},
     ["10.0.0.70"], "location"),
    ("unknown-node-matches-no-key", "bj-1", keys("location"),
     [eslice("s", [ep("10.0.0.70", "bj-1"), ep("10.0.9.9", "gz-9")])], None, ["10.0.0.70"], "location"),
    ("unknown-node-only-gets-nothing", "bj-1", keys(HOST), [eslice("s", [ep("10.0.9.9", "gz-9")])], None, [], None),
    ("unknown-node-kept-by-star", "bj-1", keys(HOST, "*"), [eslice("s", [ep("10.0.9.9", "gz-9")])], None,
     ["10.0.9.9"], "*"),
    ("no-nodename-matches-no-key", "bj-1", keys("location"),
     [eslice("s", [ep("10.0.0.70", "bj-1"), ep("10.0.7.7", None)])], None, ["10.0.0.70"], "location"),
    ("no-nodename-kept-by-star", "bj-1", keys("location", "*"), [eslice("s", [ep("10.0.7.7", None)])], None,
     ["10.0.7.7"], "*"),
    ("local-node-missing-from-cache-matches-nothing", "edge-x", keys(HOST, "location"),
     [eslice("s", [ep("10.0.0.70", "edge-x"), ep("10.0.1.8", "gz-3")])], None, [], None),
    ("not-ready-local-endpoint-does-not-win-the-key", "bj-1", keys("location"),
     [eslice("s", [ep("10.0.0.70", "bj-1", ready=False), ep("10.0.1.8", "gz-3", ready=True)])], None, [], None),
    ("not-ready-local-endpoint-loses-to-star", "bj-1", keys("location", "*"),
     [eslice("s", [ep("10.0.0.70", "bj-1", ready=False), ep("10.0.1.8", "gz-3")])], None,
     ["10.0.0.70", "10.0.1.8"], "*"),
    ("winning-key-keeps-not-ready-endpoints-too", "bj-1", keys(HOST, "location"),
     [eslice("s", [ep("10.0.0.70", "bj-1", ready=False), ep("10.0.1.72", "bj-3", ready=True),
                   ep("10.0.1.8", "gz-3", ready=True)])], None, ["10.0.0.70", "10.0.1.72"], "location"),
    ("nothing-ready-falls-back-to-serving-terminating", "bj-1", keys(HOST, "location"),
     [eslice("s", [ep("10.0.0.70", "bj-1", ready=False, serving=False, terminating=True),
                   ep("10.0.1.72", "bj-3", ready=False, serving=True, terminating=True),
                   ep("10.0.1.8", "gz-3", ready=False)])], None, ["10.0.0.70", "10.0.1.72"], "location"),
    ("nothing-ready-or-terminating-uses-all", "bj-1", keys(HOST, "location"),
     [eslice("s", [ep("10.0.0.70", "bj-1", ready=False, serving=False),
                   ep("10.0.1.8", "gz-3", ready=False)])], None, ["10.0.0.70"], HOST),
    ("multi-slice-key-decided-across-slices", "bj-1", keys(HOST, "location"),
     [eslice("a", [ep("10.0.0.70", "bj-1"), ep("10.0.1.8", "gz-3")]), eslice("b", [ep("10.0.1.72", "bj-3")])],
     None, ["10.0.0.70"], HOST),
    ("null-and-missing-endpoints-do-not-crash", "bj-1", keys("location"),
     [eslice("null", None), {"metadata": {"name": "missing"}, "addressType": "IPv4"}, seed_slice()], None,
     ["10.0.1.72", "10.0.0.70"], "location"),
]


@pytest.mark.parametrize(
    ("local", "topo", "slices", "nodes", "expected", "winner"),
    [s[1:] for s in SCENARIOS],
    ids=[s[0] for s in SCENARIOS],
)
def test_slice_filtering_keeps_exactly_the_local_domain(
    local: str,
    topo: TopologyKeys,
    slices: list[EndpointSlice],
    nodes: dict[str, dict[str, str]] | None,
    expected: list[str],
    winner: str | None,
) -> None:
    before = copy.deepcopy(slices)
    decision = filter_endpoint_slices(ctx(local, nodes), topo, slices)
    assert kept_ips(decision) == expected
    assert winners(decision).get("IPv4") == winner
    assert slices == before, "input mutated"
    assert len(decision.slices) == len(slices)
    assert sum(d.kept for d in decision.endpoints_detail) == len(expected)


# --- tiers, families, slices ---------------------------------------------------------------


def test_candidate_tier_is_recorded_for_each_fallback() -> None:
    k = keys("location")
    ready = filter_endpoint_slices(ctx("bj-1"), k, [seed_slice()])
    terminating = filter_endpoint_slices(
        ctx("bj-1"), k, [eslice("s", [ep("10.0.0.70", "bj-1", ready=False, terminating=True)])]
    )
    none = filter_endpoint_slices(ctx("bj-1"), k, [eslice("s", [ep("10.0.0.70", "bj-1", ready=False)])])
    assert [d.families[0].tier for d in (ready, terminating, none)] == ["ready", "serving-terminating", "all"]
    assert [d.families[0].candidates for d in (ready, terminating, none)] == [4, 1, 1]


def test_dual_stack_families_are_decided_separately() -> None:
    v4 = eslice("v4", [ep("10.0.0.70", "bj-1"), ep("10.0.1.8", "gz-3")], "IPv4")
    v6 = eslice("v6", [ep("fd00::8", "gz-3"), ep("fd00::9", "gz-2")], "IPv6")
    with_star = filter_endpoint_slices(ctx("bj-1"), keys("location", "*"), [v4, v6])
    assert winners(with_star) == {"IPv4": "location", "IPv6": "*"}
    assert kept_ips(with_star) == ["10.0.0.70", "fd00::8", "fd00::9"]
    assert with_star.slices[1] is v6
    strict = filter_endpoint_slices(ctx("bj-1"), keys("location"), [v4, v6])
    assert winners(strict) == {"IPv4": "location", "IPv6": None}
    assert strict.slices[1]["endpoints"] == []


def test_readiness_in_one_family_does_not_affect_the_other() -> None:
    # IPv4 has only a not-ready local endpoint, IPv6 a ready one: IPv6's readiness must not
    # lend IPv4 a "ready" candidate tier.
    v4 = eslice("v4", [ep("10.0.0.70", "bj-1", ready=False), ep("10.0.1.8", "gz-3", ready=False)], "IPv4")
    v6 = eslice("v6", [ep("fd00::1", "gz-3")], "IPv6")
    decision = filter_endpoint_slices(ctx("bj-1"), keys(HOST), [v4, v6])
    tiers = {f.family: f.tier for f in decision.families}
    assert tiers == {"IPv4": "all", "IPv6": "ready"}
    assert kept_ips(decision) == ["10.0.0.70"]


def test_slice_emptied_by_filtering_is_kept_with_empty_endpoints() -> None:
    gz = eslice("gz", [ep("10.0.1.8", "gz-3")])
    bj = eslice("bj", [ep("10.0.0.70", "bj-1")])
    decision = filter_endpoint_slices(ctx("bj-1"), keys("location"), [gz, bj])
    assert len(decision.slices) == 2
    emptied = decision.slices[0]
    assert emptied["endpoints"] == []
    assert emptied["metadata"] is gz["metadata"] and emptied["ports"] is gz["ports"]
    assert emptied is not gz and gz["endpoints"] == [ep("10.0.1.8", "gz-3")]


def test_unchanged_slices_are_returned_by_identity_and_changed_ones_are_copies() -> None:
    bj = eslice("bj", [ep("10.0.0.70", "bj-1"), ep("10.0.1.72", "bj-3")])
    mixed = eslice("mixed", [ep("10.0.0.71", "bj-1"), ep("10.0.1.8", "gz-3")])
    null = eslice("null", None)
    decision = filter_endpoint_slices(ctx("bj-1"), keys("location"), [bj, mixed, null])
    assert decision.slices[0] is bj
    assert decision.slices[2] is null
    changed = decision.slices[1]
    assert changed is not mixed
    assert changed["endpoints"] == [ep("10.0.0.71", "bj-1")]
    assert changed["endpoints"][0] is mixed["endpoints"][0]  # type: ignore[index]
    assert {k: v for k, v in changed.items() if k != "endpoints"} == {
        k: v for k, v in mixed.items() if k != "endpoints"
    }


def test_empty_service_is_fine_and_yields_no_decisions() -> None:
    decision = filter_endpoint_slices(ctx("bj-1"), keys("location", "*"), [])
    assert decision.slices == [] and decision.families == () and decision.endpoints_detail == ()


def test_endpoint_records_explain_every_verdict() -> None:
    nodes = {**SEED_NODES, "bare": {}}
    s = eslice(
        "mixed",
        [
            ep("10.0.0.70", "bj-1"),
            ep("10.0.1.8", "gz-3"),
            ep("10.0.9.9", "gz-9"),
            ep("10.0.7.7", None),
            ep("10.0.5.5", "bare"),
        ],
    )
    decision = filter_endpoint_slices(ctx("bj-1", nodes), keys("rack", "location"), [s])
    reasons = [(d.addresses, d.node_name, d.kept, d.reason) for d in decision.endpoints_detail]
    assert reasons == [
        (("10.0.0.70",), "bj-1", True, "matched key location=beijing"),
        (("10.0.1.8",), "gz-3", False, "different location: guangzhou != beijing"),
        (("10.0.9.9",), "gz-9", False, "node gz-9 not in cache"),
        (("10.0.7.7",), None, False, "no nodeName"),
        (("10.0.5.5",), "bare", False, "node bare has no label location"),
    ]
    assert all(d.origin == "mixed" and d.family == "IPv4" for d in decision.endpoints_detail)
    [family] = decision.families
    assert (family.winner, family.total, family.kept) == ("location", 5, 1)
    assert family.notes == ("rack: local node bj-1 has no such label",)


def test_records_say_no_key_matched_or_star() -> None:
    s = eslice("s", [ep("10.0.1.8", "gz-3")])
    strict = filter_endpoint_slices(ctx("bj-1"), keys("location"), [s])
    assert strict.endpoints_detail[0].reason == 'no key matched and no "*"'
    assert strict.families[0].notes == ("location=beijing: no ready endpoint in this domain",)
    star = filter_endpoint_slices(ctx("bj-1"), keys("location", "*"), [s])
    assert star.endpoints_detail[0].kept and star.endpoints_detail[0].reason == 'kept by "*"'


def test_local_node_missing_from_cache_is_noted_for_every_key() -> None:
    s = eslice("s", [ep("10.0.0.70", "edge-x")])
    decision = filter_endpoint_slices(ctx("edge-x"), keys(HOST, "location"), [s])
    assert decision.families[0].notes == (
        "kubernetes.io/hostname: local node edge-x not in cache",
        "location: local node edge-x not in cache",
    )
    assert decision.endpoints_detail[0].reason == "node edge-x not in cache"


# --- core/v1 Endpoints ---------------------------------------------------------------------


def core_endpoints() -> Endpoints:
    return {
        "metadata": {"name": "svc", "namespace": "default"},
        "subsets": [
            {
                "addresses": [
                    {"ip": "10.0.0.70", "nodeName": "bj-1"},
                    {"ip": "10.0.1.8", "nodeName": "gz-3"},
                    {"ip": "fd00::8", "nodeName": "gz-3"},
                ],
                "notReadyAddresses": [{"ip": "10.0.1.72", "nodeName": "bj-3"}],
                "ports": [{"port": 8080}],
            },
            {
                "addresses": [{"ip": "10.0.0.139", "nodeName": "gz-2"}],
                "ports": [{"port": 9090}],
            },
        ],
    }


def test_core_endpoints_are_filtered_per_ip_family_and_emptied_subsets_dropped() -> None:
    original = core_endpoints()
    before = copy.deepcopy(original)
    decision = filter_endpoints(ctx("bj-1"), keys("location", "*"), original)
    assert original == before
    assert winners(decision) == {"IPv4": "location", "IPv6": "*"}
    assert decision.endpoints["subsets"] == [
        {
            "addresses": [{"ip": "10.0.0.70", "nodeName": "bj-1"}, {"ip": "fd00::8", "nodeName": "gz-3"}],
            "notReadyAddresses": [{"ip": "10.0.1.72", "nodeName": "bj-3"}],
            "ports": [{"port": 8080}],
        }
    ]
    assert decision.endpoints["metadata"] is original["metadata"]
    origins = [(d.origin, d.kept) for d in decision.endpoints_detail]
    assert origins == [
        ("subsets[0].addresses", True),
        ("subsets[0].addresses", False),
        ("subsets[0].addresses", True),
        ("subsets[0].notReadyAddresses", True),
        ("subsets[1].addresses", False),
    ]


def test_core_endpoints_unchanged_are_returned_by_identity_with_untouched_subsets() -> None:
    original = core_endpoints()
    assert filter_endpoints(ctx("bj-1"), keys("*"), original).endpoints is original
    # Only the second subset changes: the first is passed through as the same object.
    gz_local = filter_endpoints(ctx("gz-2"), keys(HOST, "*"), original)
    assert winners(gz_local) == {"IPv4": HOST, "IPv6": "*"}
    assert gz_local.endpoints["subsets"][1] is original["subsets"][1]
    assert gz_local.endpoints["subsets"][0]["addresses"] == [{"ip": "fd00::8", "nodeName": "gz-3"}]
    assert gz_local.endpoints["subsets"][0]["notReadyAddresses"] == []


def test_core_not_ready_addresses_are_only_candidates_when_nothing_is_ready() -> None:
    eps: Endpoints = {
        "subsets": [
            {
                "addresses": [{"ip": "10.0.1.8", "nodeName": "gz-3"}],
                "notReadyAddresses": [{"ip": "10.0.0.70", "nodeName": "bj-1"}],
            }
        ]
    }
    assert filter_endpoints(ctx("bj-1"), keys(HOST), eps).endpoints["subsets"] == []
    only_not_ready: Endpoints = {"subsets": [{"notReadyAddresses": [{"ip": "10.0.0.70", "nodeName": "bj-1"}]}]}
    decision = filter_endpoints(ctx("bj-1"), keys(HOST), only_not_ready)
    assert decision.endpoints is only_not_ready
    assert decision.families[0].tier == "all"


def test_core_endpoints_without_subsets_or_with_bad_ips_do_not_crash() -> None:
    empty: Endpoints = {"metadata": {"name": "svc"}}
    assert filter_endpoints(ctx("bj-1"), keys("location"), empty).endpoints is empty
    odd: Endpoints = {"subsets": [{"addresses": [{"ip": "not-an-ip", "nodeName": "gz-3"}, {"nodeName": "bj-1"}]}]}
    decision = filter_endpoints(ctx("bj-1"), keys("location"), odd)
    assert winners(decision) == {"unknown": "location"}
    assert decision.endpoints["subsets"][0]["addresses"] == [{"nodeName": "bj-1"}]


# --- property ------------------------------------------------------------------------------

NODE_NAMES = ["bj-1", "bj-3", "gz-2", "gz-3", "gone", None]
LABEL_KEYS = ["location", "region", HOST, "rack"]


@st.composite
def endpoint_strategy(draw: st.DrawFn) -> Endpoint:
    e: Endpoint = {"addresses": [draw(st.ip_addresses(v=4)).exploded]}
    node = draw(st.sampled_from(NODE_NAMES))
    if node is not None:
        e["nodeName"] = node
    if draw(st.booleans()):
        e["conditions"] = {
            "ready": draw(st.sampled_from([None, True, False])),
            "serving": draw(st.sampled_from([None, True, False])),
            "terminating": draw(st.sampled_from([None, True, False])),
        }
    return e


slice_strategy = st.builds(
    lambda name, eps, family: eslice(name, eps, family),
    st.sampled_from(["a", "b", "c"]),
    st.one_of(st.none(), st.lists(endpoint_strategy(), max_size=6)),
    st.sampled_from(["IPv4", "IPv6"]),
)
keys_strategy = st.builds(
    lambda ks, star: TopologyKeys(tuple(ks), star, SUPEREDGE_ANNOTATION),
    st.lists(st.sampled_from(LABEL_KEYS), unique=True, max_size=3),
    st.booleans(),
)


def random_filter_inputs(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Hypothesis over (slices, topo, local): random slices, keys and local node."""
    def wrap(test: Callable[..., None]) -> Callable[..., None]:
        return settings(max_examples=examples, deadline=None)(given(
            slices=st.lists(slice_strategy, max_size=4),
            topo=keys_strategy,
            local=st.sampled_from(["bj-1", "gz-3", "gone"]),
        )(test))
    return wrap


@random_filter_inputs(examples=300)
def test_output_is_an_ordered_subset_of_input_and_input_is_untouched(
    slices: list[EndpointSlice], topo: TopologyKeys, local: str
) -> None:
    before = copy.deepcopy(slices)
    decision = filter_endpoint_slices(ctx(local), topo, slices)
    assert slices == before
    assert len(decision.slices) == len(slices)
    for inp, out in zip(slices, decision.slices, strict=True):
        in_eps = inp.get("endpoints") or []
        out_eps = out.get("endpoints") or []
        # Ordered subset by identity: each output endpoint is a later input endpoint object.
        it = iter(in_eps)
        assert all(any(o is i for i in it) for o in out_eps)
        if len(out_eps) == len(in_eps):
            assert out is inp
    assert len(decision.endpoints_detail) == sum(len(s.get("endpoints") or []) for s in slices)
    if not topo.keys and topo.wildcard:
        assert all(out is inp for inp, out in zip(slices, decision.slices, strict=True))


@random_filter_inputs(examples=300)
def test_fast_path_without_detail_decides_exactly_like_the_detailed_one(
    slices: list[EndpointSlice], topo: TopologyKeys, local: str
) -> None:
    detailed = filter_endpoint_slices(ctx(local), topo, slices)
    fast = filter_endpoint_slices(ctx(local), topo, slices, detail=False)
    assert fast.endpoints_detail == () and fast.families == ()
    assert fast.slices == detailed.slices
    assert all(a is b or a == b for a, b in zip(fast.slices, detailed.slices, strict=True))
    kept = sum(d.kept for d in detailed.endpoints_detail)
    assert (fast.kept, fast.dropped) == (detailed.kept, detailed.dropped) == (
        kept, len(detailed.endpoints_detail) - kept
    )


@random_filter_inputs(examples=200)
def test_core_endpoints_fast_path_matches_the_detailed_one(
    slices: list[EndpointSlice], topo: TopologyKeys, local: str
) -> None:
    # Reuse the slice strategy's endpoints as core Endpoints addresses, ready or not.
    subsets: list[dict[str, object]] = []
    for s in slices:
        ready = [{"ip": e["addresses"][0], **({"nodeName": e["nodeName"]} if "nodeName" in e else {})}
                 for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready") is not False]
        not_ready = [{"ip": e["addresses"][0], **({"nodeName": e["nodeName"]} if "nodeName" in e else {})}
                     for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready") is False]
        subsets.append({"addresses": ready, "notReadyAddresses": not_ready, "ports": [{"port": 80}]})
    eps = cast(Endpoints, {"metadata": {"name": "svc", "namespace": "default"}, "subsets": subsets})
    detailed = filter_endpoints(ctx(local), topo, eps)
    fast = filter_endpoints(ctx(local), topo, eps, detail=False)
    assert fast.endpoints == detailed.endpoints and fast.families == () and fast.endpoints_detail == ()
    assert (fast.endpoints is eps) == (detailed.endpoints is eps)
    kept = sum(d.kept for d in detailed.endpoints_detail)
    assert (fast.kept, fast.dropped) == (detailed.kept, detailed.dropped) == (
        kept, len(detailed.endpoints_detail) - kept
    )
