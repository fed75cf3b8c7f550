"""A --hostname that names no Node of the cluster is loud: log, metric and /readyz say so."""

from __future__ import annotations

import copy
import logging

import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from cache.cluster import ClusterCache
from cache.reflector import ReflectorSettings
from kubeapi.resources import ALL, ENDPOINTSLICES, NODES
from tests.support.faultkit import demo_slice, get_text, list_items, node_names
from tests.support.stack import wait_ready
from tests.support.waiting import eventually
from wrapper.compose import start_wrapper, stop_wrapper
from wrapper.local_node import LocalNodeMonitor
from wrapper.serving import ServeSettings

KNOWN = "application_grid_wrapper_local_node_known"


def missing_warnings(caplog: pytest.LogCaptureFixture, node: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and f'local node "{node}" not found'
            in r.getMessage()]


async def test_a_hostname_matching_no_node_fails_readyz_sets_the_metric_and_warns_until_the_node_appears(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wrapper.local_node")
    client = ApiClient(sim.url)
    running = await start_wrapper(client, "bj-9", ("127.0.0.1", 0),
                                  serve=ServeSettings(bookmark_interval=1.0),
                                  reflect=ReflectorSettings(read_timeout=5.0, backoff_initial=0.05, backoff_max=0.5,
                                                            relist_jitter=0.05),
                                  debug=("127.0.0.1", 0), local_node_warn_every=0.2)
    try:
        await wait_ready(running)
        code, body = await get_text(running.url + "/readyz")
        assert code == 503, body
        assert '[-]local-node "bj-9" not found among the cluster\'s Nodes (check --hostname)' in body.splitlines()
        # Every cache is synced: the node is the only reason.
        assert all(line.startswith("[+]") for line in body.splitlines() if line.startswith("[+]cache-"))
        _, metrics = await get_text(running.debug_url + "/metrics")
        assert f"{KNOWN} 0.0" in metrics.splitlines()
        # Logged at once, then again while it stays missing (here every 0.2 s).
        await eventually(lambda: len(missing_warnings(caplog, "bj-9")) >= 2, 10, "a repeated warning")
        # Meanwhile the opted-in demo Service has no endpoints for this node; others are unchanged.
        served = await list_items(running.url, ENDPOINTSLICES)
        assert node_names(demo_slice(served)) == set()

        joined = copy.deepcopy(sim.get(NODES, None, "bj-3"))
        joined["metadata"] = {"name": "bj-9", "labels": {"location": "beijing", "kubernetes.io/hostname": "bj-9"}}
        sim.create(NODES, joined)
        await eventually(lambda: any("now among the cluster's Nodes" in r.getMessage() for r in caplog.records), 10,
                       "the node to be logged as found")
        code, body = await get_text(running.url + "/readyz")
        assert code == 200 and "[+]local-node ok" in body.splitlines(), body
        _, metrics = await get_text(running.debug_url + "/metrics")
        assert f"{KNOWN} 1.0" in metrics.splitlines()
        assert node_names(demo_slice(await list_items(running.url, ENDPOINTSLICES))) == {"bj-1", "bj-3"}
    finally:
        await stop_wrapper(running)
        await client.close()


async def test_a_hostname_matching_a_node_is_ready_with_the_metric_at_one(sim: Simulator) -> None:
    client = ApiClient(sim.url)
    running = await start_wrapper(client, "bj-1", ("127.0.0.1", 0),
                                  serve=ServeSettings(bookmark_interval=1.0), debug=("127.0.0.1", 0))
    try:
        await wait_ready(running)
        code, body = await get_text(running.url + "/readyz")
        assert code == 200 and "[+]local-node ok" in body.splitlines(), body
        _, metrics = await get_text(running.debug_url + "/metrics")
        assert f"{KNOWN} 1.0" in metrics.splitlines()
    finally:
        await stop_wrapper(running)
        await client.close()


def test_the_missing_node_warning_is_repeated_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wrapper.local_node")
    sim = Simulator(servicegrid_demo())
    cache = ClusterCache("bj-9")
    for r in ALL:
        cache.replace(r, sim.list(r), sim.rv)
    monitor = LocalNodeMonitor(cache, repeat_every=300.0)
    assert monitor.check(1000.0) == 300.0  # warned at once; the next one is due in 300 s
    for now in (1001.0, 1100.0, 1299.0):  # checks on every Node change in between stay quiet
        monitor.check(now)
    assert len(missing_warnings(caplog, "bj-9")) == 1
    monitor.check(1300.0)
    assert len(missing_warnings(caplog, "bj-9")) == 2
    joined = copy.deepcopy(sim.get(NODES, None, "bj-3"))
    joined["metadata"] = {"name": "bj-9", "labels": {"location": "beijing"}}
    cache.apply(NODES, "ADDED", sim.create(NODES, joined))
    monitor.check(1301.0)
    monitor.check(2000.0)
    assert len(missing_warnings(caplog, "bj-9")) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        'local node "bj-9" is now among the cluster\'s Nodes; topology filtering applies']
