"""The simulator serves ConfigMaps and Leases as the apiserver does, over real sockets.

The topology publisher writes its buckets as ConfigMaps and elects its leader with a Lease, and
the wrappers watch the buckets: every verb they use, with the apiserver's answers to stale
resourceVersions (409 Conflict), missing objects (404) and existing names (409 AlreadyExists).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from apisim import Simulator
from kubeapi.resources import CONFIGMAPS, LEASES, match_path
from tests.support.kubectl import newest_kubectl, run_kubectl
from tests.support.stack import running_simulator

NS = "edge-system"
CM = f"/api/v1/namespaces/{NS}/configmaps"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_simulator(Simulator(bookmark_interval=0.3)) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None, expect: int = 200,
               headers: dict[str, str] | None = None, **params: str) -> Any:
    data = None if body is None else orjson.dumps(body)
    async with http.request(method, url, data=data, params=params, headers=headers or JSON) as r:
        doc = await r.json(content_type=None)
        assert r.status == expect, doc
        return doc


def configmap(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels or {"app": "buckets"}}, "data": data}


def test_the_wrapper_still_matches_only_its_cached_resources() -> None:
    # ConfigMaps and Leases are served by the simulator, never from the wrapper's cache.
    assert match_path(CM) is None and match_path(LEASE) is None
    assert match_path(CM, {"configmaps": CONFIGMAPS}) is not None


async def test_configmaps_create_get_list_update_delete_like_the_apiserver(
        sim: Simulator, http: aiohttp.ClientSession) -> None:
    created = await call(http, "POST", sim.url + CM, configmap("b-0", {"n1": "{}"}), 201)
    assert created["kind"] == "ConfigMap" and created["metadata"]["namespace"] == NS
    rv = created["metadata"]["resourceVersion"]
    dup = await call(http, "POST", sim.url + CM, configmap("b-0", {}), 409)
    assert dup["reason"] == "AlreadyExists"
    await call(http, "POST", sim.url + CM, configmap("other", {}, {"app": "else"}), 201)

    listed = await call(http, "GET", sim.url + CM, labelSelector="app=buckets")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["b-0"]
    assert (await call(http, "GET", sim.url + CM + "/b-0"))["data"] == {"n1": "{}"}
    missing = await call(http, "GET", sim.url + CM + "/nope", expect=404)
    assert missing["reason"] == "NotFound" and missing["details"]["kind"] == "configmaps"

    update = configmap("b-0", {"n1": '{"zone":"a"}'})
    update["metadata"]["resourceVersion"] = rv
    updated = await call(http, "PUT", sim.url + CM + "/b-0", update)
    assert int(updated["metadata"]["resourceVersion"]) > int(rv)
    stale = await call(http, "PUT", sim.url + CM + "/b-0", update, 409)  # the same, stale, resourceVersion
    assert stale["reason"] == "Conflict"
    gone = configmap("nope", {})
    await call(http, "PUT", sim.url + CM + "/nope", gone, 404)

    patched = await call(http, "PATCH", sim.url + CM + "/b-0", {"data": {"n2": "{}"}},
                         headers={"Content-Type": "application/merge-patch+json"})
    assert patched["data"] == {"n1": '{"zone":"a"}', "n2": "{}"}

    precondition = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": rv}}
    assert (await call(http, "DELETE", sim.url + CM + "/b-0", precondition, 409))["reason"] == "Conflict"
    await call(http, "DELETE", sim.url + CM + "/b-0")
    await call(http, "DELETE", sim.url + CM + "/b-0", expect=404)
    await call(http, "GET", sim.url + CM + "/b-0/status", expect=404)  # no status subresource


@pytest.mark.parametrize(("data", "code", "reason"), [
    ({"no/slash": "x"}, 422, "Invalid"),
    ({"..": "x"}, 422, "Invalid"),
    ({"big": "x" * (1024 * 1024)}, 422, "Invalid"),
    ({"n": 1}, 400, "BadRequest"),
])
async def test_configmaps_are_validated_as_the_apiserver_validates_them(
        sim: Simulator, http: aiohttp.ClientSession, data: dict[str, Any], code: int, reason: str) -> None:
    answer = await call(http, "POST", sim.url + CM, configmap("bad", data), code)
    assert answer["kind"] == "Status" and answer["reason"] == reason
    await call(http, "GET", sim.url + CM + "/bad", expect=404)


async def test_a_label_selected_configmap_watch_sees_writes_and_objects_leaving_the_selection(
        sim: Simulator, http: aiohttp.ClientSession) -> None:
    created = await call(http, "POST", sim.url + CM, configmap("b-0", {"n1": "{}"}), 201)
    params = {"watch": "1", "labelSelector": "app=buckets", "resourceVersion": created["metadata"]["resourceVersion"],
              "timeoutSeconds": "5"}
    async with http.get(sim.url + CM, params=params) as watch:
        assert watch.status == 200
        sim.patch(CONFIGMAPS, NS, "b-0", {"data": {"n2": "{}"}})
        sim.patch_labels(CONFIGMAPS, NS, "b-0", {"app": None})  # leaves the selection
        seen = []
        for _ in range(2):
            line = await watch.content.readline()
            ev = orjson.loads(line)
            seen.append((ev["type"], ev["object"]["kind"], sorted(ev["object"]["data"])))
    assert seen == [("MODIFIED", "ConfigMap", ["n1", "n2"]), ("DELETED", "ConfigMap", ["n1", "n2"])]


def lease(holder: str, duration: int = 15) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                     "renewTime": "2025-01-01T00:00:00.000000Z", "leaseTransitions": 0}}


async def test_leases_take_turns_only_through_resource_version_preconditions(
        sim: Simulator, http: aiohttp.ClientSession) -> None:
    await call(http, "GET", sim.url + LEASE + "/leader", expect=404)
    first = await call(http, "POST", sim.url + LEASE, lease("a"), 201)
    assert first["kind"] == "Lease" and first["apiVersion"] == "coordination.k8s.io/v1"
    assert (await call(http, "POST", sim.url + LEASE, lease("b"), 409))["reason"] == "AlreadyExists"
    # Two candidates read the same version; only the first update wins.
    take_a, take_b = lease("a"), lease("b")
    take_a["spec"]["renewTime"] = "2025-01-01T00:00:02.000000Z"  # a renewal
    for body in (take_a, take_b):
        body["metadata"]["resourceVersion"] = first["metadata"]["resourceVersion"]
    await call(http, "PUT", sim.url + LEASE + "/leader", take_a)
    assert (await call(http, "PUT", sim.url + LEASE + "/leader", take_b, 409))["reason"] == "Conflict"
    assert sim.get(LEASES, NS, "leader")["spec"]["holderIdentity"] == "a"
    invalid = await call(http, "POST", sim.url + LEASE, {**lease("c", 0), "metadata": {"name": "other"}}, 422)
    assert invalid["details"]["causes"][0]["field"] == "spec.leaseDurationSeconds"
    discovery = await call(http, "GET", sim.url + "/apis/coordination.k8s.io/v1")
    assert [r["name"] for r in discovery["resources"]] == ["leases"]


async def test_kubectl_lists_configmaps_and_leases_from_the_simulator(
        sim: Simulator, http: aiohttp.ClientSession, kube_home: Path) -> None:
    await call(http, "POST", sim.url + CM, configmap("b-0", {"n1": "{}", "n2": "{}"}), 201)
    await call(http, "POST", sim.url + LEASE, lease("publisher-1"), 201)
    kubectl = newest_kubectl()
    cms = await run_kubectl(kubectl, sim.url, "get", "configmaps", "-n", NS, "--no-headers", home=kube_home)
    assert cms.split()[:2] == ["b-0", "2"]
    leases = await run_kubectl(kubectl, sim.url, "get", "leases", "-n", NS, "--no-headers", home=kube_home)
    assert leases.split()[:2] == ["leader", "publisher-1"]
