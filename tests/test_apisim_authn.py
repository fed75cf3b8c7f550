"""The simulator's TLS mode authenticates in the apiserver's order and records who each request ran as."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from apisim.authn import ANONYMOUS, server_tls_context
from apisim.server import Simulator
from tests.support.kubectl import kubectl_env
from tests.support.stack import running_simulator


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    tmp: Path


@pytest.fixture
async def tls_sim(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Pki]]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    sim = Simulator(tls=server_tls_context(str(server), str(server), str(ca_file)), authenticate=True)
    sim.reviews.add_user("alice-token", "alice", ("developers",))
    async with running_simulator(sim):
        yield sim, Pki(ca, ca_file, tmp_path)


def client_ssl(pki: Pki, cn: str | None = None, org: str | None = None, other_ca: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    pki.ca.configure_trust(ctx)
    if cn is not None:
        issuer = trustme.CA() if other_ca else pki.ca
        issuer.issue_cert(cn, common_name=cn, organization_name=org).configure_cert(ctx)
    return ctx


async def get(sim: Simulator, ctx: ssl.SSLContext, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as s, s.get(sim.url + "/api/v1/nodes", ssl=ctx, headers=headers or {}) as r:
        await r.read()
        return r.status


async def test_a_verified_client_certificate_wins_over_any_token(tls_sim: tuple[Simulator, Pki]) -> None:
    sim, pki = tls_sim
    ctx = client_ssl(pki, "node-agent", "system:nodes")
    assert await get(sim, ctx, {"Authorization": "Bearer not-a-known-token"}) == 200
    [seen] = sim.seen
    assert seen.user is not None and (seen.user.name, seen.user.via) == ("node-agent", "x509")
    assert "system:nodes" in seen.user.groups


async def test_tokens_authenticate_unknown_ones_get_401_and_the_rest_is_anonymous(
    tls_sim: tuple[Simulator, Pki]
) -> None:
    sim, pki = tls_sim
    ctx = client_ssl(pki)
    assert await get(sim, ctx, {"Authorization": "Bearer alice-token"}) == 200
    assert await get(sim, ctx, {"Authorization": "Bearer junk"}) == 401
    assert await get(sim, ctx, {"Authorization": "Basic YWxpY2U6cHc="}) == 200
    assert await get(sim, ctx) == 200
    users = [s.user for s in sim.seen]
    assert users[0] is not None and (users[0].name, users[0].via) == ("alice", "token")
    assert "developers" in users[0].groups
    assert users[1:] == [None, ANONYMOUS, ANONYMOUS]


async def test_a_certificate_from_another_ca_fails_the_handshake(tls_sim: tuple[Simulator, Pki]) -> None:
    sim, pki = tls_sim
    with pytest.raises(aiohttp.ClientError):
        await get(sim, client_ssl(pki, "intruder", other_ca=True))
    assert sim.seen == []


async def test_kubectl_with_a_certificate_or_a_token_kubeconfig_is_seen_as_its_user(
    tls_sim: tuple[Simulator, Pki], kube_home: Path
) -> None:
    sim, pki = tls_sim
    leaf = pki.ca.issue_cert("admin", common_name="kubernetes-admin", organization_name="kubeadm:cluster-admins")
    cert, key = pki.tmp / "admin.crt", pki.tmp / "admin.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    users = {"cert": {"client-certificate": str(cert), "client-key": str(key)}, "token": {"token": "alice-token"},
             "junk": {"token": "junk"}}
    results: dict[str, int] = {}
    for name, user in users.items():
        cfg = pki.tmp / f"kubeconfig-{name}"
        cfg.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": sim.url, "certificate-authority": str(pki.ca_file)}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        }))
        env = {**kubectl_env(kube_home), "KUBECONFIG": str(cfg)}
        proc = await asyncio.create_subprocess_exec("kubectl", "get", "--raw", "/api/v1/nodes", env=env,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        results[name] = await asyncio.wait_for(proc.wait(), 60)
    assert results == {"cert": 0, "token": 0, "junk": 1}
    seen = {s.user.name if s.user else None for s in sim.seen if s.path == "/api/v1/nodes"}
    assert seen == {"kubernetes-admin", "alice", None}
