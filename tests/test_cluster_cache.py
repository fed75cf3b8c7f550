"""The cache's incremental view equals the filtered upstream state after every single change.

In-process and fast, so it runs many more examples than the end-to-end property test: it
exercises the narrowing of re-filters (a remote node's relabel revisits only the Services
with endpoints on it; the local node's only those with endpoints in the old or new domain).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apisim.server import Simulator
from cache.cluster import ClusterCache
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from tests.support.oracle import comparable, filtered_state, key_of
from tests.test_property import CHANGES, LABELS, LOCAL, NODE_NAMES, ServiceSpec, apply, cluster, seed_of

EXAMPLES = int(os.environ.get("AGW_CACHE_EXAMPLES", "300"))

JSONDict = dict[str, Any]


def served(cache: ClusterCache, plural: str) -> dict[str, JSONDict]:
    return {k: e.obj for k, e in cache.views[plural].objects.items()}


def feed(cache: ClusterCache, before: dict[str, dict[str, JSONDict]], sim: Simulator) -> dict[str, dict[str, JSONDict]]:
    """Send the cache what changed upstream since ``before``, as watch events in RV order."""
    now = {r.plural: {key_of(o): o for o in sim.list(r)} for r in ALL}
    events: list[tuple[int, int, str, JSONDict]] = []
    for order, r in enumerate(ALL):
        old, new = before[r.plural], now[r.plural]
        for k, obj in new.items():
            if k not in old:
                events.append((int(obj["metadata"]["resourceVersion"]), order, "ADDED", obj))
            elif old[k]["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                events.append((int(obj["metadata"]["resourceVersion"]), order, "MODIFIED", obj))
        for k, obj in old.items():
            if k not in new:
                # The apiserver's DELETED carries the object at the deletion's RV.
                gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(sim.rv)}}
                events.append((sim.rv, order, "DELETED", gone))
    for _, order, type_, obj in sorted(events, key=lambda e: (e[0], e[1])):
        cache.apply(ALL[order], type_, obj)
    return now


def synced(nodes: dict[str, dict[str, str]], services: list[ServiceSpec]
           ) -> tuple[Simulator, ClusterCache, dict[str, dict[str, JSONDict]]]:
    """A simulator with the cluster, and a cache that has listed it (and the state it saw)."""
    sim = Simulator(seed_of(nodes, services))
    cache = ClusterCache(LOCAL)
    for r in ALL:
        cache.replace(r, sim.list(r), sim.rv)
    return sim, cache, {r.plural: {key_of(o): o for o in sim.list(r)} for r in ALL}


def assert_matches_oracle(cache: ClusterCache, sim: Simulator) -> None:
    for r in (NODES, SERVICES, ENDPOINTSLICES, ENDPOINTS):
        assert comparable(served(cache, r.plural)) == comparable(filtered_state(sim, r, LOCAL)), r.plural


@settings(max_examples=EXAMPLES, deadline=None)
@given(spec=cluster(), changes=CHANGES)
def test_incremental_view_equals_filtered_upstream_after_every_change(
    spec: tuple[dict[str, dict[str, str]], list[ServiceSpec]], changes: list[tuple[Any, ...]]
) -> None:
    sim, cache, state = synced(*spec)
    assert_matches_oracle(cache, sim)
    for change in changes:
        apply(sim, change)
        state = feed(cache, state, sim)
        assert_matches_oracle(cache, sim)


@settings(max_examples=EXAMPLES, deadline=None)
@given(spec=cluster(), moves=st.lists(st.tuples(st.sampled_from(NODE_NAMES), LABELS), min_size=1, max_size=8))
def test_local_and_remote_relabels_refilter_exactly_what_changed(
    spec: tuple[dict[str, dict[str, str]], list[ServiceSpec]], moves: list[tuple[str, dict[str, str]]]
) -> None:
    # Relabels only: the narrowed re-filter must still catch every Service whose view changes.
    sim, cache, state = synced(*spec)
    for name, labels in moves:
        apply(sim, ("relabel", name, labels))
        state = feed(cache, state, sim)
        assert_matches_oracle(cache, sim)


def test_a_local_relabel_re_filters_only_the_services_near_the_old_or_new_domain_with_every_filter_on(
        caplog: pytest.LogCaptureFixture) -> None:
    # The default pipeline runs the NodePort filter beside topology: a Service it has no policy
    # for must not become a reader of "location" through the topology filter's reads.
    def ep(ip: str, node: str) -> dict[str, Any]:
        return {"addresses": [ip], "nodeName": node, "conditions": {"ready": True}}

    nodes = {LOCAL: {"location": "a"}, "n1": {"location": "a"}, "n2": {"location": "b"}, "n3": {"location": "c"}}
    topology = {"topologyKeys": '["location"]'}
    services = [
        ServiceSpec("near", topology, [("IPv4", [ep("10.1.0.1", "n1"), ep("10.1.0.3", "n3")])]),
        ServiceSpec("far", topology, [("IPv4", [ep("10.2.0.2", "n2")])]),
    ]
    sim, cache, state = synced(nodes, services)
    sim.patch_labels(NODES, None, LOCAL, {"location": "c"})
    with caplog.at_level(logging.DEBUG, logger="cache.cluster"):
        feed(cache, state, sim)
    runs = [r.getMessage() for r in caplog.records if "re-filter (local node" in r.getMessage()]
    assert len(runs) == 1 and ": 1 Services," in runs[0], runs  # "near" alone; "far" has no endpoint in a or c
    assert_matches_oracle(cache, sim)
