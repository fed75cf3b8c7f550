"""Connection hygiene on the wrapper's listener, with raw sockets: slow headers, idle keep-alive
connections, the connection cap, half-closed clients, and the demo's exposure check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
import pytest

from apisim.server import Simulator
from cache.apiclient import ApiClient
from tests.conftest import LOCAL_NODE, fast_settings
from tests.support.stack import wait_ready
from tests.test_cli import assert_one_line_error, free_port, run_cli
from wrapper.compose import Running, start_wrapper, stop_wrapper
from wrapper.listener import ConnectionLimits
from wrapper.options import build_demo_parser, build_parser

SHORT = 0.3
LONG = 120.0  # longer than any test runs: a timeout that must not be what closed the connection
NODES = b"GET /api/v1/services HTTP/1.1\r\nHost: wrapper\r\n\r\n"  # a list served from the cache

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def wrapper_with(sim: Simulator, limits: ConnectionLimits) -> AsyncIterator[Running]:
    serve, reflect = fast_settings()
    async with ApiClient(sim.url) as client:
        running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), serve=serve, reflect=reflect,
                                      limits=limits)
        try:
            await wait_ready(running)
            yield running
        finally:
            await stop_wrapper(running)


async def connect(running: Running) -> Conn:
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length or chunked) from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    else:
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), 10)
            if size == 0:
                break
            body += data[:-2]
    return int(lines[0].split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader, *, keep_sending: Callable[[], Awaitable[None]] | None = None,
                           deadline: float = 10.0, silently: bool = False) -> bool:
    """Whether the server closes the connection within ``deadline`` (reading, or trickling bytes
    meanwhile); with ``silently``, only a close with no answer at all counts."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        try:
            # Short reads so a trickling client keeps sending between them, like a slowloris does.
            data = await asyncio.wait_for(reader.read(65536), 0.05 if keep_sending else end - loop.time())
        except TimeoutError:
            if keep_sending is not None:
                try:
                    await keep_sending()
                except ConnectionError:
                    return True
            continue
        except ConnectionError:
            return True
        if not data:
            return True
        if silently:
            raise AssertionError(f"the server answered instead of closing: {data[:200]!r}")
    return False


async def test_a_client_that_trickles_its_first_request_headers_is_closed(sim: Simulator) -> None:
    async with wrapper_with(sim, ConnectionLimits(header_timeout=SHORT, idle_timeout=LONG)) as running:
        reader, writer = await connect(running)
        writer.write(b"GET /api/v1/services HTTP/1.1\r\nHost: wrapper\r\nX-Slow: ")

        async def one_more_byte() -> None:
            writer.write(b"x")
            await writer.drain()

        try:
            assert await closed_by_server(reader, keep_sending=one_more_byte, silently=True)
        finally:
            writer.close()


async def test_a_keep_alive_client_that_trickles_its_next_request_is_closed(sim: Simulator) -> None:
    async with wrapper_with(sim, ConnectionLimits(header_timeout=SHORT, idle_timeout=LONG)) as running:
        reader, writer = await connect(running)
        try:
            writer.write(NODES)
            code, _, _ = await read_response(reader)
            assert code == 200
            writer.write(b"GET /api/v1/services HTTP/1.1\r\nX-Slow: ")

            async def one_more_byte() -> None:
                writer.write(b"x")
                await writer.drain()

            assert await closed_by_server(reader, keep_sending=one_more_byte, silently=True)
        finally:
            writer.close()


async def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not(sim: Simulator) -> None:
    async with wrapper_with(sim, ConnectionLimits(header_timeout=LONG, idle_timeout=SHORT)) as running:
        reader, writer = await connect(running)
        watch_reader, watch_writer = await connect(running)
        try:
            # A watch in progress is neither idle nor slow: it outlives the idle connection below.
            watch_writer.write(b"GET /api/v1/services?watch=1&allowWatchBookmarks=true HTTP/1.1\r\nHost: w\r\n\r\n")
            head = await asyncio.wait_for(watch_reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            writer.write(NODES)
            code, headers, _ = await read_response(reader)
            assert code == 200 and headers.get("connection", "").lower() != "close"
            assert await closed_by_server(reader, silently=True)
            # Still streaming: the next bookmark (every second here) arrives on the watch.
            line = await asyncio.wait_for(watch_reader.readuntil(b"BOOKMARK"), 10)
            assert line
        finally:
            writer.close()
            watch_writer.close()


async def test_connections_past_the_cap_get_429_with_retry_after_and_a_status(sim: Simulator) -> None:
    limits = ConnectionLimits(header_timeout=LONG, idle_timeout=LONG, max_connections=3)
    async with wrapper_with(sim, limits) as running:
        held: list[Conn] = []
        try:
            for _ in range(3):  # three keep-alive connections, each served once and kept open
                reader, writer = await connect(running)
                writer.write(NODES)
                assert (await read_response(reader))[0] == 200
                held.append((reader, writer))
            reader, writer = await connect(running)
            writer.write(NODES)
            code, headers, body = await read_response(reader)
            assert code == 429 and headers["retry-after"] == "1"
            assert headers["content-type"] == "application/json" and headers["connection"].lower() == "close"
            st = orjson.loads(body)
            assert (st["kind"], st["code"], st["reason"]) == ("Status", 429, "TooManyRequests")
            assert st["details"]["retryAfterSeconds"] == 1
            assert await closed_by_server(reader)
            writer.close()
            # A slot freed is a slot served again.
            held.pop()[1].close()
            served = False
            for _ in range(100):
                reader, writer = await connect(running)
                writer.write(NODES)
                code = (await read_response(reader))[0]
                writer.close()
                if code == 200:
                    served = True
                    break
                assert code == 429
            assert served
        finally:
            for _, w in held:
                w.close()


async def test_a_half_closed_client_still_gets_its_answer(sim: Simulator) -> None:
    async with wrapper_with(sim, ConnectionLimits(header_timeout=LONG, idle_timeout=LONG)) as running:
        for request in (NODES, b"GET /api HTTP/1.1\r\nHost: wrapper\r\n\r\n"):  # from the cache, and passed through
            reader, writer = await connect(running)
            try:
                writer.write(request)
                writer.write_eof()  # shutdown(SHUT_WR): the request is all the client will send
                code, _, body = await read_response(reader)
                assert code == 200 and orjson.loads(body)["kind"] in ("ServiceList", "APIVersions")
                assert await closed_by_server(reader)  # and the connection ends with the answer
            finally:
                writer.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["--bind-address", "0.0.0.0:{port}"],
        ["--bind-address", "10.0.0.5:{port}"],
        ["--debug-bind-address", "0.0.0.0:{port}"],
        ["--simulator-address", "0.0.0.0:{port}"],
    ],
)
def test_the_demo_refuses_a_non_loopback_plain_http_address(argv: list[str]) -> None:
    args = [a.format(port=free_port()) for a in argv]
    proc = run_cli("demo", *args)
    assert_one_line_error(proc, "refusing", "non-loopback")
    assert proc.returncode == 2


@pytest.mark.parametrize("parser", [build_parser, build_demo_parser])
def test_connection_limits_are_flags_with_sane_defaults(parser: Callable[[], object]) -> None:
    import argparse

    p = parser()
    assert isinstance(p, argparse.ArgumentParser)
    args = p.parse_args([])
    defaults = ConnectionLimits()
    assert (args.read_header_timeout, args.idle_timeout, args.max_connections) == (
        defaults.header_timeout, defaults.idle_timeout, defaults.max_connections)
    assert 0 < defaults.header_timeout < defaults.idle_timeout
    args = p.parse_args(["--read-header-timeout", "5", "--idle-timeout", "30", "--max-connections", "64"])
    assert (args.read_header_timeout, args.idle_timeout, args.max_connections) == (5.0, 30.0, 64)


@pytest.mark.parametrize("flag", ["--read-header-timeout", "--idle-timeout", "--max-connections"])
@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_connection_limit_flags_refuse_nonsense(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([flag, value])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err
