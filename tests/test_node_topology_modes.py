"""Node topology end to end, against the simulator: node labels from the publisher's buckets (as a
test helper writes them with kubeapi.node_topology.encode_bucket) or from a metadata-only watch of
every Node, the switch between them, and what a foreign Node's heartbeat costs in each."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.informers import DEFAULT_TOPOLOGY_NAMESPACE, UpstreamOptions
from kubeapi.node_topology import bucket_of, encode_bucket
from kubeapi.resources import CONFIGMAPS, ENDPOINTSLICES, NODES, SERVICES
from tests.support.faultkit import demo_slice, list_items, node_names, running_wrapper
from tests.support.stack import running_simulator
from tests.support.waiting import eventually
from wrapper.compose import Running

NS = DEFAULT_TOPOLOGY_NAMESPACE
DEMO_LABELS = {"bj-1": {"location": "beijing"}, "bj-3": {"location": "beijing"},
               "gz-2": {"location": "guangzhou"}, "gz-3": {"location": "guangzhou"}}


def write_buckets(sim: Simulator, labels: dict[str, dict[str, str]], *, buckets: int = 1, generation: int = 1,
                  keys: tuple[str, ...] = ("location",)) -> list[str]:
    """What the publisher writes: ``labels`` sharded into ``buckets`` ConfigMaps of ``generation``."""
    names = []
    for index in range(buckets):
        nodes = {n: lbl for n, lbl in labels.items() if bucket_of(n, buckets) == index}
        names.append(sim.create(CONFIGMAPS, encode_bucket(index, buckets, generation, keys, nodes, NS))
                     ["metadata"]["name"])
    return names


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(servicegrid_demo(), bookmark_interval=0.3)
    async with running_simulator(s):
        yield s


async def demo_nodes(w: Running) -> set[str | None]:
    return node_names(demo_slice(await list_items(w.url, ENDPOINTSLICES)))


def heartbeat(sim: Simulator, node: str, i: int) -> int:
    """A status update of ``node`` (what a kubelet sends every few minutes); its resourceVersion."""
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "lastHeartbeatTime": f"2026-01-01T00:00:{i:02d}Z"}
    obj = sim.patch(NODES, None, node, {"status": {"conditions": [ready]}})
    return int(obj["metadata"]["resourceVersion"])


async def test_with_the_publishers_buckets_node_labels_come_from_them_and_no_node_but_the_local_is_watched(
    sim: Simulator,
) -> None:
    # The buckets put gz-2 in beijing while its Node says guangzhou: what is served shows the source.
    write_buckets(sim, {**DEMO_LABELS, "gz-2": {"location": "beijing"}}, buckets=2)
    async with running_wrapper(sim.url) as w:
        assert w.informers.node_topology.mode == "publisher"
        assert "node-labels" not in w.informers.reflectors
        assert await demo_nodes(w) == {"bj-1", "bj-3", "gz-2"}
        # The publisher moves gz-2 back: the wrapper follows the buckets.
        [cm] = [c for c in sim.list(CONFIGMAPS, NS) if "gz-2" in c["data"]]
        cm["data"]["gz-2"] = '{"location":"guangzhou"}'
        sim.update(CONFIGMAPS, cm)
        await eventually(lambda: w.cache.node_labels["gz-2"] == {"location": "guangzhou"}, 10, "the bucket change")
        assert await demo_nodes(w) == {"bj-1", "bj-3"}


@pytest.mark.parametrize("mode", ["publisher", "nodes"])
async def test_a_foreign_nodes_heartbeat_costs_no_re_filter_and_no_client_event(sim: Simulator, mode: str) -> None:
    if mode == "publisher":
        write_buckets(sim, DEMO_LABELS)
    async with running_wrapper(sim.url) as w:
        assert w.informers.node_topology.mode == mode
        runs = w.cache.refilter_runs
        heads = {plural: view.head() for plural, view in w.cache.views.items()}
        last = 0
        for i in range(10):
            for node in ("bj-3", "gz-2", "gz-3"):
                last = heartbeat(sim, node, i)
        if mode == "nodes":
            # They do reach the wrapper (its metadata watch of every Node), and change nothing there.
            labels = w.informers.reflectors["node-labels"]
            await eventually(lambda: labels.rv >= last, 10, "the heartbeats at the wrapper")
            assert labels.state.events >= 30
        else:
            # They never reach it: a later Service change comes alone.
            barrier = int(sim.patch_labels(SERVICES, "default", "plain-svc", {"after": "heartbeats"})["metadata"][
                "resourceVersion"])
            await eventually(lambda: w.cache.views[SERVICES.plural].rv >= barrier, 10, "the later Service change")
            heads[SERVICES.plural] += 1
        assert w.cache.refilter_runs == runs
        assert {plural: view.head() for plural, view in w.cache.views.items()} == heads, "no event for any client"


async def test_in_the_nodes_mode_the_local_nodes_heartbeat_reaches_the_wrapper_once(sim: Simulator) -> None:
    # The local Node is watched in full; the metadata watch of the others leaves it out, so its
    # heartbeat is one event upstream, not two.
    async with running_wrapper(sim.url, upstream=UpstreamOptions(node_topology="nodes")) as w:
        labels = w.informers.reflectors["node-labels"]
        await eventually(lambda: labels.state.synced_once, 10, "the metadata watch of the other Nodes")
        sim.traffic.reset()
        heartbeat(sim, w.cache.local_node, 1)
        last = heartbeat(sim, "gz-3", 2)
        # Each watch delivers in order: once the metadata watch has the later one, it sent all it would.
        await eventually(lambda: labels.rv >= last and w.informers.reflectors["nodes"].rv >= last - 1, 10,
                         "both heartbeats at the wrapper")
        assert sim.traffic.total(plural="nodes").objects == 2  # one per heartbeat
        assert w.cache.node_labels["gz-3"] == {"location": "guangzhou", "kubernetes.io/arch": "amd64",
                                               "kubernetes.io/os": "linux", "kubernetes.io/hostname": "gz-3",
                                               "topology.kubernetes.io/zone": "guangzhou"}


async def test_the_source_follows_the_buckets_appearing_and_disappearing_and_each_switch_is_logged_once(
    sim: Simulator, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cache.topology_feed")
    async with running_wrapper(sim.url) as w:
        topology = w.informers.node_topology
        assert topology.mode == "nodes" and "node-labels" in w.informers.reflectors
        assert await demo_nodes(w) == {"bj-1", "bj-3"}
        # The publisher starts: its buckets say gz-3 is in beijing.
        names = write_buckets(sim, {**DEMO_LABELS, "gz-3": {"location": "beijing"}}, buckets=2)
        await eventually(lambda: topology.mode == "publisher" and "node-labels" not in w.informers.reflectors, 10,
                         "the switch to the buckets")
        await eventually(lambda: w.cache.node_labels["gz-3"] == {"location": "beijing"}, 10, "the buckets' labels")
        assert await demo_nodes(w) == {"bj-1", "bj-3", "gz-3"}
        # The publisher is removed with its buckets: back to the Nodes' own labels.
        for name in names:
            sim.delete(CONFIGMAPS, NS, name)
        await eventually(lambda: topology.mode == "nodes" and "node-labels" in w.informers.reflectors, 10,
                         "the switch back to the Nodes")
        await eventually(lambda: w.cache.node_labels["gz-3"].get("location") == "guangzhou", 10, "the Nodes' labels")
        assert await demo_nodes(w) == {"bj-1", "bj-3"}
        assert topology.switches == 2
    switches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node topology: node labels")]
    assert len(switches) == 3, switches  # the first decision, then two switches


async def test_forced_nodes_mode_never_reads_configmaps(sim: Simulator) -> None:
    write_buckets(sim, DEMO_LABELS)
    async with running_wrapper(sim.url, upstream=UpstreamOptions(node_topology="nodes")) as w:
        assert w.informers.node_topology.mode == "nodes" and await demo_nodes(w) == {"bj-1", "bj-3"}
    assert sum(sim.reads("configmaps", verb) for verb in ("list", "watch", "watchlist", "get")) == 0


async def test_services_needing_keys_the_buckets_do_not_track_are_logged_once(
    sim: Simulator, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.topology_feed")
    write_buckets(sim, {name: {"zone": "z1"} for name in DEMO_LABELS}, keys=("zone",))
    async with running_wrapper(sim.url) as w:
        assert w.informers.node_topology.mode == "publisher"
        # A new opted-in Service reading the same key: no second warning.
        svc: dict[str, Any] = sim.get(SERVICES, "default", "servicegrid-demo-svc")
        svc["metadata"] = {"name": "another", "namespace": "default",
                           "annotations": svc["metadata"]["annotations"]}
        svc["spec"].pop("clusterIP", None)
        svc["spec"].pop("clusterIPs", None)
        sim.create(SERVICES, svc)
        await eventually(lambda: "default/another" in w.cache.views[SERVICES.plural].objects, 10, "the new Service")
    warned = [r.getMessage() for r in caplog.records if "do not track" in r.getMessage()]
    assert len(warned) == 1 and "['location']" in warned[0]
