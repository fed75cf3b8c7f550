"""The node topology feed's decisions, without a server: which source node labels come from (the
publisher's buckets or a metadata-only watch of every Node), when it switches, and what it logs."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache import snapshot
from cache.apierrors import ApiError, TransportError
from cache.cluster import ClusterCache
from cache.topology_feed import NodeTopology
from kubeapi.node_topology import encode_bucket
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from kubeapi.types import JSONDict
from tests.support.faultkit import node_names

LOCAL = "bj-1"
NS = "edge-system"
DEMO = "servicegrid-demo-svc"
# The demo's nodes as the publisher would track them (key "location").
DEMO_LABELS = {"bj-1": {"location": "beijing"}, "bj-3": {"location": "beijing"},
               "gz-2": {"location": "guangzhou"}, "gz-3": {"location": "guangzhou"}}


class Rig:
    """A cache loaded with the demo (the Nodes store holding the local Node alone, as the
    informers' field-selected watch gives it) and the feed in front of it."""

    def __init__(self, mode: str = "auto") -> None:
        self.sim = Simulator(servicegrid_demo())
        self.cache = ClusterCache(LOCAL)
        self.cache.configure(optional=(ENDPOINTS,), label_feed=True)
        self.calls: list[str] = []
        self.topology = NodeTopology(self.cache, mode, NS, start_nodes=lambda: self.calls.append("start nodes"),
                                     stop_nodes=lambda: self.calls.append("stop nodes"))
        self.cache.replace(NODES, self.sim.list(NODES, field_selector=f"metadata.name={LOCAL}"), self.sim.rv)
        for r in (SERVICES, ENDPOINTSLICES):
            self.cache.replace(r, self.sim.list(r), self.sim.rv)

    def nodes_listed(self, labels: dict[str, dict[str, str]] | None = None) -> None:
        """The metadata-only watch's list: every Node with its labels (the simulator's, by default)."""
        nodes = self.sim.list(NODES)
        if labels is not None:
            nodes = [{"metadata": {**n["metadata"], "labels": labels[n["metadata"]["name"]]}} for n in nodes]
        self.topology.nodes_listed(nodes, self.sim.rv)

    def demo_nodes(self) -> set[str | None]:
        [demo] = [v.obj for v in self.cache.views[ENDPOINTSLICES.plural].objects.values()
                  if v.obj["metadata"]["labels"].get("kubernetes.io/service-name") == DEMO]
        return node_names(demo)


def bucket(index: int, buckets: int, generation: int, nodes: dict[str, dict[str, str]],
           keys: tuple[str, ...] = ("location",), rv: int = 100) -> JSONDict:
    cm = encode_bucket(index, buckets, generation, keys, nodes, NS)
    cm["metadata"]["resourceVersion"] = str(rv)
    return cm


def test_without_buckets_auto_starts_the_metadata_watch_of_nodes_and_waits_for_its_list() -> None:
    r = Rig()
    r.topology.buckets_listed([], 10)
    assert r.topology.mode == "nodes" and r.calls == ["start nodes"]
    assert not r.cache.ready, "the load waits for the Nodes' labels"
    r.nodes_listed()
    assert r.demo_nodes() == {"bj-1", "bj-3"} and bool(r.cache.ready)


def test_a_complete_set_of_buckets_is_the_source_and_the_nodes_are_not_watched() -> None:
    r = Rig()
    # The buckets say gz-2 is in beijing, whatever its Node says: they are the source.
    labels = {**DEMO_LABELS, "gz-2": {"location": "beijing"}}
    r.topology.buckets_listed([bucket(0, 1, 1, labels)], 10)
    assert r.topology.mode == "publisher" and r.calls == ["stop nodes"]
    assert r.cache.ready and r.demo_nodes() == {"bj-1", "bj-3", "gz-2"}
    # Node events from a watch that raced the switch change nothing.
    r.topology.node_event("MODIFIED", {"metadata": {"name": "gz-2", "resourceVersion": "11",
                                                    "labels": {"location": "guangzhou"}}})
    assert r.demo_nodes() == {"bj-1", "bj-3", "gz-2"}


def test_an_incomplete_generation_is_not_used_until_its_last_bucket_arrives_then_the_feed_switches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cache.topology_feed")
    r = Rig()
    beijing = {k: v for k, v in DEMO_LABELS.items() if k.startswith("bj")}
    guangzhou = {**{k: v for k, v in DEMO_LABELS.items() if k.startswith("gz")}, "gz-3": {"location": "beijing"}}
    r.topology.buckets_listed([bucket(0, 2, 3, beijing)], 10)
    assert r.topology.mode == "nodes", "one of two buckets: the Nodes' metadata, meanwhile"
    r.nodes_listed()
    assert r.demo_nodes() == {"bj-1", "bj-3"}
    r.topology.bucket_event("ADDED", bucket(1, 2, 3, guangzhou, rv=20))
    assert r.topology.mode == "publisher" and r.topology.switches == 1
    assert r.calls == ["start nodes", "stop nodes"]
    assert r.demo_nodes() == {"bj-1", "bj-3", "gz-3"}
    switches = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("node topology: node labels")]
    assert len(switches) == 2 and "generation 3" in switches[1]


def test_when_the_last_bucket_is_deleted_the_feed_goes_back_to_the_nodes() -> None:
    r = Rig()
    r.topology.buckets_listed([bucket(0, 1, 1, DEMO_LABELS)], 10)
    r.topology.bucket_event("DELETED", bucket(0, 1, 1, DEMO_LABELS, rv=30))
    assert r.topology.mode == "nodes" and r.calls == ["stop nodes", "start nodes"]
    # Until the Nodes' list comes, the buckets' last labels stay (no node vanishes meanwhile).
    assert r.demo_nodes() == {"bj-1", "bj-3"}
    r.nodes_listed({**DEMO_LABELS, "gz-2": {"location": "beijing"}})
    assert r.demo_nodes() == {"bj-1", "bj-3", "gz-2"}


def test_a_re_shard_keeps_the_buckets_as_the_source_throughout() -> None:
    r = Rig()
    r.topology.buckets_listed([bucket(0, 1, 1, DEMO_LABELS)], 10)
    # The publisher writes generation 2 (two buckets), then deletes generation 1.
    half = dict(list(DEMO_LABELS.items())[:2])
    rest = dict(list(DEMO_LABELS.items())[2:])
    for cm in (bucket(0, 2, 2, half, rv=11), bucket(1, 2, 2, rest, rv=12)):
        r.topology.bucket_event("ADDED", cm)
    r.topology.bucket_event("DELETED", bucket(0, 1, 1, DEMO_LABELS, rv=13))
    assert r.topology.mode == "publisher" and r.topology.switches == 0 and r.calls == ["stop nodes"]
    assert r.demo_nodes() == {"bj-1", "bj-3"}


def test_the_local_node_keeps_its_own_objects_labels_whatever_the_buckets_say() -> None:
    r = Rig()
    r.topology.buckets_listed([bucket(0, 1, 1, {**DEMO_LABELS, LOCAL: {"location": "guangzhou"}})], 10)
    assert r.cache.node_labels[LOCAL]["location"] == "beijing"
    assert "kubernetes.io/hostname" in r.cache.node_labels[LOCAL], "all its labels, not only the tracked ones"


def test_a_malformed_bucket_is_ignored_with_one_warning_per_version(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cache.topology_feed")
    r = Rig()
    bad: dict[str, Any] = bucket(0, 1, 1, DEMO_LABELS)
    bad["data"]["gz-2"] = "not json"
    for _ in range(3):
        r.topology.buckets_listed([bad], 10)
    assert r.topology.mode == "nodes"
    assert len([rec for rec in caplog.records if "ignoring ConfigMap" in rec.getMessage()]) == 1


def test_services_reading_keys_the_buckets_do_not_track_are_warned_about_once_per_set_of_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.topology_feed")
    r = Rig()
    zones = {name: {"zone": "z1"} for name in DEMO_LABELS}
    r.topology.buckets_listed([bucket(0, 1, 1, zones, keys=("zone",))], 10)
    r.topology.bucket_event("MODIFIED", bucket(0, 1, 1, zones, keys=("zone",), rv=11))
    warned = [rec.getMessage() for rec in caplog.records if "do not track" in rec.getMessage()]
    assert len(warned) == 1 and "['location']" in warned[0]
    # The publisher catches up: the keys are tracked, nothing more to say.
    r.topology.bucket_event("MODIFIED", bucket(0, 1, 1, DEMO_LABELS, keys=("location", "zone"), rv=12))
    assert len([rec for rec in caplog.records if "do not track" in rec.getMessage()]) == 1
    assert r.demo_nodes() == {"bj-1", "bj-3"}


def test_buckets_the_apiserver_refuses_to_list_mean_the_nodes_and_an_unreachable_one_means_waiting() -> None:
    r = Rig()
    r.topology.bucket_list_failed(TransportError("connection refused"))
    assert r.topology.mode == "" and r.calls == []
    r.topology.bucket_list_failed(ApiError(429, {"code": 429, "reason": "TooManyRequests"}))
    assert r.topology.mode == ""
    r.topology.bucket_list_failed(ApiError(403, {"code": 403, "reason": "Forbidden"}))
    assert r.topology.mode == "nodes" and r.calls == ["start nodes"]


def test_forced_publisher_mode_uses_the_buckets_even_when_there_are_none(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cache.topology_feed")
    r = Rig("publisher")
    assert r.topology.watches_buckets
    r.topology.buckets_listed([], 10)
    assert r.topology.mode == "publisher" and "start nodes" not in r.calls
    assert r.cache.ready, "no labels to wait for"
    # Only the local node has labels: every other endpoint of the demo Service is dropped.
    assert r.demo_nodes() == {"bj-1"}
    assert any("no buckets" in rec.getMessage() for rec in caplog.records)


def test_forced_nodes_mode_never_watches_the_buckets() -> None:
    assert not Rig("nodes").topology.watches_buckets


def test_a_heartbeat_of_another_node_changes_no_label_and_costs_no_re_filter() -> None:
    r = Rig()
    r.topology.buckets_listed([], 10)
    r.nodes_listed()
    runs = r.cache.refilter_runs
    heads = {plural: view.head() for plural, view in r.cache.views.items()}
    for i in range(20):
        node = r.sim.patch(NODES, None, "gz-3", {"status": {"conditions": [{"type": "Ready", "status": "True",
                                                                             "lastHeartbeatTime": f"t{i}"}]}})
        r.topology.node_event("MODIFIED", {"metadata": node["metadata"]})
    assert r.cache.refilter_runs == runs
    assert {plural: view.head() for plural, view in r.cache.views.items()} == heads, "no client event"


def test_a_version_1_snapshot_every_node_in_full_restores_the_local_node_and_the_others_labels(
    tmp_path: Path,
) -> None:
    """Written by a wrapper before the node topology feed: its Nodes other than the local one
    become the feed's labels, so a wrapper upgraded while offline still serves its snapshot."""
    sim = Simulator(servicegrid_demo())
    payload = orjson.dumps({"resources": {r.plural: {"rv": sim.rv, "items": sim.list(r)} for r in ALL}})
    identity = snapshot.Identity(LOCAL, "https://apiserver.example:6443")
    header = {"magic": snapshot.MAGIC, "version": 1, "node": identity.node, "upstream": identity.upstream,
              "created": 0.0, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (tmp_path / snapshot.FILENAME).write_bytes(orjson.dumps(header) + b"\n" + payload)
    cache = ClusterCache(LOCAL)
    cache.configure(optional=(ENDPOINTS,), label_feed=True)
    assert snapshot.restore(cache, tmp_path, identity)
    assert set(cache.views[NODES.plural].objects) == {LOCAL}
    assert cache.node_labels["gz-3"]["location"] == "guangzhou"
    # Written again, it is version 2: the local Node in full, the others' labels apart.
    _, body = snapshot.decode(snapshot.encode(cache, identity), identity)
    assert [n["metadata"]["name"] for n in body["resources"]["nodes"]["items"]] == [LOCAL]
    assert body["nodeLabels"]["gz-3"]["location"] == "guangzhou" and LOCAL not in body["nodeLabels"]
