"""Bad input from clients and from Service annotations: a Kubernetes Status with the right code, cache unchanged."""

from __future__ import annotations

import json
import logging

import aiohttp
import orjson
import pytest

from apisim.seeds import Backend, endpoint_slice, service
from apisim.server import Simulator
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from tests.support.faultkit import list_items, node_names
from tests.support.waiting import eventually
from wrapper.compose import Running

# Pass-through needs the client's own credentials (the wrapper does not lend its identity).
AUTH = {"Authorization": "Bearer test-client-token"}


def cache_fingerprint(running: Running) -> tuple[int, dict[str, dict[str, bytes]]]:
    return running.cache.generation, {n: {k: e.raw for k, e in v.objects.items()} for n, v in
                                      running.cache.views.items()}


async def call(method: str, url: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
               data: bytes | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url, params=params, headers=headers,
                                                        data=data) as resp:
        return resp.status, await resp.read()


BAD_QUERIES: list[tuple[str, dict[str, str], int, str]] = [
    ("labelSelector unbalanced", {"labelSelector": "a in (b"}, 400, "labelSelector"),
    ("labelSelector garbage", {"labelSelector": "==="}, 400, ""),
    ("labelSelector bad key", {"labelSelector": "-bad-=x"}, 400, ""),
    ("fieldSelector no operator", {"fieldSelector": "metadata.name"}, 400, "metadata.name"),
    ("fieldSelector unsupported field", {"fieldSelector": "spec.foo=bar"}, 400, "spec.foo"),
    ("resourceVersion non-numeric", {"resourceVersion": "abc"}, 400, "resourceVersion"),
    ("resourceVersion negative", {"resourceVersion": "-5"}, 400, "resourceVersion"),
    ("timeoutSeconds negative", {"watch": "true", "timeoutSeconds": "-1"}, 422, "timeoutSeconds"),
    ("timeoutSeconds non-numeric", {"watch": "true", "timeoutSeconds": "soon"}, 400, "timeoutSeconds"),
    ("limit negative", {"limit": "-1"}, 422, "limit"),
    ("limit non-numeric", {"limit": "ten"}, 400, "limit"),
    ("watch not a bool", {"watch": "maybe"}, 400, "watch"),
    ("resourceVersionMatch unknown", {"resourceVersion": "1", "resourceVersionMatch": "Newest"}, 422, ""),
    ("continue garbage", {"continue": "%%%not-a-token"}, 400, "continue"),
]


@pytest.mark.parametrize(("params", "code", "mentions"), [q[1:] for q in BAD_QUERIES], ids=[q[0] for q in BAD_QUERIES])
async def test_malformed_list_options_get_a_status_with_the_right_code_and_leave_the_cache_unchanged(
    wrapper: Running, params: dict[str, str], code: int, mentions: str
) -> None:
    before = cache_fingerprint(wrapper)
    for resource in (NODES, ENDPOINTSLICES):
        status, body = await call("GET", wrapper.url + resource.collection_path(), params=params)
        assert status == code, body
        doc = orjson.loads(body)
        assert doc["kind"] == "Status" and doc["apiVersion"] == "v1" and doc["status"] == "Failure"
        assert doc["code"] == code
        assert mentions in doc["message"]
        assert "Traceback" not in doc["message"]
    assert cache_fingerprint(wrapper) == before


async def test_a_huge_timeout_seconds_is_capped_and_one_past_int64_is_a_400(wrapper: Running) -> None:
    # Past int64 Go's strconv.ParseInt fails ("value out of range"): the apiserver answers 400.
    status, body = await call("GET", wrapper.url + SERVICES.collection_path(),
                              params={"timeoutSeconds": "99999999999999999999"})
    assert status == 400 and "value out of range" in orjson.loads(body)["message"]
    async with aiohttp.ClientSession() as s, s.get(wrapper.url + SERVICES.collection_path(),
                                                   params={"watch": "1", "timeoutSeconds": "99999999999"}) as resp:
        assert resp.status == 200
        first = orjson.loads(await resp.content.readline())
        assert first["type"] == "ADDED"


@pytest.mark.parametrize("path", ["/api/v1/foos", "/apis/nope.example.io/v1/things", "/api/v1/namespaces/x/y/z/w"])
async def test_unknown_paths_are_passed_through_and_get_the_apiservers_404(
    wrapper: Running, sim: Simulator, path: str
) -> None:
    before = cache_fingerprint(wrapper)
    status, body = await call("GET", wrapper.url + path, headers=AUTH)
    assert status == 404
    doc = orjson.loads(body)
    assert doc["kind"] == "Status" and doc["code"] == 404
    # The simulator's own 404 (with its "404 page not found" cause), not one made up by the wrapper.
    assert doc["details"]["causes"][0]["message"] == "404 page not found"
    assert cache_fingerprint(wrapper) == before


async def test_writes_to_cached_resources_are_passed_through_to_the_apiserver(
    wrapper: Running, sim: Simulator
) -> None:
    svc = service("default", "passed-through", "172.16.33.200", 80, 8080, selector={"app": "pt"})
    status, body = await call("POST", wrapper.url + SERVICES.collection_path("default"),
                              headers={**AUTH, "Content-Type": "application/json"}, data=orjson.dumps(svc))
    assert status == 201, body
    assert sim.get(SERVICES, "default", "passed-through")["spec"]["clusterIP"] == "172.16.33.200"

    node = sim.get(NODES, None, "gz-3")
    node["metadata"]["labels"]["put"] = "yes"
    status, body = await call("PUT", wrapper.url + NODES.object_path("gz-3"),
                              headers={**AUTH, "Content-Type": "application/json"}, data=orjson.dumps(node))
    assert status == 200, body
    assert sim.get(NODES, None, "gz-3")["metadata"]["labels"]["put"] == "yes"

    status, body = await call("DELETE", wrapper.url + ENDPOINTS.object_path("plain-svc", "default"), headers=AUTH)
    assert status == 200, body
    assert all(e["metadata"]["name"] != "plain-svc" for e in sim.list(ENDPOINTS, "default"))
    # And the cache follows through its watch, not through the write.
    await eventually(lambda: "default/passed-through" in wrapper.cache.views["services"].objects
                   and "default/plain-svc" not in wrapper.cache.views["endpoints"].objects
                   and wrapper.cache.node_labels["gz-3"].get("put") == "yes", 10, "the cache to follow")


@pytest.mark.parametrize("headers", [{"X-Big": "a" * 20000}, {f"X-H{i}": "v" * 50 for i in range(200)}],
                         ids=["one-huge-header", "too-many-headers"])
async def test_oversized_headers_get_400_or_431_without_a_traceback_in_the_answer(
    wrapper: Running, headers: dict[str, str]
) -> None:
    before = cache_fingerprint(wrapper)
    status, body = await call("GET", wrapper.url + SERVICES.collection_path(), headers=headers)
    assert status in (400, 431)
    assert b"Traceback" not in body and b'File "' not in body
    assert cache_fingerprint(wrapper) == before
    # The server is still fine.
    assert (await call("GET", wrapper.url + "/readyz"))[0] == 200


async def test_oversized_headers_are_not_logged_with_a_traceback(
    wrapper: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, _ = await call("GET", wrapper.url + SERVICES.collection_path(), headers={"X-Big": "a" * 20000})
    assert status in (400, 431)
    with_tb = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert with_tb == [], [f"{r.name}: {r.getMessage()}" for r in with_tb]


async def test_an_oversized_body_gets_413(wrapper: Running, sim: Simulator) -> None:
    before = sim.store.rv
    status, body = await call("POST", wrapper.url + "/api/v1/namespaces/default/configmaps",
                              headers={**AUTH, "Content-Type": "application/json"},
                              data=b'{"data":{"blob":"' + b"x" * (5 << 20) + b'"}}')
    assert status == 413, body[:300]
    assert orjson.loads(body)["kind"] == "Status"
    assert sim.store.rv == before


# ---- malformed topology annotations on Services ---------------------------------------------------------

MALFORMED_ANNOTATIONS: dict[str, str] = {
    "json-object": '{"location": 1}',
    "json-string": '"location"',
    "not-json": "[location",
    "non-string-key": '[1, "location"]',
    "empty-key": '["", "location"]',
    "wildcard-not-last": '["*", "location"]',
    "duplicate-key": '["location", "location"]',
    "invalid-label-key": '["Bad Key!"]',
    "thousands-of-keys": json.dumps([f"k{i}" for i in range(5000)]),
    "empty-list": "[]",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ANNOTATIONS))
async def test_a_service_with_a_malformed_annotation_passes_unfiltered_and_is_logged_once_per_version(
    wrapper: Running, sim: Simulator, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.cluster")
    name = f"bad-{case}"
    svc = sim.create(SERVICES, service("default", name, "", 80, 8080, selector={"app": name},
                                       annotations={"topologyKeys": MALFORMED_ANNOTATIONS[case]}))
    sl = sim.create(ENDPOINTSLICES, endpoint_slice(svc, [Backend("10.0.0.90", "bj-1", "beijing", f"{name}-a"),
                                                         Backend("10.0.0.91", "gz-2", "guangzhou", f"{name}-b")],
                                                   8080))
    key = f"default/{sl['metadata']['name']}"
    await eventually(lambda: key in wrapper.cache.views["endpointslices"].objects, 10, "the slice in the cache")
    served = await list_items(wrapper.url, ENDPOINTSLICES)
    assert node_names(served[key]) == {"bj-1", "gz-2"}  # unfiltered

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if f"default/{name}" in r.getMessage()]

    assert len(warnings()) == 1 and "malformed" in warnings()[0]
    assert len(warnings()[0]) < 2000  # the value is cut short in the log
    # Node churn refilters, slice churn too: no new log line for the same Service version.
    sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
    sim.patch_labels(ENDPOINTSLICES, "default", sl["metadata"]["name"], {"touched": "yes"})
    await eventually(lambda: (wrapper.cache.views["endpointslices"].objects[key].obj["metadata"].get("labels") or {})
                   .get("touched") == "yes", 10, "the slice update")
    assert len(warnings()) == 1
    # A new version of the Service is parsed (and logged) again, once.
    sim.patch_labels(SERVICES, "default", name, {"v": "2"})
    await eventually(lambda: len(warnings()) == 2, 10, "the second log line")
    sim.patch_labels(NODES, None, "gz-3", {"location": "beijing"})
    await eventually(lambda: wrapper.cache.node_labels["gz-3"]["location"] == "beijing", 10, "node change")
    assert len(warnings()) == 2
    assert node_names((await list_items(wrapper.url, ENDPOINTSLICES))[key]) == {"bj-1", "gz-2"}
