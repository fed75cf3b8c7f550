"""``python -m bench upstream-cost``: what one wrapper costs the apiserver, beside the kube-proxy it replaces.

One simulator holds a cluster with realistic Nodes (``apisim.seeds.realistic_node``: images,
conditions, addresses, capacity, managedFields; about 10 KB each, 3.7 KB of it metadata) and counts
the response bytes and objects it sends each client (``apisim.traffic``). Against it, side by side:

- kube-proxy 1.34's own request set (``bench.kube_proxy``), replayed straight against it;
- a wrapper in the publisher mode: the node topology publisher runs (``publish-topology``, a process
  of its own) and the wrapper reads node labels from its buckets;
- a wrapper in the nodes mode (``--node-topology=nodes``): a metadata-only watch of every Node;
- the publisher itself, once per cluster (not per node).

Initial sync: what each client received until it had synced (the replay: its lists; a wrapper:
until /readyz). Churn, in compressed time: each kind of change is driven in a batch (kubelet
status heartbeats of other nodes, of the wrapper's own node, EndpointSlice changes, Service
changes), the bytes each client received are divided by the batch's size, and the hour is
those per-change costs times the change rates of the churn model (``--heartbeat-period``,
``--slice-changes-per-hour``, ``--service-changes-per-hour``), plus a bookmark a minute per open
watch. Targets: a wrapper's initial sync within 1.15x of kube-proxy's bytes; in the publisher mode,
another node's heartbeat costs a wrapper nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.kube_proxy import KubeProxyReplay
from bench.processes import (
    Proc,
    UpstreamProc,
    WrapperProc,
    WrapperSpec,
    compile_bytecode,
    get_json,
    log,
    post_json,
    session,
    start_publisher,
    start_upstream,
    start_wrapper,
)
from bench.stats import Row, publish

RESULTS = Path(__file__).resolve().parent / "results"
SYNC_RATIO_TARGET = 1.15
BOOKMARKS_PER_HOUR = 60  # the apiserver's watch cache sends a watcher a bookmark about every minute
# One bookmark line: {"type":"BOOKMARK","object":{"kind":..,"apiVersion":..,"metadata":{"resourceVersion":..}}}
BOOKMARK_BYTES = 110

# The clients, by the user name their token maps to at the simulator.
KUBE_PROXY = "kube-proxy"
WRAPPER_PUBLISHER = "wrapper-publisher-mode"
WRAPPER_NODES = "wrapper-nodes-mode"
PUBLISHER = "topology-publisher"
CLIENTS = (KUBE_PROXY, WRAPPER_PUBLISHER, WRAPPER_NODES, PUBLISHER)
TOKENS = {f"{c}-token": c for c in CLIENTS}


@dataclass
class CostSettings:
    seed: int
    hostname: str
    nodes: int
    services: int
    endpoints: int
    heartbeat_period: float
    slice_changes_per_hour: float
    service_changes_per_hour: float
    heartbeat_rounds: int
    changes: int
    results_dir: Path

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> CostSettings:
        return cls(seed=a.seed, hostname=a.hostname, nodes=a.nodes, services=a.services, endpoints=a.endpoints,
                   heartbeat_period=a.heartbeat_period, slice_changes_per_hour=a.slice_changes_per_hour,
                   service_changes_per_hour=a.service_changes_per_hour, heartbeat_rounds=a.heartbeat_rounds,
                   changes=a.changes, results_dir=Path(a.results_dir))


def by_client(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The traffic rows summed per client: bytes, objects, bookmarks, requests, and per resource."""
    out: dict[str, dict[str, Any]] = {c: {"bytes": 0, "objects": 0, "bookmarks": 0, "requests": 0,
                                          "resources": {}, "watched": set()} for c in CLIENTS}
    for r in rows:
        c = out.get(str(r["user"]))
        if c is None:
            continue
        for k in ("bytes", "objects", "bookmarks", "requests"):
            c[k] += int(r[k])
        res = c["resources"].setdefault(r["resource"], {"bytes": 0, "objects": 0, "requests": 0, "verbs": []})
        res["bytes"] += int(r["bytes"])
        res["objects"] += int(r["objects"])
        res["requests"] += int(r["requests"])
        if r["verb"] not in res["verbs"]:
            res["verbs"].append(r["verb"])
        if r["verb"] in ("watch", "watchlist"):
            c["watched"].add(r["resource"])
    for c in out.values():
        c["watched"] = sorted(c["watched"])
    return out


async def settle(http: aiohttp.ClientSession, ctl: str, *, quiet: float = 0.6, limit: float = 60) -> dict[str, Any]:
    """Wait until the simulator has sent nothing more for ``quiet`` seconds; its traffic then."""
    last: bytes = b""
    since = time.monotonic()
    deadline = since + limit
    while True:
        doc = await get_json(http, f"{ctl}/ctl/traffic")
        key = orjson.dumps([[r["user"], r["resource"], r["verb"], r["bytes"]] for r in doc["rows"]])
        now = time.monotonic()
        if key != last:
            last, since = key, now
        elif now - since >= quiet:
            return dict(doc)
        if now > deadline:
            log("traffic did not settle; taking it as it is")
            return dict(doc)
        await asyncio.sleep(0.1)


async def mode_of(http: aiohttp.ClientSession, wp: WrapperProc) -> str:
    doc = await get_json(http, f"{wp.debug_url}/debug/cache")
    return str((doc.get("nodeTopology") or {}).get("mode", "?"))


async def run(s: CostSettings) -> dict[str, Any]:
    compile_bytecode()
    s.results_dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "settings": {k: str(v) if isinstance(v, Path) else v for k, v in s.__dict__.items()}}
    procs: list[Proc] = []
    up: UpstreamProc | None = None
    replay: KubeProxyReplay | None = None
    with tempfile.TemporaryDirectory(prefix="agw-bench-cost-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            log(f"upstream: {s.nodes} realistic nodes, {s.services} Services, {s.endpoints} endpoints")
            # Bookmarks would land at random in the compressed churn phases: they are counted per hour apart.
            up = await start_upstream(s.results_dir, [
                "--seed", str(s.seed), "--hostname", s.hostname, "--nodes", str(s.nodes), "--services",
                str(s.services), "--endpoints", str(s.endpoints), "--with-endpoints", "--realistic-nodes",
                "--bookmark-interval", "86400"])
            res["cluster"] = up.info["counts"]
            async with session() as http:
                await post_json(http, f"{up.ctl}/ctl/tokens", {"tokens": TOKENS})
                log("starting the node topology publisher")
                procs.append(await start_publisher(http, up.url, tmp, s.results_dir, token=f"{PUBLISHER}-token"))
                await settle(http, up.ctl)
                await post_json(http, f"{up.ctl}/ctl/traffic/reset", {})
                log("kube-proxy 1.34's request set, replayed")
                replay = KubeProxyReplay(http, up.url, s.hostname, f"{KUBE_PROXY}-token", seed=s.seed)
                await replay.start()
                log("wrappers: publisher mode, nodes mode")
                wps = {}
                for user, mode in ((WRAPPER_PUBLISHER, "auto"), (WRAPPER_NODES, "nodes")):
                    wp = await start_wrapper(http, WrapperSpec(user, s.hostname, up.url, f"{user}-token",
                                                               ("--node-topology", mode)), tmp, s.results_dir)
                    procs.append(wp.proc)
                    wps[user] = wp
                sync = await settle(http, up.ctl)
                res["sync"] = by_client(sync["rows"])
                res["sync_requests"] = sync["requests"]
                res["replay_counts"] = replay.counts()
                res["modes"] = {user: await mode_of(http, wp) for user, wp in wps.items()}
                log(f"synced; wrapper modes {res['modes']}")
                # The generator names nodes node-00000, node-00001, ... (apisim.seeds.scale_cluster).
                foreign = [f"node-{i:05d}" for i in range(s.nodes) if f"node-{i:05d}" != s.hostname]
                phases: dict[str, tuple[str, dict[str, Any], int]] = {
                    "foreign_heartbeat": ("/ctl/heartbeats", {"count": s.heartbeat_rounds * len(foreign),
                                                              "nodes": foreign}, s.heartbeat_rounds * len(foreign)),
                    "own_heartbeat": ("/ctl/heartbeats", {"count": s.changes // 10, "nodes": [s.hostname]},
                                      s.changes // 10),
                    "slice_change": ("/ctl/churn", {"kind": "slices", "count": s.changes, "seed": s.seed},
                                     s.changes),
                    "service_change": ("/ctl/churn", {"kind": "services", "count": s.changes // 2,
                                                      "seed": s.seed}, s.changes // 2),
                }
                res["churn"] = {}
                for name, (path, body, count) in phases.items():
                    await post_json(http, f"{up.ctl}/ctl/traffic/reset", {})
                    log(f"churn: {count} x {name.replace('_', ' ')}")
                    await post_json(http, f"{up.ctl}{path}", body)
                    after = await settle(http, up.ctl)
                    per = by_client(after["rows"])
                    res["churn"][name] = {"count": count, "clients": {
                        c: {"bytes": v["bytes"] / count, "objects": v["objects"] / count} for c, v in per.items()}}
                res["foreign_nodes"] = len(foreign)
                # A restart (a DaemonSet rollout): each wrapper stops, writing its snapshot, and starts
                # again from it (the same --cache-dir).
                res["restart"] = {}
                for user, mode in ((WRAPPER_PUBLISHER, "auto"), (WRAPPER_NODES, "nodes")):
                    old = wps[user]
                    await old.proc.stop()
                    procs.remove(old.proc)
                    await post_json(http, f"{up.ctl}/ctl/traffic/reset", {})
                    log(f"restart: {user} from its snapshot")
                    wp = await start_wrapper(http, WrapperSpec(user, s.hostname, up.url, f"{user}-token",
                                                               ("--node-topology", mode)), tmp, s.results_dir)
                    procs.append(wp.proc)
                    after = await settle(http, up.ctl)
                    res["restart"][user] = by_client(after["rows"]).get(user, {"bytes": 0, "objects": 0})
        finally:
            if replay is not None:
                await replay.stop()
            for p in procs:
                await p.stop()
            if up is not None:
                await up.proc.stop()
    res["hourly"] = hourly(res, s)
    return res


def hourly(res: dict[str, Any], s: CostSettings) -> dict[str, dict[str, float]]:
    """Bytes and objects per hour per client: the churn model's rates times the measured per-change costs."""
    per_hour_heartbeats = 3600 / s.heartbeat_period
    rates = {"foreign_heartbeat": res["foreign_nodes"] * per_hour_heartbeats, "own_heartbeat": per_hour_heartbeats,
             "slice_change": s.slice_changes_per_hour, "service_change": s.service_changes_per_hour}
    out: dict[str, dict[str, float]] = {}
    for c in CLIENTS:
        parts = {k: rates[k] * res["churn"][k]["clients"][c]["bytes"] for k in rates}
        bookmarks = len(res["sync"][c]["watched"]) * BOOKMARKS_PER_HOUR * BOOKMARK_BYTES
        out[c] = {**{f"{k}_bytes": v for k, v in parts.items()}, "bookmark_bytes": bookmarks,
                  "bytes": sum(parts.values()) + bookmarks,
                  "objects": sum(rates[k] * res["churn"][k]["clients"][c]["objects"] for k in rates)}
    return out


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def kb(n: float) -> str:
    return f"{n / 1e3:,.2f} KB"


def rows_of(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    sync, churn, hour = res["sync"], res["churn"], res["hourly"]
    kp = sync[KUBE_PROXY]
    rows.append(Row("initial sync: kube-proxy 1.34 (replayed)", f"{mb(kp['bytes'])}, {kp['objects']:,} objects"))
    for user, label in ((WRAPPER_PUBLISHER, "publisher mode"), (WRAPPER_NODES, "nodes mode")):
        w = sync[user]
        ratio = w["bytes"] / kp["bytes"] if kp["bytes"] else float("nan")
        rows.append(Row(f"initial sync: wrapper, {label} ({res['modes'].get(user)})",
                        f"{mb(w['bytes'])}, {w['objects']:,} objects", f"kube-proxy {mb(kp['bytes'])}",
                        f"{ratio:.3f}x", f"<= {SYNC_RATIO_TARGET}x",
                        "met" if ratio <= SYNC_RATIO_TARGET else "NOT MET"))
    for user, label in ((WRAPPER_PUBLISHER, "publisher mode"), (WRAPPER_NODES, "nodes mode")):
        if user in res.get("restart", {}):
            r = res["restart"][user]
            rows.append(Row(f"restart from its snapshot: wrapper, {label}",
                            f"{kb(r['bytes'])}, {r['objects']:,} objects", f"initial sync {mb(sync[user]['bytes'])}"))
    fh = churn["foreign_heartbeat"]["clients"]
    for user, label in ((WRAPPER_PUBLISHER, "publisher mode"), (WRAPPER_NODES, "nodes mode")):
        cost = fh[user]["bytes"]
        target, verdict = ("0 B", "met" if cost == 0 else "NOT MET") if user == WRAPPER_PUBLISHER else ("", "")
        rows.append(Row(f"another node's heartbeat, wrapper {label}", f"{cost:,.0f} B",
                        f"kube-proxy {fh[KUBE_PROXY]['bytes']:,.0f} B", "", target, verdict))
    rows.append(Row("another node's heartbeat, the publisher (once per cluster)", f"{fh[PUBLISHER]['bytes']:,.0f} B"))
    for name, label in (("own_heartbeat", "own node's heartbeat"), ("slice_change", "EndpointSlice change"),
                        ("service_change", "Service change")):
        cl = churn[name]["clients"]
        rows.append(Row(f"{label}: publisher mode / nodes mode", f"{cl[WRAPPER_PUBLISHER]['bytes']:,.0f} / "
                        f"{cl[WRAPPER_NODES]['bytes']:,.0f} B", f"kube-proxy {cl[KUBE_PROXY]['bytes']:,.0f} B"))
    for user, label in ((KUBE_PROXY, "kube-proxy"), (WRAPPER_PUBLISHER, "wrapper, publisher mode"),
                        (WRAPPER_NODES, "wrapper, nodes mode"), (PUBLISHER, "the publisher (per cluster)")):
        h = hour[user]
        ratio = f"{h['bytes'] / hour[KUBE_PROXY]['bytes']:.2f}x" if user != KUBE_PROXY and hour[KUBE_PROXY]["bytes"] \
            else ""
        rows.append(Row(f"per hour of churn: {label}", f"{mb(h['bytes'])}/h",
                        f"heartbeats {mb(h['foreign_heartbeat_bytes'] + h['own_heartbeat_bytes'])}, "
                        f"endpoints+services {mb(h['slice_change_bytes'] + h['service_change_bytes'])}",
                        ratio))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench upstream-cost",
        description="What one wrapper costs the apiserver, side by side with kube-proxy 1.34's own request set "
        "replayed against the same simulator: response bytes and objects at the initial sync, and per hour of "
        "churn (a status heartbeat from every node, EndpointSlice and Service changes), for a wrapper reading "
        "node labels from the publisher's buckets (the publisher running) and one watching every Node's "
        "metadata. Nodes are realistic (images, conditions, addresses, capacity, managedFields: about 10 KB).",
        epilog="Churn runs in compressed time: each kind of change is made in a batch, the bytes each client "
        "received are divided by the batch size and multiplied by the rates of the churn model. Takes about 2 "
        "minutes on 2 cores.",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated cluster (default 1)")
    p.add_argument("--hostname", default="node-00000", help="the local node of kube-proxy and the wrappers")
    p.add_argument("--nodes", type=int, default=1000, help="Nodes in the cluster (default 1000)")
    p.add_argument("--services", type=int, default=5000, help="Services, one EndpointSlice each (default 5000)")
    p.add_argument("--endpoints", type=int, default=50000, help="endpoints over all slices (default 50000)")
    p.add_argument("--heartbeat-period", type=float, default=300.0,
                   help="seconds between two status heartbeats of one node (default 300, the kubelet's status "
                   "report frequency)")
    p.add_argument("--slice-changes-per-hour", type=float, default=3600.0,
                   help="EndpointSlice changes per hour, cluster-wide, in the churn model (default 3600)")
    p.add_argument("--service-changes-per-hour", type=float, default=60.0,
                   help="Service changes per hour, cluster-wide, in the churn model (default 60)")
    p.add_argument("--heartbeat-rounds", type=int, default=2,
                   help="heartbeats driven per other node to measure their cost (default 2)")
    p.add_argument("--changes", type=int, default=400,
                   help="EndpointSlice changes driven to measure their cost; half as many Service changes and a "
                   "tenth as many heartbeats of the local node (default 400)")
    p.add_argument("--json", type=Path, help="write the figures as JSON here (default in --results-dir)")
    p.add_argument("--results-dir", default=str(RESULTS), help="logs and JSON (default bench/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = CostSettings.from_args(args)
    import uvloop

    res = uvloop.run(run(s))
    publish(res, rows_of(res), args.json, s.results_dir, "upstream-cost")
    return 0
