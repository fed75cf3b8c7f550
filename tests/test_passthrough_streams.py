"""Pass-through streams: a body the apiserver cuts short fails at the client; a whole one arrives whole.

The upstream is a scripted raw server, so a response can stop mid-body (Content-Length or
chunked) exactly as a dying apiserver or a dropped link leaves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from cache.apiclient import ApiClient
from tests.conftest import LOCAL_NODE, fast_settings
from tests.support.kubectl import kubectl_env
from tests.support.scripted_upstream import LAST_CHUNK, ScriptedUpstream, chunk, head
from wrapper.compose import Running, start_wrapper, stop_wrapper
from wrapper.listener import ConnectionLimits

AUTH = {"Authorization": "Bearer client-token"}
CREDENTIALS = {"client-credentials": AUTH, "lent": {}}  # the two transports of pass-through


def path(name: str) -> str:
    """A discovery path (lent, so Go clients without credentials reach it over plain HTTP)."""
    return f"/apis/{name}.example.com/v1"


BODY = b'{"kind":"ConfigMap","apiVersion":"v1","data":{"blob":"' + b"x" * 300_000 + b'"}}'
WATCH = "/apis/example.com/v1/namespaces/default/widgets"
WATCH_LINES = [orjson.dumps({"type": "ADDED", "object": {"kind": "Widget", "apiVersion": "example.com/v1",
                                                         "metadata": {"name": f"w{i}", "resourceVersion": str(i)}}})
               + b"\n" for i in range(3)]
SHORT = 0.3  # the wrapper's header and idle timeouts here: the watch outlives both


@dataclass
class Rig:
    upstream: ScriptedUpstream
    wrapper: Running
    gates: list[asyncio.Event]


async def _cut_length(w: asyncio.StreamWriter) -> None:
    w.write(head(length=len(BODY)) + BODY[: len(BODY) // 2])


async def _cut_chunked(w: asyncio.StreamWriter) -> None:
    w.write(head(chunked=True) + chunk(BODY[: len(BODY) // 2]))


async def _whole_length(w: asyncio.StreamWriter) -> None:
    w.write(head(length=len(BODY)) + BODY)


async def _whole_chunked(w: asyncio.StreamWriter) -> None:
    pieces = [chunk(BODY[i:i + 65536]) for i in range(0, len(BODY), 65536)]
    w.write(head(chunked=True) + b"".join(pieces) + LAST_CHUNK)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    gates = [asyncio.Event() for _ in WATCH_LINES]

    async def watch(w: asyncio.StreamWriter) -> None:
        w.write(head(chunked=True))
        for line, gate in zip(WATCH_LINES, gates, strict=True):
            w.write(chunk(line))
            await w.drain()
            await asyncio.wait_for(gate.wait(), 30)
        w.write(LAST_CHUNK)

    async def hang(w: asyncio.StreamWriter) -> None:
        await asyncio.wait_for(gates[-1].wait(), 30)  # answers only when the test ends

    upstream = ScriptedUpstream({path("hang"): hang, path("cut-length"): _cut_length, path("cut-chunked"): _cut_chunked,
                                 path("whole-length"): _whole_length, path("whole-chunked"): _whole_chunked,
                                 WATCH: watch})
    await upstream.start()
    serve, reflect = fast_settings()
    client = ApiClient(upstream.url)
    running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), serve=serve,
                                  reflect=reflect, limits=ConnectionLimits(header_timeout=SHORT, idle_timeout=SHORT))
    try:
        yield Rig(upstream, running, gates)
    finally:
        for gate in gates:
            gate.set()
        await stop_wrapper(running)
        await client.close()
        await upstream.stop()


@pytest.mark.parametrize("credentials", list(CREDENTIALS))
@pytest.mark.parametrize("name", ["cut-length", "cut-chunked"])
async def test_a_body_the_apiserver_cuts_short_fails_at_the_client(rig: Rig, name: str, credentials: str) -> None:
    headers = CREDENTIALS[credentials]
    async with aiohttp.ClientSession() as s, s.get(rig.wrapper.url + path(name), headers=headers) as resp:
        assert resp.status == 200  # the status line was already passed on
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


@pytest.mark.parametrize("credentials", list(CREDENTIALS))
@pytest.mark.parametrize("name", ["whole-length", "whole-chunked"])
async def test_a_whole_body_streams_through_intact(rig: Rig, name: str, credentials: str) -> None:
    headers = CREDENTIALS[credentials]
    async with aiohttp.ClientSession() as s, s.get(rig.wrapper.url + path(name), headers=headers) as resp:
        assert resp.status == 200
        assert await resp.read() == BODY


@pytest.mark.parametrize(("name", "whole"), [("cut-length", False), ("cut-chunked", False), ("whole-chunked", True)])
async def test_go_clients_see_a_cut_body_as_an_error(rig: Rig, name: str, whole: bool, kube_home: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--server", rig.wrapper.url, "--request-timeout", "20s",
        "get", "--raw", path(name), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=kubectl_env(kube_home))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if whole:
        assert proc.returncode == 0, err.decode()
        assert out.strip() == BODY
    else:
        assert proc.returncode != 0
        assert b"EOF" in err or b"unexpected" in err, err.decode()


async def _closed_by_the_wrapper(url: str) -> None:
    """Open a keep-alive connection, make one request, and wait until the wrapper closes it as idle."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: wrapper\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"ok"), 10)
        assert answer.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # EOF: closed after the idle timeout
    finally:
        writer.close()


async def test_a_long_pass_through_watch_streams_every_line_past_the_idle_and_header_timeouts(rig: Rig) -> None:
    got: list[bytes] = []
    async with aiohttp.ClientSession() as s, s.get(rig.wrapper.url + WATCH, params={"watch": "1"},
                                                  headers=AUTH) as resp:
        assert resp.status == 200
        for gate in rig.gates:
            got.append(await asyncio.wait_for(resp.content.readline(), 10))  # streamed, not buffered
            # While the watch is quiet, another connection outlives the idle timeout and is closed.
            await _closed_by_the_wrapper(rig.wrapper.url)
            gate.set()
        assert await asyncio.wait_for(resp.content.read(), 10) == b""
    assert got == WATCH_LINES


async def test_a_half_closed_client_waiting_on_a_hung_apiserver_is_let_go_after_the_idle_timeout(rig: Rig) -> None:
    host, port = rig.wrapper.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path('hang')} HTTP/1.1\r\nHost: wrapper\r\n\r\n".encode())
        writer.write_eof()
        # The request reached the upstream, which never answers; the wrapper does not wait forever.
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert any(path("hang") in line for line in rig.upstream.requests)
