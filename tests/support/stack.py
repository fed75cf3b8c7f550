"""A simulator plus a wrapper in front of it, on real 127.0.0.1 sockets, with tunable settings.

The conftest fixtures cover the servicegrid demo; this helper starts the same pair for any
seed (or for many short-lived examples, as the property test does).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import orjson

from apisim.seeds import SeedList
from apisim.server import Simulator
from cache.apiclient import ApiClient
from cache.reflector import ReflectorSettings
from kubeapi.resources import ALL
from tests.support.ports import restartable_port
from tests.support.waiting import eventually
from wrapper.compose import Running, start_wrapper, stop_wrapper
from wrapper.serving import ServeSettings


@dataclass
class Stack:
    sim: Simulator
    wrapper: Running


@asynccontextmanager
async def running_simulator(sim: Simulator) -> AsyncIterator[Simulator]:
    """``sim`` serving on a free 127.0.0.1 port for the block's duration (one it can be restarted on)."""
    await sim.start("127.0.0.1", restartable_port())
    try:
        yield sim
    finally:
        await sim.stop()


async def wait_ready(running: Running, timeout: float = 10) -> None:
    """Wait until every cache of the wrapper has synced and the views serve it."""
    await eventually(lambda: running.cache.ready, timeout, "the wrapper to sync from its upstream")


@asynccontextmanager
async def stack(seed: SeedList, *, node: str = "bj-1", sim_bookmarks: float = 0.3, wrapper_bookmarks: float = 0.3,
                too_large_wait: float = 3.0, history_limit: int = 10_000,
                sim_too_large_wait: float = 3.0) -> AsyncIterator[Stack]:
    """Start a simulator loaded with ``seed`` and a synced wrapper for ``node`` in front of it."""
    sim = Simulator(bookmark_interval=sim_bookmarks, history_limit=history_limit, too_large_wait=sim_too_large_wait)
    sim.load(seed)
    await sim.start("127.0.0.1", restartable_port())
    running: Running | None = None
    client = ApiClient(sim.url)
    try:
        running = await start_wrapper(
            client, node, ("127.0.0.1", 0),
            serve=ServeSettings(bookmark_interval=wrapper_bookmarks, too_large_wait=too_large_wait),
            reflect=ReflectorSettings(read_timeout=5.0, backoff_initial=0.05, backoff_max=0.5, relist_jitter=0.05),
            debug=("127.0.0.1", 0))
        await wait_ready(running)
        yield Stack(sim, running)
    finally:
        if running is not None:
            await stop_wrapper(running)
        await client.close()
        await sim.stop()


async def wait_caught_up(running: Running, sim: Simulator, timeout: float = 10) -> None:
    """Wait until every loaded view of the wrapper has reached the simulator's current
    resourceVersion (a lazily watched resource nobody has asked for has no view to catch up)."""
    target = sim.rv
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for r in ALL:
        view = running.cache.views[r.plural]
        if not view.synced and running.informers.lazy(r):
            continue
        left = deadline - loop.time()
        if left <= 0 or not await view.wait_for_rv(target, left):
            raise AssertionError(f"wrapper view {r.plural} stuck at {view.rv}, simulator at {target}")


async def wait_applied(running: Running, sim: Simulator, timeout: float = 10) -> None:
    """Wait until the wrapper has applied the simulator's latest change, to whichever resource it
    touched. A script that waits for this between changes has the wrapper see them as they come."""
    target = sim.rv
    await eventually(lambda: max(running.cache.upstream_rv(r) for r in ALL) >= target, timeout,
                     f"the wrapper to apply the upstream change at RV {target}", interval=0.005)


async def read_watch(session: aiohttp.ClientSession, url: str, params: dict[str, str],
                     headers: dict[str, str] | None = None, timeout: float = 15) -> list[dict[str, object]]:
    """Every event of a watch that ends by itself (use a small timeoutSeconds)."""
    events: list[dict[str, object]] = []
    async with session.get(url, params=params, headers=headers or {},
                           timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        assert resp.status == 200, (url, params, resp.status, await resp.text())
        assert resp.headers.get("Content-Type", "").startswith("application/json")
        async for raw in resp.content:
            line = raw.strip()
            if line:
                events.append(orjson.loads(line))
    return events
