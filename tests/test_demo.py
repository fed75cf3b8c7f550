"""The embedded demo, as a user runs it: the printed kubectl commands do what they say."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.kubectl import kubectl_env, run_kubectl
from tests.test_cli import free_port


@pytest.fixture
async def demo() -> AsyncIterator[tuple[str, str, str]]:
    ports = [free_port() for _ in range(3)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wrapper", "demo", "--bind-address", f"127.0.0.1:{ports[0]}",
        "--simulator-address", f"127.0.0.1:{ports[1]}", "--debug-bind-address", f"127.0.0.1:{ports[2]}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    text = ""
    try:
        while "Ctrl-C stops the demo" not in text:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, f"demo exited early: {text}"
            text += line.decode()
        wrapper = re.search(r"wrapper \(what kube-proxy on bj-1 sees\): (\S+)", text)
        sim = re.search(r"simulated apiserver \(the whole cluster\):\s+(\S+)", text)
        debug = re.search(r"curl -s '(http://[^/]+)/debug/topology", text)
        assert wrapper and sim and debug, text
        yield wrapper.group(1), sim.group(1), debug.group(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_demo_wrapper_shows_only_beijing_endpoints_and_follows_a_relabel(
    demo: tuple[str, str, str], kube_home: Path
) -> None:
    wrapper, sim, _ = demo
    wide = await run_kubectl("kubectl", wrapper, "get", "endpointslices", "-o", "wide", home=kube_home)
    [row] = [line for line in wide.splitlines() if line.startswith("servicegrid-demo-svc")]
    assert row.split()[3].count(",") == 1  # two addresses: bj-1 and bj-3
    everything = await run_kubectl("kubectl", sim, "get", "endpointslices", "-o", "wide", home=kube_home)
    [row] = [line for line in everything.splitlines() if line.startswith("servicegrid-demo-svc")]
    assert "+ 1 more" in row  # four addresses upstream: three shown, one more

    watch = await asyncio.create_subprocess_exec(
        "kubectl", "--server", wrapper, "get", "endpointslices", "-w", "--output-watch-events", "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=kubectl_env(kube_home),
    )
    assert watch.stdout is not None
    try:
        await asyncio.wait_for(watch.stdout.readline(), 20)  # the initial state has started printing
        await run_kubectl("kubectl", sim, "label", "node", "gz-2", "location=beijing", "--overwrite", home=kube_home)
        # kubectl prints one JSON event per line when its output is not a terminal.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            line = await asyncio.wait_for(watch.stdout.readline(), max(deadline - loop.time(), 0.1))
            assert line, "kubectl watch ended"
            ev = json.loads(line)
            obj = ev["object"]
            if obj["metadata"]["name"].startswith("servicegrid-demo-svc") and "gz-2" in {
                e.get("nodeName") for e in obj.get("endpoints") or []
            }:
                break
        assert ev["type"] == "MODIFIED"
    finally:
        with contextlib.suppress(ProcessLookupError):
            watch.kill()
        await watch.wait()


async def test_demo_debug_page_explains_the_decision(demo: tuple[str, str, str]) -> None:
    import aiohttp

    _, _, debug = demo
    async with aiohttp.ClientSession() as s, s.get(
        f"{debug}/debug/topology", params={"service": "default/servicegrid-demo-svc"}
    ) as resp:
        doc = await resp.json()
    kept = sorted(e["nodeName"] for e in doc["services"][0]["endpoints"] if e["kept"])
    assert kept == ["bj-1", "bj-3"]


async def test_demo_answers_a_client_that_half_closes_under_uvloop(demo: tuple[str, str, str]) -> None:
    """The demo runs on uvloop, as the wrapper does: a request followed by shutdown(SHUT_WR) is answered."""
    wrapper, _, _ = demo
    host, port = wrapper.removeprefix("http://").rsplit(":", 1)
    for path in ("/api/v1/services", "/api"):  # from the cache, and passed through
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: demo\r\n\r\n".encode())
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 20)  # everything, up to the server's close
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'"kind":"ServiceList"' in answer or b'"kind":"APIVersions"' in answer
