"""Memory per watcher is bounded in bytes, at benchmark scale, in the real process.

The wrapper runs as its own process (the ``application-grid-wrapper`` command) against the
benchmark's upstream (``bench.upstream``: 1,000 nodes, 5,000 Services, 5,000 EndpointSlices with
50,000 endpoints, and their core Endpoints). Fifty clients ask for the whole EndpointSlice state
(resourceVersion unset, "0", or sendInitialEvents) over raw sockets with a 4 KiB receive buffer
and never read. The wrapper must hold only a bounded batch per client, not copies of the 7 MB
list, so its resident memory stays within a stated bound; a client that does read meanwhile gets
every event; the stalled ones are cut off after ``--watch-write-timeout``, each logged once and
counted in ``application_grid_wrapper_watch_clients_cut_off_total{reason="write_timeout"}``.

Bounds (README, "Clients that stop reading"): peak RSS (VmHWM) over the whole run at most 256 MiB, and at most
64 MiB above the RSS once synced while the fifty clients are connected. Before the fix each of
them pinned three copies of the list (about 22 MB), over 1 GiB for fifty.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.procstat import memory_kb
from kubeapi.resources import ENDPOINTSLICES
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
STALLED = 50
WRITE_TIMEOUT = 8.0  # seconds: long enough to measure while all fifty are connected
WRITES = 300
HWM_BOUND_KB = 256 * 1024
GROWTH_BOUND_KB = 64 * 1024
TAG = "bench/tag"
TAG_START = 1_000_000
LOCAL = "node-00000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Procs:
    upstream: asyncio.subprocess.Process
    ctl: str
    wrapper: asyncio.subprocess.Process
    url: str
    debug_url: str
    log_path: Path


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _wrapper_command() -> list[str]:
    script = Path(sys.executable).parent / "application-grid-wrapper"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wrapper"]


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Procs]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.upstream", "--seed", "1", "--with-endpoints", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "upstream.log").open("wb"))
    wrapper: asyncio.subprocess.Process | None = None
    try:
        assert upstream.stdout is not None
        line = await asyncio.wait_for(upstream.stdout.readline(), 180)
        assert line, "the benchmark upstream exited before it listened; see upstream.log"
        info = orjson.loads(line)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: " + info["url"] + "\n"
            "contexts:\n- name: sim\n  context:\n    cluster: sim\n    user: u\ncurrent-context: sim\n"
            "users:\n- name: u\n  user:\n    token: t\n")
        port, debug_port = free_port(), free_port()
        log_path = tmp_path / "wrapper.log"
        wrapper = await asyncio.create_subprocess_exec(
            *_wrapper_command(), "--kubeconfig", str(kubeconfig), "--hostname", LOCAL,
            "--bind-address", f"127.0.0.1:{port}", "--debug-bind-address", f"127.0.0.1:{debug_port}",
            "--cache-dir", "", "--watch-write-timeout", str(WRITE_TIMEOUT), "--log-level", "warning",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log_path.open("wb"))
        yield Procs(upstream, str(info["ctl"]), wrapper, f"http://127.0.0.1:{port}",
                    f"http://127.0.0.1:{debug_port}", log_path)
    finally:
        if wrapper is not None:
            await _stop(wrapper)
        await _stop(upstream)


async def metric(http: aiohttp.ClientSession, debug_url: str, name: str, labels: str) -> float:
    async with http.get(debug_url + "/metrics") as resp:
        text = await resp.text()
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def stalled_watch(url: str, query: str) -> socket.socket:
    """A watch whose client never reads, with a small receive buffer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    request = (f"GET {ENDPOINTSLICES.collection_path()}?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "Accept: application/vnd.kubernetes.protobuf, */*\r\n\r\n")
    await loop.sock_sendall(sock, request.encode())
    return sock


STALLED_QUERIES = ["watch=true", "watch=true&resourceVersion=0",
                   "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"]


@dataclass
class Reader:
    """A watch that reads everything: the initial state, then every change."""

    added: int = 0
    tags: set[int] = field(default_factory=set)
    errors: list[Any] = field(default_factory=list)


async def read_watch(http: aiohttp.ClientSession, url: str, reader: Reader) -> None:
    async with http.get(url + ENDPOINTSLICES.collection_path(), params={"watch": "true"},
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as resp:
        assert resp.status == 200
        async for line in resp.content:
            ev = orjson.loads(line)
            if ev["type"] == "ADDED":
                reader.added += 1
            elif ev["type"] == "MODIFIED":
                tag = (ev["object"]["metadata"].get("annotations") or {}).get(TAG)
                if tag is not None:
                    reader.tags.add(int(tag))
            elif ev["type"] == "ERROR":
                reader.errors.append(ev)


def rss_kb(pid: int) -> int:
    return memory_kb(pid).get("VmRSS", 0)


@pytest.mark.timeout(300)
async def test_fifty_watchers_that_never_read_stay_within_a_memory_bound_and_readers_see_every_event(
    procs: Procs,
) -> None:
    started = time.monotonic()
    pid = procs.wrapper.pid
    async with aiohttp.ClientSession() as http:
        async def ready() -> bool:
            if procs.wrapper.returncode is not None:
                raise AssertionError(f"the wrapper exited: {procs.log_path.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(procs.url + "/readyz") as resp:
                    return resp.status == 200
            return False

        await eventually(ready, 120, "the wrapper to sync with the benchmark cluster", interval=0.1)
        synced_kb = rss_kb(pid)

        reader = Reader()
        reader_task = asyncio.create_task(read_watch(http, procs.url, reader))
        socks = [await stalled_watch(procs.url, STALLED_QUERIES[i % len(STALLED_QUERIES)]) for i in range(STALLED)]
        try:
            peak_connected_kb = rss_kb(pid)

            async def all_open() -> bool:
                nonlocal peak_connected_kb
                peak_connected_kb = max(peak_connected_kb, rss_kb(pid))
                return await metric(http, procs.debug_url, "application_grid_wrapper_open_watches",
                                    'resource="endpointslices"') >= STALLED + 1
            # Bounded by the write timeout: past it the first stalled watchers are cut off.
            await eventually(all_open, WRITE_TIMEOUT, "all fifty-one watches to be open", interval=0.05)
            state = await eventually(lambda: reader.added >= 4000 and reader.added, 30,
                                     "the reading watcher to get the initial state", interval=0.05)
            # Writes while the fifty are stalled: the reader must see every one of them.
            async with http.post(procs.ctl + "/ctl/drive", data=orjson.dumps({
                "rate": 300, "duration": 30, "max_writes": WRITES, "mode": "patch", "pool": "plain",
                "tag_start": TAG_START, "seed": 7})) as resp:
                drive = orjson.loads(await resp.read())
            assert drive["writes"] == WRITES
            peak_connected_kb = max(peak_connected_kb, rss_kb(pid))
            want = set(range(TAG_START, TAG_START + WRITES))

            def all_seen() -> bool:
                nonlocal peak_connected_kb
                peak_connected_kb = max(peak_connected_kb, rss_kb(pid))
                return want <= reader.tags

            await eventually(all_seen, 30, "the reading watcher to see every write", interval=0.05)
            still_open = await metric(http, procs.debug_url, "application_grid_wrapper_open_watches",
                                      'resource="endpointslices"')
            cut_so_far = await metric(http, procs.debug_url,
                                      "application_grid_wrapper_watch_clients_cut_off_total",
                                      'reason="write_timeout"')

            async def all_cut_off() -> bool:
                nonlocal peak_connected_kb
                peak_connected_kb = max(peak_connected_kb, rss_kb(pid))
                return await metric(http, procs.debug_url, "application_grid_wrapper_watch_clients_cut_off_total",
                                    'reason="write_timeout"') >= STALLED

            await eventually(all_cut_off, WRITE_TIMEOUT * 3, "the stalled watchers to be cut off", interval=0.05)
            assert await metric(http, procs.debug_url, "application_grid_wrapper_open_watches",
                                'resource="endpointslices"') == 1, "only the reader is left"
            assert not reader_task.done() and not reader.errors, "the reader was never cut off"
            hwm_kb = memory_kb(pid)["VmHWM"]
        finally:
            for sock in socks:
                sock.close()
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await reader_task

    log_text = procs.log_path.read_text()
    cut_lines = [ln for ln in log_text.splitlines() if "cut off" in ln]
    elapsed = time.monotonic() - started
    print(f"\nRSS synced {synced_kb / 1024:.0f} MiB; peak while {STALLED} stalled watchers were connected "
          f"{peak_connected_kb / 1024:.0f} MiB ({still_open:.0f} watches open, {cut_so_far:.0f} cut off when the "
          f"reader had every event); VmHWM {hwm_kb / 1024:.0f} MiB; reader got {state} ADDED and {WRITES} "
          f"changes; {elapsed:.0f}s")
    assert len(cut_lines) == STALLED, "one log line per cut-off client"
    assert "Traceback" not in log_text
    assert peak_connected_kb - synced_kb <= GROWTH_BOUND_KB, (synced_kb, peak_connected_kb)
    assert hwm_kb <= HWM_BOUND_KB, hwm_kb
