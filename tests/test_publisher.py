"""The node topology publisher against the simulator, over real sockets.

What a wrapper would read from the buckets (``kubeapi.node_topology.BucketSet``) is compared with the
cluster's Nodes and the keys its Services use; the simulator's request log counts the publisher's
writes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from apisim import Simulator
from apisim.seeds import node, service, servicegrid_demo
from cache.apiclient import ApiClient
from cache.listwatch import ReflectorSettings
from kubeapi.node_topology import BUCKET_LABELS, LABEL_SELECTOR, BucketSet, decode_bucket
from kubeapi.resources import CONFIGMAPS, NODES, SERVICES
from publisher.informer import Informer
from publisher.leader import LeaderElector, LeaseSettings
from publisher.writer import AlwaysLeader, Leadership, PublisherSettings, TopologyPublisher
from tests.support.stack import running_simulator
from tests.support.waiting import eventually

NS = "edge-system"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps"
FAST = ReflectorSettings(read_timeout=5.0, backoff_initial=0.05, backoff_max=0.5)
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_simulator(Simulator(servicegrid_demo, bookmark_interval=0.3)) as s:
        yield s


@asynccontextmanager
async def publishing(sim: Simulator, leadership: Leadership | None = None, *, per_bucket: int = 1000,
                     debounce: float = 0.05) -> AsyncIterator[TopologyPublisher]:
    async with ApiClient(sim.url) as client:
        publisher = TopologyPublisher(client, NS, leadership or AlwaysLeader(),
                                      PublisherSettings(per_bucket=per_bucket, debounce=debounce), FAST)
        task = asyncio.create_task(publisher.run())
        try:
            yield publisher
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def buckets(sim: Simulator) -> list[dict[str, Any]]:
    return sim.list(CONFIGMAPS, NS, label_selector=LABEL_SELECTOR)


def published(sim: Simulator) -> dict[str, dict[str, str]]:
    """What a wrapper reads from the buckets now."""
    view = BucketSet()
    view.replace(decode_bucket(cm) for cm in buckets(sim))
    return view.nodes


def expected(sim: Simulator, keys: set[str]) -> dict[str, dict[str, str]]:
    out = {}
    for n in sim.list(NODES):
        labels = n["metadata"].get("labels") or {}
        out[n["metadata"]["name"]] = {k: v for k, v in labels.items() if k in keys}
    return out


def bucket_writes(sim: Simulator) -> int:
    return sum(1 for s in sim.seen if s.method in WRITES and s.path.startswith(CM_PATH))


async def published_as(sim: Simulator, keys: set[str]) -> None:
    await eventually(lambda: published(sim) == expected(sim, keys) and
                   all(decode_bucket(cm).keys == keys for cm in buckets(sim)), what=f"buckets tracking {keys}")


async def test_the_buckets_hold_every_node_with_the_labels_services_read(sim: Simulator) -> None:
    async with publishing(sim):
        await published_as(sim, {"location"})
        (cm,) = buckets(sim)
        assert cm["metadata"]["labels"] == dict(BUCKET_LABELS)
        assert decode_bucket(cm).generation == 1 and set(published(sim)) == {"bj-1", "bj-3", "gz-2", "gz-3"}


async def test_a_heartbeat_or_an_untracked_label_writes_nothing_and_a_tracked_label_one_bucket(
        sim: Simulator) -> None:
    async with publishing(sim) as publisher:
        await published_as(sim, {"location"})
        await eventually(lambda: publisher.settled, what="the publisher to settle")
        before = bucket_writes(sim)
        for i in range(5):  # status heartbeats, and a label no Service reads
            sim.patch(NODES, None, "gz-2", {"status": {"conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": f"2025-01-01T00:0{i}:00Z"}]}})
            sim.patch_labels(NODES, None, "bj-3", {"kubernetes.io/arch": f"arch-{i}"})
        # A tracked change after them: once it is published, they have been seen too.
        sim.patch_labels(NODES, None, "gz-3", {"location": "shenzhen"})
        await published_as(sim, {"location"})
        assert published(sim)["gz-3"] == {"location": "shenzhen"}
        assert bucket_writes(sim) == before + 1


async def test_keys_in_use_follow_the_services_annotations(sim: Simulator) -> None:
    async with publishing(sim):
        await published_as(sim, {"location"})
        sim.patch_labels(NODES, None, "bj-1", {"zone": "north"})
        sim.create(SERVICES, service("default", "zoned", "172.16.33.50", 80, 80,
                                     annotations={"topologyKeys": '["zone","kubernetes.io/hostname","*"]'}))
        await published_as(sim, {"location", "zone"})
        assert published(sim)["bj-1"] == {"location": "beijing", "zone": "north"}
        assert published(sim)["gz-2"] == {"location": "guangzhou"}
        generations = {decode_bucket(cm).generation for cm in buckets(sim)}
        sim.delete(SERVICES, "default", "zoned")
        await published_as(sim, {"location"})
        assert {decode_bucket(cm).generation for cm in buckets(sim)} == {max(generations) + 1}


async def test_the_openyurt_pool_label_is_tracked_when_a_service_uses_node_pools(sim: Simulator) -> None:
    async with publishing(sim):
        sim.patch_labels(NODES, None, "gz-2", {"apps.openyurt.io/nodepool": "pool-a"})
        sim.create(SERVICES, service("default", "pooled", "172.16.33.51", 80, 80,
                                     annotations={"openyurt.io/topologyKeys": "openyurt.io/nodepool"}))
        await published_as(sim, {"location", "apps.openyurt.io/nodepool"})
        assert published(sim)["gz-2"]["apps.openyurt.io/nodepool"] == "pool-a"


async def test_a_malformed_annotation_adds_no_keys_and_is_logged_once(
        sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="publisher")
    async with publishing(sim):
        bad = service("default", "bad", "172.16.33.52", 80, 80, annotations={"topologyKeys": '["zone",'})
        sim.create(SERVICES, bad)
        for i in range(3):  # other changes to the same Service do not repeat the line
            sim.patch_labels(SERVICES, "default", "bad", {"rev": str(i)})
        sim.create(SERVICES, service("default", "good", "172.16.33.53", 80, 80,
                                     annotations={"topologyKeys": '["region"]'}))
        await published_as(sim, {"location", "region"})
        lines = [r for r in caplog.records if "default/bad" in r.getMessage()]
        assert len(lines) == 1 and "malformed" in lines[0].getMessage()


async def test_a_bucket_edited_into_garbage_is_rewritten_and_a_stray_one_deleted(sim: Simulator) -> None:
    async with publishing(sim):
        await published_as(sim, {"location"})
        (cm,) = buckets(sim)
        name = cm["metadata"]["name"]
        cm["data"] = {"bj-1": "{not json"}
        cm["metadata"]["annotations"] = {}
        sim.update(CONFIGMAPS, cm)
        stray = {"metadata": {"name": "node-topology-stray", "namespace": NS, "labels": dict(BUCKET_LABELS)},
                 "data": {"x": "y"}}
        sim.create(CONFIGMAPS, stray)
        await eventually(lambda: [c["metadata"]["name"] for c in buckets(sim)] == [name], what="the stray deleted")
        await published_as(sim, {"location"})


async def test_a_bucket_whose_labels_someone_removed_is_found_and_rewritten(sim: Simulator) -> None:
    async with publishing(sim):
        await published_as(sim, {"location"})
        (cm,) = buckets(sim)
        sim.patch_labels(CONFIGMAPS, NS, cm["metadata"]["name"], dict.fromkeys(BUCKET_LABELS))
        await published_as(sim, {"location"})  # AlreadyExists on create: read, then replaced
        assert sim.get(CONFIGMAPS, NS, cm["metadata"]["name"])["metadata"]["labels"] == dict(BUCKET_LABELS)


async def test_a_failed_write_is_retried_after_a_back_off(sim: Simulator) -> None:
    async with publishing(sim) as publisher:
        await published_as(sim, {"location"})
        await eventually(lambda: publisher.settled, what="the publisher to settle")
        sim.fail_next(2, 500, "etcd is having a bad day")
        sim.patch_labels(NODES, None, "bj-3", {"location": "tianjin"})
        await published_as(sim, {"location"})
        assert sim.faults.injected == 2 and published(sim)["bj-3"] == {"location": "tianjin"}


async def test_a_burst_of_changes_is_written_in_one_pass(sim: Simulator) -> None:
    async with publishing(sim, debounce=1.0) as publisher:
        await published_as(sim, {"location"})
        await eventually(lambda: publisher.settled, what="the publisher to settle")
        before = bucket_writes(sim)
        for i in range(20):
            sim.create(NODES, node(f"edge-{i}", f"10.1.0.{i}", {"location": "beijing"}))
        await published_as(sim, {"location"})
        assert bucket_writes(sim) == before + 1  # one bucket, written once for the whole burst


async def test_re_sharding_never_hides_a_node_from_a_watching_reader(sim: Simulator) -> None:
    async with publishing(sim, per_bucket=2), aiohttp.ClientSession() as http:
        await published_as(sim, {"location"})
        listed = orjson.loads(await (await http.get(sim.url + CM_PATH, params={"labelSelector": LABEL_SELECTOR}))
                              .read())
        view = BucketSet()
        view.replace(decode_bucket(cm) for cm in listed["items"])
        seen = set(view.nodes)
        hidden: list[str] = []
        generations = {b.generation for b in view.buckets.values()}

        async def read() -> None:
            params = {"watch": "1", "labelSelector": LABEL_SELECTOR, "timeoutSeconds": "60",
                      "resourceVersion": listed["metadata"]["resourceVersion"]}
            async with http.get(sim.url + CM_PATH, params=params) as resp:
                async for line in resp.content:
                    ev = orjson.loads(line)
                    if ev["type"] == "DELETED":
                        view.remove(ev["object"]["metadata"]["name"])
                    else:
                        bucket = decode_bucket(ev["object"])
                        generations.add(bucket.generation)
                        view.put(bucket)
                    hidden.extend(seen - set(view.nodes))  # once seen, a node never goes (none is deleted)
                    seen.update(view.nodes)

        reader = asyncio.create_task(read())
        try:
            for i in range(6):  # 4 nodes in 2 buckets of 2 -> 10 nodes in 8
                sim.create(NODES, node(f"edge-{i}", f"10.1.0.{i}", {"location": "beijing"}))
                name = f"edge-{i}"
                await eventually(functools.partial(operator.contains, view.nodes, name),
                                 what=f"{name} in the reader's view")
            await eventually(lambda: view.nodes == expected(sim, {"location"}), what="the reader's view")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        assert hidden == []
        assert len(generations) == 3  # 2 -> 4 -> 8 buckets: two new generations
        assert {decode_bucket(cm).buckets for cm in buckets(sim)} == {8}
        assert len(buckets(sim)) == 8 and len({decode_bucket(cm).generation for cm in buckets(sim)}) == 1


async def test_only_the_leader_writes_and_the_other_replica_takes_over_when_it_stops(sim: Simulator) -> None:
    settings = LeaseSettings(lease_duration=15, renew_deadline=10, retry_period=0.05)
    async with ApiClient(sim.url) as client, \
            publishing(sim, debounce=0.05) as first, publishing(sim, debounce=0.05) as second:
        electors = []
        for name, publisher in (("first", first), ("second", second)):
            elector = LeaderElector(client, NS, "publisher", name, settings, on_change=publisher.leadership_changed)
            publisher.leadership = elector
            electors.append((elector, asyncio.create_task(elector.run())))
        try:
            await eventually(lambda: any(e.is_leader for e, _ in electors), what="a leader")
            (leader, leader_task), (follower, _) = sorted(electors, key=lambda e: not e[0].is_leader)
            writer, idle = (first, second) if leader.identity == "first" else (second, first)
            await published_as(sim, {"location"})
            sim.patch_labels(NODES, None, "bj-1", {"location": "tianjin"})
            await published_as(sim, {"location"})
            # The simulator shows a write before the writer has read its answer (and counted it).
            await eventually(lambda: writer.counts.created + writer.counts.replaced >= 2, what="the writes counted")
            assert (idle.counts.created, idle.counts.replaced, idle.counts.deleted) == (0, 0, 0)

            leader_task.cancel()
            await asyncio.gather(leader_task, return_exceptions=True)
            assert await leader.release()
            await eventually(lambda: follower.is_leader, what="the takeover")
            stopped = (writer.counts.created, writer.counts.replaced, writer.counts.deleted)
            sim.patch_labels(NODES, None, "bj-1", {"location": "shanghai"})
            await published_as(sim, {"location"})
            await eventually(lambda: idle.counts.replaced >= 1, what="the new leader's write")  # it wrote it ...
            assert (writer.counts.created, writer.counts.replaced, writer.counts.deleted) == stopped  # ... alone
        finally:
            for _, task in electors:
                task.cancel()
            await asyncio.gather(*(t for _, t in electors), return_exceptions=True)


async def test_the_node_informer_asks_for_metadata_only(sim: Simulator) -> None:
    received: list[dict[str, Any]] = []

    class Sink:
        def replace(self, resource: Any, items: Any, rv: int) -> None:
            received.extend(items)

        def apply(self, resource: Any, type_: str, obj: dict[str, Any]) -> None:
            received.append(obj)

        def bookmark(self, resource: Any, rv: int) -> None:
            pass

    async with ApiClient(sim.url) as client:
        informer = Informer(client, NODES, Sink(), metadata_only=True, settings=FAST)
        task = asyncio.create_task(informer.run())
        try:
            await eventually(lambda: len(received) == 4, what="the list")
            sim.patch_labels(NODES, None, "bj-1", {"zone": "x"})
            await eventually(lambda: len(received) == 5, what="the event")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert received[-1]["metadata"]["labels"]["zone"] == "x"
    assert all("status" not in obj and "spec" not in obj for obj in received)  # the simulator's Nodes have both
    assert informer.state.relists == 0 and informer.state.last_error == ""


