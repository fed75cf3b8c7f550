"""The benchmark's own logic: kube-proxy's replayed request set selects what kube-proxy reads, the
upstream-cost arithmetic (per client, per hour), and ranges over runs that mark a flipping row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from apisim import Simulator
from apisim.seeds import HEADLESS, servicegrid_demo
from bench.kube_proxy import KubeProxyReplay
from bench.ranges import range_rows
from bench.run import rows_of
from bench.upstream_cost import KUBE_PROXY, PUBLISHER, WRAPPER_NODES, WRAPPER_PUBLISHER, CostSettings, by_client, hourly
from kubeapi.resources import ENDPOINTSLICES, SERVICES
from tests.support.stack import running_simulator
from tests.support.waiting import eventually


async def test_the_kube_proxy_replay_reads_what_kube_proxy_1_34_reads() -> None:
    sim = Simulator(servicegrid_demo(), bookmark_interval=60)
    sim.reviews.tokens["kp"] = {"username": "kube-proxy", "groups": []}
    headless = {"metadata": {"name": "dns", "namespace": "default"}, "spec": {"clusterIP": "None", "ports": [
        {"port": 53}]}}
    sim.create(SERVICES, headless)
    sim.create(ENDPOINTSLICES, {"metadata": {"name": "dns-abcde", "namespace": "default",
                                             "labels": {HEADLESS: "", "kubernetes.io/service-name": "dns"}},
                                "addressType": "IPv4", "endpoints": []})
    sim.create(SERVICES, {"metadata": {"name": "meshed", "namespace": "default",
                                       "labels": {"service.kubernetes.io/service-proxy-name": "mesh"}},
                          "spec": {"ports": [{"port": 80}]}})
    async with running_simulator(sim), aiohttp.ClientSession() as http:
        replay = KubeProxyReplay(http, sim.url, "bj-1", "kp")
        await replay.start()
        try:
            counts = replay.counts()
            services = {f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in sim.list(SERVICES)}
            assert counts["services"]["listed"] == len(services - {"default/dns", "default/meshed"})
            assert counts["endpointslices"]["listed"] == len(sim.list(ENDPOINTSLICES)) - 1
            assert counts["nodes"]["listed"] == 1
            sim.patch_labels(SERVICES, "default", "plain-svc", {"changed": "yes"})
            await eventually(lambda: replay.counts()["services"]["events"] == 1, 10, "the Service change")
        finally:
            await replay.stop()
    cost = sim.traffic.total(user="kube-proxy")
    assert cost.objects == sum(c["listed"] for c in counts.values()) + 1
    assert {r.agent for r in sim.read_log if r.user == "kube-proxy"} == {"kube-proxy/v1.34.1 (linux/amd64) "
                                                                         "kubernetes/bench-replay"}


def test_upstream_cost_sums_each_client_and_scales_each_change_by_its_rate_per_hour() -> None:
    rows = [
        {"user": KUBE_PROXY, "agent": "kp", "resource": "services", "verb": "list", "requests": 1, "bytes": 1000,
         "objects": 10, "bookmarks": 0},
        {"user": KUBE_PROXY, "agent": "kp", "resource": "services", "verb": "watch", "requests": 1, "bytes": 50,
         "objects": 1, "bookmarks": 0},
        {"user": WRAPPER_PUBLISHER, "agent": "w", "resource": "services", "verb": "watchlist", "requests": 1,
         "bytes": 1100, "objects": 11, "bookmarks": 1},
        {"user": "someone else", "agent": "x", "resource": "nodes", "verb": "list", "requests": 1, "bytes": 9,
         "objects": 1, "bookmarks": 0},
    ]
    sync = by_client(rows)
    assert (sync[KUBE_PROXY]["bytes"], sync[KUBE_PROXY]["objects"], sync[KUBE_PROXY]["watched"]) == (1050, 11,
                                                                                                  ["services"])
    assert sync[WRAPPER_PUBLISHER]["watched"] == ["services"] and sync[WRAPPER_NODES]["bytes"] == 0
    zero = {"bytes": 0.0, "objects": 0.0}
    churn: dict[str, Any] = {k: {"count": 1, "clients": {c: dict(zero) for c in (
        KUBE_PROXY, WRAPPER_PUBLISHER, WRAPPER_NODES, PUBLISHER)}}
        for k in ("foreign_heartbeat", "own_heartbeat", "slice_change", "service_change")}
    churn["foreign_heartbeat"]["clients"][WRAPPER_NODES] = {"bytes": 3700.0, "objects": 1.0}
    churn["slice_change"]["clients"][KUBE_PROXY] = {"bytes": 2000.0, "objects": 1.0}
    res: dict[str, Any] = {"sync": sync, "churn": churn, "foreign_nodes": 99}
    s = CostSettings(seed=1, hostname="n", nodes=100, services=1, endpoints=1, heartbeat_period=300,
                     slice_changes_per_hour=3600, service_changes_per_hour=60, heartbeat_rounds=1, changes=1,
                     results_dir=Path("."))
    hour = hourly(res, s)
    assert hour[WRAPPER_NODES]["foreign_heartbeat_bytes"] == 99 * 12 * 3700
    assert hour[KUBE_PROXY]["slice_change_bytes"] == 3600 * 2000
    assert hour[KUBE_PROXY]["bookmark_bytes"] > 0 and hour[WRAPPER_NODES]["bookmark_bytes"] == 0


def run_result(ready: float, rss: float, restart: float | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "targets": {}, "go_original": {"ready_s": (0.3, 0.7), "rss_at_ready_mb": (100.0, 124.0),
                                       "hop_p50_ms": (0.2, 0.55)},
        "ready": {"ready_s": ready}, "baseline_list_all_s": 0.2,
        "empty_wrapper": {"ready_s": 0.2, "rss_mb": 50.0}, "memory_at_ready": {"rss_mb": rss}}
    if restart is not None:
        res["restart"] = {"ready_s": restart, "starts": [restart]}
    return res


def test_ranges_over_runs_mark_a_row_met_in_some_runs_only_as_flipping() -> None:
    # The Go original's typical time to ready is 0.5 s (the middle of 0.3-0.7 s): met twice, missed once.
    rows = {r.metric: r for r in range_rows([run_result(0.45, 90.0), run_result(0.55, 95.0), run_result(0.48, 98.0)])}
    ready = rows["time to ready"]
    assert ready.value == "0.450 s - 0.550 s" and ready.baseline == "median 0.480 s"
    assert ready.verdict == "FLIPS (2/3 met)"
    assert rows["RSS at ready"].verdict == "met"
    assert rows["empty-cluster RSS"].verdict == ""


def test_a_restart_from_the_snapshot_is_reported_beside_the_cold_start() -> None:
    runs = [run_result(0.45, 90.0, restart=0.5), run_result(0.44, 90.0, restart=0.52)]
    rows = {r.metric: r for r in range_rows(runs)}
    restart = rows["time to ready, restart from its snapshot"]
    assert restart.value == "0.500 s - 0.520 s" and restart.verdict == ""
    suite = {r.metric.split(" (")[0]: r for r in rows_of(run_result(0.45, 90.0, restart=0.5) | {
        "ready": {"ready_s": 0.45, "starts": [{"ready_s": 0.45}]}})}
    assert suite["time to ready, restart from its snapshot"].baseline == "cold start 0.450 s"
