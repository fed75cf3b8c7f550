"""``python -m bench fleet``: many wrappers as real processes against one simulator, started together,
then the simulator restarted.

The cluster is small enough for 50 wrapper processes to share 2 cores with the simulator (by
default 200 realistic Nodes, 1,000 Services, 10,000 endpoints); the node topology publisher runs,
so the wrappers read node labels from its buckets. Each wrapper is its own node (``node-00000``,
``node-00001``, ...), with its own token, so the simulator counts each apart.

1. Start: every wrapper is spawned at once; the run waits until all are ready and reports when
   (each wrapper's time to ready: median and the last), with the simulator's CPU seconds and its
   requests per resource and verb meanwhile.
2. Restart: each wrapper serves a watch of the marker Service (``bench/<marker>``, which does not
   exist yet); the simulator stops (every watch dropped), stays down ``--downtime`` seconds while
   the marker is created, and restarts without its watch history (``apisim.Simulator.restart``: a
   resume from before gets 410). Reported: the time until every wrapper serves the marker (the new
   state), counted from the restart and from the simulator being back, the simulator's CPU seconds,
   and its requests per resource and verb (and the most lists of one resource by one wrapper:
   each should sync each resource at most once).
3. The simulator's peak memory (VmHWM) over the whole run.

Bounded: the number of wrappers is capped (``--wrappers``, at most 100), the run refuses to start
when the machine has too little memory available for them, and every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bench.processes import (
    Proc,
    UpstreamProc,
    WrapperSpec,
    compile_bytecode,
    get_json,
    launch_wrapper,
    log,
    post_json,
    session,
    start_publisher,
    start_upstream,
    wait_ready,
)
from bench.procstat import cpu_seconds, memory_kb
from bench.stats import Row, percentile, publish

RESULTS = Path(__file__).resolve().parent / "results"
MAX_WRAPPERS = 100
MB_PER_WRAPPER = 150  # what the run reserves per wrapper process before it starts them (they use about 60)
MARKER = "fleet-marker"


@dataclass
class FleetSettings:
    wrappers: int
    nodes: int
    services: int
    endpoints: int
    downtime: float
    seed: int
    timeout: float
    results_dir: Path

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> FleetSettings:
        return cls(wrappers=min(a.wrappers, MAX_WRAPPERS), nodes=a.nodes, services=a.services, endpoints=a.endpoints,
                   downtime=a.downtime, seed=a.seed, timeout=a.timeout, results_dir=Path(a.results_dir))


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def requests_by(rows: list[list[Any]]) -> dict[str, Any]:
    """The simulator's requests (``[user, resource, verb, n]`` rows) per resource and verb, and the
    most syncs (lists and streaming lists) of one resource by one wrapper."""
    per: Counter[str] = Counter()
    syncs: Counter[tuple[str, str]] = Counter()
    for user, resource, verb, n in rows:
        if not str(user).startswith("wrapper-"):
            continue
        per[f"{resource} {verb}"] += int(n)
        if verb in ("list", "watchlist"):
            syncs[(str(user), str(resource))] += int(n)
    return {"per_resource_verb": dict(sorted(per.items())),
            "max_syncs_per_wrapper_and_resource": max(syncs.values(), default=0)}


class MarkerWatch:
    """A watch of the marker Service through one wrapper: when it was first served."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.seen_at: float | None = None
        self.opened = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        q = urlencode({"watch": "1", "fieldSelector": f"metadata.name={MARKER}", "timeoutSeconds": "3600"})
        while self.seen_at is None:
            try:
                async with self.http.get(f"{self.url}/api/v1/namespaces/bench/services?{q}",
                                         headers={"Accept": "application/json"}) as r:
                    self.opened.set()
                    async for line in r.content:
                        if b'"ADDED"' in line and MARKER.encode() in line:
                            self.seen_at = time.monotonic()
                            return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def run(s: FleetSettings) -> dict[str, Any]:
    need = s.wrappers * MB_PER_WRAPPER + 1500
    if available_mb() < need:
        raise SystemExit(f"fleet: {s.wrappers} wrappers need about {need} MB available; the machine has "
                         f"{available_mb():.0f} MB (lower --wrappers)")
    compile_bytecode()
    s.results_dir.mkdir(parents=True, exist_ok=True)
    fleet_logs = s.results_dir / "fleet"
    fleet_logs.mkdir(exist_ok=True)
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "settings": {k: str(v) if isinstance(v, Path) else v for k, v in s.__dict__.items()}}
    procs: list[Proc] = []
    up: UpstreamProc | None = None
    markers: list[MarkerWatch] = []
    with tempfile.TemporaryDirectory(prefix="agw-bench-fleet-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            up = await start_upstream(s.results_dir, [
                "--seed", str(s.seed), "--nodes", str(s.nodes), "--services", str(s.services), "--endpoints",
                str(s.endpoints), "--realistic-nodes", "--with-endpoints"], name="fleet-upstream")
            res["cluster"] = up.info["counts"]
            tokens = {f"wrapper-{i:03d}-token": f"wrapper-{i:03d}" for i in range(s.wrappers)}
            async with session() as http:
                await post_json(http, f"{up.ctl}/ctl/tokens", {"tokens": tokens})
                procs.append(await start_publisher(http, up.url, tmp, s.results_dir))
                # 1. Start together.
                await post_json(http, f"{up.ctl}/ctl/traffic/reset", {})
                cpu0 = cpu_seconds(up.proc.pid)
                log(f"starting {s.wrappers} wrappers together")
                t_start = time.monotonic()
                launched = []
                for i in range(s.wrappers):
                    spec = WrapperSpec(f"fleet-{i:03d}", f"node-{i:05d}", up.url, f"wrapper-{i:03d}-token")
                    proc, url, _debug, t0 = await launch_wrapper(spec, tmp, fleet_logs)
                    procs.append(proc)
                    launched.append((proc, url, t0))
                ready = await asyncio.wait_for(asyncio.gather(*(
                    wait_ready(http, proc, url, t0, timeout=s.timeout, interval=0.05) for proc, url, t0 in launched)),
                    s.timeout)
                all_ready = time.monotonic() - t_start
                start_traffic = await get_json(http, f"{up.ctl}/ctl/traffic")
                res["start"] = {"all_ready_s": all_ready, "ready_p50_s": percentile(list(ready), 50),
                                "ready_max_s": max(ready), "simulator_cpu_s": cpu_seconds(up.proc.pid) - cpu0,
                                "requests": requests_by(start_traffic["requests"]),
                                "bytes": sum(int(r["bytes"]) for r in start_traffic["rows"]
                                             if str(r["user"]).startswith("wrapper-"))}
                log(f"all {s.wrappers} ready after {all_ready:.2f} s (p50 {res['start']['ready_p50_s']:.2f} s)")
                # 2. Restart the simulator.
                markers = [MarkerWatch(http, url) for _proc, url, _t0 in launched]
                await asyncio.wait_for(asyncio.gather(*(m.opened.wait() for m in markers)), 60)
                await asyncio.sleep(1.0)
                await post_json(http, f"{up.ctl}/ctl/traffic/reset", {})
                cpu0 = cpu_seconds(up.proc.pid)
                log(f"restarting the simulator ({s.downtime:g} s down)")
                t_restart = time.monotonic()
                restart = await post_json(http, f"{up.ctl}/ctl/restart", {"downtime": s.downtime, "marker": MARKER})
                t_up = float(restart["t_up"])
                deadline = time.monotonic() + s.timeout
                while any(m.seen_at is None for m in markers) and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                seen = [m.seen_at for m in markers if m.seen_at is not None]
                await asyncio.sleep(2.0)  # stragglers' requests, counted too
                traffic = await get_json(http, f"{up.ctl}/ctl/traffic")
                res["restart"] = {
                    "downtime_s": s.downtime, "served": len(seen), "wrappers": s.wrappers,
                    "all_serve_new_state_after_restart_s": max(seen) - t_restart if seen else None,
                    "all_serve_new_state_after_up_s": max(seen) - t_up if seen else None,
                    "p50_after_up_s": percentile([t - t_up for t in seen], 50) if seen else None,
                    "simulator_cpu_s": cpu_seconds(up.proc.pid) - cpu0,
                    "requests": requests_by(traffic["requests"]),
                    "bytes": sum(int(r["bytes"]) for r in traffic["rows"] if str(r["user"]).startswith("wrapper-")),
                }
                log(f"{len(seen)}/{s.wrappers} wrappers serve the new state "
                    f"{res['restart']['all_serve_new_state_after_up_s']} s after the simulator was back")
                mem = memory_kb(up.proc.pid)
                res["simulator_memory_mb"] = {"peak": mem.get("VmHWM", 0) / 1024, "now": mem.get("VmRSS", 0) / 1024}
                wrappers_rss = [memory_kb(p.pid).get("VmRSS", 0) / 1024 for p, _u, _t in launched]
                res["wrapper_rss_mb"] = {"p50": percentile(wrappers_rss, 50), "max": max(wrappers_rss)}
        finally:
            for m in markers:
                await m.stop()
            await asyncio.gather(*(p.stop() for p in procs))
            if up is not None:
                await up.proc.stop()
    return res


def rows_of(res: dict[str, Any]) -> list[Row]:
    st, rs = res["start"], res["restart"]
    n = rs["wrappers"]
    c = res["cluster"]
    rows = [
        Row(f"fleet: {n} wrappers, {c['nodes']} nodes, {c['services']} Services, {c['endpoints_in_slices']} endpoints",
            ""),
        Row("start together: all ready after", f"{st['all_ready_s']:.2f} s",
            f"each: p50 {st['ready_p50_s']:.2f} s, last {st['ready_max_s']:.2f} s"),
        Row("start: simulator CPU", f"{st['simulator_cpu_s']:.2f} s", f"{st['bytes'] / 1e6:,.1f} MB sent"),
        Row("start: requests per resource and verb", ", ".join(f"{k} {v}" for k, v in
                                                               st["requests"]["per_resource_verb"].items())),
        Row(f"restart ({rs['downtime_s']:g} s down): every wrapper serves the new state",
            f"{rs['all_serve_new_state_after_up_s']:.2f} s after it was back"
            if rs["all_serve_new_state_after_up_s"] is not None else "never",
            f"{rs['served']}/{n} served; p50 {rs['p50_after_up_s']:.2f} s" if rs["p50_after_up_s"] is not None else ""),
        Row("restart: simulator CPU", f"{rs['simulator_cpu_s']:.2f} s", f"{rs['bytes'] / 1e6:,.1f} MB sent"),
        Row("restart: requests per resource and verb", ", ".join(f"{k} {v}" for k, v in
                                                                 rs["requests"]["per_resource_verb"].items()),
            f"at most {rs['requests']['max_syncs_per_wrapper_and_resource']} sync(s) of one resource per wrapper",
            "", "<= 1", "met" if rs["requests"]["max_syncs_per_wrapper_and_resource"] <= 1 else "NOT MET"),
        Row("simulator peak memory (VmHWM, whole run)", f"{res['simulator_memory_mb']['peak']:.0f} MB"),
        Row("wrapper RSS (after the restart)", f"p50 {res['wrapper_rss_mb']['p50']:.0f} MB, "
            f"max {res['wrapper_rss_mb']['max']:.0f} MB"),
    ]
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench fleet",
        description="A fleet of wrappers as real processes against one simulator: all started together, then "
        "the simulator restarted. Reports the simulator's peak memory, its CPU seconds and its requests per "
        "resource and verb for the start and for the restart, and the time until every wrapper serves the "
        "state written while the simulator was down.",
        epilog=f"The cluster is small so that the fleet fits 2 cores. At most {MAX_WRAPPERS} wrappers; the run "
        f"refuses to start with less than about {MB_PER_WRAPPER} MB available per wrapper. About 2 minutes with "
        "50 wrappers.",
    )
    p.add_argument("--wrappers", type=int, default=50, help=f"wrapper processes (default 50, at most {MAX_WRAPPERS})")
    p.add_argument("--nodes", type=int, default=200, help="Nodes in the cluster (default 200)")
    p.add_argument("--services", type=int, default=1000, help="Services, one EndpointSlice each (default 1000)")
    p.add_argument("--endpoints", type=int, default=10000, help="endpoints over all slices (default 10000)")
    p.add_argument("--downtime", type=float, default=2.0, help="seconds the simulator stays down (default 2)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated cluster (default 1)")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds each phase may take before the run gives up (default 180)")
    p.add_argument("--json", type=Path, help="write the figures as JSON here (default in --results-dir)")
    p.add_argument("--results-dir", default=str(RESULTS), help="logs and JSON (default bench/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = FleetSettings.from_args(args)
    import uvloop

    res = uvloop.run(run(s))
    publish(res, rows_of(res), args.json, s.results_dir, "fleet")
    return 0
