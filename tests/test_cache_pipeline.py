"""The cache's seams: one code path for a load and for events, node labels from any source, a
resource without a handler refused, objects a filter hides reaching watchers as DELETED and
coming back as ADDED, and objects no filter touches served from the stored bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings

import cache.cluster
from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.cluster import ClusterCache
from filters.api import Filter, Reads, ServedSlices, TopologyContext
from filters.pipeline import Pipeline
from filters.topology import TOPOLOGY
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.types import EndpointSlice, JSONDict
from tests.support.oracle import comparable, filtered_state, key_of
from tests.test_cluster_cache import EXAMPLES, feed, served
from tests.test_property import LOCAL, ServiceSpec, cluster, seed_of

DEMO_LOCAL = "bj-1"
GRID = "default/servicegrid-demo-svc"


def synced(sim: Simulator, local: str, **kwargs: Any) -> ClusterCache:
    cache = ClusterCache(local, **kwargs)
    for r in ALL:
        cache.replace(r, sim.list(r), sim.rv)
    return cache


def snapshot_of(sim: Simulator) -> dict[str, dict[str, JSONDict]]:
    return {r.plural: {key_of(o): o for o in sim.list(r)} for r in ALL}


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(spec=cluster())
def test_a_loaded_state_and_the_same_objects_received_as_events_are_served_alike(
    spec: tuple[dict[str, dict[str, str]], list[ServiceSpec]]
) -> None:
    sim = Simulator(seed_of(*spec))
    loaded = synced(sim, LOCAL)
    evented = ClusterCache(LOCAL)
    for r in ALL:
        evented.replace(r, [], 1)
    for r in ALL:
        for obj in sim.list(r):
            evented.apply(r, "ADDED", obj)
    for r in ALL:
        assert comparable(served(loaded, r.plural)) == comparable(served(evented, r.plural)), r.plural
    assert loaded.explain() == evented.explain()
    assert loaded.filtered_endpoints() == evented.filtered_endpoints()


def grid_nodes(cache: ClusterCache) -> set[str]:
    [grid_slice] = [o for o in served(cache, ENDPOINTSLICES.plural).values()
                    if o["metadata"]["labels"].get("kubernetes.io/service-name") == "servicegrid-demo-svc"]
    return {e["nodeName"] for e in grid_slice["endpoints"]}


def test_node_labels_from_another_source_than_node_objects_refilter_alike() -> None:
    sim = Simulator(servicegrid_demo())
    cache = synced(sim, DEMO_LOCAL)
    nodes_rv = cache.views[NODES.plural].rv
    assert grid_nodes(cache) == {"bj-1", "bj-3"}
    cache.node_labels_changed("gz-2", {"location": "beijing"}, sim.rv + 1)
    assert grid_nodes(cache) == {"bj-1", "bj-3", "gz-2"}
    assert cache.views[ENDPOINTSLICES.plural].rv == sim.rv + 1
    cache.node_labels_changed("gz-2", None, sim.rv + 2)  # the node is gone
    assert grid_nodes(cache) == {"bj-1", "bj-3"}
    # The Nodes view is the Node objects': labels from elsewhere make no Node event.
    assert cache.views[NODES.plural].rv == nodes_rv and "gz-2" not in cache.node_labels


def test_a_cached_resource_without_a_handler_is_refused_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    leases = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
    monkeypatch.setattr(cache.cluster, "ALL", (*ALL, leases))
    with pytest.raises(TypeError, match="leases"):
        ClusterCache(LOCAL)


HIDE_WHEN = "test.example/hide-when-local-label"


class HideWhenLocalLabel(Filter[str]):
    """Hides an annotated Service and its slices while the local node carries the named label."""

    name = "hide-when-local-label"
    acts_on = frozenset({SERVICES, ENDPOINTSLICES})

    def parse(self, service: JSONDict) -> str | None:
        value = ((service.get("metadata") or {}).get("annotations") or {}).get(HIDE_WHEN)
        return value if isinstance(value, str) else None

    def reads(self, policy: str) -> Reads:
        return Reads(local_labels=frozenset({policy}))

    @staticmethod
    def _hidden(policy: str, ctx: TopologyContext) -> bool:
        return policy in ctx.nodes.get(ctx.local_node, {})

    def serve_service(self, policy: str, service: JSONDict, ctx: TopologyContext) -> JSONDict | None:
        return None if self._hidden(policy, ctx) else service

    def serve_slices(self, policy: str, slices: Sequence[EndpointSlice], ctx: TopologyContext) -> ServedSlices:
        total = sum(len(s.get("endpoints") or ()) for s in slices)
        if self._hidden(policy, ctx):
            return ServedSlices([None] * len(slices), 0, total)
        return ServedSlices(slices, total, 0)


def watch_from(cache: ClusterCache, resource: Resource, rv: int) -> list[tuple[str, str]]:
    view = cache.views[resource.plural]
    return [(e.type, e.fields["metadata"]["name"]) for e in view.read(view.cursor_after(rv))]


def test_an_object_a_filter_hides_reaches_watchers_as_deleted_and_comes_back_as_added() -> None:
    sim = Simulator(servicegrid_demo())
    sim.patch(SERVICES, "default", "plain-svc", {"metadata": {"annotations": {HIDE_WHEN: "maintenance"}}})
    cache = synced(sim, DEMO_LOCAL, pipeline=Pipeline([TOPOLOGY, HideWhenLocalLabel()]))
    plain_slices = {k for k, o in served(cache, ENDPOINTSLICES.plural).items()
                    if o["metadata"]["labels"]["kubernetes.io/service-name"] == "plain-svc"}
    assert "default/plain-svc" in served(cache, SERVICES.plural) and plain_slices
    rvs = {r: cache.views[r.plural].rv for r in ALL}

    state = snapshot_of(sim)
    sim.patch_labels(NODES, None, DEMO_LOCAL, {"maintenance": "yes"})  # hides it
    state = feed(cache, state, sim)
    assert "default/plain-svc" not in served(cache, SERVICES.plural)
    assert not plain_slices & set(served(cache, ENDPOINTSLICES.plural))
    assert watch_from(cache, SERVICES, rvs[SERVICES]) == [("DELETED", "plain-svc")]
    assert sorted(watch_from(cache, ENDPOINTSLICES, rvs[ENDPOINTSLICES])) == sorted(
        ("DELETED", k.split("/")[1]) for k in plain_slices)

    # While hidden, its own upstream changes reach nobody; the other Services' still do.
    rvs = {r: cache.views[r.plural].rv for r in ALL}
    sim.patch_labels(SERVICES, "default", "plain-svc", {"touched": "yes"})
    sim.patch_labels(SERVICES, "default", "servicegrid-demo-svc", {"touched": "yes"})
    state = feed(cache, state, sim)
    assert watch_from(cache, SERVICES, rvs[SERVICES]) == [("MODIFIED", "servicegrid-demo-svc")]

    rvs = {r: cache.views[r.plural].rv for r in ALL}
    sim.patch_labels(NODES, None, DEMO_LOCAL, {"maintenance": None})  # shows it again
    feed(cache, state, sim)
    assert watch_from(cache, SERVICES, rvs[SERVICES]) == [("ADDED", "plain-svc")]
    assert sorted(watch_from(cache, ENDPOINTSLICES, rvs[ENDPOINTSLICES])) == sorted(
        ("ADDED", k.split("/")[1]) for k in plain_slices)
    shown = served(cache, SERVICES.plural)["default/plain-svc"]
    assert shown["metadata"]["labels"]["touched"] == "yes"  # its latest version, not a stale one
    for r in ALL:  # and everything else as the topology filter alone serves it
        if r is not SERVICES:
            assert comparable(served(cache, r.plural)) == comparable(filtered_state(sim, r, DEMO_LOCAL)), r.plural


def test_a_service_hidden_when_the_cache_loads_is_absent_and_its_policy_going_shows_it() -> None:
    sim = Simulator(servicegrid_demo())
    sim.patch(SERVICES, "default", "plain-svc", {"metadata": {"annotations": {HIDE_WHEN: "location"}}})
    cache = synced(sim, DEMO_LOCAL, pipeline=Pipeline([TOPOLOGY, HideWhenLocalLabel()]))
    assert "default/plain-svc" not in served(cache, SERVICES.plural)
    state, rv = snapshot_of(sim), cache.views[SERVICES.plural].rv
    sim.patch(SERVICES, "default", "plain-svc", {"metadata": {"annotations": {HIDE_WHEN: None}}})
    feed(cache, state, sim)
    assert watch_from(cache, SERVICES, rv) == [("ADDED", "plain-svc")]


@pytest.mark.parametrize("resource", [NODES, SERVICES, ENDPOINTSLICES, ENDPOINTS])
def test_objects_no_filter_touches_are_served_as_the_very_bytes_stored(resource: Resource) -> None:
    sim = Simulator(servicegrid_demo())
    cache = synced(sim, DEMO_LOCAL)
    state = snapshot_of(sim)
    for obj in sim.list(resource)[:2]:  # as loaded, and after an event
        sim.patch_labels(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"], {"touched": "yes"})
    feed(cache, state, sim)
    # The grid Service's slice and Endpoints are served filtered; everything else as stored.
    filtered = {key_of(o) for o in sim.list(resource) if resource in (ENDPOINTSLICES, ENDPOINTS)
                and GRID in (key_of(o), f"default/{o['metadata']['labels'].get('kubernetes.io/service-name')}")}
    stored = {id(raw) for raw in cache.raw_items(resource)}
    plain = [e for k, e in cache.views[resource.plural].objects.items() if k not in filtered]
    assert plain and all(id(e.raw) in stored for e in plain)
