"""The upstream's resourceVersions go back (etcd restore, cluster rebuilt behind the same address).

The simulator restarts from a saved, older state: its RV counter goes back, its history is
gone and its open watches drop. The wrapper must notice (a too-large RV, or a list below an RV
it had seen), relist every resource, move its views to the new timeline, end its clients'
watches with 410 and refuse to resume any client from an RV it cannot vouch for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.cluster import ClusterCache
from kubeapi.resources import ALL, ENDPOINTSLICES, NODES, SERVICES
from tests.support.churn import Churn
from tests.support.faultkit import demo_slice, get_json, get_text, list_items, node_names, open_watch, running_wrapper
from tests.support.garbage_upstream import GarbageUpstream
from tests.support.oracle import comparable, served_state
from tests.support.reflector import ReflectorModel, running_clients
from tests.support.stack import running_simulator, stack, wait_applied, wait_caught_up
from tests.support.waiting import eventually
from tests.test_reflector_runs import LOCAL, clients, converge
from wrapper.app import build_app
from wrapper.compose import Running, ready_checks
from wrapper.serving import ServeSettings

RESETS = "application_grid_wrapper_upstream_timeline_resets_total"


async def assert_serves_the_simulators_state(w: Running, sim: Simulator) -> None:
    """Every resource's list through the wrapper is the simulator's, filtered for the local node."""
    for r in ALL:
        served = await list_items(w.url, r)
        assert comparable(served) == comparable(served_state(sim, r, LOCAL)), r.plural
    # Objects the wrapper serves as they are carry the simulator's own (new) resourceVersions.
    for r in (NODES, SERVICES):
        served = await list_items(w.url, r)
        assert {k: v["metadata"]["resourceVersion"] for k, v in served.items()} == {
            k: v["metadata"]["resourceVersion"] for k, v in served_state(sim, r, LOCAL).items()}, r.plural


def below(sim: Simulator, churn: Churn, limit: int, steps: int) -> None:
    """Up to ``steps`` changes, keeping the simulator's RV below ``limit``."""
    for _ in range(steps):
        if sim.rv >= limit - 4:  # one step writes at most three objects
            return
        churn.step()


@pytest.mark.parametrize("streaming", [False, True], ids=["list-watch", "streaming-list"])
async def test_after_the_apiserver_restarts_from_an_older_state_the_wrapper_and_its_clients_converge_to_it(
    streaming: bool,
) -> None:
    async with stack(servicegrid_demo(), node=LOCAL, too_large_wait=0.5, sim_too_large_wait=0.5) as st, \
            running_clients(clients(st.wrapper.url, streaming=streaming, timeout_seconds=(300, 600))) as models:
        sim, w = st.sim, st.wrapper
        churn = Churn(sim, 11 if streaming else 12, LOCAL)
        backup = sim.save_state()
        # Changes the restore will lose: Services created and deleted, slices scaled, nodes moved.
        for _ in range(40):
            churn.step()
        await converge(models, sim)
        await wait_caught_up(w, sim)
        old_rv = sim.rv
        nodes_rv_before = w.cache.views["nodes"].rv
        assert nodes_rv_before == old_rv

        sim.restart_from(backup)
        assert sim.rv < old_rv
        below(sim, churn, old_rv, 5)  # the new timeline, still below the old RVs
        await eventually(lambda: w.cache.timeline_resets >= 1 and w.cache.ready, 20,
                       "the wrapper to relist everything on the new timeline")
        # Past the old RV in one go, touching no Node: the Nodes view never takes the old RV.
        while sim.rv <= old_rv + 3:
            churn.add_service()
        for _ in range(30):
            churn.step()
            await wait_applied(w, sim)  # the wrapper sees the changes as they come
        await wait_caught_up(w, sim, 20)

        await assert_serves_the_simulators_state(w, sim)
        code, body = await get_text(w.url + "/readyz")
        assert code == 200 and "[-]" not in body, body
        await converge(models, sim)
        for name, m in models.items():
            assert m.violations == [], (name, m.violations)
            assert m.relists >= 1, (name, "its watch was not ended on the old timeline")
            # A 410, then at most one too-large answer to a relist from its old RV: no loop.
            assert m.relists <= 2, (name, m.relist_reasons)
        assert w.cache.timeline_resets == 1
        code, metrics = await get_text(w.debug_url + "/metrics")
        assert f"{RESETS} 1.0" in metrics.splitlines()

        # A client resuming from an RV of the old timeline gets 410, never silence or a replay.
        stale = await open_watch(w.url, NODES, resourceVersion=str(nodes_rv_before), timeoutSeconds="5")
        try:
            await eventually(lambda: stale.ended, 10, "the stale watch to end")
            assert [(e["type"], e["object"]["code"]) for e in stale.events] == [("ERROR", 410)], stale.events
        finally:
            await stale.stop()
        code, doc = await get_json(w.url + NODES.collection_path(),
                                   {"fieldSelector": f"metadata.name={LOCAL}", "resourceVersion": str(nodes_rv_before),
                                    "resourceVersionMatch": "Exact"})
        assert code == 410, doc
        # An RV the wrapper did serve on the new timeline resumes normally.
        fresh = await open_watch(w.url, NODES, resourceVersion=str(w.cache.views["nodes"].rv), timeoutSeconds="1")
        try:
            await eventually(lambda: fresh.ended, 10, "the fresh watch to time out")
            assert not fresh.of_type("ERROR"), fresh.events
        finally:
            await fresh.stop()


async def test_open_client_watches_end_with_410_when_the_wrapper_switches_timeline() -> None:
    async with stack(servicegrid_demo(), node=LOCAL, sim_too_large_wait=0.3) as st:
        sim, w = st.sim, st.wrapper
        backup = sim.save_state()
        sim.patch_labels(NODES, None, LOCAL, {"round": "lost"})
        await wait_caught_up(w, sim)
        watches = {r.plural: await open_watch(w.url, r, resourceVersion=str(w.cache.views[r.plural].rv))
                   for r in ALL}
        try:
            sim.restart_from(backup)
            for name, watch in watches.items():
                await eventually(lambda x=watch: x.ended, 20, f"the {name} watch to end")  # type: ignore[misc]
                errors = watch.of_type("ERROR")
                assert [(e["object"]["code"], e["object"]["reason"]) for e in errors] == [(410, "Expired")], name
        finally:
            for watch in watches.values():
                await watch.stop()
        await eventually(lambda: w.cache.ready, 10, "the resync")
        assert "round" not in (await list_items(w.url, NODES))[LOCAL]["metadata"]["labels"]


async def test_readyz_fails_while_the_cache_relists_on_a_new_timeline_and_lists_switch_to_it_at_once() -> None:
    sim = Simulator(servicegrid_demo())
    cache = ClusterCache(LOCAL)
    for r in ALL:
        cache.replace(r, sim.list(r), 100)
    app = build_app(cache.views, lambda: cache.ready, None, checks=lambda: ready_checks(cache))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        assert (await get_text(url + "/readyz"))[0] == 200
        cache.start_over()
        code, body = await get_text(url + "/readyz")
        assert code == 503 and "[-]upstream-resync" in body, body
        # Meanwhile the last state is still served.
        assert (await get_json(url + NODES.collection_path()))[1]["metadata"]["resourceVersion"] == "100"
        for r in ALL[:-1]:
            cache.replace(r, sim.list(r), 40)
            assert (await get_text(url + "/readyz"))[0] == 503
        cache.replace(ALL[-1], sim.list(ALL[-1]), 40)
        code, body = await get_text(url + "/readyz")
        assert code == 200 and "upstream-resync" not in body, body
        for r in ALL:
            assert (await get_json(url + r.collection_path()))[1]["metadata"]["resourceVersion"] == "40", r.plural
    finally:
        await runner.cleanup()


def _status(code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None) -> dict[str, Any]:
    st: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code}
    if causes is not None:
        st["details"] = {"causes": causes, "retryAfterSeconds": 1}
    return st


TOO_LARGE = "Too large resource version: 999, current: 9"
TOO_LARGE_CAUSE = [{"type": "ResourceVersionTooLarge", "message": "Too large resource version"}]


def _rv_rejections() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (how it is sent, the Status): every form of "your RV is not valid here"."""
    return {
        "http-504-too-large-cause": ("http", _status(504, "Timeout", TOO_LARGE, TOO_LARGE_CAUSE)),
        "http-504-too-large-message-only": ("http", _status(504, "Timeout", TOO_LARGE)),
        "watch-error-504-too-large": ("event", _status(504, "Timeout", TOO_LARGE, TOO_LARGE_CAUSE)),
        "watch-error-410-gone": ("event", _status(410, "Gone", "the resource is gone")),
        "http-410-expired": ("http", _status(410, "Expired", "too old resource version: 1 (5)")),
    }


@pytest.mark.parametrize("case", sorted(_rv_rejections()))
async def test_every_answer_that_rejects_the_watch_rv_makes_the_reflector_list_afresh(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cache.reflector")
    how, st = _rv_rejections()[case]
    fake = GarbageUpstream(servicegrid_demo())
    if how == "http":
        fake.watch_answers["nodes"] = [(st["code"], orjson.dumps(st))]
    else:
        fake.scripts["nodes"] = [orjson.dumps({"type": "ERROR", "object": st}) + b"\n"]
    await fake.start()
    try:
        async with running_wrapper(fake.url) as w:
            state = w.informers.reflectors["nodes"].state
            # The fake answering a second list is not the reflector having applied it: wait on the relist.
            await eventually(lambda: fake.lists["nodes"] >= 2 and state.relists >= 1, 10, "a fresh list of nodes")
            await eventually(lambda: w.informers.connected, 10, "the watch again")
            assert state.relists == 1
            # Same upstream timeline: no reset, and clients keep being served.
            assert w.cache.timeline_resets == 0 and w.cache.ready
            assert set(await list_items(w.url, NODES)) == {LOCAL}
            assert any("not valid upstream" in r.getMessage() for r in caplog.records)
    finally:
        await fake.stop()


async def test_a_snapshot_ahead_of_the_apiserver_is_replaced_by_its_state_and_clients_relist(tmp_path: Path) -> None:
    sim = Simulator(servicegrid_demo(), too_large_wait=0.3, bookmark_interval=0.3)
    async with running_simulator(sim):
        port = sim.port
        backup = sim.save_state()
        async with running_wrapper(sim.url, cache_dir=tmp_path, snapshot_interval=0.1) as first:
            # Written after the backup: the snapshot will hold a state the apiserver loses.
            sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
            [plain] = sim.list(ENDPOINTSLICES, "default", "kubernetes.io/service-name=plain-svc")
            sim.delete(ENDPOINTSLICES, "default", plain["metadata"]["name"])
            await wait_caught_up(first, sim)
        snapshot_rv = sim.rv
        await sim.stop()
        sim.restart_from(backup)
        sim.patch_labels(NODES, None, "bj-3", {"location": "guangzhou"})  # the new timeline's own change
        assert sim.rv < snapshot_rv
        async with running_wrapper(sim.url, cache_dir=tmp_path, wait=False,
                                   serve=ServeSettings(bookmark_interval=1.0, too_large_wait=0.5)) as second:
            assert second.cache.ready  # from the snapshot, while the apiserver is down
            assert max(v.rv for v in second.cache.views.values()) == snapshot_rv
            client = ReflectorModel(second.url, ENDPOINTSLICES.collection_path(), ENDPOINTSLICES.kind,
                                    ENDPOINTSLICES.api_version)
            async with running_clients({"slices": client}):
                assert node_names(demo_slice(client.store)) == {"bj-1", "bj-3", "gz-2"}
                await sim.start("127.0.0.1", port)
                await eventually(lambda: second.cache.timeline_resets == 1 and second.cache.ready, 20,
                               "the wrapper to drop its snapshot's timeline")
                await client.wait_until(
                    lambda s: node_names(demo_slice(s)) == {"bj-1"} and any("plain" in k for k in s), 20)
                assert client.relists >= 1 and client.violations == []
                await wait_caught_up(second, sim)
                await assert_serves_the_simulators_state(second, sim)
                assert (await get_text(second.url + "/readyz"))[0] == 200
                assert max(v.rv for v in second.cache.views.values()) < snapshot_rv
