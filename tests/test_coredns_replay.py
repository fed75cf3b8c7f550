"""A node-local CoreDNS pointed at the wrapper: its kubernetes plugin's exact request set, replayed.

From coredns/coredns ``plugin/kubernetes`` (the 1.11/1.12 line):

* ``kubernetes.go`` ``getClientConfig``: with ``endpoint URL`` (or ``kubeconfig``) the client is
  built by client-go's clientcmd, which reads a kubeconfig's credentials only for a TLS server
  (tools/clientcmd/client_config.go, "only try to read the auth information if we are secure"), so
  CoreDNS reaches ``http://127.0.0.1:51006`` without any; ``ContentType`` is protobuf, so it asks
  ``Accept: application/vnd.kubernetes.protobuf, */*``. ``endpointSliceSupported`` first GETs
  ``/version`` and ``/apis/discovery.k8s.io/v1``.
* ``controller.go`` ``newdnsController``: client-go informers (``object/informer.go``: a plain
  reflector, so list with ``resourceVersion=0&limit=500``, then watch with bookmarks), all
  namespaces, on ``/api/v1/services``, ``/apis/discovery.k8s.io/v1/endpointslices`` (labelSelector
  only from the ``labels`` option) and ``/api/v1/namespaces`` (labelSelector only from
  ``namespace_labels``); Pods only with ``pods verified``, which this deployment does not use.
* ``namespace.go`` ``namespaceExposed``: a name resolves only if its Namespace is in the informer's
  store, so CoreDNS answers NXDOMAIN for everything until it can read Namespaces.

A headless Service's A records are its ready endpoints' addresses (``object/endpoint.go``
``EndpointSliceToEndpoints``); ``resolve`` below computes them from the informers' stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from apisim.seeds import Backend, endpoint_slice, service, servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from tests.conftest import fast_settings
from tests.support.reflector import ReflectorModel, running_clients
from tests.support.stack import running_simulator, wait_ready
from wrapper.compose import Running, start_wrapper, stop_wrapper

LOCAL = "bj-1"
HEADLESS = "grid-headless"
BEIJING = {"10.0.0.80", "10.0.1.82"}  # on bj-1, bj-3
GUANGZHOU = {"10.0.0.149": "gz-2", "10.0.1.18": "gz-3"}
WRAPPER_TOKEN, WRAPPER_SA = "wrapper-sa-token", "system:serviceaccount:edge-system:application-grid-wrapper"
COREDNS_TOKEN, COREDNS_SA = "coredns-sa-token", "system:serviceaccount:kube-system:coredns"
PROTOBUF_FIRST = "application/vnd.kubernetes.protobuf, */*"
USER_AGENT = "coredns/v0.0.0 (linux/amd64) kubernetes/$Format"


def headless_grid() -> list[tuple[Any, dict[str, Any]]]:
    svc = service("default", HEADLESS, "None", 80, 8080, selector={"app": "grid-db"},
                  annotations={"topologyKeys": '["location"]'})
    backends = [Backend("10.0.0.80", "bj-1"), Backend("10.0.1.82", "bj-3"),
                *(Backend(ip, node) for ip, node in GUANGZHOU.items())]
    return [(SERVICES, svc), (ENDPOINTSLICES, endpoint_slice(svc, backends, 8080))]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(bookmark_interval=0.3, authenticate=True)
    s.load(servicegrid_demo())
    s.load(headless_grid())
    s.reviews.add_user(WRAPPER_TOKEN, WRAPPER_SA)
    s.reviews.add_user(COREDNS_TOKEN, COREDNS_SA)
    async with running_simulator(s):
        yield s


@pytest.fixture
async def wrapper(sim: Simulator, tmp_path: Path) -> AsyncIterator[Running]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(orjson.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": sim.url}}],
        "users": [{"name": "u", "user": {"token": WRAPPER_TOKEN}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}).decode())
    serve, reflect = fast_settings()
    async with await ApiClient.from_kubeconfig(str(kubeconfig)) as client:
        running = await start_wrapper(client, LOCAL, ("127.0.0.1", 0), serve=serve, reflect=reflect)
        try:
            await wait_ready(running)
            yield running
        finally:
            await stop_wrapper(running)


def coredns_informers(url: str, headers: dict[str, str]) -> dict[str, ReflectorModel]:
    """The three informers of newdnsController, with the default Corefile (no labels options)."""
    common: dict[str, Any] = {"accept": PROTOBUF_FIRST, "headers": {"User-Agent": USER_AGENT, **headers}}
    return {
        "services": ReflectorModel(url, "/api/v1/services", "Service", "v1", **common),
        "endpointslices": ReflectorModel(url, "/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice",
                                         "discovery.k8s.io/v1", **common),
        "namespaces": ReflectorModel(url, "/api/v1/namespaces", "Namespace", "v1", **common),
    }


def resolve(informers: dict[str, ReflectorModel], namespace: str, name: str) -> set[str] | None:
    """A record answers for ``name.namespace.svc``: None for NXDOMAIN."""
    if namespace not in informers["namespaces"].store:
        return None  # namespaceExposed
    svc = informers["services"].store.get(f"{namespace}/{name}")
    if svc is None:
        return None
    if svc["spec"].get("clusterIP") != "None":
        return {svc["spec"]["clusterIP"]}
    return {e["addresses"][0] for s in informers["endpointslices"].store.values()
            if s["metadata"]["namespace"] == namespace
            and s["metadata"]["labels"].get("kubernetes.io/service-name") == name
            for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready") is not False}


async def startup_probes(url: str, headers: dict[str, str]) -> list[int]:
    """endpointSliceSupported: the server version, then the discovery.k8s.io/v1 resource list."""
    codes = []
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT, **headers}) as s:
        for path in ("/version", "/apis/discovery.k8s.io/v1"):
            async with s.get(f"{url}{path}", headers={"Accept": "application/json, */*"}) as resp:
                codes.append(resp.status)
                if path.endswith("/v1"):
                    assert "endpointslices" in {r["name"] for r in (await resp.json())["resources"]}
    return codes


async def test_coredns_over_plain_http_resolves_a_headless_grid_service_to_the_local_unit_only(
        wrapper: Running, sim: Simulator) -> None:
    assert await startup_probes(wrapper.url, {}) == [200, 200]
    async with running_clients(coredns_informers(wrapper.url, {})) as coredns:
        assert resolve(coredns, "default", HEADLESS) == BEIJING
        assert resolve(coredns, "default", "plain-svc") == {"172.16.33.100"}  # ClusterIP Services as they are
        assert resolve(coredns, "nowhere", HEADLESS) is None

        # The unit grows: a guangzhou node joins beijing, its pod's address resolves too.
        sim.patch(NODES, None, "gz-2", {"metadata": {"labels": {"location": "beijing"}}})
        await coredns["endpointslices"].wait_until(
            lambda _: resolve(coredns, "default", HEADLESS) == {*BEIJING, "10.0.0.149"})

        # Namespaces stream from the apiserver as they are: a new one appears in CoreDNS's store.
        sim.create(SERVICES, service("edge-apps", "api", "172.16.40.10", 80, 8080))
        await coredns["namespaces"].wait_until(lambda st: "edge-apps" in st)
        await coredns["services"].wait_until(lambda _: resolve(coredns, "edge-apps", "api") == {"172.16.40.10"})
        for m in coredns.values():
            assert m.violations == [] and m.relists == 0, (m.path, m.violations, m.relist_reasons)
    async with aiohttp.ClientSession() as s, s.get(f"{sim.url}/api/v1/namespaces",
                                                   headers={"Authorization": f"Bearer {WRAPPER_TOKEN}"}) as resp:
        direct = (await resp.json())["items"]
    seen_by_coredns = {k: {f: v for f, v in n.items() if f not in ("kind", "apiVersion")}
                       for k, n in coredns["namespaces"].store.items()}
    assert {n["metadata"]["name"]: n for n in direct} == seen_by_coredns
    # Without credentials, only the Namespace reads reached the apiserver, as the wrapper.
    # Namespace reads (the wrapper's own reads of namespaced collections, such as its node topology
    # buckets, are not CoreDNS's).
    reads = [s for s in sim.seen if s.path.rstrip("/").count("/") <= 4 and s.path.startswith("/api/v1/namespaces")
             and s.method == "GET"]
    assert reads and all(s.user is not None and s.user.name == WRAPPER_SA for s in reads)


async def test_namespaces_through_the_wrapper_are_the_apiservers_byte_for_byte(wrapper: Running,
                                                                              sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        bodies = []
        for base, auth in ((wrapper.url, {}), (sim.url, {"Authorization": f"Bearer {WRAPPER_TOKEN}"})):
            async with s.get(f"{base}/api/v1/namespaces?limit=500&resourceVersion=0",
                             headers={"Accept": PROTOBUF_FIRST, **auth}) as resp:
                assert resp.status == 200
                bodies.append(await resp.read())
    assert bodies[0] == bodies[1]


async def test_coredns_with_its_own_token_reads_namespaces_as_itself(wrapper: Running, sim: Simulator) -> None:
    # CoreDNS with a kubeconfig (https:// to the wrapper's TLS listener, tokenFile: its ServiceAccount
    # token) sends the token; the wrapper forwards it on its connection without its own credentials.
    auth = {"Authorization": f"Bearer {COREDNS_TOKEN}"}
    assert await startup_probes(wrapper.url, auth) == [200, 200]
    async with running_clients(coredns_informers(wrapper.url, auth)) as coredns:
        assert resolve(coredns, "default", HEADLESS) == BEIJING
    # Namespace reads (the wrapper's own reads of namespaced collections, such as its node topology
    # buckets, are not CoreDNS's).
    reads = [s for s in sim.seen if s.path.rstrip("/").count("/") <= 4 and s.path.startswith("/api/v1/namespaces")
             and s.method == "GET"]
    assert reads and all(s.user is not None and s.user.name == COREDNS_SA for s in reads)


@pytest.mark.parametrize("agent", [USER_AGENT, "kube-proxy/v1.33.0 (linux/amd64) kubernetes/abc1234",
                                   "nginx-ingress-controller/v1.12.0", "kubectl/v1.33.0 (linux/amd64)", ""])
async def test_every_client_gets_the_filtered_view_whatever_its_user_agent(wrapper: Running, agent: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(
            f"{wrapper.url}/apis/discovery.k8s.io/v1/endpointslices",
            headers={"User-Agent": agent, "Accept": "application/json"}) as resp:
        doc = await resp.json()
    [headless] = [i for i in doc["items"] if i["metadata"]["labels"]["kubernetes.io/service-name"] == HEADLESS]
    assert {e["addresses"][0] for e in headless["endpoints"]} == BEIJING
