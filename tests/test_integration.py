"""End to end: the simulator upstream, the wrapper as node bj-1, real kubectl and raw HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from apisim.server import Simulator
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from tests.support.kubectl import kubectl_env, run_kubectl
from tests.support.waiting import eventually
from wrapper.compose import Running

DEMO = "servicegrid-demo-svc"


def node_names(slice_: dict[str, Any]) -> set[str]:
    return {e.get("nodeName") for e in slice_.get("endpoints") or []}


def demo_slice(items: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [s for s in items if s["metadata"]["labels"].get("kubernetes.io/service-name") == DEMO]
    return found


async def get_json(url: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_kubectl_list_through_the_wrapper_shows_only_the_beijing_endpoints(
    wrapper: Running, sim: Simulator, kube_home: Path
) -> None:
    out = json.loads(await run_kubectl("kubectl", wrapper.url, "get", "endpointslices", "-A", "-o", "json",
                                       home=kube_home))
    assert node_names(demo_slice(out["items"])) == {"bj-1", "bj-3"}
    upstream = json.loads(await run_kubectl("kubectl", sim.url, "get", "endpointslices", "-A", "-o", "json",
                                            home=kube_home))
    assert node_names(demo_slice(upstream["items"])) == {"bj-1", "bj-3", "gz-2", "gz-3"}
    # A Service without the annotation passes unchanged.
    plain = [s for s in out["items"] if s["metadata"]["labels"].get("kubernetes.io/service-name") == "plain-svc"]
    plain_up = [s for s in upstream["items"]
                if s["metadata"]["labels"].get("kubernetes.io/service-name") == "plain-svc"]
    assert plain == plain_up and plain


async def test_kubectl_get_endpoints_shows_the_filtered_core_endpoints(wrapper: Running, kube_home: Path) -> None:
    out = json.loads(await run_kubectl("kubectl", wrapper.url, "get", "endpoints", DEMO, "-o", "json",
                                       home=kube_home))
    nodes = {a.get("nodeName") for sub in out["subsets"] for a in sub.get("addresses", [])}
    assert nodes == {"bj-1", "bj-3"}


async def test_kubectl_table_output_lists_services_and_the_local_node(wrapper: Running, kube_home: Path) -> None:
    # The wrapper holds the local Node alone (a list of every Node passes through, with the
    # client's own credentials only: tests/test_node_reads.py).
    out = await run_kubectl("kubectl", wrapper.url, "get", "services", "-o", "wide", home=kube_home)
    assert DEMO in out and "plain-svc" in out
    out = await run_kubectl("kubectl", wrapper.url, "get", "nodes", "bj-1", "-o", "wide", home=kube_home)
    assert "bj-1" in out and "gz-3" not in out


async def _read_json_stream(stream: asyncio.StreamReader, want: Any, timeout: float) -> list[dict[str, Any]]:
    """Read concatenated JSON documents from kubectl until ``want(doc)`` holds."""
    decoder = json.JSONDecoder()
    buf = ""
    docs: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"kubectl never printed the expected event; got {[d.get('type') for d in docs]}")
        chunk = await asyncio.wait_for(stream.read(65536), left)
        if not chunk:
            raise AssertionError("kubectl watch ended early")
        buf += chunk.decode()
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                doc, end = decoder.raw_decode(buf)
            except json.JSONDecodeError:
                break
            buf = buf[end:]
            docs.append(doc)
            if want(doc):
                return docs


async def test_kubectl_watch_sees_a_node_relabel_as_modified(
    wrapper: Running, sim: Simulator, kube_home: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--server", wrapper.url, "get", "endpointslices", "-w", "--output-watch-events", "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=kubectl_env(kube_home),
    )
    assert proc.stdout is not None
    try:
        first = await _read_json_stream(
            proc.stdout, lambda d: d["object"]["metadata"]["labels"].get("kubernetes.io/service-name") == DEMO, 20)
        assert first[-1]["type"] == "ADDED"
        assert node_names(first[-1]["object"]) == {"bj-1", "bj-3"}
        sim.patch(NODES, None, "gz-2", {"metadata": {"labels": {"location": "beijing"}}})
        events = await _read_json_stream(
            proc.stdout, lambda d: d["type"] == "MODIFIED" and "gz-2" in node_names(d["object"]), 20)
        assert node_names(events[-1]["object"]) == {"bj-1", "bj-3", "gz-2"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_watch_resumes_from_a_list_resource_version(wrapper: Running, sim: Simulator) -> None:
    url = f"{wrapper.url}{ENDPOINTSLICES.collection_path()}"
    code, listed = await get_json(url)
    assert code == 200
    list_rv = listed["metadata"]["resourceVersion"]
    sim.patch(NODES, None, "bj-3", {"metadata": {"labels": {"location": "guangzhou"}}})
    async with aiohttp.ClientSession() as s, s.get(url, params={"watch": "true", "resourceVersion": list_rv}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        line = await asyncio.wait_for(resp.content.readline(), 10)
        ev = orjson.loads(line)
    # Only the change after list_rv, not a replay of the state: bj-3 left beijing.
    assert ev["type"] == "MODIFIED"
    assert ev["object"]["kind"] == "EndpointSlice"
    assert ev["object"]["apiVersion"] == "discovery.k8s.io/v1"
    assert int(ev["object"]["metadata"]["resourceVersion"]) > int(list_rv)
    assert node_names(ev["object"]) == {"bj-1"}


async def test_too_old_resource_version_gets_410_and_a_relist_recovers(wrapper: Running, sim: Simulator) -> None:
    url = f"{wrapper.url}{SERVICES.collection_path()}"
    async with aiohttp.ClientSession() as s, s.get(url, params={"watch": "1", "resourceVersion": "1"}) as resp:
        assert resp.status == 200
        ev = orjson.loads(await asyncio.wait_for(resp.content.readline(), 10))
        assert await resp.content.read() == b""  # the stream ends after the ERROR
    assert ev["type"] == "ERROR"
    assert ev["object"]["kind"] == "Status" and ev["object"]["code"] == 410
    assert ev["object"]["reason"] == "Expired"
    code, listed = await get_json(url)
    assert code == 200 and listed["kind"] == "ServiceList"
    assert {i["metadata"]["name"] for i in listed["items"]} >= {DEMO, "plain-svc", "kubernetes"}


async def test_upstream_compaction_makes_the_wrapper_relist_and_clients_see_the_difference(
    wrapper: Running, sim: Simulator
) -> None:
    url = f"{wrapper.url}{ENDPOINTS.collection_path('default')}/{DEMO}"
    code, before = await get_json(url)
    assert code == 200
    sim.pause_watches()
    sim.patch(NODES, None, "gz-3", {"metadata": {"labels": {"location": "beijing"}}})
    sim.compact()
    sim.close_watches()
    sim.resume_watches()
    async def relisted() -> dict[str, Any] | None:
        _, doc = await get_json(url)
        nodes = {a.get("nodeName") for sub in doc.get("subsets", []) for a in sub.get("addresses", [])}
        return doc if nodes == {"bj-1", "bj-3", "gz-3"} else None

    after = await eventually(relisted, 10, "the wrapper to relist and serve gz-3 in beijing", interval=0.05)
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    # gz-3's labels reach the wrapper through the node topology feed (here its metadata-only watch of Nodes).
    assert wrapper.informers.reflectors["node-labels"].state.relists >= 1
