"""Every real kubectl found on this machine, through the wrapper (node bj-1) in front of the simulator.

One test per (version, behaviour). Each version must see the same filtered truth: the
servicegrid demo Service's slice and Endpoints hold only the beijing endpoints (bj-1, bj-3),
everything else is exactly what the simulator holds. If no kubectl is found the tests fail.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import yaml

from apisim.server import Simulator
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from tests.support.kubectl import Kubectl, find_kubectls, run_kubectl
from tests.support.kubectl_watch import KubectlWatch
from tests.support.oracle import filtered_state, key_of
from tests.support.waiting import eventually
from wrapper.compose import Running

LOCAL = "bj-1"
DEMO = "servicegrid-demo-svc"
BEIJING_IPS = ("10.0.0.70", "10.0.1.72")
GUANGZHOU_IPS = ("10.0.0.139", "10.0.1.8")
KUBECTLS: list[Kubectl | None] = list(find_kubectls()) or [None]
# What a wrapper serves whole (of Nodes it holds the local one alone: a list of every Node passes
# through, and kubectl over plain HTTP sends no credentials to pass with it; tests/test_node_reads.py).
KINDS: dict[str, Resource] = {"Service": SERVICES, "EndpointSlice": ENDPOINTSLICES, "Endpoints": ENDPOINTS}
# Run at most this many kubectl processes of one test at a time (2 cores).
PARALLEL = 4


def _need(k: Kubectl | None) -> Kubectl:
    if k is None:
        pytest.fail("no kubectl found on PATH (nor kubectl.1.N siblings): the version matrix cannot run")
    return k


pytestmark = pytest.mark.parametrize("kubectl", KUBECTLS, ids=[str(k) if k else "no-kubectl" for k in KUBECTLS])


async def _bounded(calls: list[Awaitable[str]]) -> list[str]:
    sem = asyncio.Semaphore(PARALLEL)

    async def one(call: Awaitable[str]) -> str:
        async with sem:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


def _by_kind(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A kubectl List (several kinds) as kind -> key -> item without kind/apiVersion."""
    out: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
    assert doc["kind"] == "List", doc.get("kind")
    for item in doc["items"] or []:
        kind = item.pop("kind")
        item.pop("apiVersion")
        out[kind][key_of(item)] = item
    return out


def _truth(sim: Simulator) -> dict[str, dict[str, dict[str, Any]]]:
    return {kind: filtered_state(sim, res, LOCAL) for kind, res in KINDS.items()}


def _slice_nodes(obj: dict[str, Any]) -> set[str]:
    return {e.get("nodeName", "") for e in obj.get("endpoints") or []}


def _endpoints_nodes(obj: dict[str, Any]) -> set[str]:
    return {a.get("nodeName", "") for s in obj.get("subsets") or [] for a in s.get("addresses") or []}


def _demo_slice_name(sim: Simulator) -> str:
    [s] = sim.list(ENDPOINTSLICES, "default", label_selector=f"kubernetes.io/service-name={DEMO}")
    return str(s["metadata"]["name"])


def _row(text: str, name: str) -> str:
    rows = [line for line in text.splitlines() if name in line.split()[:2] or f"/{name}" in line]
    assert rows, f"no row for {name} in:\n{text}"
    return rows[0]


async def test_get_every_resource_as_json_and_yaml_equals_the_filtered_truth(
    kubectl: Kubectl | None, wrapper: Running, sim: Simulator, kube_home: Path
) -> None:
    k = _need(kubectl)
    every = "services,endpointslices,endpoints"
    as_json, as_yaml, local = await _bounded([
        run_kubectl(k, wrapper.url, "get", every, "-A", "-o", "json", home=kube_home),
        run_kubectl(k, wrapper.url, "get", every, "-A", "-o", "yaml", home=kube_home),
        run_kubectl(k, wrapper.url, "get", "node", LOCAL, "-o", "json", home=kube_home),
    ])
    truth = _truth(sim)
    node = json.loads(local)
    assert (node.pop("kind"), node.pop("apiVersion")) == ("Node", "v1")
    assert node == filtered_state(sim, NODES, LOCAL)[LOCAL]
    for doc in (json.loads(as_json), yaml.safe_load(as_yaml)):
        got = _by_kind(doc)
        # Object for object, resourceVersions included: nothing changed since the wrapper synced.
        assert got == truth
        assert _slice_nodes(got["EndpointSlice"][f"default/{_demo_slice_name(sim)}"]) == {"bj-1", "bj-3"}
        assert _endpoints_nodes(got["Endpoints"][f"default/{DEMO}"]) == {"bj-1", "bj-3"}
        # The unannotated Service passes untouched, gz-2 included.
        plain = next(v for v in got["EndpointSlice"].values() if v["metadata"]["name"].startswith("plain-svc"))
        assert _slice_nodes(plain) == {"bj-1", "gz-2"}


async def test_table_outputs_plain_and_wide_show_only_beijing_endpoints(
    kubectl: Kubectl | None, wrapper: Running, sim: Simulator, kube_home: Path
) -> None:
    k = _need(kubectl)
    every = "services,endpointslices,endpoints"
    plain, wide, default_ns, node_plain, node_wide = await _bounded([
        run_kubectl(k, wrapper.url, "get", every, "-A", home=kube_home),
        run_kubectl(k, wrapper.url, "get", every, "-A", "-o", "wide", home=kube_home),
        run_kubectl(k, wrapper.url, "get", "endpointslices,endpoints", home=kube_home),
        run_kubectl(k, wrapper.url, "get", "node", LOCAL, home=kube_home),
        run_kubectl(k, wrapper.url, "get", "node", LOCAL, "-o", "wide", home=kube_home),
    ])
    slice_name = _demo_slice_name(sim)
    for text in (plain, wide, default_ns):
        slice_row = _row(text, slice_name)
        ep_row = _row(text, f"endpoints/{DEMO}") if "endpoints/" in text else _row(text, DEMO)
        for row in (slice_row, ep_row):
            assert all(ip in row for ip in BEIJING_IPS), row
            assert not any(ip in row for ip in GUANGZHOU_IPS), row
            assert "more" not in row, row  # exactly two endpoints: nothing hidden behind "+ N more..."
    for text in (plain, wide):
        for name in (DEMO, "plain-svc", "kubernetes"):
            assert name in text
    assert "192.168.10.12" in _row(node_wide, "bj-1")  # wide adds INTERNAL-IP
    assert "INTERNAL-IP" in node_wide and "INTERNAL-IP" not in node_plain


async def test_namespace_label_and_field_selectors_and_single_gets_see_the_filtered_truth(
    kubectl: Kubectl | None, wrapper: Running, sim: Simulator, kube_home: Path
) -> None:
    k = _need(kubectl)
    slice_name = _demo_slice_name(sim)
    url = wrapper.url
    outs = await _bounded([
        run_kubectl(k, url, "-n", "default", "get", "endpointslices,endpoints", "-o", "json", home=kube_home),
        run_kubectl(k, url, "-n", "kube-system", "get", "services,endpointslices", "-o", "json", home=kube_home),
        run_kubectl(k, url, "get", "endpointslices,endpoints", "-A", "-l",
                    "superedge.io/grid-selector=servicegrid-demo", "-o", "json", home=kube_home),
        run_kubectl(k, url, "get", "nodes", "-l", "location=beijing", "--field-selector", f"metadata.name={LOCAL}",
                    "-o", "json", home=kube_home),
        run_kubectl(k, url, "get", "nodes", "--field-selector", f"metadata.name={LOCAL}", "-o", "json",
                    home=kube_home),
        run_kubectl(k, url, "get", "services", "-A", "--field-selector",
                    "metadata.namespace=default,spec.clusterIP!=172.16.33.1", "-o", "json", home=kube_home),
        run_kubectl(k, url, "get", "endpointslices", "-A", "--field-selector", f"metadata.name={slice_name}",
                    "-o", "json", home=kube_home),
        run_kubectl(k, url, "get", "endpointslice", slice_name, "-n", "default", "-o", "json", home=kube_home),
        run_kubectl(k, url, "get", "endpoints", DEMO, "-o", "yaml", home=kube_home),
        run_kubectl(k, url, "get", "node", LOCAL, "-o", "json", home=kube_home),
        run_kubectl(k, url, "get", "service", DEMO, "-o", "wide", home=kube_home),
    ])
    in_default, in_kube_system, labelled, beijing, local, services, by_name, one_slice, one_ep, one_node, svc = outs
    truth = _truth(sim)
    got = _by_kind(json.loads(in_default))
    assert set(got["EndpointSlice"]) == {k_ for k_ in truth["EndpointSlice"] if k_.startswith("default/")}
    assert got["EndpointSlice"] == truth["EndpointSlice"] and got["Endpoints"] == truth["Endpoints"]
    assert json.loads(in_kube_system)["items"] == []
    got = _by_kind(json.loads(labelled))
    assert list(got["EndpointSlice"]) == [f"default/{slice_name}"] and list(got["Endpoints"]) == [f"default/{DEMO}"]
    assert _slice_nodes(got["EndpointSlice"][f"default/{slice_name}"]) == {"bj-1", "bj-3"}
    assert _endpoints_nodes(got["Endpoints"][f"default/{DEMO}"]) == {"bj-1", "bj-3"}
    assert [n["metadata"]["name"] for n in json.loads(beijing)["items"]] == [LOCAL]
    assert [n["metadata"]["name"] for n in json.loads(local)["items"]] == [LOCAL]
    assert sorted(s["metadata"]["name"] for s in json.loads(services)["items"]) == sorted([DEMO, "plain-svc"])
    [item] = json.loads(by_name)["items"]
    assert _slice_nodes(item) == {"bj-1", "bj-3"}
    single = json.loads(one_slice)
    assert single["kind"] == "EndpointSlice" and single["apiVersion"] == "discovery.k8s.io/v1"
    assert {k_: v for k_, v in single.items() if k_ not in ("kind", "apiVersion")} == \
        truth["EndpointSlice"][f"default/{slice_name}"]
    assert _endpoints_nodes(yaml.safe_load(one_ep)) == {"bj-1", "bj-3"}
    assert json.loads(one_node)["metadata"]["labels"]["location"] == "beijing"
    assert "172.16.33.231" in _row(svc, DEMO) and "appGrid=echo" in _row(svc, DEMO)


async def test_discovery_and_api_resources_pass_through_unchanged(
    kubectl: Kubectl | None, wrapper: Running, sim: Simulator, kube_home: Path
) -> None:
    k = _need(kubectl)
    direct_home = kube_home.parent / "direct-home"
    direct_home.mkdir(exist_ok=True)
    calls: list[Awaitable[str]] = []
    for server, home in ((wrapper.url, kube_home), (sim.url, direct_home)):
        calls += [
            run_kubectl(k, server, "api-resources", home=home),
            run_kubectl(k, server, "api-versions", home=home),
            run_kubectl(k, server, "get", "--raw", "/apis/discovery.k8s.io/v1", home=home),
            run_kubectl(k, server, "get", "--raw", "/version", home=home),
        ]
    outs = await _bounded(calls)
    via_wrapper, direct = outs[:4], outs[4:]
    assert via_wrapper == direct
    resources, versions, group, version = via_wrapper
    assert "endpointslices" in resources and "discovery.k8s.io/v1" in resources
    assert {"v1", "discovery.k8s.io/v1"} <= set(versions.split())
    assert {r["name"] for r in json.loads(group)["resources"]} >= {"endpointslices"}
    assert json.loads(version)["gitVersion"].startswith("v1.")


async def test_watch_and_watch_only_follow_node_add_relabel_scale_and_service_delete(
    kubectl: Kubectl | None, wrapper: Running, sim: Simulator, kube_home: Path
) -> None:
    k = _need(kubectl)
    url = wrapper.url
    slice_name = _demo_slice_name(sim)
    json_watch = ("--output-watch-events", "-o", "json")
    slices = KubectlWatch(k, url, "get", "endpointslices", "-A", "-w", *json_watch, home=kube_home, json_output=True)
    nodes = KubectlWatch(k, url, "get", "nodes", "--field-selector", f"metadata.name={LOCAL}", "--watch-only",
                         *json_watch, home=kube_home, json_output=True)
    services = KubectlWatch(k, url, "get", "services", "-A", "--watch-only", *json_watch, home=kube_home,
                            json_output=True)
    endpoints = KubectlWatch(k, url, "get", "endpoints", DEMO, "-w", "-o", "json", home=kube_home, json_output=True)
    table = KubectlWatch(k, url, "get", "endpointslices", "-A", "-w", "-o", "wide", home=kube_home,
                         json_output=False)

    def demo_slice_has(nodes_: set[str]) -> Any:
        return lambda w: any(d["object"]["metadata"]["name"] == slice_name and _slice_nodes(d["object"]) == nodes_
                             for d in w.docs)

    async with slices, nodes, services, endpoints, table:
        # -w prints the current state first, as ADDED, already filtered.
        await slices.wait_for(demo_slice_has({"bj-1", "bj-3"}), "the initial filtered demo slice")
        assert all(d["type"] == "ADDED" for d in slices.docs)
        await endpoints.wait_for(lambda w: bool(w.docs), "the initial Endpoints")
        assert _endpoints_nodes(endpoints.docs[0]) == {"bj-1", "bj-3"}
        await table.wait_for(lambda w: any(slice_name in line for line in w.lines), "the initial table row")
        # Let the --watch-only processes open their watches before the first change.
        await eventually(lambda: len(wrapper.watches) >= 5, 10, "the five kubectl watches to be open",
                         detail=lambda: f"{len(wrapper.watches)} open")

        # 1. A node joins (beijing); the local Node (the one node a wrapper serves) is relabelled.
        new_node = copy.deepcopy(sim.get(NODES, None, "bj-3"))
        new_node["metadata"] = {"name": "bj-9", "labels": {"location": "beijing", "kubernetes.io/hostname": "bj-9"}}
        sim.create(NODES, new_node)
        sim.patch(NODES, None, LOCAL, {"metadata": {"labels": {"rack": "r1"}}})
        await nodes.wait_for(lambda w: bool(w.docs), f"MODIFIED {LOCAL}")
        first = nodes.docs[0]
        assert (first["type"], first["object"]["metadata"]["name"]) == ("MODIFIED", LOCAL)  # --watch-only: no replay
        assert first["object"]["metadata"]["labels"]["rack"] == "r1"

        # 2. A node is relabelled into beijing: its endpoint appears in the filtered slice.
        sim.patch(NODES, None, "gz-2", {"metadata": {"labels": {"location": "beijing"}}})
        await slices.wait_for(demo_slice_has({"bj-1", "bj-3", "gz-2"}), "gz-2 joining the demo slice")
        await endpoints.wait_for(lambda w: _endpoints_nodes(w.docs[-1]) == {"bj-1", "bj-3", "gz-2"},
                                 "gz-2 joining the demo Endpoints")
        await table.wait_for(lambda w: any(slice_name in line and "10.0.0.139" in line for line in w.lines),
                             "a table row with gz-2's endpoint")

        # 3. The demo Service scales: one more pod on bj-9, one more in guangzhou (filtered out).
        demo = copy.deepcopy(sim.get(ENDPOINTSLICES, "default", slice_name))
        demo["endpoints"] += [
            {"addresses": ["10.0.9.9"], "conditions": {"ready": True}, "nodeName": "bj-9"},
            {"addresses": ["10.0.1.99"], "conditions": {"ready": True}, "nodeName": "gz-3"},
        ]
        sim.update(ENDPOINTSLICES, demo)
        await slices.wait_for(demo_slice_has({"bj-1", "bj-3", "gz-2", "bj-9"}), "the scaled, filtered demo slice")

        # 4. A Service (and its slice, as the garbage collector would) is deleted.
        sim.delete(SERVICES, "default", "plain-svc")
        [plain_slice] = sim.list(ENDPOINTSLICES, "default", label_selector="kubernetes.io/service-name=plain-svc")
        sim.delete(ENDPOINTSLICES, "default", plain_slice["metadata"]["name"])
        await services.wait_for(lambda w: any(d["type"] == "DELETED" and d["object"]["metadata"]["name"] ==
                                              "plain-svc" for d in w.docs), "DELETED plain-svc")
        assert [d["type"] for d in services.docs] == ["DELETED"]  # --watch-only: nothing but the change
        await slices.wait_for(lambda w: any(d["type"] == "DELETED" and d["object"]["metadata"]["name"] ==
                                            plain_slice["metadata"]["name"] for d in w.docs),
                              "DELETED of the plain slice")

    # Every event any kubectl printed was filtered: no guangzhou endpoint of the demo Service ever showed.
    demo_events = [d["object"] for d in slices.docs if d["object"]["metadata"]["name"] == slice_name]
    assert all("gz-3" not in _slice_nodes(o) for o in demo_events)
    assert slices.events("DELETED") and all(d["object"]["kind"] == "EndpointSlice" for d in slices.docs)
