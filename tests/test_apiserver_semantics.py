"""Watch and query semantics the apiserver has and the wrapper (and the simulator) must share.

Where it makes sense the same request goes to the simulator and through the wrapper and both
answers must agree; the simulator stands in for the apiserver (see
shared/reference/list-watch-protocol.md and k8s.io/apiserver handlers, negotiation, cacher).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from apisim.seeds import scale_cluster, servicegrid_demo
from cache.view import View
from kubeapi.negotiation import accepts_gzip, negotiate
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.status import StatusError
from kubeapi.types import JSONDict
from tests.support.stack import Stack, stack, wait_caught_up
from wrapper.app import build_app
from wrapper.failures import LINES_PER_WINDOW
from wrapper.serving import ServeSettings

PROTOBUF_ACCEPT = "application/vnd.kubernetes.protobuf, */*"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# The collection these tests read on both sides: one the wrapper serves whole (it holds the local
# Node alone, so a list of every Node passes through), and one of its objects.
SVC_PATH = SERVICES.collection_path()
PLAIN = SERVICES.object_path("plain-svc", "default")


def touch(st: Stack, label: str, value: str) -> None:
    """A change the served collection's watchers see: a label on default/plain-svc."""
    st.sim.patch_labels(SERVICES, "default", "plain-svc", {label: value})


@pytest.fixture
async def pair() -> AsyncIterator[Stack]:
    async with stack(servicegrid_demo(), too_large_wait=0.3, sim_bookmarks=0.2, wrapper_bookmarks=0.2) as st:
        await wait_caught_up(st.wrapper, st.sim)
        yield st


def sides(st: Stack) -> list[tuple[str, str]]:
    return [("simulator", st.sim.url), ("wrapper", st.wrapper.url)]


async def fetch(url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params or {}, headers=headers or {}) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), orjson.loads(body) if body else None


async def next_event(resp: aiohttp.ClientResponse, *, skip_bookmarks: bool = True) -> dict[str, Any] | None:
    """The next watch event (None at the end of the stream); bookmarks skipped unless asked."""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        if not line:
            return None
        ev: dict[str, Any] = orjson.loads(line)
        if ev["type"] != "BOOKMARK" or not skip_bookmarks:
            return ev


def assert_status(doc: Any, code: int, reason: str) -> None:
    assert isinstance(doc, dict) and doc["kind"] == "Status" and doc["apiVersion"] == "v1", doc
    assert doc["status"] == "Failure" and doc["code"] == code and doc["reason"] == reason, doc


# ---- timeoutSeconds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["0", None], ids=["timeoutSeconds=0", "absent"])
async def test_a_watch_without_a_client_timeout_stays_open_under_the_servers_own_limit(
    pair: Stack, timeout: str | None
) -> None:
    async with aiohttp.ClientSession() as s:
        for side, url in sides(pair):
            await wait_caught_up(pair.wrapper, pair.sim)
            params = {"watch": "true", "resourceVersion": str(pair.sim.rv)}
            if timeout is not None:
                params["timeoutSeconds"] = timeout
            async with s.get(url + SVC_PATH, params=params) as resp:
                assert resp.status == 200, side
                touch(pair, "touched", side)
                ev = await next_event(resp)
            # "0" ended the wrapper's watch at once, before any event.
            assert ev is not None and ev["type"] == "MODIFIED", (side, ev)
            assert ev["object"]["metadata"]["labels"]["touched"] == side


# ---- integers are ASCII digits, as Go's strconv reads them --------------------------------------------

NOT_INTEGERS = ["²", "\u0661\u0662", "1_0", " 5", "5 ", "0x10", "1e3", "5.0", "", "99999999999999999999"]


@pytest.mark.parametrize("value", [v for v in NOT_INTEGERS if v], ids=repr)
@pytest.mark.parametrize(("param", "watch"), [("resourceVersion", False), ("resourceVersion", True),
                                              ("limit", False), ("timeoutSeconds", True)])
async def test_integers_that_are_not_ascii_digits_in_range_get_the_same_400_everywhere(
    pair: Stack, param: str, watch: bool, value: str
) -> None:
    params = {param: value, **({"watch": "true"} if watch else {})}
    answers = []
    for side, url in sides(pair):
        code, headers, doc = await fetch(url + NODES.collection_path(), params)
        assert code == 400 and headers["Content-Type"] == "application/json", (side, code, doc)
        assert_status(doc, 400, "BadRequest")
        assert "strconv.Parse" in doc["message"], doc["message"]
        answers.append(doc)
    assert answers[0] == answers[1]


@pytest.mark.parametrize(("param", "value", "code"), [
    ("resourceVersion", "+5", 400),  # ParseUint takes no sign
    ("resourceVersion", "18446744073709551616", 400),  # 2^64: out of range
    ("resourceVersion", "9" * 5000, 400),  # out of range, not past int()'s digit limit (a 500)
    ("resourceVersion", "0" * 5000 + "7", 200),  # leading zeros: ParseUint takes them
    ("limit", "9" * 5000, 400),
    ("limit", "+2", 200),  # ParseInt takes one
    ("limit", "-0", 200),
    ("timeoutSeconds", "+1", 200),
])
async def test_signs_and_ranges_follow_parse_int_and_parse_uint(pair: Stack, param: str, value: str,
                                                               code: int) -> None:
    for side, url in sides(pair):
        got, _, doc = await fetch(url + SVC_PATH, {param: value})
        assert got == code, (side, doc)


@pytest.mark.parametrize("selector", ["x>1_0", "x<²", "x>\u0661\u0662", "x>0x10"])
async def test_label_selector_comparisons_take_only_ascii_integers(pair: Stack, selector: str) -> None:
    answers = []
    for side, url in sides(pair):
        code, _, doc = await fetch(url + SVC_PATH, {"labelSelector": selector})
        assert code == 400, (side, doc)
        assert_status(doc, 400, "BadRequest")
        answers.append(doc)
    assert answers[0] == answers[1]
    code, _, doc = await fetch(pair.wrapper.url + SVC_PATH, {"labelSelector": "x>10"})
    assert code == 200 and doc["items"] == []


async def test_a_json_patch_index_that_is_not_ascii_digits_is_a_422_not_a_crash(pair: Stack) -> None:
    patch = orjson.dumps([{"op": "replace", "path": "/status/addresses/²", "value": {"type": "x", "address": "y"}}])
    async with aiohttp.ClientSession() as s, s.patch(
        pair.sim.url + NODES.collection_path() + "/gz-2", data=patch,
        headers={"Content-Type": "application/json-patch+json"},
    ) as resp:
        assert resp.status == 422
        assert_status(await resp.json(), 422, "Invalid")


async def test_the_profile_duration_takes_only_an_ascii_number(pair: Stack) -> None:
    for seconds in ("\u0661", "1_0", "nan", "inf"):
        code, _, doc = await fetch(pair.wrapper.debug_url + "/debug/pprof/profile", {"seconds": seconds})
        assert code == 400, (seconds, doc)


# ---- a 500 is one traceback per failure site, not per request -----------------------------------------


class _BrokenView(View):
    """A view whose listing fails: a stand-in for a bug anywhere under a handler."""

    def sorted_entries(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulated bug")


async def test_a_bug_answers_a_status_500_every_time_and_logs_one_traceback_per_site(
    caplog: pytest.LogCaptureFixture,
) -> None:
    view = _BrokenView(NODES)
    view.reset([{"metadata": {"name": "n1", "resourceVersion": "5"}}], 5)
    app = build_app({"nodes": view}, lambda: True, None, ServeSettings())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}" + NODES.collection_path()
    requests = 3 * LINES_PER_WINDOW
    try:
        with caplog.at_level(logging.INFO, logger="wrapper"):
            for _ in range(requests):
                code, headers, doc = await fetch(url)
                assert code == 500 and headers["Content-Type"] == "application/json"
                assert_status(doc, 500, "InternalError")
                assert "simulated bug" not in doc["message"], "internals stay in the log"
            # The same bug under a watch: an ERROR event, and still no second traceback.
            async with aiohttp.ClientSession() as s, s.get(url, params={"watch": "true"}) as resp:
                assert resp.status == 200
                ev = await next_event(resp)
                assert ev is not None and ev["type"] == "ERROR"
                assert_status(ev["object"], 500, "InternalError")
                assert await next_event(resp) is None
    finally:
        await runner.cleanup()
    reports = [r for r in caplog.records if "internal error" in r.getMessage()]
    with_traceback = [r for r in reports if r.exc_info]
    assert len(with_traceback) == 1, "one traceback for the one failure site"
    assert "simulated bug" in caplog.text
    # Later occurrences: one line each, rate-limited per site.
    assert 1 < len(reports) <= 1 + LINES_PER_WINDOW + 1
    assert all("\n" not in r.getMessage() for r in reports if not r.exc_info)


# ---- sendInitialEvents=false ---------------------------------------------------------------------------


@pytest.mark.parametrize("rv", ["unset", "0", "current"])
async def test_send_initial_events_false_never_replays_the_state(pair: Stack, rv: str) -> None:
    async with aiohttp.ClientSession() as s:
        for side, url in sides(pair):
            await wait_caught_up(pair.wrapper, pair.sim)
            params = {"watch": "true", "sendInitialEvents": "false", "resourceVersionMatch": "NotOlderThan",
                      "allowWatchBookmarks": "true"}
            if rv != "unset":
                params["resourceVersion"] = "0" if rv == "0" else str(pair.sim.rv)
            async with s.get(url + SVC_PATH, params=params) as resp:
                assert resp.status == 200, (side, await resp.text())
                touch(pair, "seen-by", f"{side}-{rv}")
                first: dict[str, Any] | None = None
                while first is None or first["type"] == "BOOKMARK":
                    first = await next_event(resp, skip_bookmarks=False)
                    assert first is not None, side
                    annotations = first["object"]["metadata"].get("annotations") or {}
                    assert first["type"] != "BOOKMARK" or INITIAL_EVENTS_END not in annotations, (side, first)
            assert first["type"] == "MODIFIED", (side, rv, first["type"], first["object"]["metadata"]["name"])
            assert first["object"]["metadata"]["labels"]["seen-by"] == f"{side}-{rv}"


# ---- resourceVersionMatch=Exact ------------------------------------------------------------------------


async def test_an_exact_list_at_a_future_resource_version_is_the_same_504_everywhere(pair: Stack) -> None:
    rv = pair.sim.rv + 1000
    answers = []
    for side, url in sides(pair):
        code, _, doc = await fetch(url + SVC_PATH, {"resourceVersion": str(rv), "resourceVersionMatch": "Exact"})
        assert code == 504, (side, doc)
        assert_status(doc, 504, "Timeout")
        assert doc["details"]["causes"][0]["type"] == "ResourceVersionTooLarge"
        # etcd answers an exact read of a future revision at once, with no retry hint.
        assert "retryAfterSeconds" not in doc["details"]
        assert doc["message"] == f"Timeout: Too large resource version: {rv}, current: {pair.sim.rv}"
        answers.append(doc)
    assert answers[0] == answers[1]


async def test_an_exact_list_at_an_unavailable_older_resource_version_is_the_same_410_everywhere(
    pair: Stack,
) -> None:
    old = pair.sim.rv
    touch(pair, "later", "yes")
    pair.sim.compact()
    await wait_caught_up(pair.wrapper, pair.sim)
    answers = []
    for side, url in sides(pair):
        code, _, doc = await fetch(url + SVC_PATH, {"resourceVersion": str(old), "resourceVersionMatch": "Exact"})
        assert code == 410, (side, doc)
        assert_status(doc, 410, "Expired")
        answers.append(doc)
    assert answers[0] == answers[1]
    # At exactly the current resourceVersion the wrapper has it.
    code, _, doc = await fetch(pair.wrapper.url + SVC_PATH,
                               {"resourceVersion": str(pair.sim.rv), "resourceVersionMatch": "Exact"})
    assert code == 200 and doc["metadata"]["resourceVersion"] == str(pair.sim.rv)


# ---- Accept: what cannot be produced is a 406 ----------------------------------------------------------

NOT_ACCEPTABLE = [
    "application/vnd.kubernetes.protobuf",
    "application/yaml",
    "application/vnd.kubernetes.protobuf, application/yaml",
    "text/html",
    "application/json;as=Foo;g=meta.k8s.io;v=v1",
    "application/json;as=Table;g=meta.k8s.io;v=v2",
    "application/json;as=Table;v=v1",
    "application/json;stream=bogus",
    "application/json;q=0",
]
ACCEPTABLE = ["*/*", "application/*", "application/json", PROTOBUF_ACCEPT, "application/json;stream=watch",
              "application/yaml;q=1, application/json;q=0.5", "application/json;as=Foo, application/json",
              "application/json;pretty=1"]


def _requests(st: Stack) -> list[tuple[str, str, dict[str, str]]]:
    return [("list", SVC_PATH, {}), ("get", PLAIN, {}),
            ("watch", SVC_PATH, {"watch": "true", "resourceVersion": str(st.sim.rv), "timeoutSeconds": "1"})]


@pytest.mark.parametrize("accept", NOT_ACCEPTABLE)
async def test_an_accept_that_cannot_be_produced_is_a_406_for_list_get_and_watch(pair: Stack, accept: str) -> None:
    for verb, path, params in _requests(pair):
        answers = []
        for side, url in sides(pair):
            code, headers, doc = await fetch(url + path, params, {"Accept": accept})
            assert code == 406 and headers["Content-Type"] == "application/json", (side, verb, code, doc)
            assert_status(doc, 406, "NotAcceptable")
            answers.append(doc)
        assert answers[0] == answers[1], verb
        assert answers[0]["message"] == "only the following media types are accepted: application/json"


@pytest.mark.parametrize("accept", ACCEPTABLE)
async def test_accepts_that_allow_json_keep_working_for_list_get_and_watch(pair: Stack, accept: str) -> None:
    h = {"Accept": accept}
    code, headers, doc = await fetch(pair.wrapper.url + SVC_PATH, headers=h)
    assert code == 200 and headers["Content-Type"] == "application/json" and doc["kind"] == "ServiceList"
    code, _, doc = await fetch(pair.wrapper.url + PLAIN, headers=h)
    assert code == 200 and doc["kind"] == "Service"
    async with aiohttp.ClientSession() as s, s.get(pair.wrapper.url + SVC_PATH,
                                                   params={"watch": "true"}, headers=h) as resp:
        assert resp.status == 200
        ev = await next_event(resp)
        assert ev is not None and ev["type"] == "ADDED" and ev["object"]["kind"] == "Service"


def test_negotiation_picks_the_best_usable_clause() -> None:
    assert negotiate(None).kind == negotiate("").kind == ""
    assert negotiate("application/json;as=Table;v=v1;g=meta.k8s.io;q=0.5, application/json").kind == ""
    got = negotiate("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
                    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
    assert (got.kind, got.api_version) == ("PartialObjectMetadataList", "meta.k8s.io/v1")
    got = negotiate("*/*;q=0.1, application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1")
    assert (got.kind, got.api_version) == ("PartialObjectMetadata", "meta.k8s.io/v1beta1")
    with pytest.raises(StatusError) as err:
        negotiate("application/cbor")
    assert err.value.code == 406


# ---- PartialObjectMetadata -----------------------------------------------------------------------------

METADATA_LIST = ("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v={v},"
                 "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v={v},application/json")
METADATA_ONE = ("application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v={v},"
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v={v},application/json")


# The local Node (what kube-proxy reads of Nodes, and all the wrapper holds of them) and the Services.
LOCAL_NODE_ONLY = {"fieldSelector": "metadata.name=bj-1"}


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
@pytest.mark.parametrize(("resource", "params"), [(NODES, LOCAL_NODE_ONLY), (SERVICES, {})],
                         ids=["local-node", "services"])
async def test_metadata_lists_and_gets_are_partial_object_metadata_as_the_apiserver_shapes_them(
    pair: Stack, resource: Resource, params: dict[str, str], version: str
) -> None:
    api_version = f"meta.k8s.io/{version}"
    code, _, full = await fetch(pair.wrapper.url + resource.collection_path(), params)
    assert code == 200
    answers = []
    for side, url in sides(pair):
        code, headers, doc = await fetch(url + resource.collection_path(), params,
                                         headers={"Accept": METADATA_LIST.format(v=version)})
        assert code == 200 and headers["Content-Type"] == "application/json", (side, doc)
        assert doc["kind"] == "PartialObjectMetadataList" and doc["apiVersion"] == api_version
        assert doc["metadata"] == full["metadata"]
        assert doc["items"] == [{"kind": "PartialObjectMetadata", "apiVersion": api_version,
                                 "metadata": item["metadata"]} for item in full["items"]]
        answers.append(doc)
    assert answers[0] == answers[1]
    item = full["items"][0]["metadata"]
    path = f"{resource.collection_path(item.get('namespace'))}/{item['name']}"
    gets = []
    for side, url in sides(pair):
        code, _, doc = await fetch(url + path, headers={"Accept": METADATA_ONE.format(v=version)})
        assert code == 200, (side, doc)
        assert doc == {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": item}
        gets.append(doc)
    assert gets[0] == gets[1]


async def test_an_empty_metadata_list_has_null_items_as_the_apiservers(pair: Stack) -> None:
    for side, url in sides(pair):
        code, _, doc = await fetch(url + SERVICES.collection_path("nothing-here"),
                                   headers={"Accept": METADATA_LIST.format(v="v1")})
        assert code == 200 and doc["kind"] == "PartialObjectMetadataList" and doc["items"] is None, (side, doc)


async def test_the_list_form_of_one_object_and_the_object_form_of_a_list_are_406(pair: Stack) -> None:
    one = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
    many = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
    cases = [(NODES.collection_path(), LOCAL_NODE_ONLY, one, "*core.NodeList"),
             (NODES.collection_path() + "/bj-1", {}, many, "*core.Node"),
             (NODES.collection_path(), {**LOCAL_NODE_ONLY, "watch": "true"}, many, "*core.Node"),
             (SVC_PATH, {}, one, "*core.ServiceList")]
    for path, params, accept, go_type in cases:
        answers = []
        for side, url in sides(pair):
            code, _, doc = await fetch(url + path, params, {"Accept": accept})
            assert code == 406, (side, path, doc)
            assert_status(doc, 406, "NotAcceptable")
            assert go_type in doc["message"]
            answers.append(doc)
        assert answers[0] == answers[1]


def _key(obj: JSONDict) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _partial(obj: JSONDict, api_version: str = "meta.k8s.io/v1") -> JSONDict:
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": obj["metadata"]}


async def test_a_metadata_watch_sends_partial_object_metadata_for_every_event_and_bookmark(pair: Stack) -> None:
    params = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
              "allowWatchBookmarks": "true"}
    headers = {"Accept": METADATA_ONE.format(v="v1")}
    services = pair.sim.list(SERVICES)
    streams: dict[str, list[dict[str, Any]]] = {}
    async with aiohttp.ClientSession() as s:
        for side, url in sides(pair):
            async with s.get(url + SVC_PATH, params=params, headers=headers) as resp:
                assert resp.status == 200, side
                events = []
                while True:  # the state, then the bookmark that ends it
                    ev = await next_event(resp, skip_bookmarks=False)
                    assert ev is not None, side
                    events.append(ev)
                    if ev["type"] == "BOOKMARK" and INITIAL_EVENTS_END in (
                            ev["object"]["metadata"].get("annotations") or {}):
                        break
                touch(pair, "metadata-watch", side)
                change = await next_event(resp)
                assert change is not None
                events.append(change)
            streams[side] = events
            state = [e for e in events if e["type"] == "ADDED"]
            want = [_partial(o) for o in sorted(services, key=_key)]
            assert sorted((e["object"] for e in state), key=_key) == want, side
            end = next(e for e in events if e["type"] == "BOOKMARK" and INITIAL_EVENTS_END in
                       (e["object"]["metadata"].get("annotations") or {}))
            assert end["object"]["kind"] == "PartialObjectMetadata", side
            assert end["object"]["apiVersion"] == "meta.k8s.io/v1"
            assert change["type"] == "MODIFIED" and change["object"]["kind"] == "PartialObjectMetadata"
            assert change["object"]["apiVersion"] == "meta.k8s.io/v1"
            assert change["object"]["metadata"]["labels"]["metadata-watch"] == side
            assert set(change["object"]) == {"kind", "apiVersion", "metadata"}
            services = pair.sim.list(SERVICES)
            await wait_caught_up(pair.wrapper, pair.sim)


# ---- Accept-Encoding -------------------------------------------------------------------------------------


@pytest.fixture
async def big() -> AsyncIterator[Stack]:
    async with stack(scale_cluster(5, nodes=50, services=600, endpoints=6000), node="node-00000") as st:
        yield st


@pytest.mark.parametrize(("header", "gzipped"), [
    ("gzip", True), ("GZIP", True), ("gzip;q=0.5", True), ("gzip;q=0.001", True), ("x-gzip", True),
    ("*", True), ("identity, *;q=0.5", True), ("deflate, gzip;q=1.0, *;q=0.5", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("*, gzip;q=0", False), ("*;q=0", False), ("identity", False),
    ("br", False), ("gzip;q=bogus", False), ("", False),
])
async def test_accept_encoding_q_values_decide_whether_a_large_list_is_gzipped(
    big: Stack, header: str, gzipped: bool
) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(
        big.wrapper.url + ENDPOINTSLICES.collection_path(), headers={"Accept-Encoding": header},
    ) as resp:
        body = await resp.read()
    assert resp.status == 200
    assert (resp.headers.get("Content-Encoding") == "gzip") is gzipped, resp.headers
    assert accepts_gzip(header) is gzipped
    if not gzipped:
        assert len(orjson.loads(body)["items"]) == 600
