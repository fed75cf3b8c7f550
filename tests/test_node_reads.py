"""Node reads: the wrapper holds the local Node alone and answers kube-proxy's requests for it; any
other Node read passes through to the apiserver, with the pass-through rules (without credentials
it gets 403; with them, the apiserver answers as the client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from kubeapi.resources import NODES
from tests.conftest import LOCAL_NODE, fast_settings
from tests.support.kubectl import newest_kubectl, run_kubectl
from tests.support.stack import running_simulator, wait_ready
from tests.test_kube_proxy_replay import PROXY_LABELS
from wrapper.compose import Running, start_wrapper, stop_wrapper, tls_context

PROTOBUF_FIRST = "application/vnd.kubernetes.protobuf, */*"
LOCAL_SELECTOR = {"fieldSelector": f"metadata.name={LOCAL_NODE}"}
TOKEN = "a-clients-own-token"


async def get(url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
              ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params or {}, headers=headers or {}) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else None


async def first_watch_event(url: str, params: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, params={**params, "watch": "1", "timeoutSeconds": "5"},
                                                   headers={"Accept": PROTOBUF_FIRST}) as resp:
        if resp.status != 200:
            return resp.status, await resp.json()
        return 200, orjson.loads(await resp.content.readline())


async def test_kube_proxys_node_requests_are_answered_from_the_cache_even_with_the_apiserver_down(
    wrapper: Running, sim: Simulator,
) -> None:
    nodes = wrapper.url + NODES.collection_path()
    await sim.stop()  # what is answered now comes from the cache, nothing is passed through
    # 1.30-1.33: a GET of its Node at start-up, then an informer on it.
    code, node = await get(f"{nodes}/{LOCAL_NODE}", headers={"Accept": PROTOBUF_FIRST})
    assert code == 200 and node["kind"] == "Node" and node["metadata"]["name"] == LOCAL_NODE
    for params in (LOCAL_SELECTOR, {**LOCAL_SELECTOR, "labelSelector": "location=beijing"},
                   {**LOCAL_SELECTOR, "resourceVersion": "0", "limit": "500"},
                   {"fieldSelector": f"metadata.name={LOCAL_NODE},metadata.name!=gz-3"}):
        code, listed = await get(nodes, params, {"Accept": PROTOBUF_FIRST})
        assert code == 200 and [n["metadata"]["name"] for n in listed["items"]] == [LOCAL_NODE], params
    code, event = await first_watch_event(nodes, LOCAL_SELECTOR)
    assert code == 200 and event["type"] == "ADDED" and event["object"]["metadata"]["name"] == LOCAL_NODE
    # 1.35+: a streaming list of it.
    code, event = await first_watch_event(nodes, {**LOCAL_SELECTOR, "sendInitialEvents": "true",
                                                  "resourceVersionMatch": "NotOlderThan",
                                                  "allowWatchBookmarks": "true"})
    assert code == 200 and event["object"]["metadata"]["name"] == LOCAL_NODE
    # A label selector the local Node does not match: still the cache's answer, empty.
    code, listed = await get(nodes, {**LOCAL_SELECTOR, "labelSelector": PROXY_LABELS + ",location=nowhere"})
    assert code == 200 and listed["items"] == []


@pytest.mark.parametrize(("path", "params"), [
    ("/api/v1/nodes", {}),
    ("/api/v1/nodes", {"labelSelector": "location=beijing"}),
    ("/api/v1/nodes", {"fieldSelector": "metadata.name=gz-3"}),
    ("/api/v1/nodes", {"fieldSelector": f"metadata.name!={LOCAL_NODE}"}),
    ("/api/v1/nodes", {"watch": "1"}),
    ("/api/v1/nodes/gz-3", {}),
], ids=["all", "by-label", "another-by-name", "all-but-the-local", "watch-all", "get-another"])
async def test_other_node_reads_pass_through_refused_without_credentials_answered_with_them(
    wrapper: Running, sim: Simulator, path: str, params: dict[str, str],
) -> None:
    code, status = await get(wrapper.url + path, params)
    assert code == 403 and status["reason"] == "Forbidden", status
    assert "not served with the wrapper's identity" in status["message"]
    before = len([s for s in sim.seen if s.path == path and s.user is not None and s.user.via == "token"])
    if params.get("watch"):
        return  # refused above; with credentials a watch of every Node is the apiserver's, as a list is
    code, answer = await get(wrapper.url + path, params, {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200, answer
    want = sim.list(NODES, label_selector=params.get("labelSelector", ""), field_selector=params.get("fieldSelector",
                                                                                                   ""))
    if path.endswith("gz-3"):
        assert answer["metadata"]["name"] == "gz-3"
    else:
        assert [n["metadata"]["name"] for n in answer["items"]] == [n["metadata"]["name"] for n in want]
    # The apiserver answered the client, with its own token.
    after = [s for s in sim.seen if s.path == path and s.user is not None and s.user.via == "token"]
    assert len(after) == before + 1


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_wrapper(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[tuple[Running, Simulator, Path]]:
    """A wrapper on HTTPS (so kubectl sends its token) in front of the simulator."""
    sim = Simulator(servicegrid_demo())
    chain, ca_file = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(ca_file))
    serve, reflect = fast_settings()
    async with running_simulator(sim), ApiClient(sim.url) as client:
        running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), tls=tls_context(str(chain), str(chain)),
                                      serve=serve, reflect=reflect)
        try:
            await wait_ready(running)
            yield running, sim, ca_file
        finally:
            await stop_wrapper(running)


async def test_kubectl_get_nodes_without_credentials_is_refused_and_its_own_node_is_served(
    wrapper: Running, kube_home: Path,
) -> None:
    # kubectl sends no credentials to an http:// server: a list of every Node is not lent.
    kubectl = newest_kubectl()
    with pytest.raises(AssertionError, match="Forbidden"):
        await run_kubectl(kubectl, wrapper.url, "get", "nodes", home=kube_home)
    out = await run_kubectl(kubectl, wrapper.url, "get", "node", LOCAL_NODE, "-o", "wide", home=kube_home)
    assert LOCAL_NODE in out and "192.168.10.12" in out


async def test_kubectl_get_nodes_with_its_own_token_is_answered_by_the_apiserver_as_the_client(
    tls_wrapper: tuple[Running, Simulator, Path], kube_home: Path,
) -> None:
    running, sim, ca_file = tls_wrapper
    out = await run_kubectl(newest_kubectl(), running.url, "--certificate-authority", str(ca_file), "--token", TOKEN,
                            "get", "nodes", "-o", "name", home=kube_home)
    assert sorted(out.split()) == sorted(f"node/{n['metadata']['name']}" for n in sim.list(NODES))
    assert any(s.path == NODES.collection_path() and s.user is not None and s.user.via == "token" for s in sim.seen)
