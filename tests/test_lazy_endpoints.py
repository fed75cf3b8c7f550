"""core/v1 Endpoints watched only while someone reads them: started by the first read (whose client
waits for the sync), stopped after an idle time without reads or open watches, forced on or off,
and kept in the snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache import snapshot
from cache.informers import UpstreamOptions
from kubeapi.resources import ENDPOINTS, SERVICES
from tests.support.faultkit import LOCAL_NODE, get_json, get_text, list_items, open_watch, running_wrapper
from tests.support.oracle import comparable, served_state
from tests.support.stack import running_simulator
from tests.support.waiting import eventually
from wrapper.compose import Running
from wrapper.serving import ServeSettings

DEMO = "servicegrid-demo-svc"
ENDPOINTS_PATH = ENDPOINTS.collection_path()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(servicegrid_demo(), bookmark_interval=0.3)
    async with running_simulator(s):
        yield s


def lazy(idle: float = 600.0) -> UpstreamOptions:
    return UpstreamOptions(endpoints="lazy", endpoints_idle=idle)


def endpoint_reads(sim: Simulator) -> int:
    return sum(sim.reads(ENDPOINTS.plural, verb) for verb in ("list", "watch", "watchlist", "get"))


def running(w: Running) -> bool:
    return ENDPOINTS.plural in w.informers.reflectors


async def test_the_first_read_starts_the_informer_and_waits_for_its_sync_while_readyz_never_waits(
    sim: Simulator,
) -> None:
    async with running_wrapper(sim.url, upstream=lazy()) as w:
        assert w.cache.ready and not running(w) and endpoint_reads(sim) == 0
        code, body = await get_text(w.url + "/readyz")
        assert code == 200 and "[+]cache-endpoints not synced: watched only while clients read it" in body
        # The first client asks: it waits for the sync and gets the filtered state.
        served = await list_items(w.url, ENDPOINTS)
        assert running(w)
        assert comparable(served) == comparable(served_state(sim, ENDPOINTS, LOCAL_NODE))
        code, one = await get_json(f"{w.url}{ENDPOINTS.collection_path('default')}/{DEMO}")
        assert code == 200 and one["kind"] == "Endpoints"
        assert sim.reads(ENDPOINTS.plural, "watchlist") == 1, "one sync, whichever read came first"


async def test_an_idle_informer_stops_and_the_next_reader_waits_for_a_fresh_sync(sim: Simulator) -> None:
    async with running_wrapper(sim.url, upstream=lazy(idle=0.3)) as w:
        await list_items(w.url, ENDPOINTS)
        await eventually(lambda: not running(w), 10, "the idle informer to stop")
        assert not w.cache.views[ENDPOINTS.plural].synced
        # A change while nobody watched: the next reader gets today's state, not the last one seen.
        sim.create(ENDPOINTS, {"metadata": {"name": "while-stopped", "namespace": "default"}, "subsets": []})
        served = await list_items(w.url, ENDPOINTS)
        assert "default/while-stopped" in served and running(w)
        assert sim.reads(ENDPOINTS.plural, "watchlist") == 2


async def test_an_open_endpoints_watch_holds_the_informer_and_its_end_lets_it_stop(sim: Simulator) -> None:
    serve = ServeSettings(bookmark_interval=0.1)
    async with running_wrapper(sim.url, upstream=lazy(idle=0.2), serve=serve) as w:
        watch = await open_watch(w.url, ENDPOINTS, allowWatchBookmarks="true")
        try:
            await eventually(lambda: bool(watch.of_type("ADDED")), 10, "the watch's initial state")
            # Bookmarks every 0.1 s: eight of them span four idle times, the watch held it.
            await eventually(lambda: len(watch.of_type("BOOKMARK")) >= 8, 10, "eight bookmarks")
            assert running(w)
            sim.create(ENDPOINTS, {"metadata": {"name": "while-watched", "namespace": "default"}, "subsets": []})
            await eventually(lambda: "default/while-watched" in watch.state(), 10, "the change on the watch")
        finally:
            await watch.stop()
        await eventually(lambda: not running(w), 10, "the informer to stop once the watch ended")


async def test_forced_on_the_informer_runs_from_the_start_and_readyz_waits_for_it(sim: Simulator) -> None:
    async with running_wrapper(sim.url, upstream=UpstreamOptions(endpoints="on")) as w:
        assert running(w) and w.cache.views[ENDPOINTS.plural].synced
        code, body = await get_text(w.url + "/readyz")
        assert code == 200 and "[+]cache-endpoints ok" in body


async def test_forced_off_endpoints_requests_pass_through_to_the_apiserver(sim: Simulator) -> None:
    async with running_wrapper(sim.url, upstream=UpstreamOptions(endpoints="off")) as w:
        code, refused = await get_json(w.url + ENDPOINTS_PATH)
        assert code == 403 and refused["reason"] == "Forbidden"
        async with aiohttp.ClientSession() as s, s.get(w.url + ENDPOINTS_PATH,
                                                       headers={"Authorization": "Bearer a-token"}) as resp:
            assert resp.status == 200
            listed: dict[str, Any] = orjson.loads(await resp.read())
        # The apiserver's own answer: unfiltered (the demo's guangzhou addresses are in it).
        assert len(listed["items"]) == len(sim.list(ENDPOINTS))
        assert not running(w) and endpoint_reads(sim) == 1
        assert "cache-endpoints " not in (await get_text(w.url + "/readyz"))[1]


async def test_a_client_waits_at_most_the_sync_wait_then_gets_429_and_a_later_read_is_served(
    sim: Simulator,
) -> None:
    serve = ServeSettings(bookmark_interval=1.0, sync_wait=0.3)
    async with running_wrapper(sim.url, upstream=lazy(), serve=serve) as w:
        sim.fail_next(10_000, 503)  # the informer cannot sync
        code, status = await get_json(w.url + ENDPOINTS_PATH)
        assert code == 429 and status["reason"] == "TooManyRequests"
        assert "storage is (re)initializing" in status["message"]
        sim.fail_next(0, 503)

        async def served() -> bool:
            return (await get_json(w.url + ENDPOINTS_PATH))[0] == 200

        await eventually(served, 15, "a read once the informer synced")


async def test_the_snapshot_keeps_the_synced_endpoints_after_the_informer_stopped_and_serves_them_offline(
    sim: Simulator, tmp_path: Path,
) -> None:
    async with running_wrapper(sim.url, upstream=lazy(idle=0.2), cache_dir=tmp_path, snapshot_interval=0.1) as w:
        synced = await list_items(w.url, ENDPOINTS)
        await eventually(lambda: not running(w), 10, "the idle informer to stop")
        # A later snapshot (another resource changed) still holds the Endpoints last synced.
        writes = w.persister.writes if w.persister is not None else 0
        sim.patch_labels(SERVICES, "default", "plain-svc", {"after": "stop"})
        await eventually(lambda: w.persister is not None and w.persister.writes > writes, 10, "a later snapshot")
    _, body = snapshot.decode((tmp_path / snapshot.FILENAME).read_bytes(), snapshot.Identity(LOCAL_NODE, sim.url))
    kept = body["resources"]["endpoints"]["items"]
    assert {f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in kept} == set(synced)
    port = sim.port
    await sim.stop()
    async with running_wrapper(sim.url, upstream=lazy(), cache_dir=tmp_path, wait=False) as offline:
        assert offline.cache.ready
        assert await list_items(offline.url, ENDPOINTS) == synced
    await sim.start("127.0.0.1", port)
