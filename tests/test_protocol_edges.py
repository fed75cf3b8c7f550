"""Protocol edge cases of the wrapper's List/Get/Watch, one behaviour per test (see
shared/reference/list-watch-protocol.md sections 0-3)."""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from apisim.seeds import scale_cluster, service, servicegrid_demo
from apisim.server import Simulator
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from tests.support.stack import Stack, stack
from tests.support.waiting import eventually, signal_when_called
from wrapper.compose import Running

DEMO = "servicegrid-demo-svc"
PROTOBUF_ACCEPT = "application/vnd.kubernetes.protobuf, */*"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io," \
               "application/json"
SLICES = ENDPOINTSLICES.collection_path()


@pytest.fixture
async def quick() -> AsyncIterator[Stack]:
    """The servicegrid demo with a short too-large-RV wait (the default 3 s is only slower)."""
    async with stack(servicegrid_demo(), too_large_wait=0.3) as st:
        yield st


async def fetch(url: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params or {}, headers=headers or {}) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


async def first_watch_lines(url: str, params: dict[str, str], n: int, headers: dict[str, str] | None = None,
                            ) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s, s.get(url, params=params, headers=headers or {}) as resp:
        while len(out) < n:
            line = await asyncio.wait_for(resp.content.readline(), 10)
            if not line:
                break
            out.append(orjson.loads(line))
        return resp.status, dict(resp.headers), out


def assert_too_large(st: dict[str, Any], requested: int) -> None:
    assert st["kind"] == "Status" and st["apiVersion"] == "v1" and st["status"] == "Failure"
    assert st["code"] == 504 and st["reason"] == "Timeout"
    assert st["details"]["causes"][0]["type"] == "ResourceVersionTooLarge"
    assert st["details"]["retryAfterSeconds"] == 1
    assert f"Too large resource version: {requested}" in st["message"]


async def test_list_with_a_too_large_resource_version_is_a_504_status_after_waiting(quick: Stack) -> None:
    rv = quick.sim.rv + 1000
    code, headers, st = await fetch(quick.wrapper.url + SLICES, {"resourceVersion": str(rv)})
    assert code == 504 and headers["Content-Type"] == "application/json"
    assert headers.get("Retry-After") == "1"
    assert_too_large(st, rv)


async def test_watch_with_a_too_large_resource_version_is_one_error_event_then_the_end(quick: Stack) -> None:
    rv = quick.sim.rv + 1000
    code, headers, events = await first_watch_lines(quick.wrapper.url + SLICES,
                                                    {"watch": "true", "resourceVersion": str(rv)}, 2)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert [e["type"] for e in events] == ["ERROR"]
    assert_too_large(events[0]["object"], rv)


async def test_the_default_too_large_wait_lets_a_slightly_early_client_through(wrapper: Running,
                                                                               sim: Simulator) -> None:
    """Within the 3 s wait a change that reaches the requested RV answers 200, not 504."""
    target = sim.rv + 1
    with signal_when_called(wrapper.cache.views[SERVICES.plural], "wait_for_rv") as waiting:
        listing = asyncio.create_task(fetch(wrapper.url + SERVICES.collection_path(), {"resourceVersion": str(target)}))
        await asyncio.wait_for(waiting.wait(), 10)  # the list waits for the view to reach its RV
        sim.patch_labels(SERVICES, "default", "plain-svc", {"touched": "yes"})
        code, _, doc = await asyncio.wait_for(listing, 10)
    assert code == 200 and int(doc["metadata"]["resourceVersion"]) >= target


@pytest.mark.parametrize("watch", [False, True], ids=["list", "watch"])
@pytest.mark.parametrize("rv", ["abc", "-1", "1.5", "0x10", "99999999999999999999999"])
async def test_a_malformed_resource_version_is_a_400(wrapper: Running, rv: str, watch: bool) -> None:
    params = {"resourceVersion": rv, **({"watch": "true"} if watch else {})}
    code, headers, st = await fetch(wrapper.url + SLICES, params)
    assert code == 400 and headers["Content-Type"] == "application/json"
    assert st["kind"] == "Status" and st["reason"] == "BadRequest" and st["code"] == 400


async def test_resource_version_match_on_a_watch_without_send_initial_events_is_a_422(wrapper: Running) -> None:
    code, _, st = await fetch(wrapper.url + SLICES, {"watch": "true", "resourceVersion": "0",
                                                     "resourceVersionMatch": "NotOlderThan"})
    assert code == 422 and st["reason"] == "Invalid" and st["code"] == 422
    assert "resourceVersionMatch" in st["message"]


@pytest.mark.parametrize("token", ["garbage!!", "bm90LWpzb24", base64.urlsafe_b64encode(b'{"x":1}').decode()])
async def test_an_unknown_continue_token_is_a_400(wrapper: Running, token: str) -> None:
    code, _, st = await fetch(wrapper.url + SLICES, {"limit": "1", "continue": token})
    assert code == 400 and st["reason"] == "BadRequest"


async def test_a_well_formed_but_stale_continue_token_is_a_410(wrapper: Running, sim: Simulator) -> None:
    # A real token, handed out by the apiserver (the simulator) for a paginated list.
    code, _, page = await fetch(sim.url + SERVICES.collection_path(), {"limit": "1"})
    token = page["metadata"]["continue"]
    assert code == 200 and token
    code, headers, st = await fetch(wrapper.url + SERVICES.collection_path(), {"limit": "1", "continue": token})
    assert code == 410 and headers["Content-Type"] == "application/json"
    assert st["reason"] == "Expired" and st["code"] == 410


async def test_protobuf_accept_is_answered_with_json_for_list_get_and_watch(wrapper: Running) -> None:
    h = {"Accept": PROTOBUF_ACCEPT}
    code, headers, doc = await fetch(wrapper.url + SLICES, headers=h)
    assert code == 200 and headers["Content-Type"] == "application/json" and doc["kind"] == "EndpointSliceList"
    code, headers, doc = await fetch(wrapper.url + NODES.collection_path() + "/bj-1", headers=h)
    assert code == 200 and headers["Content-Type"] == "application/json" and doc["kind"] == "Node"
    code, headers, events = await first_watch_lines(wrapper.url + SLICES, {"watch": "true"}, 1, headers=h)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert events[0]["type"] == "ADDED" and events[0]["object"]["kind"] == "EndpointSlice"


def _table_cells(doc: dict[str, Any], column: str) -> list[Any]:
    names = [c["name"] for c in doc["columnDefinitions"]]
    i = names.index(column)
    return [r["cells"][i] for r in doc["rows"]]


async def test_table_requests_render_the_filtered_objects_for_list_get_and_watch(
    wrapper: Running, sim: Simulator
) -> None:
    h = {"Accept": TABLE_ACCEPT}
    code, headers, table = await fetch(wrapper.url + ENDPOINTSLICES.collection_path("default"), headers=h)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"]["resourceVersion"]
    assert all(r["object"]["kind"] == "PartialObjectMetadata" for r in table["rows"])
    names = [r["object"]["metadata"]["name"] for r in table["rows"]]
    demo = next(n for n in names if n.startswith(DEMO))
    cell = _table_cells(table, "Endpoints")[names.index(demo)]
    assert cell == "10.0.0.70,10.0.1.72"  # the beijing endpoints only
    code, _, one = await fetch(f"{wrapper.url}{ENDPOINTSLICES.collection_path('default')}/{demo}", headers=h)
    assert code == 200 and one["kind"] == "Table" and len(one["rows"]) == 1
    assert _table_cells(one, "Endpoints") == ["10.0.0.70,10.0.1.72"]

    async with aiohttp.ClientSession() as s, s.get(
        wrapper.url + SLICES, params={"watch": "true", "resourceVersion": table["metadata"]["resourceVersion"]},
        headers=h,
    ) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
        sim.patch_labels(NODES, None, "gz-3", {"location": "beijing"})
        events = [orjson.loads(await asyncio.wait_for(resp.content.readline(), 10)) for _ in range(2)]
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED"]
    assert all(e["object"]["kind"] == "Table" and len(e["object"]["rows"]) == 1 for e in events)
    # Only the first event of a Table watch carries the column definitions.
    assert events[0]["object"]["columnDefinitions"] and not events[1]["object"].get("columnDefinitions")
    column = [c["name"] for c in table["columnDefinitions"]].index("Endpoints")
    assert events[0]["object"]["rows"][0]["cells"][column] == "10.0.0.70,10.0.1.72,10.0.0.139"
    assert events[1]["object"]["rows"][0]["cells"][column] == "10.0.0.70,10.0.1.72,10.0.0.139 + 1 more..."


@pytest.fixture
async def big() -> AsyncIterator[Stack]:
    async with stack(scale_cluster(5, nodes=50, services=600, endpoints=6000), node="node-00000") as st:
        yield st


async def _raw(url: str, params: dict[str, str], headers: dict[str, str], *, watch_lines: int = 0,
               ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(url, params=params, headers=headers) as resp:
        if watch_lines:
            body = b"".join([await asyncio.wait_for(resp.content.readline(), 10) for _ in range(watch_lines)])
        else:
            body = await resp.read()
        return resp.status, dict(resp.headers), body


async def test_large_lists_are_gzipped_small_ones_and_watches_never(big: Stack) -> None:
    url = big.wrapper.url
    gz = {"Accept-Encoding": "gzip"}
    code, headers, body = await _raw(url + SLICES, {}, gz)
    assert code == 200 and headers.get("Content-Encoding") == "gzip"
    doc = orjson.loads(gzip.decompress(body))
    assert len(doc["items"]) == 600 and len(gzip.decompress(body)) > 128 * 1024
    # The same large list without Accept-Encoding: plain.
    code, headers, body = await _raw(url + SLICES, {}, {"Accept-Encoding": "identity"})
    assert code == 200 and "Content-Encoding" not in headers and len(orjson.loads(body)["items"]) == 600
    # A small list (one node): plain even though gzip is accepted.
    code, headers, body = await _raw(url + NODES.collection_path(), {"fieldSelector": "metadata.name=node-00000"},
                                     gz)
    assert code == 200 and "Content-Encoding" not in headers and len(orjson.loads(body)["items"]) == 1
    # A watch whose initial state is far over 128 KiB: never compressed.
    code, headers, body = await _raw(url + SLICES, {"watch": "true"}, gz, watch_lines=600)
    assert code == 200 and "Content-Encoding" not in headers
    assert len(body) > 128 * 1024 and all(orjson.loads(x)["type"] == "ADDED" for x in body.splitlines())


async def test_several_requests_reuse_one_keep_alive_connection(wrapper: Running) -> None:
    created: list[int] = []

    async def on_create(_s: aiohttp.ClientSession, _ctx: Any, _params: aiohttp.TraceConnectionCreateEndParams,
                        ) -> None:
        created.append(1)

    async def on_reuse(_s: aiohttp.ClientSession, _ctx: Any, _params: aiohttp.TraceConnectionReuseconnParams,
                       ) -> None:
        reused.append(1)

    reused: list[int] = []
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    paths = [SLICES, NODES.collection_path() + "/bj-1", SERVICES.collection_path("default"),
             SLICES + "?labelSelector=kubernetes.io%2Fservice-name%3Dplain-svc", "/version",
             SERVICES.collection_path("default") + "/nope", SLICES + "?resourceVersion=abc"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as s:
        for path in paths:
            async with s.get(wrapper.url + path) as resp:
                await resp.read()
                assert resp.status in (200, 400, 404), (path, resp.status)
                assert resp.headers.get("Connection", "keep-alive").lower() != "close", path
    assert len(created) == 1, f"{len(created)} connections for {len(paths)} requests"
    assert len(reused) == len(paths) - 1, "every later request went over the first connection"


async def test_a_client_that_disconnects_mid_watch_leaves_no_handler_behind(wrapper: Running, sim: Simulator) -> None:
    s = aiohttp.ClientSession()
    try:
        resp = await s.get(wrapper.url + SLICES, params={"watch": "true", "allowWatchBookmarks": "true"})
        assert resp.status == 200
        assert orjson.loads(await asyncio.wait_for(resp.content.readline(), 10))["type"] == "ADDED"
        assert len(wrapper.watches) == 1
        resp.close()  # drop the connection mid-stream
    finally:
        await s.close()
    sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})  # something to write into the dead socket
    await eventually(lambda: len(wrapper.watches) == 0, 5, "the dropped watch's handler to end")
    code, _, page = await fetch(wrapper.debug_url + "/debug/cache")
    assert code == 200
    for name, res in page["resources"].items():
        assert res["watches"] == [] and res["watchers"] == 0, name


async def test_watchers_with_different_selections_each_see_their_own_selector_transitions(quick: Stack) -> None:
    # Watch lines are computed once per selection and shared: watchers that share a selector
    # must get identical lines, and other selections (or namespaces) must not get theirs.
    quick.sim.create(SERVICES, service("default", "moving", "10.96.7.7", 80, 8080, labels={"tier": "web"}))
    rv = str(quick.sim.rv)
    url = quick.wrapper.url + SERVICES.collection_path()
    web = {"watch": "true", "resourceVersion": rv, "labelSelector": "tier=web"}
    db = {"watch": "true", "resourceVersion": rv, "labelSelector": "tier=db"}
    other_ns = {"watch": "true", "resourceVersion": rv, "labelSelector": "tier=web"}
    watches = [
        asyncio.create_task(first_watch_lines(url, web, 2)),
        asyncio.create_task(first_watch_lines(url, web, 2)),
        asyncio.create_task(first_watch_lines(url, db, 1)),
        asyncio.create_task(first_watch_lines(quick.wrapper.url + SERVICES.collection_path("kube-system"),
                                              {**other_ns, "timeoutSeconds": "2"}, 1)),
    ]
    await eventually(lambda: len(quick.wrapper.watches) == len(watches), 10, "the four watches to be open")
    quick.sim.patch_labels(SERVICES, "default", "moving", {"tier": "db"})  # leaves web, enters db
    quick.sim.patch_labels(SERVICES, "default", "moving", {"tier": "web"})  # back into web
    (_, _, web1), (_, _, web2), (_, _, dbs), (_, _, elsewhere) = await asyncio.gather(*watches)
    assert [e["type"] for e in web1] == ["DELETED", "ADDED"] and web1 == web2
    assert web1[0]["object"]["metadata"]["labels"]["tier"] == "web", "leaving carries the previous content"
    assert [e["type"] for e in dbs] == ["ADDED"] and dbs[0]["object"]["metadata"]["labels"]["tier"] == "db"
    assert elsewhere == [], "a Service in default never reaches a kube-system watch"
