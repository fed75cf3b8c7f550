"""Shared fixtures: the apiserver simulator and the wrapper in front of it, on real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from cache.reflector import ReflectorSettings
from tests.support.stack import running_simulator, wait_ready
from wrapper.compose import Running, start_wrapper, stop_wrapper
from wrapper.serving import ServeSettings

LOCAL_NODE = "bj-1"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator()
    s.load(servicegrid_demo())
    async with running_simulator(s):
        yield s


def fast_settings() -> tuple[ServeSettings, ReflectorSettings]:
    return (ServeSettings(bookmark_interval=1.0),
            ReflectorSettings(read_timeout=5.0, backoff_initial=0.05, backoff_max=0.5, relist_jitter=0.05))


@pytest.fixture
async def wrapper(sim: Simulator) -> AsyncIterator[Running]:
    serve, reflect = fast_settings()
    async with ApiClient(sim.url) as client:
        running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), serve=serve,
                                      reflect=reflect, debug=("127.0.0.1", 0))
        try:
            await wait_ready(running)
            yield running
        finally:
            await stop_wrapper(running)


@pytest.fixture
def kube_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home
