"""Every edge filter as a client sees it: absent from lists while hidden, DELETED (with the last content
the client saw and a new resourceVersion) when it goes, ADDED when it comes back, through plain
watches and through selectors, with kube-proxy's informers never keeping a ghost; its decisions on
/debug/topology and in the metrics.

A wrapper for kind-worker2 (node pool shanghai) runs ``--filters=*,discard-cloud-services`` in front
of OpenYurt's example cluster plus ``svc-nodeport`` (node port open in hangzhou only) and
``cloud-lb`` (cloud-only), tests/support/edge_seed.py.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from apisim.server import Simulator
from cache.apiclient import ApiClient
from filters.pipeline import Pipeline, select
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from tests.conftest import fast_settings
from tests.support.edge_seed import CLOUD_LB, HANGZHOU, NODE_PORT, NODEPORT_SVC, SHANGHAI, edge_filters_demo
from tests.support.oracle import PROXY_LABELS, PROXY_SERVICE_FIELDS
from tests.support.reflector import ReflectorModel, running_clients
from tests.support.stack import running_simulator, wait_ready
from tests.support.watch_log import WatchLog
from wrapper.compose import Running, start_wrapper, stop_wrapper

POOL = "apps.openyurt.io/nodepool"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(bookmark_interval=0.3)
    s.load(edge_filters_demo())
    async with running_simulator(s):
        yield s


@pytest.fixture
async def wrapper(sim: Simulator) -> AsyncIterator[Running]:
    serve, reflect = fast_settings()
    async with ApiClient(sim.url) as client:
        running = await start_wrapper(client, SHANGHAI, ("127.0.0.1", 0), serve=serve, reflect=reflect,
                                      debug=("127.0.0.1", 0),
                                      pipeline=Pipeline(select("*,discard-cloud-services")))
        try:
            await wait_ready(running)
            yield running
        finally:
            await stop_wrapper(running)


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return orjson.loads(await resp.read())


async def listing(wrapper: Running, path: str, **query: str) -> tuple[dict[str, Any], str]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    doc = await get(f"{wrapper.url}{path}?{q}")
    return {o["metadata"]["name"]: o for o in doc["items"]}, doc["metadata"]["resourceVersion"]


def move_local_node(sim: Simulator, pool: str | None) -> None:
    sim.patch(NODES, None, SHANGHAI, {"metadata": {"labels": {POOL: pool}}})


def nodeport_slice(sim: Simulator, service: str) -> str:
    [s] = sim.list(ENDPOINTSLICES, "default", label_selector=f"kubernetes.io/service-name={service}")
    return str(s["metadata"]["name"])


# ---- NodePort isolation ------------------------------------------------------------------------


async def test_a_disabled_pool_lists_the_service_as_clusterip_and_selectors_on_its_type_see_it_go_and_come(
        wrapper: Running, sim: Simulator) -> None:
    services, rv = await listing(wrapper, SERVICES.collection_path())
    closed = services[NODEPORT_SVC]
    assert closed["spec"]["type"] == "ClusterIP" and "nodePort" not in closed["spec"]["ports"][0]
    assert closed["spec"]["clusterIP"] == "10.96.120.20"  # pods of the pool keep reaching it
    by_type, _ = await listing(wrapper, SERVICES.collection_path(), fieldSelector="spec.type%3DNodePort")
    assert NODEPORT_SVC not in by_type

    async with WatchLog(wrapper.url, SERVICES.collection_path(), rv) as every, \
            WatchLog(wrapper.url, SERVICES.collection_path(), rv, fieldSelector="spec.type=NodePort") as node_ports:
        move_local_node(sim, "hangzhou")  # the local node joins the enabled pool: ports open
        await every.wait_for(lambda w: bool(w.changes()), "the Service served again")
        await node_ports.wait_for(lambda w: ("ADDED", NODEPORT_SVC) in w.changes(), "ADDED")
        [modified] = [e for e in every.events if e["type"] == "MODIFIED"]
        assert modified["object"]["spec"]["type"] == "NodePort"
        assert modified["object"]["spec"]["ports"][0]["nodePort"] == NODE_PORT
        opened_rv = int(modified["object"]["metadata"]["resourceVersion"])
        assert opened_rv > int(rv)

        move_local_node(sim, "shanghai")  # and back: closed again
        await node_ports.wait_for(lambda w: ("DELETED", NODEPORT_SVC) in w.changes(), "DELETED")
        deleted = node_ports.events[-1]
        # The last content this client saw (type NodePort, its port), at a new resourceVersion.
        assert deleted["type"] == "DELETED" and deleted["object"]["spec"]["type"] == "NodePort"
        assert deleted["object"]["spec"]["ports"][0]["nodePort"] == NODE_PORT
        assert int(deleted["object"]["metadata"]["resourceVersion"]) > opened_rv
        await every.wait_for(lambda w: w.changes().count(("MODIFIED", NODEPORT_SVC)) == 2, "MODIFIED to ClusterIP")
        assert every.events[-1]["object"]["spec"]["type"] == "ClusterIP"
    assert [c for c in node_ports.changes() if c[1] == NODEPORT_SVC] == [("ADDED", NODEPORT_SVC),
                                                                           ("DELETED", NODEPORT_SVC)]


async def test_a_node_leaving_every_pool_and_an_annotation_change_serve_the_service_again(
        wrapper: Running, sim: Simulator) -> None:
    async with running_clients({"services": ReflectorModel(
            wrapper.url, SERVICES.collection_path(), "Service", "v1", label_selector=PROXY_LABELS,
            field_selector=PROXY_SERVICE_FIELDS)}) as proxy:
        informer = proxy["services"]

        def node_port_of(store: dict[str, Any]) -> Any:
            return store[f"default/{NODEPORT_SVC}"]["spec"]["ports"][0].get("nodePort")

        assert node_port_of(informer.store) is None
        move_local_node(sim, None)  # no pool label: left unfiltered
        await informer.wait_until(lambda st: node_port_of(st) == NODE_PORT)
        move_local_node(sim, "shanghai")
        await informer.wait_until(lambda st: node_port_of(st) is None)
        sim.patch(SERVICES, "default", NODEPORT_SVC,
                  {"metadata": {"annotations": {"nodeport.openyurt.io/listen": "*,-hangzhou"}}})
        await informer.wait_until(lambda st: node_port_of(st) == NODE_PORT)
        assert informer.violations == [] and informer.relists == 0


async def test_the_enabled_pools_node_serves_the_service_as_stored(sim: Simulator) -> None:
    serve, reflect = fast_settings()
    async with ApiClient(sim.url) as client:
        running = await start_wrapper(client, HANGZHOU, ("127.0.0.1", 0), serve=serve, reflect=reflect)
        try:
            await wait_ready(running)
            services, _ = await listing(running, SERVICES.collection_path())
        finally:
            await stop_wrapper(running)
    stored = sim.get(SERVICES, "default", NODEPORT_SVC)
    assert {k: v for k, v in services[NODEPORT_SVC].items() if k not in ("kind", "apiVersion")} == stored


# ---- cloud-only Services -----------------------------------------------------------------------


async def test_a_cloud_only_service_and_its_endpoints_are_absent_from_every_list(wrapper: Running) -> None:
    services, _ = await listing(wrapper, SERVICES.collection_path())
    slices, _ = await listing(wrapper, ENDPOINTSLICES.collection_path())
    endpoints, _ = await listing(wrapper, ENDPOINTS.collection_path())
    assert CLOUD_LB not in services and CLOUD_LB not in endpoints
    assert not [n for n in slices if n.startswith(CLOUD_LB)]
    assert {"svc-ud1", "svc-ud2", NODEPORT_SVC, "kubernetes"} <= set(services)
    async with aiohttp.ClientSession() as s, s.get(
            f"{wrapper.url}{SERVICES.object_path(CLOUD_LB, 'default')}") as resp:
        assert resp.status == 404  # a single get agrees with the list


async def test_a_cloud_only_service_shown_again_is_added_and_hidden_again_is_deleted_through_kube_proxys_selectors(
        wrapper: Running, sim: Simulator) -> None:
    slice_name = nodeport_slice(sim, CLOUD_LB)
    services, svc_rv = await listing(wrapper, SERVICES.collection_path())
    _, slice_rv = await listing(wrapper, ENDPOINTSLICES.collection_path())
    async with WatchLog(wrapper.url, SERVICES.collection_path(), svc_rv, labelSelector=PROXY_LABELS,
                        fieldSelector=PROXY_SERVICE_FIELDS) as svc_watch, \
            WatchLog(wrapper.url, ENDPOINTSLICES.collection_path(), slice_rv, labelSelector=PROXY_LABELS) as sl_watch:
        # While hidden, its own changes reach nobody.
        sim.patch_labels(SERVICES, "default", CLOUD_LB, {"tier": "cloud"})
        moved = copy.deepcopy(sim.get(ENDPOINTSLICES, "default", slice_name))
        moved["endpoints"].append({"addresses": ["10.8.0.6"], "conditions": {"ready": True},
                                   "nodeName": "kind-control-plane"})
        sim.update(ENDPOINTSLICES, moved)
        for view in (wrapper.cache.views[SERVICES.plural], wrapper.cache.views[ENDPOINTSLICES.plural]):
            assert await view.wait_for_rv(sim.rv, 10)
        assert svc_watch.changes() == [] and sl_watch.changes() == []

        sim.patch(SERVICES, "default", CLOUD_LB, {"metadata": {"annotations": {"svc.openyurt.io/discard": None}}})
        await svc_watch.wait_for(lambda w: w.changes() == [("ADDED", CLOUD_LB)], "ADDED cloud-lb")
        await sl_watch.wait_for(lambda w: w.changes() == [("ADDED", slice_name)], "ADDED of its slice")
        shown = svc_watch.events[-1]["object"]
        assert shown["metadata"]["labels"]["tier"] == "cloud"  # its latest version
        assert len(sl_watch.events[-1]["object"]["endpoints"]) == 2

        sim.patch(SERVICES, "default", CLOUD_LB, {"metadata": {"annotations": {"svc.openyurt.io/discard": "true"}}})
        await svc_watch.wait_for(lambda w: ("DELETED", CLOUD_LB) in w.changes(), "DELETED cloud-lb")
        await sl_watch.wait_for(lambda w: ("DELETED", slice_name) in w.changes(), "DELETED of its slice")
    deleted = svc_watch.events[-1]["object"]
    # The last content the client saw: the version it got, without the annotation, at a new RV.
    assert "svc.openyurt.io/discard" not in deleted["metadata"].get("annotations", {})
    assert int(deleted["metadata"]["resourceVersion"]) > int(shown["metadata"]["resourceVersion"])
    services, _ = await listing(wrapper, SERVICES.collection_path())
    assert CLOUD_LB not in services


async def test_kube_proxys_informers_end_with_no_ghost_of_a_hidden_service(wrapper: Running, sim: Simulator) -> None:
    models = {
        "services": ReflectorModel(wrapper.url, SERVICES.collection_path(), "Service", "v1",
                                   label_selector=PROXY_LABELS, field_selector=PROXY_SERVICE_FIELDS),
        "endpointslices": ReflectorModel(wrapper.url, ENDPOINTSLICES.collection_path(), "EndpointSlice",
                                         "discovery.k8s.io/v1", label_selector=PROXY_LABELS),
    }
    slice_key = f"default/{nodeport_slice(sim, CLOUD_LB)}"
    async with running_clients(models) as proxy:
        svc, sl = proxy["services"], proxy["endpointslices"]
        assert f"default/{CLOUD_LB}" not in svc.store and slice_key not in sl.store
        sim.patch(SERVICES, "default", CLOUD_LB, {"spec": {"type": "ClusterIP", "allocateLoadBalancerNodePorts": None,
                                                           "externalTrafficPolicy": None}})
        await svc.wait_until(lambda st: f"default/{CLOUD_LB}" in st)  # no longer a LoadBalancer: not cloud-only
        await sl.wait_until(lambda st: slice_key in st)
        sim.patch(SERVICES, "default", CLOUD_LB, {"spec": {"type": "LoadBalancer"}})
        await svc.wait_until(lambda st: f"default/{CLOUD_LB}" not in st)
        await sl.wait_until(lambda st: slice_key not in st)
        for m in proxy.values():
            assert m.violations == [] and m.relists == 0


# ---- what the operator sees --------------------------------------------------------------------


async def test_debug_topology_explains_each_filters_decision_and_metrics_count_them(wrapper: Running) -> None:
    report = await get(f"{wrapper.debug_url}/debug/topology")
    assert report["filters"] == ["discard-cloud-services", "nodeport-isolation", "topology"]
    records = {(r["service"], r["filter"]): r for r in report["services"]}
    nodeport = records[(f"default/{NODEPORT_SVC}", "nodeport-isolation")]
    assert nodeport["localPool"] == "shanghai" and nodeport["nodePorts"] == "closed"
    assert nodeport["reason"] == "pool shanghai is not listed" and str(NODE_PORT) in nodeport["result"]
    cloud = records[(f"default/{CLOUD_LB}", "discard-cloud-services")]
    assert "hidden" in cloud["result"]
    assert records[("default/svc-ud1", "topology")]["keys"] == ["apps.openyurt.io/nodepool"]
    one = await get(f"{wrapper.debug_url}/debug/topology?service=default/{NODEPORT_SVC}")
    assert [r["filter"] for r in one["services"]] == ["nodeport-isolation"]

    # core/v1 Endpoints are watched (and filtered) only once a client reads them.
    assert (await get(f"{wrapper.url}/api/v1/endpoints"))["kind"] == "EndpointsList"
    async with aiohttp.ClientSession() as s, s.get(f"{wrapper.debug_url}/metrics") as resp:
        text = await resp.text()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("application_grid_wrapper_filter_decisions_total{")}
    assert lines['application_grid_wrapper_filter_decisions_total{filter="nodeport-isolation",'
                 'outcome="rewritten",resource="services"}'] >= 1
    for resource in ("services", "endpointslices", "endpoints"):
        assert lines['application_grid_wrapper_filter_decisions_total{filter="discard-cloud-services",'
                     f'outcome="hidden",resource="{resource}"}}'] >= 1
