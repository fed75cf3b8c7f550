"""The apiserver simulator over real sockets: lists, watches, writes, discovery and fault hooks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from apisim import Simulator
from apisim.seeds import openyurt_demo, scale_cluster, servicegrid_demo
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from kubeapi.status import StatusError
from tests.support.stack import running_simulator
from tests.support.waiting import eventually, signal_when_called

SVC_PATH = "/api/v1/services"
NS_SVC_PATH = "/api/v1/namespaces/default/services"
SLICE_PATH = "/apis/discovery.k8s.io/v1/endpointslices"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(servicegrid_demo, bookmark_interval=0.3, too_large_wait=0.2, history_limit=50)
    async with running_simulator(s):
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, expect: int = 200, /, **params: str) -> Any:
    async with http.get(url, params=params) as r:
        assert r.status == expect, await r.text()
        assert r.content_type == "application/json"
        return await r.json()


class Stream:
    """Reads one watch response line by line, with a bounded wait per line."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 3.0) -> dict[str, Any] | None:
        line = await asyncio.wait_for(self.resp.content.readline(), timeout)
        return orjson.loads(line) if line else None

    async def take(self, n: int, timeout: float = 3.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(n):
            ev = await self.next(timeout)
            assert ev is not None, f"stream ended after {out}"
            out.append(ev)
        return out


def watch(http: aiohttp.ClientSession, sim: Simulator, path: str, **params: str) -> Any:
    return http.get(sim.url + path, params={"watch": "true", **params})


def svc(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"ports": [{"port": 80}]}}


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


# --- storage and lists ---------------------------------------------------------------


async def test_rv_is_one_counter_across_resources(sim: Simulator) -> None:
    start = sim.rv
    a = sim.create(SERVICES, svc("a"))
    n = sim.patch_labels(NODES, None, "bj-1", {"x": "1"})
    b = sim.create(SERVICES, svc("b"))
    rvs = [int(o["metadata"]["resourceVersion"]) for o in (a, n, b)]
    assert rvs == [start + 1, start + 2, start + 3] and sim.rv == start + 3
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"].endswith("Z")
    assert a["spec"]["clusterIP"] and a["spec"]["type"] == "ClusterIP"
    assert "generation" not in a["metadata"]
    sl = sim.list(ENDPOINTSLICES, "default", label_selector="kubernetes.io/service-name=plain-svc")[0]
    assert sl["metadata"]["generation"] == 1


async def test_list_shape_and_order(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = await get_json(http, sim.url + SVC_PATH)
    assert body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(sim.rv)
    assert names(body["items"]) == ["kubernetes", "plain-svc", "servicegrid-demo-svc"]
    assert all("kind" not in i and "apiVersion" not in i for i in body["items"])
    slices = await get_json(http, sim.url + SLICE_PATH)
    assert slices["kind"] == "EndpointSliceList" and slices["apiVersion"] == "discovery.k8s.io/v1"
    nodes = await get_json(http, sim.url + "/api/v1/nodes")
    assert names(nodes["items"]) == ["bj-1", "bj-3", "gz-2", "gz-3"]
    one = await get_json(http, sim.url + "/api/v1/nodes/gz-3")
    assert one["kind"] == "Node" and one["metadata"]["labels"]["location"] == "guangzhou"
    missing = await get_json(http, sim.url + "/api/v1/nodes/nope", 404)
    assert missing["kind"] == "Status" and missing["reason"] == "NotFound"
    other_ns = await get_json(http, sim.url + "/api/v1/namespaces/kube-system/services")
    assert other_ns["items"] == []


async def test_pagination_continue_and_expired_token(sim: Simulator, http: aiohttp.ClientSession) -> None:
    for i in range(5):
        sim.create(SERVICES, svc(f"p{i}"))
    seen: list[str] = []
    token = ""
    for _ in range(10):
        params = {"limit": "3", **({"continue": token} if token else {})}
        body = await get_json(http, sim.url + SVC_PATH, **params)
        seen += names(body["items"])
        token = body["metadata"].get("continue", "")
        if not token:
            break
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        assert doc["v"] == "meta.k8s.io/v1" and doc["start"].endswith("\x00")
        sim.create(SERVICES, svc(f"late{len(seen)}"))  # pages stay at the first page's RV
    assert seen == ["kubernetes", "p0", "p1", "p2", "p3", "p4", "plain-svc", "servicegrid-demo-svc"]

    first = await get_json(http, sim.url + SVC_PATH, limit="2")
    assert first["metadata"]["remainingItemCount"] > 0
    sim.create(SERVICES, svc("newer"))
    sim.compact()  # the token's RV is now below the compaction point
    gone = await get_json(http, sim.url + SVC_PATH, 410, **{"continue": first["metadata"]["continue"]})
    assert gone["reason"] == "Expired" and gone["code"] == 410
    bad = await get_json(http, sim.url + SVC_PATH, 400, **{"continue": "not-a-token!"})
    assert bad["reason"] == "BadRequest"
    # RV=0 is served "from the cache": limit ignored, as the apiserver does.
    whole = await get_json(http, sim.url + SVC_PATH, limit="2", resourceVersion="0")
    assert "continue" not in whole["metadata"] and len(whole["items"]) > 2


async def test_resource_version_semantics_on_list(sim: Simulator, http: aiohttp.ClientSession) -> None:
    old_rv = sim.rv
    sim.create(SERVICES, svc("after"))
    exact = await get_json(http, sim.url + SVC_PATH, resourceVersion=str(old_rv), resourceVersionMatch="Exact")
    assert exact["metadata"]["resourceVersion"] == str(old_rv) and "after" not in names(exact["items"])
    newer = await get_json(http, sim.url + SVC_PATH, resourceVersion=str(old_rv))
    assert "after" in names(newer["items"])
    too_new = await get_json(http, sim.url + SVC_PATH, 504, resourceVersion=str(sim.rv + 100))
    assert too_new["reason"] == "Timeout" and too_new["details"]["causes"][0]["type"] == "ResourceVersionTooLarge"
    sim.compact()
    old = await get_json(http, sim.url + SVC_PATH, 410, resourceVersion=str(old_rv), resourceVersionMatch="Exact")
    assert old["reason"] == "Expired"
    invalid = await get_json(http, sim.url + SVC_PATH, 422, resourceVersionMatch="Exact")
    assert invalid["reason"] == "Invalid"


async def test_label_and_field_selectors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.create(SERVICES, {"metadata": {"name": "headless", "namespace": "default",
                                       "labels": {"service.kubernetes.io/headless": ""}},
                          "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})
    sim.create(SERVICES, {"metadata": {"name": "np", "namespace": "default", "labels": {"tier": "web"}},
                          "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
    q = {"labelSelector": "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"}
    assert "headless" not in names((await get_json(http, sim.url + SVC_PATH, **q))["items"])
    body = await get_json(http, sim.url + SVC_PATH, fieldSelector="spec.clusterIP!=None")
    assert "headless" not in names(body["items"]) and "np" in names(body["items"])
    body = await get_json(http, sim.url + SVC_PATH, fieldSelector="spec.type=NodePort")
    assert names(body["items"]) == ["np"]
    body = await get_json(http, sim.url + SVC_PATH, labelSelector="tier in (web,db)")
    assert names(body["items"]) == ["np"]
    body = await get_json(http, sim.url + SVC_PATH, labelSelector="tier notin (web),superedge.io/grid-uniq-key")
    assert names(body["items"]) == ["servicegrid-demo-svc"]
    body = await get_json(http, sim.url + "/api/v1/nodes", labelSelector="location=beijing")
    assert names(body["items"]) == ["bj-1", "bj-3"]
    body = await get_json(http, sim.url + "/api/v1/nodes", fieldSelector="metadata.name=gz-2")
    assert names(body["items"]) == ["gz-2"]
    bad = await get_json(http, sim.url + "/api/v1/nodes", 400, fieldSelector="spec.clusterIP=x")
    assert bad["kind"] == "Status"
    assert names(sim.list(SERVICES, label_selector="tier!=web", field_selector="metadata.namespace=default")) == [
        "headless", "kubernetes", "plain-svc", "servicegrid-demo-svc"]


# --- watch ---------------------------------------------------------------------------


async def test_watch_from_zero_then_live_events(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with watch(http, sim, SVC_PATH, resourceVersion="0") as r:
        assert r.status == 200 and r.content_type == "application/json"
        s = Stream(r)
        initial = await s.take(3)
        assert {e["type"] for e in initial} == {"ADDED"}
        assert all(e["object"]["kind"] == "Service" and e["object"]["apiVersion"] == "v1" for e in initial)
        sim.create(SERVICES, svc("live"))
        sim.patch_labels(SERVICES, "default", "live", {"x": "y"})
        sim.delete(SERVICES, "default", "live")
        evs = await s.take(3)
    assert [e["type"] for e in evs] == ["ADDED", "MODIFIED", "DELETED"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
    assert rvs == sorted(rvs) and rvs[-1] == sim.rv
    assert all(e["object"]["kind"] == "Service" for e in evs)
    assert evs[2]["object"]["metadata"]["labels"] == {"x": "y"}


async def test_watch_headers_arrive_before_any_event(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with watch(http, sim, "/api/v1/nodes", resourceVersion=str(sim.rv)) as r:
        assert r.status == 200  # headers flushed although nothing happened
        assert sim.open_watches == 1


async def test_watch_resume_gets_exactly_later_events(sim: Simulator, http: aiohttp.ClientSession) -> None:
    rv = sim.rv
    sim.create(SERVICES, svc("r1"))
    sim.create(ENDPOINTS, {"metadata": {"name": "r1", "namespace": "default"}})  # other resource: not seen
    sim.patch_labels(SERVICES, "default", "r1", {"a": "b"})
    async with watch(http, sim, NS_SVC_PATH, resourceVersion=str(rv), timeoutSeconds="1") as r:
        s = Stream(r)
        evs = await s.take(2)
        assert await s.next() is None  # nothing else, and the stream ends at timeoutSeconds
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "r1"), ("MODIFIED", "r1")]


async def test_watch_from_compacted_rv_gets_410_error_event(sim: Simulator, http: aiohttp.ClientSession) -> None:
    rv = sim.rv
    sim.create(SERVICES, svc("c1"))
    sim.compact()
    async with watch(http, sim, SVC_PATH, resourceVersion=str(rv)) as r:
        assert r.status == 200
        s = Stream(r)
        ev = await s.next()
        assert await s.next() is None
    assert ev is not None and ev["type"] == "ERROR"
    st = ev["object"]
    assert st["kind"] == "Status" and st["apiVersion"] == "v1" and st["code"] == 410 and st["reason"] == "Expired"
    assert f"too old resource version: {rv}" in st["message"]


async def test_history_overflow_expires_old_rvs(sim: Simulator, http: aiohttp.ClientSession) -> None:
    rv = sim.rv
    for i in range(120):  # history_limit=50 in the fixture
        sim.patch_labels(NODES, None, "bj-1", {"n": str(i)})
    async with watch(http, sim, "/api/v1/nodes", resourceVersion=str(rv)) as r:
        ev = await Stream(r).next()
    assert ev is not None and ev["type"] == "ERROR" and ev["object"]["code"] == 410


async def test_watch_too_large_rv_is_a_504_error_event(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with watch(http, sim, SVC_PATH, resourceVersion=str(sim.rv + 50)) as r:
        ev = await Stream(r).next()
    assert ev is not None and ev["type"] == "ERROR" and ev["object"]["code"] == 504


async def test_bookmarks(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with watch(http, sim, SLICE_PATH, resourceVersion=str(sim.rv), allowWatchBookmarks="true") as r:
        s = Stream(r)
        ev = await s.next(timeout=2)
        assert ev is not None and ev["type"] == "BOOKMARK"
        obj = ev["object"]
        assert obj["kind"] == "EndpointSlice" and obj["apiVersion"] == "discovery.k8s.io/v1"
        assert obj["metadata"] == {"resourceVersion": str(sim.rv)}
        sim.create(SERVICES, svc("elsewhere"))  # another resource advances the global RV
        for _ in range(5):
            ev = await s.next(timeout=2)
            assert ev is not None and ev["type"] == "BOOKMARK"
            if ev["object"]["metadata"]["resourceVersion"] == str(sim.rv):
                break
        else:
            pytest.fail("bookmark RV did not advance")
    async with watch(http, sim, SLICE_PATH, resourceVersion=str(sim.rv), timeoutSeconds="1") as r:
        assert await Stream(r).next() is None  # no bookmarks unless asked


async def test_send_initial_events_ends_with_annotated_bookmark(sim: Simulator, http: aiohttp.ClientSession) -> None:
    params = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true",
              "labelSelector": "!service.kubernetes.io/headless"}
    async with watch(http, sim, SLICE_PATH, **params) as r:
        s = Stream(r)
        evs = await s.take(4)
        assert [e["type"] for e in evs] == ["ADDED"] * 3 + ["BOOKMARK"]
        end = evs[3]["object"]
        assert end["kind"] == "EndpointSlice"
        assert end["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        assert end["metadata"]["resourceVersion"] == str(sim.rv)
        sim.patch_labels(ENDPOINTSLICES, "default", evs[0]["object"]["metadata"]["name"], {"z": "1"})
        ev = await s.next()
        assert ev is not None and ev["type"] == "MODIFIED"
    async with watch(http, sim, SLICE_PATH, sendInitialEvents="true") as r:
        assert r.status == 422


async def test_a_list_at_a_resource_version_the_store_reaches_while_it_waits_is_answered(
    http: aiohttp.ClientSession,
) -> None:
    sim = Simulator(servicegrid_demo, too_large_wait=30.0)  # the change below comes long before 504
    async with running_simulator(sim):
        target = sim.rv + 1
        with signal_when_called(sim, "wait_rv") as waiting:
            listing = asyncio.create_task(get_json(http, sim.url + SVC_PATH, 200, resourceVersion=str(target)))
            await asyncio.wait_for(waiting.wait(), 10)  # the list waits for the store to reach its RV
            sim.create(SERVICES, svc("arrives"))
            doc = await asyncio.wait_for(listing, 10)
    assert "arrives" in names(doc["items"]) and int(doc["metadata"]["resourceVersion"]) >= target


async def test_timeout_seconds_ends_the_stream_cleanly_after_serving_it(
    sim: Simulator, http: aiohttp.ClientSession,
) -> None:
    async with watch(http, sim, SVC_PATH, resourceVersion=str(sim.rv), timeoutSeconds="1") as r:
        s = Stream(r)
        sim.create(SERVICES, svc("during"))
        ev = await s.next(timeout=5)
        assert ev is not None and ev["type"] == "ADDED", "served until the timeout"
        # Ended by the server (the default timeout is 30 min), cleanly: the chunked body ends.
        assert await s.next(timeout=10) is None


async def test_selector_transitions(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.create(SERVICES, svc("t", tier="web"))
    rv = sim.rv
    async with watch(http, sim, SVC_PATH, resourceVersion=str(rv), labelSelector="tier=web") as r:
        s = Stream(r)
        sim.patch_labels(SERVICES, "default", "t", {"tier": "db"})  # leaves
        sim.patch_labels(SERVICES, "default", "t", {"x": "1"})  # still out: nothing
        sim.patch_labels(SERVICES, "default", "t", {"tier": "web"})  # enters
        sim.patch_labels(SERVICES, "default", "t", {"x": "2"})  # stays in
        evs = await s.take(3)
    assert [e["type"] for e in evs] == ["DELETED", "ADDED", "MODIFIED"]
    left = evs[0]["object"]
    assert left["metadata"]["labels"]["tier"] == "web", "DELETED carries the previous content"
    assert int(left["metadata"]["resourceVersion"]) == rv + 1, "...with the new RV"
    assert evs[1]["object"]["metadata"]["labels"]["tier"] == "web"


async def test_client_disconnect_does_not_leak_watches(sim: Simulator, http: aiohttp.ClientSession) -> None:
    for _ in range(3):
        async with watch(http, sim, SVC_PATH, resourceVersion=str(sim.rv)) as r:
            assert r.status == 200
            r.close()
    await eventually(lambda: sim.open_watches == 0, 5, "every closed watch to be forgotten")


# --- writes --------------------------------------------------------------------------


async def test_create_update_conflict_patch_delete(sim: Simulator, http: aiohttp.ClientSession) -> None:
    url = sim.url + NS_SVC_PATH
    async with http.post(url, json=svc("w")) as r:
        assert r.status == 201
        created = await r.json()
    assert created["kind"] == "Service" and created["metadata"]["namespace"] == "default"
    async with http.post(url, json=svc("w")) as r:
        assert r.status == 409 and (await r.json())["reason"] == "AlreadyExists"
    async with http.post(url, json={"metadata": {}}) as r:
        assert r.status == 422 and (await r.json())["reason"] == "Invalid"
    async with http.post(url, json=svc("x", ns="other")) as r:
        assert r.status == 400

    upd = dict(created, spec=dict(created["spec"], ports=[{"port": 81}]))
    async with http.put(url + "/w", json=upd) as r:
        assert r.status == 200
        updated = await r.json()
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    async with http.put(url + "/w", json=upd) as r:  # stale resourceVersion
        body = await r.json()
        assert r.status == 409 and body["reason"] == "Conflict"

    hdr = {"Content-Type": "application/merge-patch+json"}
    async with http.patch(url + "/w", data=orjson.dumps({"metadata": {"labels": {"a": "1", "b": "2"}}}),
                          headers=hdr) as r:
        assert r.status == 200
    async with http.patch(url + "/w", data=orjson.dumps({"metadata": {"labels": {"a": None}}}),
                          headers={"Content-Type": "application/strategic-merge-patch+json"}) as r:
        assert (await r.json())["metadata"]["labels"] == {"b": "2"}
    ops = [{"op": "test", "path": "/metadata/labels/b", "value": "2"},
           {"op": "add", "path": "/metadata/annotations", "value": {"k/v": "1"}},
           {"op": "replace", "path": "/spec/ports/0/port", "value": 82},
           {"op": "remove", "path": "/metadata/labels/b"}]
    async with http.patch(url + "/w", data=orjson.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
                          ) as r:
        assert r.status == 200, await r.text()
        patched = await r.json()
    assert patched["metadata"]["annotations"] == {"k/v": "1"} and patched["spec"]["ports"][0]["port"] == 82
    assert "b" not in patched["metadata"].get("labels", {})
    bad = [{"op": "test", "path": "/spec/type", "value": "NodePort"}]
    async with http.patch(url + "/w", data=orjson.dumps(bad), headers={"Content-Type": "application/json-patch+json"}
                          ) as r:
        assert r.status == 422
    async with http.patch(url + "/w", data=b"{}", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415

    async with http.delete(url + "/w") as r:
        assert r.status == 200
        deleted = await r.json()
    assert deleted["kind"] == "Service" and deleted["metadata"]["resourceVersion"] == str(sim.rv)
    async with http.delete(url + "/w") as r:
        assert r.status == 404
    async with http.put(url + "/w", json=upd) as r:
        assert r.status == 404
    async with http.post(sim.url + SVC_PATH, json=svc("y")) as r:
        assert r.status == 405
    with pytest.raises(StatusError) as exc:
        sim.get(SERVICES, "default", "w")
    assert exc.value.code == 404


async def test_noop_update_keeps_rv_and_status_subresource(sim: Simulator, http: aiohttp.ClientSession) -> None:
    node = sim.get(NODES, None, "bj-1")
    rv = sim.rv
    assert sim.update(NODES, node)["metadata"]["resourceVersion"] == node["metadata"]["resourceVersion"]
    assert sim.rv == rv
    patch = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}, "metadata": {"labels": {"q": "1"}}}
    async with http.patch(sim.url + "/api/v1/nodes/bj-1/status", data=orjson.dumps(patch),
                          headers={"Content-Type": "application/merge-patch+json"}) as r:
        body = await r.json()
    assert body["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    assert "q" not in body["metadata"]["labels"], "/status only changes status"


async def test_events_are_accepted(sim: Simulator, http: aiohttp.ClientSession) -> None:
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"generateName": "kube-proxy."},
          "reason": "Starting"}
    async with http.post(sim.url + "/apis/events.k8s.io/v1/namespaces/default/events", json=ev) as r:
        assert r.status == 201 and (await r.json())["metadata"]["namespace"] == "default"
    async with http.post(sim.url + "/api/v1/namespaces/default/events", data=b"k8s\x00\x01\x02",
                         headers={"Content-Type": "application/vnd.kubernetes.protobuf"}) as r:
        assert r.status == 201 and r.content_type == "application/json"
    assert sim.events_received == 2


# --- discovery and health ------------------------------------------------------------


async def test_discovery(sim: Simulator, http: aiohttp.ClientSession) -> None:
    assert (await get_json(http, sim.url + "/version"))["major"] == "1"
    assert (await get_json(http, sim.url + "/api"))["versions"] == ["v1"]
    core = await get_json(http, sim.url + "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert {"nodes", "services", "endpoints", "events", "namespaces"} <= set(by_name)
    assert by_name["services"]["shortNames"] == ["svc"] and "watch" in by_name["services"]["verbs"]
    assert by_name["nodes"]["singularName"] == "node" and not by_name["nodes"]["namespaced"]
    groups = await get_json(http, sim.url + "/apis")
    assert {g["name"] for g in groups["groups"]} == {"coordination.k8s.io", "discovery.k8s.io", "events.k8s.io"}
    disc = await get_json(http, sim.url + "/apis/discovery.k8s.io/v1")
    assert disc["resources"][0]["kind"] == "EndpointSlice"
    assert (await get_json(http, sim.url + "/apis/events.k8s.io/v1"))["groupVersion"] == "events.k8s.io/v1"
    aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    async with http.get(sim.url + "/apis", headers={"Accept": aggregated}) as r:
        assert r.content_type == "application/json" and (await r.json())["kind"] == "APIGroupList"
    async with http.get(sim.url + "/openapi/v2") as r:
        assert r.status == 404
    for path in ("/healthz", "/readyz", "/livez"):
        async with http.get(sim.url + path) as r:
            assert r.status == 200 and await r.text() == "ok"


async def test_table_output(sim: Simulator, http: aiohttp.ClientSession) -> None:
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    async with http.get(sim.url + "/api/v1/nodes", headers={"Accept": accept}) as r:
        table = await r.json()
    assert table["kind"] == "Table" and len(table["rows"]) == 4 and table["columnDefinitions"]
    async with http.get(sim.url + SVC_PATH, params={"watch": "1", "resourceVersion": "0"},
                        headers={"Accept": accept}) as r:
        evs = await Stream(r).take(2)
    assert evs[0]["object"]["kind"] == "Table" and evs[0]["object"]["columnDefinitions"]
    assert evs[1]["object"]["columnDefinitions"] is None


# --- fault hooks ---------------------------------------------------------------------


async def test_fail_next(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.fail_next(2, 429)
    for _ in range(2):
        body = await get_json(http, sim.url + SVC_PATH, 429)
        assert body["reason"] == "TooManyRequests"
    assert (await get_json(http, sim.url + "/api/v1"))["kind"] == "APIResourceList"  # discovery unaffected
    await get_json(http, sim.url + SVC_PATH)
    sim.fail_next(1, 500)
    async with watch(http, sim, SVC_PATH) as r:
        assert r.status == 500


async def test_close_watches_breaks_streams(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with watch(http, sim, SVC_PATH, resourceVersion=str(sim.rv)) as r1, \
            watch(http, sim, "/api/v1/nodes", resourceVersion=str(sim.rv)) as r2:
        await eventually(lambda: sim.open_watches == 2, 5, "both watches to be registered")
        assert sim.close_watches() == 2
        for r in (r1, r2):
            with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError)):
                await asyncio.wait_for(r.content.read(), 3)


async def test_pause_and_resume_watches(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with watch(http, sim, SVC_PATH, resourceVersion=str(sim.rv), allowWatchBookmarks="true") as r:
        s = Stream(r)
        sim.pause_watches()
        sim.create(SERVICES, svc("held"))
        with pytest.raises(TimeoutError):
            await s.next(timeout=0.8)  # neither the event nor bookmarks
        sim.resume_watches()
        ev = await s.next()
    assert ev is not None and ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "held"


async def test_restart_from_an_older_state_goes_back_like_an_etcd_restore(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    before = sim.rv
    backup = sim.save_state()
    sim.create(SERVICES, svc("lost"))
    sim.patch_labels(NODES, None, "bj-1", {"lost": "yes"})
    old_rv = sim.rv
    async with watch(http, sim, SVC_PATH, resourceVersion=str(old_rv)) as open_watch:
        await eventually(lambda: sim.open_watches == 1, 5, "the watch to be registered")
        sim.restart_from(backup)
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError)):
            await asyncio.wait_for(open_watch.content.read(), 3)  # open watches are dropped
    assert sim.rv == before
    body = await get_json(http, sim.url + SVC_PATH)
    assert body["metadata"]["resourceVersion"] == str(before) and "lost" not in names(body["items"])
    assert "lost" not in sim.get(NODES, None, "bj-1")["metadata"]["labels"]
    # The old RV is ahead of the restored store: a watch from it waits, then gets too-large.
    async with watch(http, sim, SVC_PATH, resourceVersion=str(old_rv)) as r:
        ev = await Stream(r).next()
    assert ev is not None and ev["type"] == "ERROR" and ev["object"]["code"] == 504
    assert ev["object"]["details"]["causes"][0]["type"] == "ResourceVersionTooLarge"
    # The history is gone: a resume from before the restored RV is expired.
    async with watch(http, sim, SVC_PATH, resourceVersion=str(before - 1)) as r:
        ev = await Stream(r).next()
    assert ev is not None and ev["type"] == "ERROR" and ev["object"]["code"] == 410
    # New writes reuse the RVs the lost ones had.
    again = sim.create(SERVICES, svc("new"))
    assert int(again["metadata"]["resourceVersion"]) == before + 1


# --- seeds ---------------------------------------------------------------------------


def test_seeds_are_consistent() -> None:
    sim = Simulator(servicegrid_demo)
    grid = sim.get(SERVICES, "default", "servicegrid-demo-svc")
    assert grid["metadata"]["annotations"]["topologyKeys"] == '["location"]'
    sl = sim.list(ENDPOINTSLICES, "default", label_selector="kubernetes.io/service-name=servicegrid-demo-svc")
    eps = sl[0]["endpoints"]
    assert sorted(e["nodeName"] for e in eps) == ["bj-1", "bj-3", "gz-2", "gz-3"]
    assert all(e["conditions"]["ready"] and e["zone"] for e in eps)
    assert sl[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
    assert len(sim.get(ENDPOINTS, "default", "servicegrid-demo-svc")["subsets"][0]["addresses"]) == 4
    assert len(sim.list(NODES, label_selector="location=beijing")) == 2

    yurt = Simulator(openyurt_demo)
    assert len(yurt.list(NODES, label_selector="apps.openyurt.io/nodepool in (hangzhou,shanghai)")) == 2
    ud1 = yurt.get(SERVICES, "default", "svc-ud1")
    assert ud1["metadata"]["annotations"]["openyurt.io/topologyKeys"] == "openyurt.io/nodepool"


def test_scale_cluster_is_reproducible() -> None:
    # How long it takes is a benchmark figure (``python -m bench``: cluster.generate_s), not a test.
    a = scale_cluster(7, nodes=200, services=500, endpoints=5000)
    assert scale_cluster(7, nodes=200, services=500, endpoints=5000) == a
    slices = [o for r, o in a if r is ENDPOINTSLICES]
    assert len(slices) == 500 and sum(len(s["endpoints"]) for s in slices) == 5000
    assert max(len(s["endpoints"]) for s in slices) == 100
    sim = Simulator(a)
    assert sim.count(NODES) == 200 and sim.count(SERVICES) == 500


# --- real kubectl --------------------------------------------------------------------


async def test_real_kubectl_get_nodes(sim: Simulator) -> None:
    # kubectl is a test requirement (the test extra installs one): a missing one fails, never skips.
    assert shutil.which("kubectl"), "kubectl is not on PATH"
    env = dict(os.environ, KUBECONFIG=os.devnull)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--server", sim.url, *args], capture_output=True, text=True, timeout=30,
                              env=env, check=False)

    proc = await asyncio.to_thread(run, "get", "nodes", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert [i["metadata"]["name"] for i in body["items"]] == ["bj-1", "bj-3", "gz-2", "gz-3"]
    proc = await asyncio.to_thread(run, "get", "svc", "-A")
    assert proc.returncode == 0 and "servicegrid-demo-svc" in proc.stdout, proc.stderr
    proc = await asyncio.to_thread(run, "api-resources")
    assert proc.returncode == 0 and "endpointslices" in proc.stdout, proc.stderr
