"""Upstream faults on real sockets: resets, restarts, half-open links, 410 storms, 5xx/429 and garbage."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from cache.cluster import ClusterCache
from cache.informers import Informers
from cache.reflector import Reflector, ReflectorSettings
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES, Resource
from tests.support.faultkit import (
    LOCAL_NODE,
    demo_slice,
    get_json,
    get_text,
    list_items,
    node_names,
    open_watch,
    run_until_synced,
    running_wrapper,
    without_rv,
)
from tests.support.garbage_upstream import GarbageUpstream
from tests.support.reflector import ReflectorModel
from tests.support.stack import running_simulator
from tests.support.waiting import eventually
from wrapper.app import build_app
from wrapper.compose import Running
from wrapper.serving import ServeSettings


def model(base: str, resource: Resource) -> ReflectorModel:
    m = ReflectorModel(base, resource.collection_path(), resource.kind, resource.api_version)
    m.start()
    return m


def upstream_nodes(sim: Simulator) -> dict[str, dict[str, Any]]:
    return {n["metadata"]["name"]: n for n in sim.list(NODES)}


def expected_demo_nodes(sim: Simulator) -> set[str | None]:
    """The demo Service's endpoints bj-1 should see: those on nodes sharing its ``location``."""
    nodes = upstream_nodes(sim)
    here = nodes[LOCAL_NODE]["metadata"]["labels"]["location"]
    [up] = [s for s in sim.list(ENDPOINTSLICES, "default", "kubernetes.io/service-name=servicegrid-demo-svc")]
    return {n for n in node_names(up) if n in nodes and nodes[n]["metadata"]["labels"].get("location") == here}


def reflector_totals(running: Running, attr: str) -> int:
    return sum(getattr(r.state, attr) for r in running.informers.reflectors.values())


def all_relisted_since(running: Running, before: dict[str, int]) -> bool:
    return all(r.state.relists > before[n] for n, r in running.informers.reflectors.items())


def assert_strictly_increasing(rvs: list[int]) -> None:
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs), f"RVs not strictly increasing: {rvs}"


# ---- connection reset and apiserver restart ---------------------------------------------------


async def test_connection_reset_mid_watch_resumes_from_last_rv_and_clients_see_no_gap_or_duplicate(
    wrapper: Running, sim: Simulator
) -> None:
    slices = model(wrapper.url, ENDPOINTSLICES)
    nodes_watch = await open_watch(wrapper.url, NODES, resourceVersion=str(wrapper.cache.views["nodes"].rv))
    try:
        await slices.wait_until(lambda s: bool(s))
        reconnects = reflector_totals(wrapper, "reconnects")
        start_rv = sim.rv
        locations = ["beijing", "guangzhou", "shanghai", "beijing", "guangzhou"]
        upstream_rvs: list[int] = []
        for i, loc in enumerate(locations):
            # A relabel of another node (the topology feed's watch) and one of the local Node (the
            # Nodes watch, which the client's node watch mirrors).
            upstream_rvs.append(int(sim.patch_labels(NODES, None, LOCAL_NODE, {"round": f"a{i}"})["metadata"][
                "resourceVersion"]))
            sim.patch_labels(NODES, None, "gz-2", {"location": loc})
            if i % 2 == 0:
                assert sim.close_watches() >= 1
            upstream_rvs.append(int(sim.patch_labels(NODES, None, LOCAL_NODE, {"round": f"b{i}"})["metadata"][
                "resourceVersion"]))
            # The next round cuts a watch that has resumed and carried this round's changes.
            await eventually(lambda: wrapper.cache.upstream_rv(NODES) == sim.rv, 10, f"round {i} downstream")
        assert len(set(upstream_rvs)) == 2 * len(locations) and min(upstream_rvs) > start_rv
        await eventually(lambda: reflector_totals(wrapper, "reconnects") > reconnects, 10, "a reconnect")
        await eventually(lambda: wrapper.informers.connected, 10, "the reflectors to reconnect")
        await eventually(lambda: wrapper.cache.upstream_rv(NODES) == sim.rv, 10, "the wrapper to catch up")
        await slices.wait_until(lambda s: node_names(demo_slice(s)) == expected_demo_nodes(sim))
        # Resumed from its last RV: no relist upstream, none by the client either.
        assert reflector_totals(wrapper, "relists") == 0
        assert slices.lists == 1 and slices.relists == 0 and slices.violations == []
        # A last change after them all: the watch is ordered, so a duplicate would come before it.
        barrier = int(sim.patch_labels(NODES, None, LOCAL_NODE, {"round": "last"})["metadata"]["resourceVersion"])
        await eventually(lambda: barrier in nodes_watch.rvs(), 10, "every node change downstream")
        # Exactly the upstream events, once each, in order: no gap, no duplicate.
        assert nodes_watch.rvs() == [*upstream_rvs, barrier]
        assert_strictly_increasing(nodes_watch.rvs())
        final = {k: without_rv(v) for k, v in nodes_watch.state().items()}
        assert final == {LOCAL_NODE: without_rv(upstream_nodes(sim)[LOCAL_NODE])}
        assert not nodes_watch.ended
    finally:
        await nodes_watch.stop()
        await slices.stop()


async def test_apiserver_restart_on_the_same_port_serves_cache_throughout_and_resumes_without_relist(
    wrapper: Running, sim: Simulator
) -> None:
    slices = model(wrapper.url, ENDPOINTSLICES)
    try:
        await slices.wait_until(lambda s: node_names(demo_slice(s)) == {"bj-1", "bj-3"})
        before = await list_items(wrapper.url, ENDPOINTSLICES)
        port = sim.port
        await sim.stop()
        await eventually(lambda: not wrapper.informers.connected, 10, "the wrapper to notice the apiserver is gone")
        # Down: lists still answered from the cache, the client's watch stays open.
        assert await list_items(wrapper.url, ENDPOINTSLICES) == before
        assert (await get_text(wrapper.url + "/readyz"))[0] == 200
        # Changes while down are kept in the simulator's history (as etcd keeps them).
        sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
        sim.patch_labels(NODES, None, "bj-3", {"location": "guangzhou"})
        await sim.start("127.0.0.1", port)
        await eventually(lambda: wrapper.informers.connected, 15, "the wrapper to reconnect after the restart")
        await slices.wait_until(lambda s: node_names(demo_slice(s)) == {"bj-1", "gz-2"}, 15)
        assert reflector_totals(wrapper, "relists") == 0
        assert slices.lists == 1 and slices.relists == 0 and slices.violations == []
    finally:
        await slices.stop()


# ---- half-open connection ------------------------------------------------------------------------


@pytest.fixture
async def quiet_sim() -> AsyncIterator[Simulator]:
    """A simulator that sends no bookmarks (as for a resource nobody writes): watches stay silent."""
    s = Simulator(bookmark_interval=3600.0)
    s.load(servicegrid_demo())
    async with running_simulator(s):
        yield s


async def test_a_quiet_healthy_watch_is_kept_until_the_server_ends_it_and_then_resumed(quiet_sim: Simulator) -> None:
    """No read timeout on watches: silence is not death (the 90 s read timeout used to end every
    idle watch and reconnect). The watch lasts until the server's timeoutSeconds; then it resumes."""
    sim = quiet_sim
    reflect = ReflectorSettings(read_timeout=0.2, backoff_initial=0.05, backoff_max=0.3, watch_timeout_min=2,
                                watch_timeout_max=2, relist_jitter=0.05)
    async with running_wrapper(sim.url, reflect=reflect) as w:
        services = w.informers.reflectors["services"]
        first = sim.reads("services", "watch")
        # The server ends the 2 s watch (ten read timeouts of silence); the wrapper resumes it.
        await eventually(lambda: sim.reads("services", "watch") > first, 10, "the server to end the quiet watch")
        assert services.state.reconnects == 0 and services.state.last_error == ""
        assert services.state.relists == 0 and services.state.connected


async def test_a_half_open_upstream_watch_is_abandoned_at_its_deadline_and_changes_meanwhile_are_caught_up(
    quiet_sim: Simulator,
) -> None:
    """A connection that stays up but delivers nothing, not even the end of the stream (what TCP
    keepalive cannot see: the peer's kernel still answers): the watch's deadline, its own
    timeoutSeconds plus a margin, ends it."""
    sim = quiet_sim
    reflect = ReflectorSettings(read_timeout=5.0, backoff_initial=0.05, backoff_max=0.3, watch_timeout_min=1,
                                watch_timeout_max=1, watch_deadline_margin=0.5, relist_jitter=0.05)
    async with running_wrapper(sim.url, reflect=reflect) as w:
        nodes = w.informers.reflectors["nodes"].state
        sim.pause_watches()
        sim.patch_labels(NODES, None, "bj-1", {"location": "beijing", "tier": "gold"})
        await eventually(lambda: nodes.reconnects >= 1, 10, "the half-open watch to be abandoned")
        assert "in time" in nodes.last_error or "timeout" in nodes.last_error, nodes.last_error
        # The cache keeps serving the last state meanwhile.
        assert node_names(demo_slice(await list_items(w.url, ENDPOINTSLICES))) == {"bj-1", "bj-3"}
        sim.resume_watches()
        await eventually(lambda: w.cache.node_labels["bj-1"].get("tier") == "gold", 10, "the catch-up")
        assert nodes.relists == 0


# ---- 410 storms -------------------------------------------------------------------------------------


async def test_repeated_compaction_storms_make_the_wrapper_relist_while_clients_stay_consistent(
    wrapper: Running, sim: Simulator
) -> None:
    slices = model(wrapper.url, ENDPOINTSLICES)
    try:
        await slices.wait_until(lambda s: bool(s))
        storms = 4
        for i in range(storms):
            await eventually(lambda: wrapper.informers.connected, 10, "connected before the storm")
            before = {n: r.state.relists for n, r in wrapper.informers.reflectors.items()}
            sim.pause_watches()
            sim.patch_labels(NODES, None, "gz-2", {"location": "beijing" if i % 2 == 0 else "guangzhou"})
            sim.compact()
            sim.close_watches()
            sim.resume_watches()
            # Every reflector's RV is now below the compaction: each must relist, not resume.
            await eventually(functools.partial(all_relisted_since, wrapper, before), 15, f"relist #{i + 1}")
        for name, r in wrapper.informers.reflectors.items():
            assert r.state.relists >= storms, (name, r.state)
        await eventually(lambda: wrapper.informers.connected, 10, "reconnected")
        # storms is even: gz-2 is back in guangzhou.
        await slices.wait_until(lambda s: node_names(demo_slice(s)) == expected_demo_nodes(sim) == {"bj-1", "bj-3"})
        assert slices.relists == 0 and slices.violations == []
        assert (await get_text(wrapper.url + "/readyz"))[0] == 200
    finally:
        await slices.stop()


async def test_client_watch_from_an_rv_older_than_the_wrapper_history_gets_an_error_410(wrapper: Running) -> None:
    w = await open_watch(wrapper.url, SERVICES, resourceVersion="1")
    try:
        await eventually(lambda: w.ended, 10, "the stream to end")
        assert w.status == 200 and w.error == ""
        [ev] = w.events
        assert ev["type"] == "ERROR"
        assert ev["object"]["kind"] == "Status" and ev["object"]["code"] == 410
        assert ev["object"]["reason"] == "Expired"
    finally:
        await w.stop()


async def test_a_client_watch_whose_events_were_evicted_from_a_tiny_history_gets_410(sim: Simulator) -> None:
    cache = ClusterCache(LOCAL_NODE, history_events=3)
    client = ApiClient(sim.url)
    informers = Informers(client, cache, ReflectorSettings(backoff_initial=0.05, backoff_max=0.5))
    app = build_app(cache.views, lambda: cache.ready, informers.client, ServeSettings(bookmark_interval=1.0))
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    informers.start()
    try:
        await eventually(lambda: cache.ready, 10, "sync")
        code, listed = await get_json(url + NODES.collection_path(), {"fieldSelector": f"metadata.name={LOCAL_NODE}"})
        assert code == 200
        list_rv = listed["metadata"]["resourceVersion"]
        for i in range(8):
            sim.patch_labels(NODES, None, LOCAL_NODE, {"round": str(i)})
        await eventually(lambda: cache.upstream_rv(NODES) == sim.rv, 10, "the wrapper to see every change")
        w = await open_watch(url, NODES, resourceVersion=list_rv)
        try:
            await eventually(lambda: w.ended, 10, "the stream to end")
            assert [e["type"] for e in w.events] == ["ERROR"]
            assert w.events[0]["object"]["code"] == 410
        finally:
            await w.stop()
        # The most recent RV is still resumable.
        w2 = await open_watch(url, NODES, resourceVersion=str(cache.views["nodes"].rv))
        sim.patch_labels(NODES, None, LOCAL_NODE, {"round": "last"})
        try:
            await eventually(lambda: bool(w2.events), 10, "the next event")
            assert w2.events[0]["type"] == "MODIFIED"
        finally:
            await w2.stop()
    finally:
        await runner.cleanup()
        await informers.stop()
        await client.close()


# ---- upstream 429 / 500 / 503 -------------------------------------------------------------------


@pytest.mark.parametrize("code", [429, 500, 503])
async def test_upstream_errors_back_off_recover_and_readyz_never_flaps(
    wrapper: Running, sim: Simulator, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    # INFO: a failure within a minute of the last one said is not said again; the recovery line names it.
    caplog.set_level(logging.INFO, logger="cache.reflector")
    readyz: list[int] = []
    stop = asyncio.Event()

    async def poll() -> None:
        """Sample /readyz every 20 ms until the test is done with the faults."""
        async with aiohttp.ClientSession() as s:

            async def sample() -> bool:
                async with s.get(wrapper.url + "/readyz") as resp:
                    readyz.append(resp.status)
                return stop.is_set()

            await eventually(sample, 40, "the end of the fault window", interval=0.02)

    poller = asyncio.create_task(poll())
    try:
        reconnects = reflector_totals(wrapper, "reconnects")
        injected = sim.faults.injected
        sim.fail_next(6, code)
        sim.close_watches()
        await eventually(lambda: sim.faults.remaining == 0, 15, "every injected failure to be consumed")
        await eventually(lambda: wrapper.informers.connected, 15, "recovery")
        assert sim.faults.injected - injected == 6
        assert reflector_totals(wrapper, "reconnects") - reconnects >= 6
        # Recovery does not need a relist: the watches resume from their RVs.
        assert reflector_totals(wrapper, "relists") == 0
        sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
        await eventually(lambda: wrapper.cache.node_labels["gz-2"]["location"] == "beijing", 10, "new events")
    finally:
        stop.set()
        await poller
    assert readyz and set(readyz) == {200}
    assert any(f"HTTP {code}" in r.getMessage() for r in caplog.records)


async def test_reflector_backoff_doubles_with_full_jitter_up_to_the_cap(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ranges: list[tuple[float, float]] = []
    real_uniform = random.uniform

    def recording_uniform(a: float, b: float) -> float:
        ranges.append((a, b))
        return real_uniform(a, b)

    monkeypatch.setattr(random, "uniform", recording_uniform)
    cache = ClusterCache(LOCAL_NODE)
    client = ApiClient(sim.url)
    r = Reflector(client, NODES, cache, ReflectorSettings(backoff_initial=0.01, backoff_max=0.04, streaming=False))
    sim.fail_next(6, 503)
    task = asyncio.create_task(r.run())
    try:
        await eventually(lambda: r.state.connected and r.state.synced_once, 10, "recovery after six 503s")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    assert r.state.reconnects == 6 and "HTTP 503" not in r.state.last_error
    assert ranges[:6] == [(0.005, 0.01), (0.01, 0.02), (0.02, 0.04), (0.02, 0.04), (0.02, 0.04), (0.02, 0.04)]


# ---- upstream sends garbage ----------------------------------------------------------------------


def _garbage_cases() -> dict[str, tuple[Any, bool]]:
    """name -> (function(fake) -> the garbage line, whether the reflector must relist)."""
    def truncated(g: GarbageUpstream) -> bytes:
        return b'{"type":"MODIFIED","object":{"kind":"Service","apiVersion":"v1","metadata":{"name":"plain-svc",\n'

    def wrong_kind(g: GarbageUpstream) -> bytes:
        obj = dict(g.objects["services"]["default/plain-svc"])
        obj["metadata"] = {**obj["metadata"], "labels": {"corrupt": "yes"}, "resourceVersion": str(g.rv + 1)}
        return g.line("MODIFIED", SERVICES, obj, kind="Node")

    def missing_rv(g: GarbageUpstream) -> bytes:
        obj = dict(g.objects["services"]["default/plain-svc"])
        meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
        obj["metadata"] = {**meta, "labels": {"corrupt": "yes"}}
        return g.line("MODIFIED", SERVICES, obj)

    def not_an_object(g: GarbageUpstream) -> bytes:
        return b'[1, 2, "three"]\n'

    def unknown_type(g: GarbageUpstream) -> bytes:
        obj = dict(g.objects["services"]["default/plain-svc"])
        obj["metadata"] = {**obj["metadata"], "labels": {"corrupt": "yes"}, "resourceVersion": str(g.rv + 1)}
        return g.line("EXPLODED", SERVICES, obj)

    return {"truncated-json": (truncated, False), "wrong-kind": (wrong_kind, True),
            "missing-resourceVersion": (missing_rv, True), "not-an-object": (not_an_object, True),
            "unknown-event-type": (unknown_type, True)}


@pytest.mark.parametrize("case", sorted(_garbage_cases()))
async def test_garbage_in_the_upstream_watch_is_logged_and_never_corrupts_the_cache(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cache.reflector")
    make, must_relist = _garbage_cases()[case]
    fake = GarbageUpstream(servicegrid_demo())
    good = fake.good_event(SERVICES, "default/plain-svc", {"good": "yes"})
    fake.scripts["services"] = [good, make(fake)]
    await fake.start()
    try:
        async with running_wrapper(fake.url) as w:
            state = w.informers.reflectors["services"].state
            await eventually(lambda: bool(state.last_error) or fake.lists["services"] >= 2, 10, "the garbage")
            await eventually(lambda: fake.watches["services"] >= 2 and state.connected, 10, "a new watch")
            served = await list_items(w.url, SERVICES)
            plain = served["default/plain-svc"]["metadata"]
            assert plain["labels"].get("good") == "yes"
            assert "corrupt" not in plain["labels"]
            assert plain["resourceVersion"] == fake.objects["services"]["default/plain-svc"]["metadata"][
                "resourceVersion"]
            assert {k: without_rv(v) for k, v in served.items()} == {
                k: without_rv(v) for k, v in fake.objects["services"].items()}
            # Still serving other resources and still alive.
            assert set(await list_items(w.url, NODES)) == {LOCAL_NODE}
            assert (await get_text(w.url + "/readyz"))[0] == 200
            if must_relist:
                assert fake.lists["services"] >= 2 and state.relists >= 1
            else:
                assert state.reconnects >= 1
            assert any(r.levelno >= logging.WARNING and "services" in r.getMessage() for r in caplog.records)
    finally:
        await fake.stop()


async def test_a_malformed_list_response_is_an_error_and_the_reflector_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # INFO: the first failure is said at once, the last one with the recovery.
    caplog.set_level(logging.INFO, logger="cache.reflector")
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] <= 2:
            return web.Response(body=b'{"kind":"NodeList","items":[', content_type="application/json")
        if calls["n"] <= 4:
            return web.Response(body=orjson.dumps({"kind": "NodeList", "items": [], "metadata": {}}),
                                content_type="application/json")
        return web.Response(body=orjson.dumps({"kind": "NodeList", "items": [], "metadata": {"resourceVersion": "7"}}),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/nodes", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = ApiClient(f"http://127.0.0.1:{runner.addresses[0][1]}")
    r = Reflector(client, NODES, ClusterCache(LOCAL_NODE),
                  ReflectorSettings(backoff_initial=0.01, backoff_max=0.02, streaming=False))
    try:
        await run_until_synced(r)
    finally:
        await client.close()
        await runner.cleanup()
    assert r.rv == 7 and r.state.reconnects >= 4
    messages = " ".join(rec.getMessage() for rec in caplog.records)
    assert "not JSON" in messages and "resourceVersion" in messages


async def test_an_oversized_watch_event_does_not_kill_the_reflector() -> None:
    fake = GarbageUpstream(servicegrid_demo())
    good = fake.good_event(SERVICES, "default/plain-svc", {"good": "yes"})
    huge = dict(fake.objects["services"]["default/plain-svc"])
    huge["metadata"] = {**huge["metadata"], "annotations": {"blob": "x" * (5 << 20)},
                        "resourceVersion": str(fake.rv + 1)}
    fake.scripts["services"] = [good, fake.line("MODIFIED", SERVICES, huge)]
    await fake.start()
    try:
        async with running_wrapper(fake.url) as w:
            # Tasks are named for /debug/pprof/tasks: "reflector:<resource>".
            task = next(t for t in asyncio.all_tasks() if t.get_name() == "reflector:services")
            await eventually(lambda: fake.watches["services"] >= 2 or task.done(), 10, "the reflector to go on")
            assert not task.done(), task.exception() if task.done() else None
            served = await list_items(w.url, SERVICES)
            assert served["default/plain-svc"]["metadata"]["labels"].get("good") == "yes"
    finally:
        await fake.stop()
