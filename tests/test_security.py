"""Security: loopback by default, verified client certificates, and no identity lending."""

from __future__ import annotations

import argparse
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from apisim.server import Simulator
from cache.apiclient import ApiClient
from kubeapi.resources import ENDPOINTSLICES, SERVICES
from tests.conftest import LOCAL_NODE, fast_settings
from tests.support.fake_clock import FakeClock
from tests.support.stack import wait_ready
from wrapper.authz import ClientAuthorizer
from wrapper.compose import Running, StartupError, start_wrapper, stop_wrapper, tls_context
from wrapper.lending import may_lend_identity
from wrapper.options import build_parser, check_exposure


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def mtls_wrapper(sim: Simulator, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Running]:
    server = ca.issue_cert("127.0.0.1")
    chain = tmp_path / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = tls_context(str(chain), str(chain), str(ca_file))
    serve, reflect = fast_settings()
    async with ApiClient(sim.url) as client:
        running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), tls=tls, serve=serve, reflect=reflect)
        try:
            await wait_ready(running)
            yield running
        finally:
            await stop_wrapper(running)


def client_context(ca: trustme.CA, *, with_cert: bool, other_ca: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if with_cert:
        issuer = trustme.CA() if other_ca else ca
        issuer.issue_cert("kube-proxy@bj-1").configure_cert(ctx)
    return ctx


async def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(mtls_wrapper: Running, ca: trustme.CA) -> None:
    assert mtls_wrapper.url.startswith("https://")
    ctx = client_context(ca, with_cert=True)
    async with aiohttp.ClientSession() as s, s.get(f"{mtls_wrapper.url}/api/v1/services", ssl=ctx) as resp:
        assert resp.status == 200
        assert (await resp.json())["kind"] == "ServiceList"


@pytest.mark.parametrize("other_ca", [False, True], ids=["no-certificate", "certificate-from-another-ca"])
async def test_mutual_tls_rejects_a_client_without_a_valid_certificate(
    mtls_wrapper: Running, ca: trustme.CA, other_ca: bool
) -> None:
    ctx = client_context(ca, with_cert=other_ca, other_ca=other_ca)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{mtls_wrapper.url}/api/v1/nodes", ssl=ctx) as resp:
                await resp.read()


async def test_a_client_certificate_is_not_a_credential_the_wrapper_forwards(
    mtls_wrapper: Running, ca: trustme.CA, sim: Simulator
) -> None:
    """Under --client-ca-file the certificate ends at the wrapper: the request counts as one without
    credentials, so only the lending allow-list is served (with the wrapper's identity)."""
    ctx = client_context(ca, with_cert=True)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{mtls_wrapper.url}/api/v1/namespaces/kube-system/secrets", ssl=ctx) as resp:
            assert resp.status == 403 and (await resp.json())["reason"] == "Forbidden"
        async with s.get(f"{mtls_wrapper.url}/version", ssl=ctx) as resp:
            assert resp.status == 200
    assert [s.path for s in sim.seen if "secrets" in s.path] == []


def test_client_ca_without_serving_certificate_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="client-ca-file"):
        tls_context(None, None, str(tmp_path / "ca.pem"))


@pytest.mark.parametrize(
    ("argv", "has_tls", "refused"),
    [
        ([], False, False),
        (["--bind-address", "[::1]:51006"], False, False),
        (["--bind-address", "0.0.0.0:51006"], False, True),
        (["--bind-address", "10.0.0.5:51006"], False, True),
        (["--bind-address", "10.0.0.5:51006"], True, False),
        (["--bind-address", "10.0.0.5:51006", "--insecure-allow-remote"], False, False),
        (["--debug-bind-address", "0.0.0.0:51007"], False, True),
        (["--debug-bind-address", "0.0.0.0:51007"], True, True),
        (["--debug-bind-address", "0.0.0.0:51007", "--insecure-allow-remote"], False, False),
    ],
)
def test_non_loopback_listeners_need_tls_or_an_explicit_flag(argv: list[str], has_tls: bool, refused: bool) -> None:
    args: argparse.Namespace = build_parser().parse_args(argv)
    if refused:
        with pytest.raises(StartupError, match="refusing"):
            check_exposure(args, has_tls)
    else:
        check_exposure(args, has_tls)


@pytest.mark.parametrize(
    ("method", "path", "lent"),
    [
        ("GET", "/api", True),
        ("GET", "/apis", True),
        ("GET", "/api/v1", True),
        ("GET", "/apis/discovery.k8s.io/v1", True),
        ("GET", "/version", True),
        ("HEAD", "/apis/networking.k8s.io/v1beta1", True),
        ("GET", "/apis/networking.k8s.io/v1/servicecidrs", True),
        ("GET", "/apis/networking.k8s.io/v1beta1/servicecidrs", True),
        ("POST", "/apis/events.k8s.io/v1/namespaces/default/events", True),
        ("POST", "/apis/events.k8s.io/v1/namespaces/kube-system/events", True),
        ("PATCH", "/apis/events.k8s.io/v1/namespaces/default/events/kube-proxy.1", True),
        # Nothing kube-proxy (1.30+) or kubectl's discovery needs: not lent.
        ("GET", "/openapi/v3", False),
        ("GET", "/openapi/v2", False),
        ("POST", "/api/v1/namespaces/default/events", False),
        ("PUT", "/apis/events.k8s.io/v1/namespaces/default/events/kube-proxy.1", False),
        ("PATCH", "/apis/events.k8s.io/v1/namespaces/default/events", False),
        ("POST", "/apis/events.k8s.io/v1/namespaces/default/events/kube-proxy.1", False),
        ("GET", "/apis/events.k8s.io/v1/namespaces/default/events", False),
        ("GET", "/apis/networking.k8s.io/v1/servicecidrs/kubernetes", False),
        ("GET", "/apis/networking.k8s.io/v1/namespaces/default/servicecidrs", False),
        ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles", False),
        ("GET", "/api/v1/secrets", False),
        ("GET", "/api/v1/namespaces/kube-system/secrets/token", False),
        ("DELETE", "/apis/events.k8s.io/v1/namespaces/default/events/x", False),
        ("POST", "/api/v1/namespaces/default/services", False),
        ("DELETE", "/api/v1/nodes/bj-1", False),
        ("POST", "/apis/networking.k8s.io/v1/servicecidrs", False),
        ("GET", "/api/v1/pods", False),
    ],
)
def test_identity_is_lent_only_for_discovery_servicecidr_reads_and_events(method: str, path: str, lent: bool) -> None:
    assert may_lend_identity(method, path) is lent


async def test_pass_through_without_credentials_is_forbidden_beyond_what_kube_proxy_needs(wrapper: Running) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{wrapper.url}/api/v1/namespaces/kube-system/secrets") as resp:
            body = await resp.json()
            assert resp.status == 403 and body["kind"] == "Status" and body["reason"] == "Forbidden"
        async with s.delete(f"{wrapper.url}/api/v1/namespaces/default/services/plain-svc") as resp:
            assert resp.status == 403
        async with s.get(f"{wrapper.url}/api") as resp:
            assert resp.status == 200 and (await resp.json())["kind"] == "APIVersions"
        event = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                 "metadata": {"name": "kube-proxy.1", "namespace": "default"}, "reason": "Starting",
                 "action": "StartKubeProxy", "reportingController": "kube-proxy", "reportingInstance": "bj-1",
                 "eventTime": "2026-11-23T00:00:00.000000Z", "regarding": {"kind": "Node", "name": "bj-1"}}
        async with s.post(f"{wrapper.url}/apis/events.k8s.io/v1/namespaces/default/events", json=event) as resp:
            assert resp.status == 201


async def test_pass_through_with_the_clients_own_credentials_goes_upstream(wrapper: Running, sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s, s.delete(
        f"{wrapper.url}/api/v1/namespaces/default/services/plain-svc", headers={"Authorization": "Bearer client"}
    ) as resp:
        assert resp.status == 200
    assert "plain-svc" not in {s["metadata"]["name"] for s in sim.list(SERVICES)}




@pytest.fixture
def authz_clock() -> FakeClock:
    """The authorizer's clock: its decisions age only when a test advances it."""
    return FakeClock()


@pytest.fixture
async def authz_wrapper(sim: Simulator, authz_clock: FakeClock) -> AsyncIterator[tuple[Running, ClientAuthorizer]]:
    sim.reviews.add_user("proxy-token", "system:kube-proxy")
    sim.reviews.allow("system:kube-proxy", "list", "endpointslices")
    sim.reviews.allow("system:kube-proxy", "watch", "endpointslices")
    sim.reviews.add_user("nobody-token", "nobody")
    client = ApiClient(sim.url)
    authorizer = ClientAuthorizer(client, allowed_ttl=60.0, denied_ttl=10.0, clock=authz_clock)
    serve, reflect = fast_settings()
    running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), serve=serve, reflect=reflect,
                                  authorizer=authorizer)
    try:
        await wait_ready(running)
        yield running, authorizer
    finally:
        await stop_wrapper(running)
        await client.close()


async def _status(url: str, token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_authorize_clients_serves_an_allowed_token_and_caches_the_decision(
    authz_wrapper: tuple[Running, ClientAuthorizer], sim: Simulator
) -> None:
    running, authorizer = authz_wrapper
    url = f"{running.url}{ENDPOINTSLICES.collection_path()}"
    for _ in range(3):
        code, body = await _status(url, "proxy-token")
        assert code == 200 and body["kind"] == "EndpointSliceList"
    assert sim.reviews.token_reviews == 1 and sim.reviews.access_reviews == 1  # cached after the first
    assert authorizer.reviews == 1
    # Only a hash of the token is kept.
    assert len(authorizer.decisions) == 1
    assert all("proxy-token" not in repr(key) for key in authorizer.decisions)


@pytest.mark.parametrize(
    ("token", "path", "code"),
    [
        (None, "/apis/discovery.k8s.io/v1/endpointslices", 401),
        ("forged-token", "/apis/discovery.k8s.io/v1/endpointslices", 401),
        ("nobody-token", "/apis/discovery.k8s.io/v1/endpointslices", 403),
        ("proxy-token", "/api/v1/services", 403),
        ("proxy-token", "/api/v1/nodes/bj-1", 403),
    ],
)
async def test_authorize_clients_rejects_missing_invalid_or_unauthorized_tokens(
    authz_wrapper: tuple[Running, ClientAuthorizer], token: str | None, path: str, code: int
) -> None:
    running, _ = authz_wrapper
    got, body = await _status(f"{running.url}{path}", token)
    assert got == code and body["kind"] == "Status"


async def test_authorize_clients_keeps_using_cached_decisions_while_offline(
    authz_wrapper: tuple[Running, ClientAuthorizer], authz_clock: FakeClock, sim: Simulator
) -> None:
    running, authorizer = authz_wrapper
    url = f"{running.url}{ENDPOINTSLICES.collection_path()}"
    assert (await _status(url, "proxy-token"))[0] == 200
    await sim.stop()
    authz_clock.advance(61)  # past the cache TTL: a fresh review would be needed, and fails
    reviews = authorizer.reviews
    assert (await _status(url, "proxy-token"))[0] == 200
    assert authorizer.reviews == reviews + 1, "the stale decision was reviewed again, and served when that failed"
    # A client never seen before cannot be decided offline.
    assert (await _status(url, "nobody-token"))[0] == 503


async def test_tokens_never_reach_the_logs_even_at_debug_level(
    authz_wrapper: tuple[Running, ClientAuthorizer], caplog: pytest.LogCaptureFixture
) -> None:
    running, _ = authz_wrapper
    caplog.set_level("DEBUG")
    secrets = ["proxy-token", "nobody-token", "forged-secret-token"]
    for token in secrets:
        await _status(f"{running.url}{ENDPOINTSLICES.collection_path()}", token)
        await _status(f"{running.url}/api/v1/namespaces/default/configmaps", token)  # passed through
    assert caplog.records, "the requests were logged at debug level"
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert not [t for t in secrets if t in text]
