"""What ``--log-level debug`` adds, and what info never says.

At debug the cache says each re-filter run (what triggered it, how many Services, how many
objects it changed, how long it took) and the front each list, get and watch it answers from the
cache (method, path and selection, peer, result size or events sent, duration). At info, a burst
of upstream events logs nothing at all: nothing is ever said per event. At debug, a relabel that
serves many objects again is one line, not one per object.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import aiohttp
import pytest

from apisim.seeds import SUPEREDGE_TOPOLOGY, scale_cluster
from apisim.server import Simulator
from cache.cluster import ClusterCache
from kubeapi.resources import ALL, ENDPOINTSLICES, NODES, SERVICES
from tests.support.oracle import key_of
from tests.support.stack import read_watch, wait_applied, wait_caught_up
from tests.support.waiting import eventually
from tests.test_cluster_cache import feed
from wrapper.compose import Running

LOCAL = "node-00000"  # location unit-00
REFILTER = re.compile(r"re-filter \((.+)\): (\d+) Services, (\d+) events, [\d.]+ ms$")


def small_cluster() -> tuple[Simulator, ClusterCache, dict[str, dict[str, dict[str, Any]]]]:
    sim = Simulator(scale_cluster(3, nodes=20, zones=2, units=4, services=60, endpoints=600))
    cache = ClusterCache(LOCAL)
    for r in ALL:
        cache.replace(r, sim.list(r), sim.rv)
    return sim, cache, {r.plural: {key_of(o): o for o in sim.list(r)} for r in ALL}


def burst(sim: Simulator, tag: str) -> None:
    """Every EndpointSlice changes once, then the local node moves to another unit."""
    for obj in sim.list(ENDPOINTSLICES):
        sim.patch_labels(ENDPOINTSLICES, obj["metadata"]["namespace"], obj["metadata"]["name"], {"burst": tag})
    location = sim.get(NODES, None, LOCAL)["metadata"]["labels"]["location"]
    sim.patch_labels(NODES, None, LOCAL, {"location": "unit-01" if location == "unit-00" else "unit-00"})


def test_a_burst_of_upstream_events_says_nothing_at_info_and_one_line_per_refilter_run_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim, cache, state = small_cluster()
    topology_services = {key_of(s) for s in sim.list(SERVICES)
                         if SUPEREDGE_TOPOLOGY in (s["metadata"].get("annotations") or {})}
    slices = sim.list(ENDPOINTSLICES)
    topology_slices = [key_of(s) for s in slices if f"{s['metadata']['namespace']}/"
                       f"{s['metadata']['labels']['kubernetes.io/service-name']}" in topology_services]
    assert 10 < len(topology_slices) < len(slices), "some Services filtered, some not"

    caplog.set_level(logging.INFO)
    burst(sim, "one")
    state = feed(cache, state, sim)
    assert caplog.records == [], "info says nothing about a burst of upstream events"

    caplog.set_level(logging.DEBUG)
    runs, events = cache.refilter_runs, cache.synthetic_events
    burst(sim, "two")
    state = feed(cache, state, sim)
    lines = [r.getMessage() for r in caplog.records]
    # One line per re-filter run: each slice of a filtered Service (served again with its
    # siblings), none for a slice served as stored; the relabel once, however many objects it changed.
    runs_said = [parsed(line) for line in lines]
    by_slice = [run for run in runs_said if run[0].startswith("endpointslice ")]
    assert sorted(trigger.split()[1] for trigger, _, _ in by_slice) == sorted(topology_slices)
    [relabel] = [run for run in runs_said if run[0] == f"local node {LOCAL} relabeled"]
    _, services, changed = relabel
    assert services > 1 and changed > 1, relabel
    assert cache.refilter_runs - runs == 1, "the slices' runs are not counted as relabel runs"
    assert changed + sum(n for _, _, n in by_slice) == cache.synthetic_events - events
    assert len(lines) == len(by_slice) + 1


def parsed(line: str) -> tuple[str, int, int]:
    """A re-filter line's trigger, Services and events."""
    match = REFILTER.match(line)
    assert match is not None, line
    return match.group(1), int(match.group(2)), int(match.group(3))


async def test_each_list_get_and_watch_served_from_the_cache_is_one_debug_line_and_nothing_at_info(
    wrapper: Running, sim: Simulator, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wrapper.requests")
    slices = wrapper.url + ENDPOINTSLICES.collection_path()
    async with aiohttp.ClientSession() as s:
        async with s.get(slices) as resp:
            assert resp.status == 200
        assert [r for r in caplog.records if r.name == "wrapper.requests"] == []

        caplog.set_level(logging.DEBUG, logger="wrapper.requests")
        async with s.get(slices, params={"labelSelector": "kubernetes.io/service-name=servicegrid-demo-svc"},
                         headers={"User-Agent": "kube-proxy/v1.33.1"}) as resp:
            listed = await resp.read()
        async with s.get(wrapper.url + "/api/v1/namespaces/default/services/servicegrid-demo-svc") as resp:
            got = await resp.read()
        async with s.get(wrapper.url + "/api/v1/namespaces/default/services/no-such-svc") as resp:
            assert resp.status == 404
        events = await read_watch(s, slices, {"watch": "1", "timeoutSeconds": "1"})
    await wait_caught_up(wrapper, sim)
    lines = [r.getMessage() for r in caplog.records if r.name == "wrapper.requests"]
    rv = wrapper.cache.views[ENDPOINTSLICES.plural].rv
    assert re.fullmatch(
        r"list GET /apis/discovery\.k8s\.io/v1/endpointslices\?labelSelector=kubernetes\.io/service-name="
        rf"servicegrid-demo-svc from 127\.0\.0\.1 \(kube-proxy/v1\.33\.1\): {len(listed)} bytes at resourceVersion "
        rf"{rv}, [\d.]+ ms", lines[0]), lines[0]
    assert re.fullmatch(rf"get GET /api/v1/namespaces/default/services/servicegrid-demo-svc from 127\.0\.0\.1 "
                        rf"\(.+\): {len(got)} bytes at resourceVersion \d+, [\d.]+ ms", lines[1]), lines[1]
    assert lines[2].endswith("services/no-such-svc from 127.0.0.1 (" + lines[2].split(" (", 1)[1].split(")")[0]
                             + "): not found")
    watch_lines = [line for line in lines if line.startswith("watch ")]
    assert len(watch_lines) == 2 and "started at resourceVersion" in watch_lines[0], watch_lines
    assert watch_lines[1].endswith(f"ended after {len(events)} events sent in " + watch_lines[1].rsplit(" ", 1)[1])
    assert "?watch=1&timeoutSeconds=1 from 127.0.0.1" in watch_lines[1]
    assert len(lines) == 5, lines


async def test_a_burst_through_the_wrapper_logs_nothing_per_event_at_info(
    wrapper: Running, sim: Simulator, caplog: pytest.LogCaptureFixture,
) -> None:
    [demo_slice] = [s["metadata"]["name"] for s in sim.list(ENDPOINTSLICES, "default")
                    if s["metadata"]["name"].startswith("servicegrid-demo-svc")]
    caplog.set_level(logging.INFO)
    caplog.clear()
    for i in range(100):  # relabels that re-filter, and changes of a filtered Service's slice
        sim.patch_labels(NODES, None, "gz-2", {"location": "beijing" if i % 2 == 0 else "guangzhou"})
        sim.patch_labels(ENDPOINTSLICES, "default", demo_slice, {"burst": str(i)})
    sim.patch_labels(NODES, None, "gz-2", {"location": "shenzhen"})
    sim.patch_labels(ENDPOINTSLICES, "default", demo_slice, {"burst": "last"})
    await wait_applied(wrapper, sim)
    await eventually(lambda: wrapper.cache.node_labels["gz-2"]["location"] == "shenzhen", 10, "the last relabel")
    assert [r.getMessage() for r in caplog.records] == []
