"""A watch resumed from an RV gets exactly what changed after it: no replay of what it has seen.

The wrapper publishes changes in batches (a node relabel re-filters several slices at once).
Only a batch's last event carries the batch's RV; the others carry the RV the view already
had. A client that listed at an RV, or saw a whole batch, gets nothing at that RV again; a
client cut mid-batch resumes from its last RV and gets the rest.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest

from apisim.seeds import Backend, SeedList, endpoint_slice, endpoints, node, service
from apisim.server import Simulator
from cache.cluster import ClusterCache
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from tests.support.faultkit import RawWatch, get_json, list_items, open_watch
from tests.support.kubectl import find_kubectls
from tests.support.kubectl_watch import KubectlWatch
from tests.support.oracle import key_of
from tests.support.stack import stack, wait_caught_up
from tests.support.waiting import eventually
from wrapper.compose import Running

LOCAL = "bj-1"


def grid_seed(services: int = 3) -> SeedList:
    """Two locations of two nodes each, and ``services`` location-aware Services with an endpoint per node."""
    nodes = {"bj-1": "beijing", "bj-3": "beijing", "gz-2": "guangzhou", "gz-3": "guangzhou"}
    out: SeedList = [(NODES, node(n, f"192.168.0.{i + 1}", {"location": loc})) for i, (n, loc) in
                     enumerate(nodes.items())]
    for s in range(services):
        svc = service("default", f"grid-{s}", f"10.96.0.{s + 10}", 80, 8080,
                      annotations={"topologyKeys": '["location"]'})
        backends = [Backend(f"10.1.{s}.{i + 1}", n) for i, n in enumerate(nodes)]
        out += [(SERVICES, svc), (ENDPOINTSLICES, endpoint_slice(svc, backends, 8080)),
                (ENDPOINTS, endpoints(svc, backends, 8080))]
    return out


async def marker_slice(sim: Simulator, name: str) -> None:
    svc = sim.get(SERVICES, "default", "grid-0")
    sim.create(ENDPOINTSLICES, endpoint_slice(svc, [Backend("10.9.9.9", "bj-1")], 8080, name=name))


def saw_object(watch: RawWatch, name: str) -> bool:
    return any(e["object"]["metadata"]["name"] == name for e in watch.events)


def item(obj: dict[str, Any]) -> dict[str, Any]:
    """An event's object as a list item (lists leave out kind and apiVersion)."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def rvs(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["object"]["metadata"]["resourceVersion"]) for e in events]


async def listed(w: Running, resource: Resource) -> tuple[int, dict[str, dict[str, Any]]]:
    code, doc = await get_json(w.url + resource.collection_path())
    assert code == 200, doc
    return int(doc["metadata"]["resourceVersion"]), {key_of(o): o for o in doc["items"]}


@pytest.mark.parametrize("resource", [ENDPOINTSLICES, ENDPOINTS], ids=lambda r: r.plural)
async def test_a_watch_from_the_rv_a_list_returned_after_a_relabel_gets_no_replay(resource: Resource) -> None:
    async with stack(grid_seed(), node=LOCAL) as st:
        sim, w = st.sim, st.wrapper
        relabel_rv = int(sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})["metadata"]["resourceVersion"])
        await wait_caught_up(w, sim)
        list_rv, before = await listed(w, resource)
        assert list_rv == relabel_rv  # the re-filter batch brought this view to the relabel's RV
        watch = await open_watch(w.url, resource, resourceVersion=str(list_rv))
        try:
            await marker_slice(sim, "marker")
            sim.patch_labels(SERVICES, "default", "grid-1", {"marker": "yes"})
            if resource is ENDPOINTSLICES:
                await eventually(lambda: any(e["object"]["metadata"]["name"] == "marker" for e in watch.events), 10,
                               "the marker slice")
                assert [(e["type"], e["object"]["metadata"]["name"]) for e in watch.events] == [("ADDED", "marker")]
            else:
                # Endpoints are not touched by the marker: a later change must be the first event.
                ep = copy.deepcopy(sim.get(ENDPOINTS, "default", "grid-2"))
                ep["metadata"]["labels"] = {"marker": "yes"}
                sim.update(ENDPOINTS, ep)
                await eventually(lambda: bool(watch.events), 10, "the marker Endpoints change")
                assert [(e["type"], e["object"]["metadata"]["name"]) for e in watch.events] == [
                    ("MODIFIED", "grid-2")]
            assert all(r > list_rv for r in rvs(watch.events))
            # The list itself held the re-filtered objects: gz-2 joined beijing.
            assert any("gz-2" in str(o) for o in before.values())
        finally:
            await watch.stop()


async def test_a_fresh_kubectl_get_watch_after_a_relabel_starts_with_no_duplicate(kube_home: Path) -> None:
    found = find_kubectls()
    if not found:
        pytest.fail("no kubectl found on PATH")
    kubectl = found[-1]
    async with stack(grid_seed(), node=LOCAL) as st:
        sim, w = st.sim, st.wrapper
        sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
        await wait_caught_up(w, sim)
        slices = await list_items(w.url, ENDPOINTSLICES)
        watch = KubectlWatch(kubectl, w.url, "get", "endpointslices", "-A", "-w", "--output-watch-events", "-o",
                             "json", home=kube_home, json_output=True)
        async with watch:
            await watch.wait_for(lambda k: len(k.docs) >= len(slices), "the listed slices")
            await marker_slice(sim, "marker")
            await watch.wait_for(lambda k: any(d["object"]["metadata"]["name"] == "marker" for d in k.docs),
                                 "the marker slice")
        seen = [(d["type"], d["object"]["metadata"]["name"]) for d in watch.docs]
        assert seen == [("ADDED", o["metadata"]["name"]) for o in slices.values()] + [("ADDED", "marker")], seen


async def test_a_watcher_cut_mid_batch_resumes_from_its_last_rv_and_converges() -> None:
    async with stack(grid_seed(4), node=LOCAL) as st:
        sim, w = st.sim, st.wrapper
        list_rv, state = await listed(w, ENDPOINTSLICES)
        whole = await open_watch(w.url, ENDPOINTSLICES, resourceVersion=str(list_rv))
        try:
            sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})  # re-filters all four slices
            await eventually(lambda: len(whole.events) == 4, 10, "the re-filter batch")
            batch = whole.events
        finally:
            await whole.stop()
        assert rvs(batch) == sorted(rvs(batch)), "RVs went backwards on the stream"
        assert rvs(batch)[:-1] == [list_rv] * 3 and rvs(batch)[-1] > list_rv
        for cut in (1, 2, 3):
            # The client got `cut` events, then lost the connection: it resumes from its last RV.
            mine = dict(state)
            for ev in batch[:cut]:
                mine[key_of(ev["object"])] = item(ev["object"])
            resume_rv = rvs(batch)[cut - 1]
            rest = await open_watch(w.url, ENDPOINTSLICES, resourceVersion=str(resume_rv))
            try:
                await marker_slice(sim, f"marker-{cut}")
                await eventually(functools.partial(saw_object, rest, f"marker-{cut}"), 10, "the marker")
                assert all(r >= resume_rv for r in rvs(rest.events))
                assert rvs(rest.events) == sorted(rvs(rest.events)), "RVs went backwards on the stream"
                for ev in rest.events:
                    mine[key_of(ev["object"])] = item(ev["object"])
            finally:
                await rest.stop()
            _, truth = await listed(w, ENDPOINTSLICES)
            assert {k: v for k, v in mine.items() if "marker" not in k} == {
                k: v for k, v in truth.items() if "marker" not in k}, f"cut after {cut}"


def test_relist_differences_resume_without_replay_for_a_client_that_listed_after_them() -> None:
    sim = Simulator(grid_seed())
    cache = ClusterCache(LOCAL)
    for r in ALL:
        cache.replace(r, sim.list(r), sim.rv)
    view = cache.views[ENDPOINTSLICES.plural]
    before_rv = view.rv
    # Changes the cache's watch missed: two slices gone, one scaled, one new.
    names = sorted(s["metadata"]["name"] for s in sim.list(ENDPOINTSLICES))
    sim.delete(ENDPOINTSLICES, "default", names[0])
    sim.delete(ENDPOINTSLICES, "default", names[1])
    scaled = copy.deepcopy(sim.get(ENDPOINTSLICES, "default", names[2]))
    scaled["endpoints"] = scaled["endpoints"][:1]
    sim.update(ENDPOINTSLICES, scaled)
    sim.create(ENDPOINTSLICES, endpoint_slice(sim.get(SERVICES, "default", "grid-0"),
                                              [Backend("10.9.9.9", "bj-1")], 8080, name="new"))
    cache.replace(ENDPOINTSLICES, sim.list(ENDPOINTSLICES), sim.rv)
    assert view.rv == sim.rv
    # A client that listed before the relist gets every difference once, RVs never going back.
    evs = view.read(view.cursor_after(before_rv))
    assert sorted((e.type, e.fields["metadata"]["name"]) for e in evs) == sorted(
        [("DELETED", names[0]), ("DELETED", names[1]), ("MODIFIED", names[2]), ("ADDED", "new")])
    assert [e.rv for e in evs] == sorted(e.rv for e in evs)
    # One that lists now (at the list's RV) gets none of them again.
    assert view.read(view.cursor_after(view.rv)) == []
