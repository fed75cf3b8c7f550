"""The one apiserver client: every answer checked, errors typed, identities kept apart.

A small aiohttp server on 127.0.0.1 plays the apiserver and records what each request carried.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from apisim.server import Simulator
from cache.apiclient import ApiClient, Identity
from cache.apierrors import ApiError, ReadTimeout, TransportError
from cache.buildinfo import USER_AGENT
from cache.cluster import ClusterCache
from cache.informers import Informers
from cache.reflector import ReflectorSettings
from tests.support.faultkit import LOCAL_NODE, free_port
from tests.support.waiting import eventually

TOO_LARGE = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 504, "reason": "Timeout",
             "message": "Too large resource version: 9, current: 3",
             "details": {"causes": [{"type": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                         "retryAfterSeconds": 1}}


@dataclass
class Upstream:
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream("")

    async def handle(request: web.Request) -> web.StreamResponse:
        up.seen.append(dict(request.headers))
        what = request.match_info["what"]
        if what == "ok":
            return web.json_response({"kind": "Status", "status": "Success"})
        if what == "too-large":
            return web.Response(status=504, body=orjson.dumps(TOO_LARGE), content_type="application/json")
        if what == "throttled":
            return web.Response(status=429, body=b"{}", headers={"Retry-After": "4"}, content_type="application/json")
        if what == "html":
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        if what == "redirect":
            raise web.HTTPFound("/apis/x/ok")
        if what == "gzip":
            return web.Response(body=gzip.compress(b'{"items":[]}'), headers={"Content-Encoding": "gzip"},
                                content_type="application/json")
        if what in ("cut", "quiet"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b'{"type":"ADDED"')
            if what == "cut":
                assert request.transport is not None
                request.transport.abort()
                return resp
            await up.release.wait()
            return resp
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_route("*", "/apis/x/{what}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    up.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield up
    finally:
        up.release.set()
        await runner.cleanup()


class TokenConfiguration:
    """The part of kubernetes-asyncio's Configuration the client reads: a bearer token."""

    username = ""
    password = ""

    async def auth_settings(self) -> dict[str, Any]:
        return {"BearerToken": {"value": "Bearer wrapper-token"}}


async def test_a_non_2xx_answer_raises_an_api_error_with_the_decoded_status(upstream: Upstream) -> None:
    async with ApiClient(upstream.url) as client:
        with pytest.raises(ApiError) as err:
            await client.request("GET", "/apis/x/too-large")
    e = err.value
    assert (e.code, e.reason, e.message) == (504, "Timeout", TOO_LARGE["message"])
    assert [(c.type, c.message) for c in e.causes] == [("ResourceVersionTooLarge", "Too large resource version")]
    assert e.retry_after == 1.0 and e.too_large_resource_version and e.rejects_resource_version
    assert str(e).startswith("HTTP 504: Too large resource version")


async def test_retry_after_comes_from_the_header_and_a_non_status_body_still_raises(upstream: Upstream) -> None:
    async with ApiClient(upstream.url) as client:
        with pytest.raises(ApiError) as throttled:
            await client.request("GET", "/apis/x/throttled")
        with pytest.raises(ApiError) as html:
            async with client.stream("GET", "/apis/x/html"):
                pass
    assert throttled.value.code == 429 and throttled.value.retry_after == 4.0
    assert html.value.code == 502 and html.value.status == {} and "bad gateway" in str(html.value)
    assert not html.value.rejects_resource_version


async def test_redirects_are_answers_not_followed(upstream: Upstream) -> None:
    async with ApiClient(upstream.url) as client:
        with pytest.raises(ApiError) as err:
            await client.request("GET", "/apis/x/redirect")
    assert err.value.code == 302 and len(upstream.seen) == 1


async def test_request_asks_for_gzip_and_returns_the_body_inflated(upstream: Upstream) -> None:
    async with ApiClient(upstream.url) as client:
        resp = await client.request("GET", "/apis/x/gzip", params={"limit": "1"})
    assert resp.status == 200 and resp.body == b'{"items":[]}'
    assert upstream.seen[0]["Accept-Encoding"] == "gzip"


async def test_pass_through_gets_error_answers_unchecked(upstream: Upstream) -> None:
    async with ApiClient(upstream.url) as client, \
            client.stream("GET", "/apis/x/html", identity=Identity.FORWARDED, check=False) as resp:
        assert resp.status == 502
        assert b"bad gateway" in await resp.read()


async def test_a_body_that_breaks_off_is_a_transport_error(upstream: Upstream) -> None:
    async with ApiClient(upstream.url) as client:
        with pytest.raises(TransportError):
            async with client.stream("GET", "/apis/x/cut") as resp:
                while await resp.content.readany():
                    pass


async def test_no_byte_within_the_read_timeout_is_a_read_timeout(upstream: Upstream) -> None:
    async with ApiClient(upstream.url) as client:
        with pytest.raises(ReadTimeout, match="read timeout"):
            async with client.stream("GET", "/apis/x/quiet", read_timeout=0.2) as resp:
                while await resp.content.readany():
                    pass


async def test_an_unreachable_apiserver_is_a_transport_error() -> None:
    async with ApiClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(TransportError) as err:
            await client.request("GET", "/apis/x/ok")
    assert not isinstance(err.value, ApiError)


async def test_wrapper_requests_carry_its_token_and_forwarded_ones_only_their_clients_headers(
    upstream: Upstream,
) -> None:
    async with ApiClient(upstream.url, configuration=TokenConfiguration()) as client:
        await client.request("GET", "/apis/x/ok")
        # A lent request: the client's Authorization is never mixed with the wrapper's identity.
        async with client.stream("GET", "/apis/x/ok", headers={"Authorization": "Bearer someone-else",
                                                               "Accept": "application/json"}):
            pass
        async with client.stream("GET", "/apis/x/ok", identity=Identity.FORWARDED,
                                 headers={"Authorization": "Bearer client-token", "User-Agent": "kubectl/v1.33"}):
            pass
        async with client.stream("GET", "/apis/x/ok", identity=Identity.FORWARDED):
            pass
    own, lent, forwarded, bare = upstream.seen
    assert own["Authorization"] == "Bearer wrapper-token" and own["User-Agent"] == USER_AGENT
    assert lent["Authorization"] == "Bearer wrapper-token"
    assert forwarded["Authorization"] == "Bearer client-token" and forwarded["User-Agent"] == "kubectl/v1.33"
    assert "Authorization" not in bare and "User-Agent" not in bare and "Accept-Encoding" not in bare


def test_an_apiserver_url_with_credentials_is_refused_before_any_request() -> None:
    from cache.apiclient import ConfigError

    with pytest.raises(ConfigError, match="credentials"):
        ApiClient("http://user:pw@127.0.0.1:1")


class CountingClient(ApiClient):
    closed = 0

    async def close(self) -> None:
        self.closed += 1
        await super().close()


async def test_informers_use_the_client_they_are_given_and_leave_closing_it_to_its_creator(sim: Simulator) -> None:
    client = CountingClient(sim.url)
    cache = ClusterCache(LOCAL_NODE)
    informers = Informers(client, cache, ReflectorSettings(backoff_initial=0.05, backoff_max=0.5))
    informers.start()
    try:
        await eventually(lambda: cache.ready, 10, "sync")
    finally:
        await informers.stop()
    assert client.closed == 0
    assert (await client.request("GET", "/api/v1/nodes")).status == 200, "still usable by its creator"
    await client.close()
    assert client.closed == 1
