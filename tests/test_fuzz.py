"""Property tests: query parsing, annotation parsing and slice filtering never misbehave on random input.

Example counts are small by default; set AGW_FUZZ_EXAMPLES (e.g. 5000) for a longer run.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.keys import MAX_KEYS, MalformedKeys, TopologyKeys, parse_topology_keys
from filters.topology import TopologyContext, filter_endpoint_slices
from kubeapi.listoptions import parse_list_options
from kubeapi.resources import ALL
from kubeapi.status import StatusError

EXAMPLES = int(os.environ.get("AGW_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

QUERY_KEYS = ["watch", "resourceVersion", "resourceVersionMatch", "sendInitialEvents", "allowWatchBookmarks",
              "timeoutSeconds", "limit", "continue", "labelSelector", "fieldSelector"]
INTERESTING = ["", "0", "1", "-1", "true", "false", "True", "t", "NotOlderThan", "Exact", "99999999999999999999999",
               "metadata.name=x", "metadata.namespace!=y", "spec.foo=bar", "a in (b,c)", "a notin (b)", "!a", "a,b=c",
               "a=b=c", "(", "eyJydiI6MSwic3RhcnQiOiJ4In0", "%%%", "\x00", " ", "1e3", "0x10", "١٢"]

query_values = st.one_of(st.sampled_from(INTERESTING), st.text(max_size=40),
                         st.integers(-10**25, 10**25).map(str))
queries = st.dictionaries(st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=10)), query_values, max_size=8)


@FUZZ
@given(query=queries, resource=st.sampled_from(ALL))
def test_parse_list_options_only_raises_status_errors_with_api_codes(query: dict[str, str], resource: Any) -> None:
    try:
        opts = parse_list_options(query, resource)
    except StatusError as err:
        assert err.code in {400, 410, 422}, err.status
        assert err.status["kind"] == "Status" and err.status["message"]
        return
    assert opts.limit >= 0
    assert opts.timeout_seconds is None or 0 <= opts.timeout_seconds <= 6 * 3600
    assert opts.resource_version is None or opts.resource_version >= 0


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
              st.sampled_from(["*", "location", "kubernetes.io/hostname", "topology.kubernetes.io/zone", ""])),
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=40,
)
annotation_values = st.one_of(json_values.map(json.dumps), st.text(max_size=200),
                              st.lists(st.sampled_from(["*", "location", "a/b", "", "x" * 70, "Bad Key"]),
                                       max_size=25).map(json.dumps))
annotation_dicts = st.dictionaries(
    st.sampled_from(["topologyKeys", "openyurt.io/topologyKeys", "other"]),
    st.one_of(annotation_values, st.sampled_from(["kubernetes.io/hostname", "openyurt.io/nodepool", " zone "])),
    max_size=3,
)


@FUZZ
@given(ann=st.one_of(st.none(), annotation_dicts))
def test_parse_topology_keys_never_raises_and_returns_a_sound_policy(ann: dict[str, str] | None) -> None:
    result = parse_topology_keys(ann)
    assert result is None or isinstance(result, TopologyKeys | MalformedKeys)
    if isinstance(result, TopologyKeys):
        assert result.keys or result.wildcard
        assert len(result.keys) + int(result.wildcard) <= MAX_KEYS
        assert "*" not in result.keys and len(set(result.keys)) == len(result.keys)
    if isinstance(result, MalformedKeys):
        assert result.reason


NODES_POOL = ["n1", "n2", "n3", "n4"]
node_labels = st.dictionaries(st.sampled_from(NODES_POOL),
                              st.dictionaries(st.sampled_from(["location", "zone", "rack"]),
                                              st.sampled_from(["a", "b", ""]), max_size=3),
                              max_size=4)
conditions = st.fixed_dictionaries({}, optional={"ready": st.booleans() | st.none(), "serving": st.booleans(),
                                                 "terminating": st.booleans()})
endpoint = st.fixed_dictionaries(
    {"addresses": st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "bogus"]), min_size=1, max_size=2)},
    optional={"nodeName": st.sampled_from([*NODES_POOL, "ghost", ""]), "conditions": conditions},
)
slice_ = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries({"name": st.text("abc", min_size=1, max_size=4)}),
     "endpoints": st.lists(endpoint, max_size=6) | st.none()},
    optional={"addressType": st.sampled_from(["IPv4", "IPv6", "FQDN"])},
)
policies = st.builds(
    TopologyKeys,
    keys=st.lists(st.sampled_from(["location", "zone", "rack", "kubernetes.io/hostname"]), unique=True,
                  max_size=4).map(tuple),
    wildcard=st.booleans(),
    source=st.just("topologyKeys"),
)


def _is_subsequence(sub: list[Any], full: list[Any]) -> bool:
    it = iter(full)
    return all(any(x is y for y in it) for x in sub)


@FUZZ
@given(labels=node_labels, local=st.sampled_from([*NODES_POOL, "absent"]), keys=policies,
       slices=st.lists(slice_, max_size=4))
def test_filter_endpoint_slices_keeps_a_subset_in_order_and_never_mutates_its_input(
    labels: dict[str, dict[str, str]], local: str, keys: TopologyKeys, slices: list[dict[str, Any]]
) -> None:
    before = copy.deepcopy(slices)
    decision = filter_endpoint_slices(TopologyContext(local_node=local, nodes=labels), keys, slices)  # type: ignore[arg-type]
    assert slices == before  # input unchanged
    assert len(decision.slices) == len(slices)
    total = 0
    for out, inp in zip(decision.slices, slices, strict=True):
        in_eps = inp.get("endpoints") or []
        out_eps = out.get("endpoints") or []
        total += len(in_eps)
        # Every kept endpoint is an input endpoint, in the input order.
        assert _is_subsequence(out_eps, in_eps)
        # Nothing but the endpoint list changes.
        assert {k: v for k, v in out.items() if k != "endpoints"} == {k: v for k, v in inp.items()
                                                                       if k != "endpoints"}
        if len(out_eps) == len(in_eps):
            assert out is inp
    assert len(decision.endpoints_detail) == total
    kept = sum(len(s.get("endpoints") or []) for s in decision.slices)
    assert kept == sum(1 for d in decision.endpoints_detail if d.kept)
    if keys.wildcard:
        # "*" last: a family never ends up empty when it had endpoints.
        for fam in decision.families:
            assert fam.total == 0 or fam.kept > 0
