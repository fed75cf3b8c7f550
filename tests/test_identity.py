"""Identity lending: the wrapper's credentials serve only what it means to lend them to.

The simulator runs HTTPS with client-certificate and token authentication in the apiserver's
order and records who each request ran as. The wrapper loads a real kubeconfig (a client
certificate one and a token one) through ApiClient.from_kubeconfig. Clients then send
their own token, a junk token, basic auth or nothing, on lent and non-lent paths.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme

from apisim.authn import ANONYMOUS, Seen, server_tls_context
from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient, ConfigError
from cache.informers import DEFAULT_TOPOLOGY_NAMESPACE
from kubeapi.resources import CONFIGMAPS, match_path
from kubeapi.status import StatusError
from tests.conftest import LOCAL_NODE, fast_settings
from tests.support.kubectl import kubectl_env
from tests.support.stack import running_simulator, wait_ready
from wrapper.compose import Running, start_wrapper, stop_wrapper
from wrapper.paths import parse_target

WRAPPER_CN, WRAPPER_ORG = "application-grid-wrapper", "edge:wrappers"
WRAPPER_TOKEN, WRAPPER_SA = "wrapper-sa-token", "system:serviceaccount:edge-system:application-grid-wrapper"
CLIENT_TOKEN, CLIENT_USER = "kube-proxy-sa-token", "system:serviceaccount:kube-system:kube-proxy"

EVENTS = "/apis/events.k8s.io/v1/namespaces/default/events"
EVENT: dict[str, object] = {
    "apiVersion": "events.k8s.io/v1", "kind": "Event",
    "metadata": {"name": "kube-proxy.1", "namespace": "default"},
    "reason": "Starting", "action": "StartKubeProxy", "reportingController": "kube-proxy",
    "reportingInstance": "bj-1", "eventTime": "2026-11-23T00:00:00.000000Z",
    "regarding": {"kind": "Node", "name": "bj-1"}}
CRB: dict[str, object] = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "pwn"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
    "subjects": [{"kind": "User", "name": "attacker"}]}

# (method, path, body, lent to a client without credentials)
REQUESTS: list[tuple[str, str, dict[str, object] | None, bool]] = [
    ("GET", "/api/v1/namespaces/kube-system/secrets", None, False),
    ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", CRB, False),
    ("DELETE", "/api/v1/namespaces/default/services/plain-svc", None, False),
    ("POST", EVENTS, EVENT, True),
]
CREDENTIALS = {
    "client-token": {"Authorization": f"Bearer {CLIENT_TOKEN}"},
    "junk-token": {"Authorization": "Bearer junk-token-nobody-issued"},
    "basic-auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "no-credentials": {},
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class TlsStack:
    sim: Simulator
    wrapper: Running
    wrapper_user: str  # who the simulator sees when the wrapper speaks as itself


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: dict[str, str]) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    return path


@asynccontextmanager
async def tls_stack(kind: str, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[TlsStack]:
    """A TLS simulator that authenticates, and a synced wrapper whose kubeconfig uses ``kind``."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    sim = Simulator(tls=server_tls_context(str(server), str(server), str(ca_file)), authenticate=True)
    sim.load(servicegrid_demo())
    sim.reviews.add_user(WRAPPER_TOKEN, WRAPPER_SA)
    sim.reviews.add_user(CLIENT_TOKEN, CLIENT_USER)
    async with running_simulator(sim):
        assert sim.url.startswith("https://")
        if kind == "client-certificate":
            leaf = ca.issue_cert(WRAPPER_CN, common_name=WRAPPER_CN, organization_name=WRAPPER_ORG)
            cert, key = tmp_path / "wrapper.crt", tmp_path / "wrapper.key"
            leaf.cert_chain_pems[0].write_to_path(str(cert))
            leaf.private_key_pem.write_to_path(str(key))
            user, who = {"client-certificate": str(cert), "client-key": str(key)}, WRAPPER_CN
        else:
            user, who = {"token": WRAPPER_TOKEN}, WRAPPER_SA
        client = await ApiClient.from_kubeconfig(str(write_kubeconfig(tmp_path / "kubeconfig", sim.url, ca_file,
                                                                      user)))
        serve, reflect = fast_settings()
        async with client:
            running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), serve=serve, reflect=reflect)
            try:
                await wait_ready(running)
                yield TlsStack(sim, running, who)
            finally:
                await stop_wrapper(running)


@pytest.fixture(params=["client-certificate", "token"])
async def stack(request: pytest.FixtureRequest, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[TlsStack]:
    async with tls_stack(request.param, ca, tmp_path) as s:
        yield s


@pytest.fixture
async def cert_stack(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[TlsStack]:
    async with tls_stack("client-certificate", ca, tmp_path) as s:
        yield s


def is_reflector_request(seen: Seen) -> bool:
    """The wrapper's own lists and watches of the cached collections, and of the node topology buckets."""
    if seen.method == "GET" and seen.path == CONFIGMAPS.collection_path(DEFAULT_TOPOLOGY_NAMESPACE):
        return True
    rp = match_path(seen.path)
    return seen.method == "GET" and rp is not None and rp.name is None and rp.namespace is None


def seen_for(sim: Simulator, method: str, path: str) -> list[Seen]:
    return [s for s in sim.seen if s.method == method and s.path == path]


def served_as_wrapper(stack: TlsStack) -> list[Seen]:
    return [s for s in stack.sim.seen if s.user is not None and s.user.name == stack.wrapper_user]


async def send(url: str, method: str, path: str, headers: dict[str, str],
               body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.request(method, url + path, headers=headers,
                                                      data=orjson.dumps(body) if body else None) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize("credential", list(CREDENTIALS))
async def test_forwarded_requests_run_as_the_client_and_only_lent_ones_as_the_wrapper(
    stack: TlsStack, credential: str
) -> None:
    headers = {**CREDENTIALS[credential], "Content-Type": "application/json"}
    for method, path, body, lent in REQUESTS:
        before = len(seen_for(stack.sim, method, path))
        code, answer = await send(stack.wrapper.url, method, path, headers, body)
        got = seen_for(stack.sim, method, path)[before:]
        what = f"{credential} {method} {path}"
        if credential == "client-token":
            assert [s.user.name if s.user else None for s in got] == [CLIENT_USER], what
            assert got[0].user is not None and got[0].user.via == "token"
        elif credential == "junk-token":
            assert [s.user for s in got] == [None], what  # refused by the apiserver, never run as the wrapper
            assert code == 401 and answer["reason"] == "Unauthorized", what
        elif credential == "basic-auth":
            assert [s.user for s in got] == [ANONYMOUS], what
        elif lent:
            assert [s.user.name if s.user else None for s in got] == [stack.wrapper_user], what
            assert code == 201, what
        else:
            assert got == [], what
            assert code == 403 and answer["reason"] == "Forbidden", what
    # The wrapper's identity served its own lists and watches, and nothing it did not mean to lend.
    mine = served_as_wrapper(stack)
    assert any(is_reflector_request(s) for s in mine)
    lent_requests = {("POST", EVENTS)} if credential == "no-credentials" else set()
    assert {(s.method, s.path) for s in mine if not is_reflector_request(s)} == lent_requests


async def test_the_wrappers_own_transport_still_presents_its_identity(stack: TlsStack) -> None:
    reflector_users = {s.user for s in stack.sim.seen if is_reflector_request(s)}
    assert {u.name for u in reflector_users if u is not None} == {stack.wrapper_user}
    expected_via = "x509" if stack.wrapper_user == WRAPPER_CN else "token"
    assert {u.via for u in reflector_users if u is not None} == {expected_via}


async def test_impersonation_never_rides_on_the_wrappers_identity(cert_stack: TlsStack) -> None:
    url, sim = cert_stack.wrapper.url, cert_stack.sim
    for method, path, body in (("GET", "/api", None), ("POST", EVENTS, EVENT)):
        before = len(seen_for(sim, method, path))
        code, answer = await send(url, method, path, {"Impersonate-User": "system:admin",
                                                      "Impersonate-Group": "system:masters"}, body)
        assert code == 403 and answer["reason"] == "Forbidden" and "impersonation" in str(answer["message"])
        assert seen_for(sim, method, path)[before:] == []
    # With the client's own credentials, the apiserver gets to decide on the impersonation.
    secrets = "/api/v1/namespaces/kube-system/secrets"
    await send(url, "GET", secrets, {**CREDENTIALS["client-token"], "Impersonate-User": "system:admin"})
    [seen] = seen_for(sim, "GET", secrets)
    assert seen.user is not None and seen.user.name == CLIENT_USER and seen.impersonate == "system:admin"


async def test_a_lent_request_carries_only_content_negotiation_headers(cert_stack: TlsStack) -> None:
    sneaky = {"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters", "Cookie": "session=admin",
              "Content-Type": "application/json", "User-Agent": "kube-proxy/v1.33.0 (linux/amd64) kubernetes/abcdef0"}
    code, _ = await send(cert_stack.wrapper.url, "POST", EVENTS, sneaky, EVENT)
    assert code == 201
    [seen] = seen_for(cert_stack.sim, "POST", EVENTS)
    assert seen.user is not None and seen.user.name == WRAPPER_CN
    assert not {"x-remote-user", "x-remote-group", "cookie"} & seen.headers
    assert {"content-type", "user-agent"} <= seen.headers


async def raw_request(url: str, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """Send the request line exactly as given (HTTP client libraries normalise paths)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in rest.lower().partition(b"\r\n\r\n")[0]:
        size, _, tail = body.partition(b"\r\n")
        body = tail[: int(size, 16)]
    return int(status_line.split()[1]), orjson.loads(body)


NON_CANONICAL = [
    "/api/v1/namespaces/default/events/../../secrets",
    "/apis/events.k8s.io/v1/namespaces/default/events/../../../../api/v1/namespaces/kube-system/secrets",
    "/apis/events.k8s.io/v1/namespaces/default/events/%2e%2e/%2E%2E/secrets",
    "/apis/events.k8s.io/v1/namespaces/default/events/..",
    "/apis/events.k8s.io/v1/namespaces/default/events/.",
    "/apis/events.k8s.io/v1/namespaces/default/events/.%2e",
    "/apis/events.k8s.io/v1/namespaces/default/events%2f..%2f..%2fsecrets",
    "/apis/events.k8s.io/v1/namespaces/default/events/x%2Fy",
    "//apis/events.k8s.io/v1/namespaces/default/events",
    "/apis/events.k8s.io/v1/namespaces//events",
    "/api/v1/namespaces/default/services/../../../nodes",
    "/api/v1/./nodes",
    "/apis/events.k8s.io/v1/namespaces/default/events/%zz",
    "http://127.0.0.1/api/v1/namespaces/kube-system/secrets",
]


@pytest.mark.parametrize("credential", ["no-credentials", "client-token"])
async def test_non_canonical_paths_get_400_and_never_reach_the_apiserver(cert_stack: TlsStack, credential: str) -> None:
    for target in NON_CANONICAL:
        for method in ("GET", "POST", "PATCH", "DELETE"):
            code, answer = await raw_request(cert_stack.wrapper.url, method, target, CREDENTIALS[credential])
            assert (code, answer["kind"], answer["reason"]) == (400, "Status", "BadRequest"), (method, target)
    assert [s for s in cert_stack.sim.seen if not is_reflector_request(s)] == []


async def test_escaped_paths_route_by_their_meaning_and_are_never_lent(cert_stack: TlsStack) -> None:
    url, sim = cert_stack.wrapper.url, cert_stack.sim
    # Served from the cache under the name the apiserver would decode.
    code, answer = await raw_request(url, "GET", "/api/v1/%73ervices", {})
    assert code == 200 and answer["kind"] == "ServiceList"
    # Not lent: the lent path must be the exact bytes forwarded.
    code, answer = await raw_request(url, "POST", "/apis/events.k8s.io/v1/namespaces/default/%65vents", {})
    assert code == 403
    # With the client's credentials, forwarded byte for byte.
    await raw_request(url, "GET", "/api/v1/namespaces/default/config%6Daps?limit=1", CREDENTIALS["client-token"])
    [seen] = [s for s in sim.seen if not is_reflector_request(s)]
    assert seen.path == "/api/v1/namespaces/default/config%6Daps"
    assert seen.user is not None and seen.user.name == CLIENT_USER


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/", "/"),
        ("/api/v1/nodes/", "/api/v1/nodes/"),
        ("/api/v1/nodes?watch=1&labelSelector=a%2Fb", "/api/v1/nodes"),
        ("/api/v1/namespaces/default/configmaps/a%3Ab", "/api/v1/namespaces/default/configmaps/a:b"),
        ("/api/v1/%6eodes", "/api/v1/nodes"),
    ],
)
def test_canonical_targets_parse_to_their_decoded_path(target: str, path: str) -> None:
    parsed = parse_target(target)
    assert parsed.path == path
    assert parsed.forwarded == target


@pytest.mark.parametrize("target", [*NON_CANONICAL, "*", "/a#b", "/a/%ff", "/a/%00", "/a%2f", "/a/%2E%2E/b"])
def test_non_canonical_targets_are_bad_requests(target: str) -> None:
    with pytest.raises(StatusError) as err:
        parse_target(target)
    assert err.value.code == 400 and err.value.status["reason"] == "BadRequest"


def test_an_apiserver_url_with_credentials_in_it_is_refused() -> None:
    with pytest.raises(ConfigError, match="credentials"):
        ApiClient("https://admin:secret@127.0.0.1:6443")



async def test_a_go_client_with_a_token_kubeconfig_sends_no_token_over_plain_http(
    cert_stack: TlsStack, tmp_path: Path, kube_home: Path
) -> None:
    """What the docs rely on: kube-proxy (client-go) pointed at http://127.0.0.1:51006 sends none of
    its kubeconfig's credentials, so its Events are lent the wrapper's identity, and nothing else is."""
    cfg = tmp_path / "kube-proxy.kubeconfig"
    cfg.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": cert_stack.wrapper.url}}],
        "users": [{"name": "u", "user": {"token": CLIENT_TOKEN}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    event = tmp_path / "event.json"
    event.write_text(json.dumps(EVENT))
    env = {**kubectl_env(kube_home), "KUBECONFIG": str(cfg)}
    outcomes = []
    secrets = "/api/v1/namespaces/kube-system/secrets"
    for args in (["create", "--raw", EVENTS, "-f", str(event)], ["get", "--raw", secrets]):
        proc = await asyncio.create_subprocess_exec("kubectl", *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        outcomes.append((proc.returncode, err.decode()))
    assert outcomes[0][0] == 0, outcomes[0][1]
    assert outcomes[1][0] != 0 and "not served with the wrapper's identity" in outcomes[1][1]
    [seen] = seen_for(cert_stack.sim, "POST", EVENTS)
    assert seen.user is not None and seen.user.name == WRAPPER_CN
    assert seen_for(cert_stack.sim, "GET", secrets) == []
