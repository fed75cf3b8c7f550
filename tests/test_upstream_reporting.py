"""What an operator reads about the upstream: the log while the apiserver keeps failing, and /readyz?verbose.

A reflector against an apiserver that is not there says so once, then "still retrying" with its
last error and next attempt at most once a minute (its injected clock decides the minute: while
it stands still, no failure is said again however many there are), and once the apiserver
answers, one line that it is connected. /readyz?verbose names each cache's last error and when
it tries again; plain /readyz keeps its lines as they were.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from cache.cluster import ClusterCache
from cache.reflector import Reflector, ReflectorSettings
from kubeapi.resources import SERVICES
from tests.support.fake_clock import FakeClock
from tests.support.faultkit import get_json, get_text, running_wrapper
from tests.support.ports import restartable_port
from tests.support.stack import running_simulator, wait_ready
from tests.support.waiting import eventually

FAST = ReflectorSettings(read_timeout=5.0, backoff_initial=0.01, backoff_max=0.02, relist_jitter=0.0)


def said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "cache.reflector" and r.levelno == level and r.getMessage().startswith("upstream services:")]


async def test_an_unreachable_apiserver_is_said_once_then_still_retrying_at_a_bounded_rate_then_connected_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cache.reflector")
    port = restartable_port()
    clock = FakeClock()
    sim = Simulator()
    sim.load(servicegrid_demo())
    async with ApiClient(f"http://127.0.0.1:{port}") as client:
        reflector = Reflector(client, SERVICES, ClusterCache("bj-1"), FAST, clock=clock)
        task = asyncio.create_task(reflector.run())
        try:
            await eventually(lambda: reflector.state.failures >= 20, 20, "twenty failed attempts")
            [warning] = said(caplog, logging.WARNING)
            assert warning.startswith("upstream services: cannot sync: ") and "next attempt in" in warning
            assert str(port) in warning, "the error names where it tried"

            # A minute later (on the reflector's clock): one "still retrying", then silence again.
            clock.advance(61.0)
            await eventually(lambda: len(said(caplog, logging.WARNING)) == 2, 20, "still retrying")
            failures = reflector.state.failures
            await eventually(lambda: reflector.state.failures >= failures + 20, 20, "twenty more failed attempts")
            warnings = said(caplog, logging.WARNING)
            assert len(warnings) == 2, warnings
            assert warnings[1].startswith("upstream services: still retrying, last error: ")
            assert "next attempt in" in warnings[1] and "failed attempts in 61s" in warnings[1]

            await sim.start("127.0.0.1", port)
            try:
                await eventually(lambda: reflector.state.synced_once, 20, "the first sync")
                connected = [line for line in said(caplog, logging.INFO) if "connected after" in line]
                assert len(connected) == 1 and "(last error: " in connected[0], said(caplog, logging.INFO)
                assert any(line.startswith("upstream services: listed ") for line in said(caplog, logging.INFO))
                assert reflector.state.last_error == "" and reflector.state.retry_at is None
            finally:
                await sim.stop()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert len(said(caplog, logging.WARNING)) == 2


async def test_an_apiserver_that_keeps_refusing_is_said_once_with_its_answer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cache.reflector")
    sim = Simulator()
    sim.load(servicegrid_demo())
    sim.faults.fail_next(10_000, 403, 'services is forbidden: User "system:serviceaccount:edge-system:x" cannot list')
    async with running_simulator(sim), ApiClient(sim.url) as client:
        reflector = Reflector(client, SERVICES, ClusterCache("bj-1"), FAST, clock=FakeClock())
        task = asyncio.create_task(reflector.run())
        try:
            await eventually(lambda: reflector.state.failures >= 20, 20, "twenty refusals")
            # The streaming list's refusal (a fallback to lists, said once), then the failure, once.
            fallback, warning = said(caplog, logging.WARNING)
            assert fallback.startswith("upstream services: no streaming list (HTTP 403: ")
            assert warning.startswith("upstream services: cannot sync: HTTP 403: services is forbidden")
            assert "403" in reflector.state.last_error
            sim.faults.fail_next(0, 403)
            await eventually(lambda: reflector.state.synced_once, 20, "the first sync")
            assert len([line for line in said(caplog, logging.INFO) if "connected after" in line]) == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("how", ["unreachable", "forbidden"])
async def test_readyz_verbose_names_each_caches_last_error_and_next_attempt(how: str) -> None:
    sim = Simulator()
    sim.load(servicegrid_demo())
    port = restartable_port()
    if how == "forbidden":
        sim.faults.fail_next(10_000, 403, "endpointslices.discovery.k8s.io is forbidden")
        await sim.start("127.0.0.1", port)
    try:
        async with running_wrapper(f"http://127.0.0.1:{port}", wait=False) as w:
            async def verbose() -> str:
                code, body = await get_text(w.url + "/readyz?verbose")
                assert code == 503, body
                return body

            async def names_the_error() -> str | None:
                body = await verbose()
                return body if "retrying in" in body else None

            body = await eventually(names_the_error, 20, "/readyz?verbose to name the error")
            lines = body.splitlines()
            [services] = [line for line in lines if line.startswith("[-]cache-services not synced: ")]
            assert services.split(": ", 1)[1].rsplit("; retrying in ", 1)[1].endswith("s")
            if how == "forbidden":
                assert "403" in services and "forbidden" in services
            else:
                assert str(port) in services
            assert lines[-1] == "readyz check failed"
            # /debug/cache says it too, per resource.
            code, page = await get_json(w.debug_url + "/debug/cache")
            upstream = page["resources"]["services"]["upstream"]
            assert upstream["failedAttempts"] >= 1 and upstream["nextAttemptInSeconds"] >= 0
            assert upstream["lastError"] and upstream["lastError"] in services
            # Plain /readyz keeps its lines: the check and its state, no error.
            code, plain = await get_text(w.url + "/readyz")
            assert code == 503 and "[-]cache-services not synced\n" in plain and "retrying" not in plain

            if how == "forbidden":
                sim.faults.fail_next(0, 403)
            else:
                await sim.start("127.0.0.1", port)
            await wait_ready(w, 20)
            code, body = await get_text(w.url + "/readyz?verbose")
            assert code == 200 and "[+]cache-services ok\n" in body and "retrying" not in body, body
            code, page = await get_json(w.debug_url + "/debug/cache")
            assert "nextAttemptInSeconds" not in page["resources"]["services"]["upstream"]
    finally:
        await sim.stop()


async def test_readyz_verbose_says_a_synced_cache_is_served_while_its_upstream_is_lost() -> None:
    sim = Simulator()
    sim.load(servicegrid_demo())
    port = restartable_port()
    await sim.start("127.0.0.1", port)
    try:
        async with running_wrapper(f"http://127.0.0.1:{port}") as w:
            await sim.stop()

            async def lost() -> str | None:
                code, body = await get_text(w.url + "/readyz?verbose")
                assert code == 200, body  # ready while offline, once synced (the default)
                return body if "[+]cache-services ok (upstream lost: " in body else None

            body = await eventually(lost, 20, "/readyz?verbose to say the upstream is lost")
            assert "retrying in" in body
            code, plain = await get_text(w.url + "/readyz")
            assert code == 200 and "[+]cache-services ok\n" in plain
    finally:
        await sim.stop()
