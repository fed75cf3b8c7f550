"""The simulator's upstream modes: ConfigMaps (node topology buckets), streaming lists on, off
(422) or accepted then failed, lists from the watch cache ignoring limit, consistent paged lists,
counted reads, and a restart that loses the watch history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from apisim import Simulator
from apisim.seeds import scale_cluster, servicegrid_demo
from kubeapi.node_topology import LABEL_SELECTOR, encode_bucket
from kubeapi.resources import CONFIGMAPS, NODES
from tests.support.stack import running_simulator

NODES_PATH = "/api/v1/nodes"
STREAM = {"watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
          "allowWatchBookmarks": "true", "timeoutSeconds": "5"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(servicegrid_demo, bookmark_interval=0.3)
    async with running_simulator(s):
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def events_until_end(http: aiohttp.ClientSession, url: str, params: dict[str, str],
                           stop: str = "k8s.io/initial-events-end") -> tuple[int, list[dict[str, Any]]]:
    """(status, events) of a watch, read until it ends or a bookmark carries ``stop``."""
    out: list[dict[str, Any]] = []
    async with http.get(url, params=params) as r:
        if r.status != 200:
            return r.status, [await r.json()]
        async for raw in r.content:
            if not raw.strip():
                continue
            ev = orjson.loads(raw)
            out.append(ev)
            annotations = (ev["object"].get("metadata") or {}).get("annotations") or {}
            if ev["type"] == "BOOKMARK" and annotations.get(stop) == "true":
                break
    return 200, out


async def test_configmaps_are_listed_and_watched_with_a_label_selector_in_a_namespace(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    bucket = encode_bucket(0, 1, 1, ["location"], {"bj-1": {"location": "beijing"}}, "edge-system")
    sim.create(CONFIGMAPS, bucket)
    sim.create(CONFIGMAPS, {"metadata": {"name": "other", "namespace": "edge-system"}, "data": {}})
    path = CONFIGMAPS.collection_path("edge-system")
    async with http.get(sim.url + path, params={"labelSelector": LABEL_SELECTOR}) as r:
        doc = await r.json()
    assert doc["kind"] == "ConfigMapList" and [i["metadata"]["name"] for i in doc["items"]] == ["node-topology-1-0"]
    status, events = await events_until_end(http, sim.url + path, {**STREAM, "labelSelector": LABEL_SELECTOR})
    assert status == 200
    assert [(e["type"], e["object"]["kind"]) for e in events] == [("ADDED", "ConfigMap"), ("BOOKMARK", "ConfigMap")]
    async with http.get(sim.url + "/api/v1") as r:
        assert "configmaps" in {res["name"] for res in (await r.json())["resources"]}


async def test_streaming_lists_off_are_refused_with_the_feature_gate_422(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.watch_list = "off"
    status, [body] = await events_until_end(http, sim.url + NODES_PATH, STREAM)
    assert status == 422 and body["reason"] == "Invalid"
    assert "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled" in body["message"]
    # A plain watch and a list are served as ever.
    async with http.get(sim.url + NODES_PATH) as r:
        assert r.status == 200


async def test_a_streaming_list_accepted_then_failed_is_one_error_event(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.watch_list = "error"
    status, events = await events_until_end(http, sim.url + NODES_PATH, STREAM)
    assert status == 200
    [event] = events
    assert event["type"] == "ERROR" and event["object"]["code"] == 500
    assert event["object"]["reason"] == "InternalError" and "RequestWatchProgress" in event["object"]["message"]


async def test_lists_at_resource_version_0_ignore_limit_and_consistent_lists_are_paged(
    http: aiohttp.ClientSession,
) -> None:
    s = Simulator(lambda: scale_cluster(1, nodes=30, zones=2, units=2, services=2, endpoints=4))
    async with running_simulator(s):
        async with http.get(s.url + NODES_PATH, params={"resourceVersion": "0", "limit": "10"}) as r:
            cached = await r.json()
        async with http.get(s.url + NODES_PATH, params={"limit": "10"}) as r:
            consistent = await r.json()
    assert len(cached["items"]) == 30 and "continue" not in cached["metadata"]
    assert len(consistent["items"]) == 10 and consistent["metadata"]["continue"]


async def test_reads_are_counted_per_user_resource_and_verb(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.reviews.tokens["t-1"] = {"username": "wrapper-1"}
    auth = {"Authorization": "Bearer t-1"}
    async with http.get(sim.url + NODES_PATH, headers=auth) as r:
        assert r.status == 200
    async with http.get(sim.url + NODES_PATH + "/bj-1", headers=auth) as r:
        assert r.status == 200
    await events_until_end(http, sim.url + NODES_PATH, STREAM)
    assert sim.reads("nodes", "list", "wrapper-1") == 1 and sim.reads("nodes", "get", "wrapper-1") == 1
    assert sim.reads("nodes", "watchlist") == 1 and sim.reads("nodes", "watchlist", "wrapper-1") == 0


async def test_a_restart_keeps_the_objects_and_expires_older_watch_resumes(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    before = sim.rv
    sim.patch_labels(NODES, None, "bj-1", {"touched": "yes"})
    await sim.restart()
    assert sim.get(NODES, None, "bj-1")["metadata"]["labels"]["touched"] == "yes"
    status, [event] = await events_until_end(http, sim.url + NODES_PATH,
                                             {"watch": "1", "resourceVersion": str(before), "timeoutSeconds": "2"})
    assert status == 200 and event["type"] == "ERROR" and event["object"]["code"] == 410
    status, events = await events_until_end(http, sim.url + NODES_PATH,
                                            {"watch": "1", "resourceVersion": str(sim.rv), "timeoutSeconds": "1"})
    assert status == 200 and events == []
