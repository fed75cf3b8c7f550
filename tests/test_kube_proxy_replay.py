"""kube-proxy's exact request set against the wrapper, read by a client-go reflector model.

Both forms from the protocol reference: LIST then WATCH (kube-proxy <= 1.34) and the
streaming list (``sendInitialEvents``, kube-proxy >= 1.35). The reflectors must accept
every event, never need a relist, and end with the filtered truth.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from apisim.server import Simulator
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from tests.support.reflector import ReflectorModel, running_clients
from wrapper.compose import Running

PROXY_LABELS = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
DEMO = "servicegrid-demo-svc"


def kube_proxy_reflectors(url: str, node: str, *, streaming: bool) -> dict[str, ReflectorModel]:
    """The informers kube-proxy 1.32-1.34 runs (1.36 splits the label selectors; same paths)."""
    return {
        "services": ReflectorModel(url, SERVICES.collection_path(), "Service", "v1", label_selector=PROXY_LABELS,
                                   field_selector="spec.clusterIP!=None", streaming=streaming,
                                   accept="application/vnd.kubernetes.protobuf, */*"),
        "endpointslices": ReflectorModel(url, ENDPOINTSLICES.collection_path(), "EndpointSlice",
                                         "discovery.k8s.io/v1", label_selector=PROXY_LABELS, streaming=streaming,
                                         accept="application/vnd.kubernetes.protobuf, */*"),
        "nodes": ReflectorModel(url, NODES.collection_path(), "Node", "v1",
                                field_selector=f"metadata.name={node}", streaming=streaming,
                                accept="application/vnd.kubernetes.protobuf, */*"),
    }


@pytest.fixture(params=[False, True], ids=["list-watch", "streaming-list"])
async def proxy(request: pytest.FixtureRequest, wrapper: Running) -> AsyncIterator[dict[str, ReflectorModel]]:
    async with running_clients(kube_proxy_reflectors(wrapper.url, "bj-1", streaming=request.param)) as models:
        yield models


def slice_nodes(store: dict[str, dict[str, Any]], service: str) -> set[str]:
    return {e.get("nodeName", "") for s in store.values()
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == service
            for e in s.get("endpoints") or []}


async def test_kube_proxy_startup_get_of_its_node_is_answered_from_the_cache(wrapper: Running) -> None:
    async with aiohttp.ClientSession() as s, s.get(
        f"{wrapper.url}/api/v1/nodes/bj-1", headers={"Accept": "application/vnd.kubernetes.protobuf, */*"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        node = orjson.loads(await resp.read())
    assert node["kind"] == "Node" and node["apiVersion"] == "v1"
    assert node["metadata"]["labels"]["location"] == "beijing"


async def test_kube_proxy_reflectors_sync_the_filtered_state(proxy: dict[str, ReflectorModel]) -> None:
    assert set(proxy["nodes"].store) == {"bj-1"}
    assert {k.split("/")[1] for k in proxy["services"].store} >= {DEMO, "plain-svc", "kubernetes"}
    assert slice_nodes(proxy["endpointslices"].store, DEMO) == {"bj-1", "bj-3"}
    for m in proxy.values():
        assert m.violations == []


async def test_kube_proxy_reflectors_follow_cluster_changes_without_relisting(
    proxy: dict[str, ReflectorModel], sim: Simulator
) -> None:
    slices = proxy["endpointslices"]
    # A guangzhou node joins beijing: its endpoint appears.
    sim.patch(NODES, None, "gz-2", {"metadata": {"labels": {"location": "beijing"}}})
    await slices.wait_until(lambda st: slice_nodes(st, DEMO) == {"bj-1", "bj-3", "gz-2"})
    # A new beijing node with a new endpoint.
    node = copy.deepcopy(sim.get(NODES, None, "bj-3"))
    node["metadata"] = {"name": "bj-9", "labels": {"location": "beijing", "kubernetes.io/hostname": "bj-9"}}
    sim.create(NODES, node)
    demo_slice = next(s for s in sim.list(ENDPOINTSLICES, "default")
                      if s["metadata"]["labels"].get("kubernetes.io/service-name") == DEMO)
    demo_slice = copy.deepcopy(demo_slice)
    demo_slice["endpoints"].append({"addresses": ["10.0.9.9"], "conditions": {"ready": True}, "nodeName": "bj-9"})
    sim.update(ENDPOINTSLICES, demo_slice)
    await slices.wait_until(lambda st: slice_nodes(st, DEMO) == {"bj-1", "bj-3", "gz-2", "bj-9"})
    # The local node's own label changes: it moves to guangzhou.
    sim.patch(NODES, None, "bj-1", {"metadata": {"labels": {"location": "guangzhou"}}})
    await slices.wait_until(lambda st: slice_nodes(st, DEMO) == {"bj-1", "gz-3"})
    await proxy["nodes"].wait_until(lambda st: st["bj-1"]["metadata"]["labels"]["location"] == "guangzhou")
    # A Service is deleted; a headless one never reaches kube-proxy.
    sim.delete(SERVICES, "default", "plain-svc")
    headless = {"metadata": {"name": "headless", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}
    created = sim.create(SERVICES, headless)
    services = proxy["services"]
    await services.wait_until(lambda st: "default/plain-svc" not in st)
    # Bookmarks carry the reflector past the headless Service's resourceVersion.
    past = int(created["metadata"]["resourceVersion"])
    await services.wait_until(lambda st: int(services.last_rv) >= past)
    assert "default/headless" not in services.store
    for name, m in proxy.items():
        assert m.violations == [], name
        assert m.relists == 0, (name, m.relist_reasons)


@pytest.mark.parametrize("streaming", [False, True], ids=["list-watch", "streaming-list"])
async def test_kube_proxys_whole_request_set_is_served_from_the_cache_its_node_included(
    wrapper: Running, sim: Simulator, streaming: bool
) -> None:
    # With the apiserver down nothing can be passed through: every answer is the cache's. The
    # wrapper holds the local Node alone, which is all kube-proxy asks of Nodes.
    await sim.stop()
    async with aiohttp.ClientSession() as s, s.get(
        f"{wrapper.url}/api/v1/nodes/bj-1", headers={"Accept": "application/vnd.kubernetes.protobuf, */*"}
    ) as resp:
        assert resp.status == 200
    async with running_clients(kube_proxy_reflectors(wrapper.url, "bj-1", streaming=streaming)) as models:
        assert set(models["nodes"].store) == {"bj-1"}
        assert slice_nodes(models["endpointslices"].store, DEMO) == {"bj-1", "bj-3"}
        for m in models.values():
            assert m.violations == [] and m.relists == 0
