"""The edge filters through every real kubectl of the matrix (tests/test_kubectl_matrix.py's versions).

A wrapper for kind-worker2 (pool shanghai) runs ``--filters=*,discard-cloud-services`` in front of
tests/support/edge_seed.py: ``svc-nodeport`` opens its node port in hangzhou only, ``cloud-lb`` is
cloud-only. Each kubectl must see the Service as ClusterIP here and its node port come back when
the node moves to hangzhou; and must never see the cloud-only Service, until it stops being one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apisim.server import Simulator
from cache.apiclient import ApiClient
from filters.pipeline import Pipeline, select
from kubeapi.resources import NODES, SERVICES
from tests.conftest import fast_settings
from tests.support.edge_seed import CLOUD_LB, NODE_PORT, NODEPORT_SVC, SHANGHAI, edge_filters_demo
from tests.support.kubectl import Kubectl, run_kubectl
from tests.support.kubectl_watch import KubectlWatch
from tests.support.stack import running_simulator, wait_ready
from tests.support.waiting import eventually
from tests.test_kubectl_matrix import KUBECTLS, _bounded, _need
from wrapper.compose import Running, start_wrapper, stop_wrapper

pytestmark = pytest.mark.parametrize("kubectl", KUBECTLS, ids=[str(k) if k else "no-kubectl" for k in KUBECTLS])


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(bookmark_interval=0.5)
    s.load(edge_filters_demo())
    async with running_simulator(s):
        yield s


@pytest.fixture
async def wrapper(sim: Simulator) -> AsyncIterator[Running]:
    serve, reflect = fast_settings()
    async with ApiClient(sim.url) as client:
        running = await start_wrapper(client, SHANGHAI, ("127.0.0.1", 0), serve=serve, reflect=reflect,
                                      pipeline=Pipeline(select("*,discard-cloud-services")))
        try:
            await wait_ready(running)
            yield running
        finally:
            await stop_wrapper(running)


async def test_nodeport_isolation_shows_clusterip_here_and_the_node_port_when_the_node_changes_pool(
        kubectl: Kubectl | None, wrapper: Running, sim: Simulator, kube_home: Path) -> None:
    k = _need(kubectl)
    as_json, wide, by_type = await _bounded([
        run_kubectl(k, wrapper.url, "get", "service", NODEPORT_SVC, "-o", "json", home=kube_home),
        run_kubectl(k, wrapper.url, "get", "services", "-o", "wide", home=kube_home),
        run_kubectl(k, wrapper.url, "get", "services", "-A", "--field-selector", "spec.type=NodePort", "-o", "json",
                    home=kube_home),
    ])
    svc = json.loads(as_json)
    assert svc["spec"]["type"] == "ClusterIP" and "nodePort" not in svc["spec"]["ports"][0]
    [row] = [line for line in wide.splitlines() if line.startswith(NODEPORT_SVC)]
    assert "ClusterIP" in row.split() and f":{NODE_PORT}/" not in row
    assert json.loads(by_type)["items"] == []
    watch = KubectlWatch(k, wrapper.url, "get", "service", NODEPORT_SVC, "-w", "--output-watch-events", "-o", "json",
                         home=kube_home, json_output=True)
    async with watch:
        await watch.wait_for(lambda w: bool(w.docs), "the Service as it is served now")
        # kubectl prints the object it got, then watches from "0": change the cluster only once that
        # watch is open (a change before it is that watch's initial state, not a MODIFIED).
        await wait_for_watchers(wrapper, 1)
        sim.patch(NODES, None, SHANGHAI, {"metadata": {"labels": {"apps.openyurt.io/nodepool": "hangzhou"}}})
        await watch.wait_for(lambda w: any(d["type"] == "MODIFIED" and d["object"]["spec"]["type"] == "NodePort"
                                           and d["object"]["spec"]["ports"][0].get("nodePort") == NODE_PORT
                                           for d in w.docs), "MODIFIED to NodePort with its node port")


async def test_a_cloud_only_service_is_never_listed_and_is_added_and_deleted_as_its_annotation_goes_and_comes(
        kubectl: Kubectl | None, wrapper: Running, sim: Simulator, kube_home: Path) -> None:
    k = _need(kubectl)
    every = json.loads(await run_kubectl(k, wrapper.url, "get", "services,endpointslices,endpoints", "-A",
                                         "-o", "json", home=kube_home))
    assert not [i for i in every["items"] if i["metadata"]["name"].startswith(CLOUD_LB)]
    with pytest.raises(AssertionError, match=r"NotFound|not found"):
        await run_kubectl(k, wrapper.url, "get", "service", CLOUD_LB, home=kube_home)
    watch = KubectlWatch(k, wrapper.url, "get", "services", "-A", "--watch-only", "--output-watch-events",
                         "-o", "json", home=kube_home, json_output=True)
    async with watch:
        # --watch-only opens its watch after its list: wait for the wrapper to hold it.
        await wait_for_watchers(wrapper, 1)
        sim.patch(SERVICES, "default", CLOUD_LB, {"metadata": {"annotations": {"svc.openyurt.io/discard": None}}})
        await watch.wait_for(lambda w: ("ADDED", CLOUD_LB) in events(w), "ADDED cloud-lb")
        sim.patch(SERVICES, "default", CLOUD_LB, {"metadata": {"annotations": {"svc.openyurt.io/discard": "true"}}})
        await watch.wait_for(lambda w: ("DELETED", CLOUD_LB) in events(w), "DELETED cloud-lb")
    assert events(watch) == [("ADDED", CLOUD_LB), ("DELETED", CLOUD_LB)]


def events(w: KubectlWatch) -> list[tuple[str, str]]:
    return [(d["type"], d["object"]["metadata"]["name"]) for d in w.docs]


async def wait_for_watchers(wrapper: Running, n: int) -> None:
    await eventually(lambda: len(wrapper.watches) >= n, 10, f"{n} watches open",
                     detail=lambda: f"{len(wrapper.watches)} open")
