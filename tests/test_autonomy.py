"""Edge autonomy: serving while the apiserver is unreachable, and the on-disk cache snapshot."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from apisim.server import Simulator
from cache import snapshot
from cache.cluster import ClusterCache
from kubeapi.resources import ALL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from tests.support.faultkit import (
    LOCAL_NODE,
    demo_slice,
    get_text,
    list_items,
    metric_value,
    node_names,
    open_watch,
    running_wrapper,
)
from tests.support.reflector import ReflectorModel
from tests.support.waiting import eventually
from wrapper.compose import Running
from wrapper.serving import ServeSettings

CONNECTED = "application_grid_wrapper_upstream_connected"


async def test_while_the_apiserver_is_down_watches_stay_open_and_lists_and_watches_are_served_from_cache(
    wrapper: Running, sim: Simulator
) -> None:
    before = {r.plural: await list_items(wrapper.url, r) for r in ALL}
    old_watch = await open_watch(wrapper.url, ENDPOINTSLICES, allowWatchBookmarks="true")
    try:
        await eventually(lambda: len(wrapper.watches) == 1, 5, "the watch to register")
        await sim.stop()

        async def shows_disconnected() -> bool:
            code, text = await get_text(wrapper.debug_url + "/metrics")
            return code == 200 and metric_value(text, CONNECTED, 'resource="nodes"') == 0

        await eventually(shows_disconnected, 10, "upstream_connected{nodes} 0")
        assert not old_watch.ended and len(wrapper.watches) == 1
        for r in ALL:
            assert await list_items(wrapper.url, r) == before[r.plural]
        new_watch = await open_watch(wrapper.url, NODES)
        try:
            await eventually(lambda: len(new_watch.events) == 1, 5, "the initial ADDED event of the local Node")
            assert {e["type"] for e in new_watch.events} == {"ADDED"}
            assert new_watch.state().keys() == before["nodes"].keys()
        finally:
            await new_watch.stop()
        code, body = await get_text(wrapper.url + "/readyz")
        assert code == 200, body
        # Bookmarks keep flowing to the old watch while offline, so kube-proxy sees a live stream.
        await eventually(lambda: bool(old_watch.of_type("BOOKMARK")), 5, "a bookmark")
        assert not old_watch.ended
    finally:
        await old_watch.stop()


async def test_with_an_offline_grace_readyz_turns_503_after_the_grace_and_back_to_200(sim: Simulator) -> None:
    async with running_wrapper(sim.url, offline_grace=1.0) as w:
        assert (await get_text(w.url + "/readyz"))[0] == 200
        port = sim.port
        await sim.stop()
        await eventually(lambda: not w.informers.connected, 10, "the disconnect")
        # Inside the grace: still ready.
        assert (await get_text(w.url + "/readyz"))[0] == 200 or w.informers.offline_for() >= 1.0

        async def not_ready() -> bool:
            return (await get_text(w.url + "/readyz"))[0] == 503

        await eventually(not_ready, 10, "readyz 503 after the grace")
        # The cache is still served: only readiness changed.
        assert set(await list_items(w.url, NODES)) == {"bj-1"}
        await sim.start("127.0.0.1", port)

        async def ready() -> bool:
            return (await get_text(w.url + "/readyz"))[0] == 200

        await eventually(ready, 15, "readyz 200 after the apiserver returns")


# ---- persistence ------------------------------------------------------------------------------------


async def test_a_restarted_wrapper_serves_its_snapshot_offline_and_catches_up_without_client_relists(
    sim: Simulator, tmp_path: Path
) -> None:
    port = sim.port
    async with running_wrapper(sim.url, cache_dir=tmp_path, snapshot_interval=0.2) as first:
        await eventually(lambda: (tmp_path / snapshot.FILENAME).exists(), 10, "the snapshot file")
        served = {r.plural: await list_items(first.url, r) for r in ALL}
    await sim.stop()
    async with running_wrapper(sim.url, cache_dir=tmp_path, snapshot_interval=0.2, wait=False) as second:
        # Ready at once, from the disk, with the apiserver down.
        assert second.cache.ready
        assert (await get_text(second.url + "/readyz"))[0] == 200
        assert not second.informers.connected
        for r in ALL:
            assert await list_items(second.url, r) == served[r.plural], r.plural
        client = ReflectorModel(second.url, ENDPOINTSLICES.collection_path(), ENDPOINTSLICES.kind,
                                ENDPOINTSLICES.api_version)
        client.start()
        try:
            await client.wait_until(lambda s: node_names(demo_slice(s)) == {"bj-1", "bj-3"})
            # Changes while both were apart; then the apiserver comes back on the same address.
            sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
            [plain] = sim.list(ENDPOINTSLICES, "default", "kubernetes.io/service-name=plain-svc")
            sim.delete(ENDPOINTSLICES, "default", plain["metadata"]["name"])
            await sim.start("127.0.0.1", port)
            await eventually(lambda: second.informers.connected, 15, "the reconnect")
            await client.wait_until(
                lambda s: node_names(demo_slice(s)) == {"bj-1", "bj-3", "gz-2"}
                and not any("plain" in k for k in s), 15)
            assert client.lists == 1 and client.relists == 0 and client.violations == []
            assert second.cache.synthetic_events > 0
            # The client's final state is what a fresh list says.
            fresh = await list_items(second.url, ENDPOINTSLICES)
            assert {k: v["metadata"]["resourceVersion"] for k, v in client.store.items()} == {
                k: v["metadata"]["resourceVersion"] for k, v in fresh.items()}
        finally:
            await client.stop()


def _valid_snapshot(sim: Simulator, upstream: str) -> bytes:
    cache = ClusterCache(LOCAL_NODE)
    for r in ALL:
        cache.replace(r, sim.list(r), sim.rv)
    assert cache.ready
    return snapshot.encode(cache, snapshot.Identity(LOCAL_NODE, upstream))


def _rewrite_header(data: bytes, **changes: object) -> bytes:
    head, _, payload = data.partition(b"\n")
    header = orjson.loads(head)
    header.update(changes)
    return orjson.dumps(header) + b"\n" + payload


def _flip_byte(data: bytes) -> bytes:
    i = len(data) - 50
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def _bad_payload_with_good_checksum(data: bytes) -> bytes:
    payload = orjson.dumps({"resources": {"nodes": {"rv": "x", "items": {}}}})
    return _rewrite_header(data, size=len(payload), sha256=hashlib.sha256(payload).hexdigest()).partition(b"\n")[
        0] + b"\n" + payload


BAD_SNAPSHOTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "flipped-byte": (_flip_byte, "checksum mismatch"),
    "truncated": (lambda d: d[: len(d) * 2 // 3], "checksum mismatch"),
    "header-only": (lambda d: d.partition(b"\n")[0], "no header line"),
    "not-a-snapshot": (lambda d: b"hello\nworld", "header is not JSON"),
    "wrong-version": (lambda d: _rewrite_header(d, version=snapshot.VERSION + 1), "format version"),
    "wrong-magic": (lambda d: _rewrite_header(d, magic="something-else"), "not an application-grid-wrapper"),
    "other-node": (lambda d: _rewrite_header(d, node="gz-2"), "of node 'gz-2'"),
    "other-upstream": (lambda d: _rewrite_header(d, upstream="https://other-cluster:6443"), "of apiserver"),
    "bad-payload": (_bad_payload_with_good_checksum, "payload is malformed"),
}


@pytest.mark.parametrize("case", sorted(BAD_SNAPSHOTS))
async def test_an_unusable_snapshot_is_logged_and_ignored_and_the_wrapper_waits_for_the_apiserver(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.snapshot")
    spoil, reason = BAD_SNAPSHOTS[case]
    port = sim.port
    (tmp_path / snapshot.FILENAME).write_bytes(spoil(_valid_snapshot(sim, sim.url)))
    await sim.stop()
    serve = ServeSettings(bookmark_interval=1.0, sync_wait=0.2)
    async with running_wrapper(sim.url, serve=serve, cache_dir=tmp_path, wait=False) as w:
        assert not w.cache.ready
        [record] = [r for r in caplog.records if "snapshot" in r.getMessage()]
        assert record.levelno == logging.WARNING and "ignored" in record.getMessage()
        assert reason in record.getMessage()
        code, body = await get_text(w.url + "/readyz")
        assert code == 503, body
        code, _ = await get_text(w.url + NODES.collection_path() + "?fieldSelector=metadata.name%3Dbj-1")
        assert code == 429  # "storage is (re)initializing": nothing from the bad file is served
        await sim.start("127.0.0.1", port)
        await eventually(lambda: w.cache.ready, 15, "the first sync")
        assert (await get_text(w.url + "/readyz"))[0] == 200
        assert set(await list_items(w.url, NODES)) == {"bj-1"}
        assert len(await list_items(w.url, SERVICES)) == 3
        assert await list_items(w.url, ENDPOINTS)


async def test_a_valid_snapshot_of_this_node_and_apiserver_is_restored(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / snapshot.FILENAME).write_bytes(_valid_snapshot(sim, sim.url))
    cache = ClusterCache(LOCAL_NODE)
    assert snapshot.restore(cache, tmp_path, snapshot.Identity(LOCAL_NODE, sim.url))
    assert node_names(demo_slice({k: e.obj for k, e in cache.views["endpointslices"].objects.items()})) == {
        "bj-1", "bj-3"}


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _synced_cache(sim: Simulator) -> ClusterCache:
    cache = ClusterCache(LOCAL_NODE)
    for r in ALL:
        cache.replace(r, sim.list(r), sim.rv)
    return cache


async def test_the_persister_streams_a_snapshot_that_decodes_to_the_in_memory_encoding(
    sim: Simulator, tmp_path: Path
) -> None:
    cache = _synced_cache(sim)
    identity = snapshot.Identity(LOCAL_NODE, sim.url)
    persister = snapshot.Persister(cache, tmp_path, identity)
    assert await persister.save_if_changed()
    data = (tmp_path / snapshot.FILENAME).read_bytes()
    head, _, _ = data.partition(b"\n")
    assert len(head) + 1 == snapshot.HEADER_SLOT, "the header fills its fixed slot"
    _, streamed = snapshot.decode(data, identity)
    _, whole = snapshot.decode(snapshot.encode(cache, identity), identity)
    assert streamed == whole
    assert not await persister.save_if_changed(), "nothing changed since"
    assert names_in(tmp_path) == [snapshot.FILENAME]


async def test_a_failed_snapshot_write_keeps_the_previous_file_and_leaves_no_temporary_behind(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _synced_cache(sim)
    identity = snapshot.Identity(LOCAL_NODE, sim.url)
    good = tmp_path / "good"
    assert await snapshot.Persister(cache, good, identity).save_if_changed()
    before = (good / snapshot.FILENAME).read_bytes()
    # The target is a directory now, so the final rename fails after the payload was written.
    broken = tmp_path / "broken"
    (broken / snapshot.FILENAME).mkdir(parents=True)
    persister = snapshot.Persister(cache, broken, identity)
    caplog.set_level(logging.WARNING, logger="cache.snapshot")
    assert not await persister.save_if_changed()
    assert not await persister.save_if_changed()
    assert names_in(broken) == [snapshot.FILENAME], "the temporary file was removed"
    assert len([r for r in caplog.records if "cannot write cache snapshot" in r.getMessage()]) == 1
    assert (good / snapshot.FILENAME).read_bytes() == before


SYNC_VERBS = ("list", "watchlist")


def syncs(sim: Simulator, resource: Any) -> int:
    """Whole-state reads of ``resource`` the simulator served: lists and streaming lists."""
    return sum(sim.reads(resource.plural, verb) for verb in SYNC_VERBS)


async def snapshot_then_delete_the_plain_slice(sim: Simulator, cache_dir: Path) -> None:
    """A wrapper runs until it has written its snapshot and stops; then, while none runs, the
    plain Service's slice is deleted."""
    async with running_wrapper(sim.url, cache_dir=cache_dir, snapshot_interval=0.2):
        await eventually(lambda: (cache_dir / snapshot.FILENAME).exists(), 10, "the snapshot file")
    [plain] = sim.list(ENDPOINTSLICES, "default", "kubernetes.io/service-name=plain-svc")
    sim.delete(ENDPOINTSLICES, "default", plain["metadata"]["name"])


async def test_a_restarted_wrapper_resumes_its_watches_from_the_snapshot_instead_of_listing_again(
    sim: Simulator, tmp_path: Path
) -> None:
    await snapshot_then_delete_the_plain_slice(sim, tmp_path)
    sim.patch_labels(SERVICES, "default", "plain-svc", {"restarted": "yes"})
    before = {r.plural: syncs(sim, r) for r in (SERVICES, ENDPOINTSLICES)}
    async with running_wrapper(sim.url, cache_dir=tmp_path, snapshot_interval=0.2) as second:
        async def caught_up() -> bool:
            slices = await list_items(second.url, ENDPOINTSLICES)
            services = await list_items(second.url, SERVICES)
            return (not any("plain" in k for k in slices)
                    and services["default/plain-svc"]["metadata"].get("labels", {}).get("restarted") == "yes")

        await eventually(caught_up, 15, "the changes made while it was down")
        # The apiserver sent the changes only: no list and no streaming list of either resource.
        assert {r.plural: syncs(sim, r) for r in (SERVICES, ENDPOINTSLICES)} == before
        assert sim.reads(ENDPOINTSLICES.plural, "watch") >= 1
        served = {r.plural: rvs(await list_items(second.url, r)) for r in (SERVICES, ENDPOINTSLICES)}
    async with running_wrapper(sim.url) as fresh:  # no snapshot: what a full sync gives
        assert {r.plural: rvs(await list_items(fresh.url, r)) for r in (SERVICES, ENDPOINTSLICES)} == served


def rvs(items: dict[str, Any]) -> dict[str, str]:
    return {k: v["metadata"]["resourceVersion"] for k, v in items.items()}


async def test_a_snapshot_older_than_the_apiservers_history_is_relisted_and_the_changes_arrive(
    sim: Simulator, tmp_path: Path
) -> None:
    await snapshot_then_delete_the_plain_slice(sim, tmp_path)
    sim.compact()  # the snapshot's resourceVersion is no longer in the history: resuming gets 410
    before = syncs(sim, ENDPOINTSLICES)
    async with running_wrapper(sim.url, cache_dir=tmp_path, snapshot_interval=0.2) as second:
        async def caught_up() -> bool:
            return not any("plain" in k for k in await list_items(second.url, ENDPOINTSLICES))

        await eventually(caught_up, 15, "the deletion made while it was down")
        assert syncs(sim, ENDPOINTSLICES) == before + 1  # one sync, after the refused resume
