"""The simulator's Namespaces, as the apiserver serves them to CoreDNS's informer: list with selectors,
get, and a watch that sends a namespace when it first appears, and bookmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from apisim.seeds import service, servicegrid_demo
from apisim.server import Simulator
from kubeapi.resources import SERVICES
from tests.support.stack import running_simulator
from tests.support.watch_log import WatchLog


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(bookmark_interval=0.2)
    s.load(servicegrid_demo())
    async with running_simulator(s):
        yield s


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, await resp.json()


async def test_namespaces_carry_their_name_label_and_selectors_narrow_the_list(sim: Simulator) -> None:
    code, doc = await get(f"{sim.url}/api/v1/namespaces")
    assert code == 200 and doc["kind"] == "NamespaceList"
    items = doc["items"]
    assert isinstance(items, list)
    assert [n["metadata"]["name"] for n in items] == ["default", "kube-node-lease", "kube-public", "kube-system"]
    assert all(n["metadata"]["labels"] == {"kubernetes.io/metadata.name": n["metadata"]["name"]} for n in items)
    assert all(int(n["metadata"]["resourceVersion"]) <= int(doc["metadata"]["resourceVersion"]) for n in items)
    _, one = await get(f"{sim.url}/api/v1/namespaces?labelSelector=kubernetes.io/metadata.name%3Dkube-system")
    assert [n["metadata"]["name"] for n in one["items"]] == ["kube-system"]
    _, active = await get(f"{sim.url}/api/v1/namespaces?fieldSelector=status.phase%3DActive,metadata.name%3Ddefault")
    assert [n["metadata"]["name"] for n in active["items"]] == ["default"]
    code, bad = await get(f"{sim.url}/api/v1/namespaces?fieldSelector=spec.nope%3Dx")
    assert code == 400 and bad["reason"] == "BadRequest"
    code, missing = await get(f"{sim.url}/api/v1/namespaces/nope")
    assert code == 404 and missing["reason"] == "NotFound"


async def test_a_watch_from_the_lists_version_sends_a_new_namespace_once_and_bookmarks(sim: Simulator) -> None:
    _, doc = await get(f"{sim.url}/api/v1/namespaces")
    rv = str(doc["metadata"]["resourceVersion"])
    async with WatchLog(sim.url, "/api/v1/namespaces", rv) as every, \
            WatchLog(sim.url, "/api/v1/namespaces", rv, labelSelector="kubernetes.io/metadata.name=other") as other:
        sim.create(SERVICES, service("edge-apps", "a", "172.16.40.1", 80, 80))
        sim.create(SERVICES, service("edge-apps", "b", "172.16.40.2", 80, 80))
        await every.wait_for(lambda w: w.changes() == [("ADDED", "edge-apps")], "ADDED edge-apps")
        await every.wait_for(lambda w: any(e["type"] == "BOOKMARK" for e in w.events), "a bookmark")
        added = every.events[0]["object"]
        assert added["kind"] == "Namespace" and int(added["metadata"]["resourceVersion"]) > int(rv)
        await other.wait_for(lambda w: any(e["type"] == "BOOKMARK" for e in w.events), "a bookmark")
        assert other.changes() == []
