"""Differential: with no opted-in Service the wrapper must answer exactly like the simulator.

Lists (items, kinds, list resourceVersion once the wrapper caught up), single gets, and
watches from a given resourceVersion (the same events in the same order, objects and
resourceVersions included; bookmarks are ignored because their timing is free).
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from apisim.seeds import node, scale_cluster, service
from apisim.server import Simulator
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from tests.support.oracle import PROXY_LABELS
from tests.support.stack import Stack, stack, wait_caught_up
from tests.support.waiting import eventually

LOCAL = "node-00000"
Request = tuple[Resource, str | None, str, str]  # resource, namespace, labelSelector, fieldSelector

ONLY_LOCAL = f"metadata.name={LOCAL}"
REQUESTS: list[Request] = [
    # The wrapper holds the local Node alone: what kube-proxy asks of Nodes (any other Node read
    # passes through to the apiserver, tests/test_node_reads.py).
    (NODES, None, "", ONLY_LOCAL),
    (NODES, None, "location", ONLY_LOCAL),
    (NODES, None, "", f"{ONLY_LOCAL},metadata.name!=node-00003"),
    (NODES, None, "location in (unit-00,unit-01,unit-02),!nothing", ONLY_LOCAL),
    (SERVICES, None, "", ""),
    (SERVICES, "ns-01", "", ""),
    (SERVICES, None, PROXY_LABELS, "spec.clusterIP!=None"),
    (SERVICES, None, "", "metadata.namespace=ns-02"),
    (SERVICES, "ns-00", "tier=web", ""),
    (ENDPOINTSLICES, None, "", ""),
    (ENDPOINTSLICES, "ns-00", "", ""),
    (ENDPOINTSLICES, None, PROXY_LABELS, ""),
    (ENDPOINTSLICES, None, "kubernetes.io/service-name=svc-00004", ""),
    (ENDPOINTSLICES, "ns-02", "tier=web", "metadata.namespace=ns-02"),
    (ENDPOINTS, None, "", ""),
    (ENDPOINTS, "ns-02", "", ""),
    (ENDPOINTS, None, "", "metadata.name=svc-00005"),
    (ENDPOINTS, None, "tier", ""),
]
IDS = [f"{r.plural}-ns={ns or 'all'}-l={lbl or '_'}-f={fld or '_'}" for r, ns, lbl, fld in REQUESTS]


def seed() -> list[Any]:
    """No Service opts in: no topology annotation anywhere. Some headless ones, labelled ones."""
    items = scale_cluster(11, nodes=12, zones=3, units=3, services=40, annotated_fraction=0.0, endpoints=160,
                          namespaces=3, headless_fraction=0.15, with_endpoints=True)
    for _, obj in items:
        meta = obj["metadata"]
        if meta.get("namespace") and sum(map(ord, meta["name"])) % 3 == 0:
            meta.setdefault("labels", {})["tier"] = "web"
    return items


@pytest.fixture
async def pair() -> AsyncIterator[Stack]:
    async with stack(seed(), node=LOCAL, sim_bookmarks=0.2, wrapper_bookmarks=0.2) as st:
        yield st


def url_of(base: str, res: Resource, ns: str | None) -> str:
    return base + res.collection_path(ns)


def params_of(label: str, field: str, **extra: str) -> dict[str, str]:
    p = {k: v for k, v in (("labelSelector", label), ("fieldSelector", field)) if v}
    return {**p, **extra}


async def get(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> tuple[int, Any]:
    async with session.get(url, params=params) as resp:
        return resp.status, orjson.loads(await resp.read())


def change_cluster(sim: Simulator, rng: random.Random, n: int) -> None:
    """Changes that move objects in and out of every selector above (still no opted-in Service)."""
    for i in range(n):
        op = rng.randrange(8)
        if op == 0:
            sim.patch_labels(NODES, None, f"node-{rng.randrange(12):05d}", {"location": f"unit-{rng.randrange(3):02d}"})
        elif op == 1:
            ns = f"ns-{rng.randrange(3):02d}"
            svcs = sim.list(SERVICES, ns)
            victim = rng.choice(svcs)["metadata"]["name"]
            sim.patch_labels(SERVICES, ns, victim, {"tier": rng.choice(["web", None]),
                                                    "service.kubernetes.io/headless": rng.choice(["", None, None])})
        elif op == 2:
            sl = copy.deepcopy(rng.choice(sim.list(ENDPOINTSLICES)))
            extra = {"addresses": [f"10.200.{i % 250}.{rng.randrange(1, 250)}"],
                     "conditions": {"ready": rng.random() < 0.7}, "nodeName": f"node-{rng.randrange(12):05d}"}
            sl["endpoints"] = [*sl["endpoints"][: rng.randrange(len(sl["endpoints"]) + 1)], extra]
            sim.update(ENDPOINTSLICES, sl)
        elif op == 3:
            sl = rng.choice(sim.list(ENDPOINTSLICES))
            meta = sl["metadata"]
            sim.patch_labels(ENDPOINTSLICES, meta["namespace"], meta["name"],
                             {"tier": rng.choice(["web", None]),
                              "kubernetes.io/service-name": rng.choice([meta["labels"]["kubernetes.io/service-name"],
                                                                        "svc-00004"])})
        elif op == 4:
            ep = copy.deepcopy(rng.choice(sim.list(ENDPOINTS)))
            ep.setdefault("metadata", {}).setdefault("labels", {})["tier"] = rng.choice(["web", "db"])
            for sub in ep.get("subsets") or []:
                sub["addresses"] = (sub.get("addresses") or [])[1:] or [{"ip": "10.201.0.1"}]
            sim.update(ENDPOINTS, ep)
        elif op == 5:
            name = f"diff-{i}-{rng.randrange(10**6)}"
            ns = f"ns-{rng.randrange(3):02d}"
            created = sim.create(SERVICES, service(ns, name, f"10.97.{i % 250}.{rng.randrange(1, 250)}", 80, 80,
                                                   labels={"tier": "web"} if rng.random() < 0.5 else None))
            sim.create(ENDPOINTS, {"metadata": {"name": name, "namespace": ns}, "subsets": []})
            if rng.random() < 0.5:
                sim.delete(SERVICES, ns, created["metadata"]["name"])
        elif op == 6:
            name = f"extra-{i}-{rng.randrange(10**6)}"
            sim.create(NODES, node(name, "192.168.77.7", {"location": "unit-01"}))
            if rng.random() < 0.5:
                sim.delete(NODES, None, name)
        else:
            eps = sim.list(ENDPOINTS)
            victim = rng.choice(eps)["metadata"]
            sim.delete(ENDPOINTS, victim["namespace"], victim["name"])


async def test_lists_and_gets_equal_the_simulators_for_every_resource_namespace_and_selector(pair: Stack) -> None:
    sim, w = pair.sim, pair.wrapper
    change_cluster(sim, random.Random(1), 40)
    await wait_caught_up(w, sim)
    async with aiohttp.ClientSession() as s:
        for res, ns, label, field in REQUESTS:
            for extra in ({}, {"resourceVersion": "0"}, {"resourceVersion": str(sim.rv)}):
                params = params_of(label, field, **extra)
                code_w, got = await get(s, url_of(w.url, res, ns), params)
                code_s, want = await get(s, url_of(sim.url, res, ns), params)
                assert (code_w, code_s) == (200, 200), (res.plural, ns, params, got, want)
                # Object for object, resourceVersions included, and the same list resourceVersion.
                assert got == want, (res.plural, ns, params)
            assert want["items"] or (res, label) == (SERVICES, "tier=web"), (res.plural, ns, label, field)
        for res in (NODES, SERVICES, ENDPOINTSLICES, ENDPOINTS):
            for obj in sim.list(res, field_selector=ONLY_LOCAL if res is NODES else "")[:5]:
                meta = obj["metadata"]
                path = f"{res.collection_path(meta.get('namespace'))}/{meta['name']}"
                code_w, got = await get(s, w.url + path, {})
                code_s, want = await get(s, sim.url + path, {})
                assert (code_w, got) == (code_s, want), path


class Target:
    """The resourceVersion a watch reads up to; may be set after the watch was opened."""

    def __init__(self, rv: int | None = None) -> None:
        self.rv = rv


async def collect_until(session: aiohttp.ClientSession, url: str, params: dict[str, str], target: Target,
                        timeout: float = 20) -> list[dict[str, Any]]:
    """Events of a watch (bookmarks dropped) until one, or a bookmark, reaches ``target.rv``."""
    out: list[dict[str, Any]] = []
    async with session.get(url, params={**params, "allowWatchBookmarks": "true"},
                           timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        assert resp.status == 200, (url, params, await resp.text())
        while True:
            line = await resp.content.readline()
            assert line, f"watch {url} {params} ended before resourceVersion {target.rv}: {out[-3:]}"
            ev = orjson.loads(line)
            assert ev["type"] != "ERROR", ev
            rv = int(ev["object"]["metadata"]["resourceVersion"])
            if ev["type"] != "BOOKMARK":
                out.append(ev)
            if target.rv is not None and rv >= target.rv:
                return out


Pair = tuple[list[dict[str, Any]], list[dict[str, Any]]]


async def _watch_pair(s: aiohttp.ClientSession, st: Stack, req: Request, params: dict[str, str],
                      target: Target) -> Pair:
    res, ns, label, field = req
    p = {**params_of(label, field), **params}
    wrapper_events, sim_events = await asyncio.gather(collect_until(s, url_of(st.wrapper.url, res, ns), p, target),
                                                      collect_until(s, url_of(st.sim.url, res, ns), p, target))
    return wrapper_events, sim_events


async def open_watch_pairs(s: aiohttp.ClientSession, st: Stack, params: dict[str, str],
                           target: Target) -> list[asyncio.Task[Pair]]:
    """One watch per request on each side; returns once all of them have started."""
    before_sim, before_wrapper = st.sim.open_watches, len(st.wrapper.watches)
    tasks = [asyncio.create_task(_watch_pair(s, st, req, params, target)) for req in REQUESTS]
    await eventually(lambda: (st.sim.open_watches >= before_sim + len(REQUESTS)
                              and len(st.wrapper.watches) >= before_wrapper + len(REQUESTS)), 10,
                     "every watch to be open on both sides",
                     detail=lambda: f"simulator {st.sim.open_watches}, wrapper {len(st.wrapper.watches)}")
    return tasks


def matching_count(sim: Simulator, req: Request) -> int:
    res, ns, label, field = req
    return len(sim.list(res, ns, label, field))


async def test_watches_from_a_resource_version_send_the_same_events_as_the_simulator(pair: Stack) -> None:
    sim, w = pair.sim, pair.wrapper
    await wait_caught_up(w, sim)
    start = sim.rv
    params = {"watch": "true", "resourceVersion": str(start)}
    async with aiohttp.ClientSession() as s:
        # Live: watches opened before the changes.
        live_target = Target()
        live = await open_watch_pairs(s, pair, params, live_target)
        change_cluster(sim, random.Random(2), 80)
        await wait_caught_up(w, sim)
        live_target.rv = final = sim.rv
        # Replay: the same watches opened after the changes, resuming from the same RV.
        replay = await asyncio.gather(*(_watch_pair(s, pair, req, params, Target(final)) for req in REQUESTS))
        live_results = await asyncio.gather(*live)
    for req_id, (got, want), (live_got, live_want) in zip(IDS, replay, live_results, strict=True):
        assert got == want, req_id
        assert live_got == live_want == want, req_id
        assert all(int(e["object"]["metadata"]["resourceVersion"]) > start for e in got)
    assert sum(len(want) for _, want in replay) > 80


@pytest.mark.parametrize("initial", ["unset", "0", "streaming"])
async def test_watches_with_initial_state_send_the_same_objects_and_then_the_same_events(
    pair: Stack, initial: str
) -> None:
    sim, w = pair.sim, pair.wrapper
    change_cluster(sim, random.Random(3), 30)
    await wait_caught_up(w, sim)
    params = {"watch": "true"}
    if initial == "0":
        params["resourceVersion"] = "0"
    elif initial == "streaming":
        params.update(sendInitialEvents="true", resourceVersionMatch="NotOlderThan")
    counts = [matching_count(sim, req) for req in REQUESTS]
    target = Target()
    async with aiohttp.ClientSession() as s:
        tasks = await open_watch_pairs(s, pair, params, target)
        change_cluster(sim, random.Random(4), 40)
        await wait_caught_up(w, sim)
        target.rv = sim.rv
        results = await asyncio.gather(*tasks)
    for req_id, n, (got, want) in zip(IDS, counts, results, strict=True):
        # The initial state is a set (the wrapper sends it oldest resourceVersion first so RVs
        # never go backwards; the simulator by key); after it, the same sequence of changes.
        def initial_set(events: list[dict[str, Any]], n: int = n) -> list[bytes]:
            assert all(e["type"] == "ADDED" for e in events[:n])
            return sorted(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in events[:n])
        assert len(got) >= n and len(want) >= n, req_id
        assert initial_set(got) == initial_set(want), req_id
        assert got[n:] == want[n:], req_id


async def test_after_a_forced_upstream_relist_lists_still_equal_the_simulators(pair: Stack) -> None:
    sim, w = pair.sim, pair.wrapper
    sim.pause_watches()
    sim.patch_labels(NODES, None, LOCAL, {"location": "unit-02"})
    sim.create(NODES, node("after-pause", "192.168.88.8"))  # a later change: the list RV moves past the patch
    sim.compact()
    sim.close_watches()
    sim.resume_watches()
    await eventually(lambda: w.informers.reflectors["nodes"].state.relists >= 1, 10, "the wrapper to relist Nodes")
    await wait_caught_up(w, sim)
    path = NODES.collection_path() + f"/{LOCAL}"
    async with aiohttp.ClientSession() as s:
        _, got = await get(s, w.url + path, {})
        # What a client does next with what it read: an update with that resourceVersion.
        async with s.put(sim.url + path, data=orjson.dumps(got), headers={"Content-Type": "application/json"}) as r:
            put_status = r.status
        _, listed_w = await get(s, w.url + NODES.collection_path(), {"fieldSelector": ONLY_LOCAL})
        _, listed_s = await get(s, sim.url + NODES.collection_path(), {"fieldSelector": ONLY_LOCAL})
    assert put_status == 200, f"update with the resourceVersion read through the wrapper: HTTP {put_status}"
    assert listed_w == listed_s
