"""Client behaviour on real sockets: a client that stops reading, many clients, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from apisim.server import Simulator
from cache import snapshot
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from tests.support.faultkit import (
    demo_slice,
    free_port,
    get_text,
    key_of,
    list_items,
    node_names,
    open_watch,
    running_wrapper,
    write_kubeconfig,
)
from tests.support.stack import wait_applied
from tests.support.waiting import eventually
from wrapper.compose import Running
from wrapper.serving import ServeSettings

REPO = str(Path(__file__).resolve().parent.parent)

# ---- a client that stops reading --------------------------------------------------------------------


async def _raw_watch_that_never_reads(url: str, path: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET {path}?watch=true HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def _drain(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sent until the response or the connection ended (bounded in size and time)."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    total = 0
    deadline = loop.time() + timeout
    while total < 256 << 20:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"the server never closed the slow watch ({total} bytes read)")
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), left)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if b"".join(chunks[-2:]).endswith(b"0\r\n\r\n"):
            break  # the chunked body ended (the connection itself may be kept alive)
    return b"".join(chunks)


async def _fill_until(sim: Simulator, w: Running, done: Any, limit: int = 400) -> None:
    """Patch a Service with ~64 KiB annotations (fills socket buffers fast) until ``done()`` (bounded);
    each change reaches the wrapper before the next."""
    blob = "x" * (64 << 10)
    for i in range(limit):
        if done():
            return
        sim.patch(SERVICES, "default", "plain-svc", {"metadata": {"annotations": {"blob": f"{i}{blob}"}}})
        await wait_applied(w, sim)
    raise AssertionError("the condition never held while generating events")


def _error_events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for piece in data.split(b"\n"):
        i = piece.find(b'{"type":"ERROR"')
        if i >= 0:
            out.append(orjson.loads(piece[i:]))
    return out


async def test_a_client_that_stops_reading_gets_410_once_its_backlog_passes_the_bound_and_is_closed(
    sim: Simulator,
) -> None:
    bound = 64
    settings = ServeSettings(bookmark_interval=1.0, max_backlog=bound, write_timeout=30.0)
    async with running_wrapper(sim.url, serve=settings) as w:
        sock = await _raw_watch_that_never_reads(w.url, SERVICES.collection_path())
        try:
            await eventually(lambda: len(w.watches) == 1, 5, "the slow watch to open")
            # Until the writer is stuck on the full socket and events pile up behind it...
            await _fill_until(sim, w, lambda: any(i.backlog > bound for i in w.watches.watches.values()))
            # ...and then more than the bound again, all after whatever write is in flight.
            for i in range(bound + 16):
                sim.patch_labels(SERVICES, "default", "plain-svc", {"round": str(i)})
            await eventually(lambda: w.cache.upstream_rv(SERVICES) == sim.rv, 10, "the wrapper to see them")
            # Now read: the stuck write completes, the bound is checked, 410, end of stream.
            data = await _drain(sock, 20)
        finally:
            sock.close()
        await eventually(lambda: len(w.watches) == 0, 5, "the watch handler to end")
        errors = _error_events(data)
        assert errors, "no ERROR event before the stream was closed"
        assert errors[-1]["object"]["code"] == 410 and errors[-1]["object"]["reason"] == "Expired"
        assert data.endswith(b"0\r\n\r\n"), "the stream did not end cleanly after the 410"
        assert (await get_text(w.url + "/readyz"))[0] == 200


async def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(sim: Simulator) -> None:
    settings = ServeSettings(bookmark_interval=1.0, max_backlog=1_000_000, write_timeout=0.5)
    async with running_wrapper(sim.url, serve=settings) as w:
        sock = await _raw_watch_that_never_reads(w.url, SERVICES.collection_path())
        try:
            await eventually(lambda: len(w.watches) == 1, 5, "the slow watch to open")
            # Until the writer is stuck on the full socket (events wait behind its write)...
            await _fill_until(sim, w, lambda: len(w.watches) == 0 or any(
                i.backlog > 0 for i in w.watches.watches.values()))
            # ...which the write timeout ends.
            await eventually(lambda: len(w.watches) == 0, 10, "the stuck watch to be dropped at the write timeout")
            # Its connection was aborted, not left open with buffers full: reading ends.
            data = await _drain(sock, 20)
        finally:
            sock.close()
        assert not data.endswith(b"0\r\n\r\n")  # aborted, not a clean end
        assert (await get_text(w.url + "/readyz"))[0] == 200
        other = await open_watch(w.url, SERVICES)
        try:
            await eventually(lambda: len(other.events) == 3, 5, "a new watch to be served")
        finally:
            await other.stop()


# ---- many clients ---------------------------------------------------------------------------------------


async def test_two_hundred_concurrent_watches_and_list_bursts_all_converge_and_leave_no_watch_behind(
    wrapper: Running, sim: Simulator
) -> None:
    n = 200
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=2**21) as session:
        watches = [await open_watch(wrapper.url, ENDPOINTSLICES if i % 2 else NODES, session)
                   for i in range(n)]
        try:
            assert all(w.status == 200 for w in watches)
            await eventually(lambda: len(wrapper.watches) == n, 10, f"{n} open watches")

            async def list_once() -> int:
                async with session.get(wrapper.url + ENDPOINTSLICES.collection_path()) as resp:
                    await resp.read()
                    return resp.status

            codes: list[int] = []
            for i in range(6):
                sim.patch_labels(NODES, None, "gz-2", {"location": "beijing" if i % 2 == 0 else "guangzhou"})
                sim.patch_labels(NODES, None, "gz-3", {"round": str(i)})
                codes += await asyncio.gather(*(list_once() for _ in range(40)))
            sim.patch_labels(NODES, None, "gz-2", {"location": "beijing"})
            assert set(codes) == {200}
            want_nodes = await list_items(wrapper.url, NODES)
            want_slices = await list_items(wrapper.url, ENDPOINTSLICES)
            assert node_names(demo_slice(want_slices)) == {"bj-1", "bj-3", "gz-2"}

            def rv_map(items: dict[str, dict[str, Any]]) -> dict[str, str]:
                return {k: v["metadata"]["resourceVersion"] for k, v in items.items()}

            def converged() -> bool:
                return all(rv_map(w.state()) == rv_map(want_slices if i % 2 else want_nodes)
                           for i, w in enumerate(watches))

            await eventually(converged, 20, "every client to see every change")
            for w in watches:
                assert not w.ended and w.error == ""
                rvs = w.rvs()
                assert rvs == sorted(rvs), "a watch went back in resourceVersion"
        finally:
            for w in watches:
                await w.stop()
    await eventually(lambda: len(wrapper.watches) == 0, 10, "every watch handler to end")
    assert all(wrapper.watches.watchers(name) == 0 for name in wrapper.cache.views)


# ---- shutdown ---------------------------------------------------------------------------------------------


async def test_sigterm_ends_open_watches_cleanly_and_the_process_exits_zero(sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", sim.url)
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wrapper", "--kubeconfig", str(kubeconfig), "--hostname", "bj-1",
        "--cache-dir", str(cache_dir), "--bind-address", f"127.0.0.1:{port}",
        "--debug-bind-address", "127.0.0.1:0", "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                return (await get_text(url + "/readyz"))[0] == 200
            return False

        async def ready_or_exited() -> bool:
            return proc.returncode is not None or await ready()

        await eventually(ready_or_exited, 15, "the wrapper process to become ready", interval=0.05)
        assert proc.returncode is None, "the wrapper exited"
        async with aiohttp.ClientSession() as session:
            async with session.get(url + SERVICES.collection_path(), params={"watch": "true"}) as resp:
                assert resp.status == 200
                first = orjson.loads(await asyncio.wait_for(resp.content.readline(), 10))
                assert first["type"] == "ADDED"
                proc.send_signal(signal.SIGTERM)
                # A clean end: the chunked body is terminated (no payload error), after the other ADDEDs.
                rest = await asyncio.wait_for(resp.content.read(), 10)
            assert all(orjson.loads(line)["type"] in ("ADDED", "BOOKMARK") for line in rest.splitlines() if line)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0
        # The cache was flushed to disk on the way out.
        assert (cache_dir / snapshot.FILENAME).exists()
        _, err = await proc.communicate()
        assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_client_that_disconnects_mid_watch_frees_its_handler(wrapper: Running) -> None:
    w = await open_watch(wrapper.url, ENDPOINTSLICES)
    await eventually(lambda: len(wrapper.watches) == 1, 5, "the watch")
    await w.stop()
    await eventually(lambda: len(wrapper.watches) == 0, 5, "the handler to end")
    assert {key_of(o) for o in (await list_items(wrapper.url, ENDPOINTSLICES)).values()}
