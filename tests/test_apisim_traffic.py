"""The simulator counts what each client's reads cost it: response bytes and objects per user,
User-Agent, resource and verb, for lists, gets, watches and streaming lists, bookmarks apart."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from apisim import Simulator
from apisim.seeds import servicegrid_demo
from kubeapi.resources import NODES
from tests.support.stack import running_simulator
from tests.support.waiting import eventually

NODES_PATH = "/api/v1/nodes"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(servicegrid_demo, bookmark_interval=0.2)
    s.reviews.tokens["alice-token"] = {"username": "alice", "groups": []}
    s.reviews.tokens["bob-token"] = {"username": "bob", "groups": []}
    async with running_simulator(s):
        yield s


def headers(token: str, agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": agent, "Accept-Encoding": "identity"}


async def test_list_and_get_bytes_and_objects_are_counted_per_user_and_user_agent(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}{NODES_PATH}", headers=headers("alice-token", "kube-proxy/v1.34.0")) as r:
            listed = await r.read()
        async with http.get(f"{sim.url}{NODES_PATH}/bj-1", headers=headers("alice-token", "other/1")) as r:
            got = await r.read()
        async with http.get(f"{sim.url}{NODES_PATH}?limit=1", headers=headers("bob-token", "kube-proxy/v1.34.0")) as r:
            paged = await r.read()
    alice_list = sim.traffic.total(user="alice", agent="kube-proxy/v1.34.0", plural="nodes", verb="list")
    assert (alice_list.requests, alice_list.nbytes, alice_list.objects) == (1, len(listed), 4)
    alice_get = sim.traffic.total(user="alice", agent="other/1", verb="get")
    assert (alice_get.requests, alice_get.nbytes, alice_get.objects) == (1, len(got), 1)
    bob = sim.traffic.total(user="bob")
    assert (bob.requests, bob.nbytes, bob.objects) == (1, len(paged), 1)
    assert sim.traffic.total(user="alice").nbytes == len(listed) + len(got)
    assert [r.agent for r in sim.read_log][-3:] == ["kube-proxy/v1.34.0", "other/1", "kube-proxy/v1.34.0"]


async def test_a_watch_is_counted_as_its_bytes_leave_with_bookmarks_apart(sim: Simulator) -> None:
    received = bytearray()
    async with aiohttp.ClientSession() as http:
        params = {"watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
                  "allowWatchBookmarks": "true", "timeoutSeconds": "30"}
        async with http.get(f"{sim.url}{NODES_PATH}", params=params,
                            headers=headers("alice-token", "wrapper/1")) as r:
            lines: list[dict[str, object]] = []
            async for raw in r.content:
                received += raw
                lines.append(orjson.loads(raw))
                if len(lines) == 5:  # four initial ADDED, the initial-events-end bookmark
                    sim.patch_labels(NODES, None, "bj-1", {"zone": "moved"})
                if any(ev["type"] == "MODIFIED" for ev in lines) and lines[-1]["type"] == "BOOKMARK":
                    break
    cost = sim.traffic.total(user="alice", verb="watchlist")
    assert cost.requests == 1
    assert cost.objects == 5  # four ADDED and one MODIFIED
    assert cost.bookmarks == sum(1 for ev in lines if ev["type"] == "BOOKMARK") >= 2
    # The server may have written more than the client read before it left, never less.
    assert cost.nbytes >= len(received)


async def test_reset_zeroes_every_count_and_an_open_watch_counts_on_from_there(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}{NODES_PATH}", headers=headers("bob-token", "x")) as r:
            await r.read()
        params = {"watch": "1", "resourceVersion": str(sim.rv), "timeoutSeconds": "30"}
        async with http.get(f"{sim.url}{NODES_PATH}", params=params, headers=headers("bob-token", "x")) as r:
            sim.traffic.reset()
            assert sim.traffic.total(user="bob").nbytes == 0
            sim.patch_labels(NODES, None, "gz-2", {"zone": "moved"})
            line = await r.content.readline()
            await eventually(lambda: sim.traffic.total(user="bob", verb="watch").objects == 1, 5,
                             "the open watch's event counted after the reset")
    watch = sim.traffic.total(user="bob", verb="watch")
    assert (watch.requests, watch.nbytes) == (0, len(line))
    assert sim.traffic.total(user="bob", verb="list").nbytes == 0
