"""How the wrapper syncs from the apiserver (the simulator), end to end: a streaming list where
served, client-go's fallbacks (to the watch cache's lists, then to consistent paged lists) where
not, resumes instead of relists, and after an apiserver restart each wrapper lists each resource
at most once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Read, Simulator
from cache.apiclient import ApiClient
from cache.informers import DEFAULT_TOPOLOGY_NAMESPACE
from cache.reflector import ReflectorSettings
from kubeapi.node_topology import encode_bucket
from kubeapi.resources import CONFIGMAPS, ENDPOINTSLICES, NODES, SERVICES
from tests.support.faultkit import LOCAL_NODE, running_wrapper
from tests.support.stack import running_simulator, wait_caught_up, wait_ready
from tests.support.waiting import eventually
from wrapper.compose import Running, start_wrapper, stop_wrapper
from wrapper.serving import ServeSettings

SYNCED = ("nodes", "services", "endpointslices", "node-topology-buckets", "node-labels")
DEMO_LABELS = {"bj-1": {"location": "beijing"}, "bj-3": {"location": "beijing"},
               "gz-2": {"location": "guangzhou"}, "gz-3": {"location": "guangzhou"}}


def fast(**kw: Any) -> ReflectorSettings:
    return ReflectorSettings(read_timeout=5.0, backoff_initial=0.05, backoff_max=0.5, relist_jitter=0.05, **kw)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(servicegrid_demo(), bookmark_interval=0.3, too_large_wait=0.3)
    async with running_simulator(s):
        yield s


def reads(sim: Simulator, plural: str, *verbs: str) -> list[Read]:
    return [r for r in sim.read_log if r.plural == plural and r.verb in verbs]


async def test_every_feed_syncs_with_a_streaming_list_where_the_apiserver_serves_them(sim: Simulator) -> None:
    async with running_wrapper(sim.url) as w:
        for name in SYNCED:
            assert w.informers.reflectors[name].state.sync_mode == "stream", name
        for plural in ("nodes", "services", "endpointslices", "configmaps"):
            assert not reads(sim, plural, "list"), plural
            [*streams] = reads(sim, plural, "watchlist")
            assert streams and all(r.params["sendInitialEvents"] == "true" and r.params["allowWatchBookmarks"] == "true"
                                   and r.params["resourceVersionMatch"] == "NotOlderThan" for r in streams), plural
        # The local Node in full, the others' metadata (all but the local one).
        selectors = sorted(r.params.get("fieldSelector", "") for r in reads(sim, "nodes", "watchlist"))
        assert selectors == [f"metadata.name!={LOCAL_NODE}", f"metadata.name={LOCAL_NODE}"]
        # Each watch asks the apiserver to end it after 300-600 s.
        assert all(300 <= int(r.params["timeoutSeconds"]) <= 600 for r in reads(sim, "services", "watchlist"))


@pytest.mark.parametrize(("mode", "says"), [("off", "422"), ("error", "RequestWatchProgress")],
                         ids=["gate-off-422", "accepted-then-error"])
async def test_a_refused_streaming_list_falls_back_to_a_list_from_the_watch_cache_and_is_not_retried_at_once(
    sim: Simulator, mode: str, says: str,
) -> None:
    sim.watch_list = mode
    async with running_wrapper(sim.url) as w:
        for name in SYNCED:
            st = w.informers.reflectors[name].state
            assert st.sync_mode == "list" and says in st.stream_refused, (name, st)
        # The first lists: resourceVersion=0, from the watch cache, which ignores limit.
        for r in reads(sim, "endpointslices", "list"):
            assert r.params["resourceVersion"] == "0" and r.params["limit"] == "500"
        assert len(reads(sim, "endpointslices", "list")) == 1
        streams = len(reads(sim, "services", "watchlist"))
        # A relist (the watch's resourceVersion compacted away) lists "not older than" it, whole,
        # without trying the refused stream again.
        rv = w.informers.reflectors["services"].rv
        sim.pause_watches()  # a change the wrapper misses, then compacted away
        sim.patch_labels(SERVICES, "default", "plain-svc", {"missed": "yes"})
        sim.compact()
        sim.close_watches()
        sim.resume_watches()
        await eventually(lambda: len(reads(sim, "services", "list")) >= 2, 10, "the relist")
        relist = reads(sim, "services", "list")[-1]
        assert int(relist.params["resourceVersion"]) >= rv and "limit" not in relist.params
        assert len(reads(sim, "services", "watchlist")) == streams


async def test_a_server_that_pages_lists_at_resource_version_0_is_followed_page_by_page(sim: Simulator) -> None:
    sim.watch_list = "off"
    sim.paginate_rv0 = True  # an apiserver without a watch cache
    async with running_wrapper(sim.url, reflect=fast(page_size=2)) as w:
        pages = reads(sim, "endpointslices", "list")
        assert len(pages) >= 2 and "continue" in pages[-1].params
        assert len(w.cache.views[ENDPOINTSLICES.plural].objects) == len(sim.list(ENDPOINTSLICES))


async def test_a_resource_version_the_apiserver_has_not_reached_lists_consistently_page_by_page(
    sim: Simulator,
) -> None:
    sim.watch_list = "off"
    backup = sim.save_state()
    for i in range(5):
        sim.patch_labels(SERVICES, "default", "plain-svc", {"round": str(i)})
    async with running_wrapper(sim.url, reflect=fast(page_size=2)) as w:
        before = len(sim.read_log)
        sim.restart_from(backup)  # an etcd restore: the resourceVersions go back
        await eventually(lambda: w.cache.timeline_resets >= 1 and w.cache.ready, 20, "the resync on the new timeline")
        lists = [r for r in list(sim.read_log)[before:] if r.plural == "endpointslices" and r.verb == "list"]
        # Asked "not older than" an RV the apiserver has not reached (504 too large), then
        # consistently: no resourceVersion, limit, page by page.
        assert any("resourceVersion" not in r.params and r.params.get("limit") == "2" for r in lists), lists
        assert any("continue" in r.params for r in lists), lists
        await wait_caught_up(w, sim)


async def test_a_dropped_connection_resumes_every_watch_without_a_list(sim: Simulator) -> None:
    async with running_wrapper(sim.url) as w:
        syncs = len([r for r in sim.read_log if r.verb in ("list", "watchlist")])
        watches = len([r for r in sim.read_log if r.verb == "watch"])
        assert sim.close_watches() >= 1
        sim.patch_labels(SERVICES, "default", "plain-svc", {"after": "drop"})
        await wait_caught_up(w, sim)
        resumed = [r for r in sim.read_log if r.verb == "watch"][watches:]
        assert {r.plural for r in resumed} >= {"nodes", "services", "endpointslices", "configmaps"}
        assert all("sendInitialEvents" not in r.params and int(r.params["resourceVersion"]) > 0 for r in resumed)
        assert len([r for r in sim.read_log if r.verb in ("list", "watchlist")]) == syncs
        assert all(r.state.relists == 0 for r in w.informers.reflectors.values())


class TokenAuth:
    """A kubeconfig user with a bearer token, as ApiClient's configuration reads it."""

    username = ""
    password = ""

    def __init__(self, token: str) -> None:
        self.token = token

    async def auth_settings(self) -> dict[str, dict[str, str]]:
        return {"BearerToken": {"value": f"Bearer {self.token}"}}

    def get_basic_auth_token(self) -> str:
        return ""


WRAPPERS = 3


async def test_after_an_apiserver_restart_each_wrapper_lists_each_resource_at_most_once(sim: Simulator) -> None:
    # With the publisher's buckets: no wrapper watches any Node but its own.
    sim.create(CONFIGMAPS, encode_bucket(0, 1, 1, ["location"], DEMO_LABELS, DEFAULT_TOPOLOGY_NAMESPACE))
    clients = []
    wrappers: list[Running] = []
    try:
        for i in range(WRAPPERS):
            sim.reviews.tokens[f"token-{i}"] = {"username": f"wrapper-{i}"}
            client = ApiClient(sim.url, configuration=TokenAuth(f"token-{i}"))
            clients.append(client)
            wrappers.append(await start_wrapper(client, f"bj-{1 + 2 * (i % 2)}", ("127.0.0.1", 0),
                                                serve=ServeSettings(bookmark_interval=1.0), reflect=fast()))
        for w in wrappers:
            await wait_ready(w)
        before = len(sim.read_log)
        # Writes the wrappers have not seen yet (their watches lag the apiserver, as between two
        # bookmarks), then the restart: every watch dropped and the watch history gone, so their
        # resumes get 410.
        sim.pause_watches()
        for i in range(3):
            sim.patch_labels(SERVICES, "default", "plain-svc", {"before-restart": str(i)})
            sim.patch_labels(NODES, None, "gz-2", {"before-restart": str(i)})
            sim.patch_labels(ENDPOINTSLICES, "default", sim.list(ENDPOINTSLICES, "default")[0]["metadata"]["name"],
                             {"before-restart": str(i)})
        await sim.restart()
        sim.resume_watches()
        sim.patch_labels(SERVICES, "default", "plain-svc", {"after": "restart"})
        for w in wrappers:
            await wait_caught_up(w, sim, 20)
        after = list(sim.read_log)[before:]
        for i in range(WRAPPERS):
            for plural in ("nodes", "services", "endpointslices", "configmaps"):
                syncs = [r for r in after if r.user == f"wrapper-{i}" and r.plural == plural
                         and r.verb in ("list", "watchlist")]
                assert len(syncs) <= 1, (i, plural, syncs)
                if plural in ("services", "endpointslices"):  # written while they lagged: a resume cannot do
                    assert len(syncs) == 1, (i, plural)
        assert all(w.informers.node_topology.mode == "publisher" for w in wrappers)
    finally:
        for w in wrappers:
            await stop_wrapper(w)
        for client in clients:
            await client.close()

