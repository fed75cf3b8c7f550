"""The upstream process: the apiserver simulator loaded with the scale cluster, plus a control API.

``python -m bench.upstream --seed 1 [--with-endpoints]`` loads ``apisim.seeds.scale_cluster`` into one
Simulator, starts a second, empty Simulator (for the empty-cluster baseline), and a small control
listener the bench drives writes through. It prints one JSON line with the URLs once everything
listens, then runs until SIGTERM.

Writes are issued here, in the simulator's own process, so the write time recorded is the moment
the simulator committed the change (``time.monotonic``, i.e. CLOCK_MONOTONIC: comparable with the
bench process's receive times on the same host).

Control API (JSON, 127.0.0.1 only):

- ``GET /ctl/rv``: ``{"rv": N}``
- ``POST /ctl/drive``: ``{"rate", "duration", "max_writes", "mode": "patch"|"fast", "pool": "plain"|"all",
  "tag_start", "record", "seed"}``: write at ``rate`` per second until ``duration`` or ``max_writes``.
  Every write sets annotation ``bench/tag`` of one EndpointSlice to ``str(tag_start + i)``.
  ``patch`` goes through ``Simulator.patch`` (merge patch, validation, the full registry path);
  ``fast`` commits a shallow copy straight into the store (the same event, a tenth of the cost),
  so the generator is not the bottleneck of the ingest test. ``pool=plain`` picks slices of
  Services without a topology annotation (their filtered form is the slice itself); ``all`` picks
  any non-headless slice. Returns counts and, with ``record``, the commit time of every write.
- ``POST /ctl/relabel``: ``{"node", "label", "value", "local"}``: counts the kube-proxy-visible slices whose
  filtered content changes for node ``local`` (with ``filters.topology``, before the write), then
  sets the label and returns ``{"t_write", "rv", "expected"}``.
- ``POST /ctl/tokens``: ``{"tokens": {TOKEN: USER}}``: the simulator takes each bearer token for its user, so
  its traffic counts tell the clients apart.
- ``GET /ctl/traffic``: the simulator's read costs (``apisim.traffic``: ``rows``, per user, User-Agent,
  resource and verb), its requests (``requests``: ``[user, resource, verb, n]``) and its ``rv``;
  ``POST /ctl/traffic/reset`` zeroes both.
- ``POST /ctl/heartbeats``: ``{"count", "nodes"}``: ``count`` kubelet status heartbeats
  (``apisim.seeds.node_heartbeat``: new condition heartbeat times and managedFields time, written as
  a full update), round-robin over ``nodes`` (names; all Nodes if absent).
- ``POST /ctl/churn``: ``{"kind": "slices"|"services", "count", "seed"}``: ``count`` realistic changes:
  an EndpointSlice whose first endpoint turns unready (or ready again), or a Service with a new
  ``bench/revision`` annotation, on kube-proxy-visible objects.
- ``POST /ctl/restart``: ``{"downtime", "marker"}``: the simulator stops (every watch dropped), stays
  down ``downtime`` seconds during which the Service ``bench/<marker>`` and its EndpointSlice are
  created, then restarts on the same address with its history gone (``Simulator.restart``): the
  marker is "the new state" clients must catch up with. Returns ``{"rv", "t_up"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from apisim.seeds import HEADLESS, SERVICE_NAME, Backend, endpoint_slice, node_heartbeat, scale_cluster, service
from apisim.server import Simulator
from filters.keys import TopologyKeys, parse_topology_keys
from filters.topology import TopologyContext, filter_endpoint_slices
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from kubeapi.types import JSONDict
from wrapper.heap import manage_heap

TAG = "bench/tag"
REVISION = "bench/revision"
PROXY_NAME = "service.kubernetes.io/service-proxy-name"
MARKER_NAMESPACE = "bench"
# Heartbeat times start here and move on by the kubelet's status report period (5 minutes) per round.
HEARTBEAT_EPOCH = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)


class Upstream:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.plain: list[tuple[str, str]] = []
        self.all: list[tuple[str, str]] = []
        self.services: list[tuple[str, str]] = []  # kube-proxy-visible (not headless)
        self._heartbeats = 0
        self._churned = 0
        self._index()

    def _index(self) -> None:
        # The stored objects are read, never changed (no copies: at 10x scale they are half a GB).
        annotated: set[str] = set()
        for entry in self.sim.store.of(SERVICES).objects.values():
            meta = entry.obj["metadata"]
            if isinstance(parse_topology_keys(meta.get("annotations")), TopologyKeys):
                annotated.add(f"{meta['namespace']}/{meta['name']}")
            if entry.obj.get("spec", {}).get("clusterIP") != "None":
                self.services.append((meta["namespace"], meta["name"]))
        self.services.sort()
        for key in self.sim.store.of(ENDPOINTSLICES).sorted_keys():
            sl = self.sim.store.of(ENDPOINTSLICES).objects[key].obj
            meta = sl["metadata"]
            labels = meta.get("labels") or {}
            if HEADLESS in labels or PROXY_NAME in labels:
                continue  # kube-proxy never sees these
            ref = (meta["namespace"], meta["name"])
            self.all.append(ref)
            if f"{meta['namespace']}/{labels.get(SERVICE_NAME)}" not in annotated:
                self.plain.append(ref)

    # ---- writes ---------------------------------------------------------------------

    def _write_patch(self, ns: str, name: str, tag: int) -> None:
        self.sim.patch(ENDPOINTSLICES, ns, name, {"metadata": {"annotations": {TAG: str(tag)}}})

    def _write_fast(self, ns: str, name: str, tag: int) -> None:
        store = self.sim.store
        key = f"{ns}/{name}"
        old = store.of(ENDPOINTSLICES).objects[key]
        meta = dict(old.obj["metadata"])
        ann = dict(meta.get("annotations") or {})
        ann[TAG] = str(tag)
        meta["annotations"] = ann
        rv = store.next_rv()
        meta["resourceVersion"] = str(rv)
        obj = dict(old.obj)
        obj["metadata"] = meta
        store.commit(ENDPOINTSLICES, "MODIFIED", key, obj, old, rv)

    async def drive(self, rate: float, duration: float, max_writes: int, mode: str, pool_name: str,
                    tag_start: int, record: bool, seed: int) -> dict[str, Any]:
        pool = self.plain if pool_name == "plain" else self.all
        write = self._write_fast if mode == "fast" else self._write_patch
        rng = random.Random(seed)
        picks = [pool[rng.randrange(len(pool))] for _ in range(min(max_writes, 200_000))]
        total = len(picks)
        times: list[float] = []
        rv_first = self.sim.rv + 1
        # Never write more than 10 ms worth in one go: the simulator must serve its watches too.
        burst = max(1, int(rate * 0.01))
        t0 = time.monotonic()
        end = t0 + duration
        done = 0
        while done < total:
            now = time.monotonic()
            if now >= end:
                break
            due = min(total, int((now - t0) * rate) + 1, done + burst)
            while done < due:
                ns, name = picks[done]
                write(ns, name, tag_start + done)
                if record:
                    times.append(time.monotonic())
                done += 1
            nxt = t0 + done / rate
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        elapsed = time.monotonic() - t0
        return {"writes": done, "elapsed": elapsed, "rate": done / elapsed if elapsed > 0 else 0.0,
                "rv_first": rv_first, "rv_last": self.sim.rv, "times": times, "t0": t0}

    def changed_slices(self, local: str, node: str, label: str, value: str) -> int:
        """How many kube-proxy-visible slices change for ``local`` if ``node`` gets ``label=value``."""
        nodes = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in self.sim.list(NODES)}
        after = dict(nodes)
        after[node] = {**nodes.get(node, {}), label: value}
        before_ctx, after_ctx = TopologyContext(local, nodes), TopologyContext(local, after)
        keys: dict[str, TopologyKeys] = {}
        for svc in self.sim.list(SERVICES):
            k = parse_topology_keys(svc["metadata"].get("annotations"))
            if isinstance(k, TopologyKeys):
                keys[f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"] = k
        by_service: dict[str, list[JSONDict]] = {}
        for sl in self.sim.list(ENDPOINTSLICES):
            labels = sl["metadata"].get("labels") or {}
            if HEADLESS in labels or PROXY_NAME in labels:
                continue
            svc_key = f"{sl['metadata']['namespace']}/{labels.get(SERVICE_NAME)}"
            if svc_key in keys:
                by_service.setdefault(svc_key, []).append(sl)
        n = 0
        for svc_key, slices in by_service.items():
            a = filter_endpoint_slices(before_ctx, keys[svc_key], slices).slices  # type: ignore[arg-type]
            b = filter_endpoint_slices(after_ctx, keys[svc_key], slices).slices  # type: ignore[arg-type]
            n += sum(1 for x, y in zip(a, b, strict=True) if x.get("endpoints") != y.get("endpoints"))
        return n

    def heartbeats(self, count: int, nodes: Sequence[str]) -> dict[str, Any]:
        """``count`` kubelet status heartbeats, round-robin over ``nodes``, each at a later time."""
        names = list(nodes) or sorted(self.sim.store.of(NODES).objects)
        t0 = time.monotonic()
        for _ in range(count):
            name = names[self._heartbeats % len(names)]
            at = HEARTBEAT_EPOCH + datetime.timedelta(seconds=300 * (1 + self._heartbeats // len(names)))
            self._heartbeats += 1
            current = self.sim.store.of(NODES).objects[name].obj
            self.sim.update(NODES, node_heartbeat(current, at.strftime("%Y-%m-%dT%H:%M:%SZ")))
        return {"writes": count, "rv_last": self.sim.rv, "seconds": time.monotonic() - t0}

    def churn(self, kind: str, count: int, seed: int) -> dict[str, Any]:
        """``count`` realistic changes of kube-proxy-visible EndpointSlices or Services."""
        rng = random.Random(seed)
        for _ in range(count):
            self._churned += 1
            if kind == "services":
                ns, name = self.services[rng.randrange(len(self.services))]
                self.sim.patch(SERVICES, ns, name, {"metadata": {"annotations": {REVISION: str(self._churned)}}})
                continue
            ns, name = self.all[rng.randrange(len(self.all))]
            obj = self.sim.get(ENDPOINTSLICES, ns, name)
            endpoints = obj.get("endpoints") or []
            if not endpoints:
                continue
            # A pod going unready (or ready again): what a rollout or a failing probe writes.
            cond = endpoints[0].setdefault("conditions", {})
            ready = not cond.get("ready", True)
            cond["ready"], cond["serving"] = ready, ready
            self.sim.update(ENDPOINTSLICES, obj)
        return {"writes": count, "rv_last": self.sim.rv}

    async def restart(self, downtime: float, marker: str) -> dict[str, Any]:
        """Stop, write the marker Service and slice while down, restart without history."""
        await self.sim.stop()
        svc = service(MARKER_NAMESPACE, marker, "", 80, 8080, port_name="http", selector={"app": marker})
        created = self.sim.create(SERVICES, svc)
        backend = Backend("10.255.0.1", "node-00000", "", f"{marker}-0")
        self.sim.create(ENDPOINTSLICES, endpoint_slice(created, [backend], 8080, port_name="http"))
        await asyncio.sleep(downtime)
        await self.sim.restart()
        return {"rv": self.sim.rv, "t_up": time.monotonic()}

    # ---- control HTTP ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ctl/rv", self.h_rv)
        app.router.add_post("/ctl/drive", self.h_drive)
        app.router.add_post("/ctl/relabel", self.h_relabel)
        app.router.add_post("/ctl/tokens", self.h_tokens)
        app.router.add_get("/ctl/traffic", self.h_traffic)
        app.router.add_post("/ctl/traffic/reset", self.h_traffic_reset)
        app.router.add_post("/ctl/heartbeats", self.h_heartbeats)
        app.router.add_post("/ctl/churn", self.h_churn)
        app.router.add_post("/ctl/restart", self.h_restart)
        return app

    async def h_tokens(self, request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        for token, user in dict(q["tokens"]).items():
            self.sim.reviews.tokens[str(token)] = {"username": str(user), "groups": ["bench"]}
        return _json({"tokens": len(self.sim.reviews.tokens)})

    async def h_traffic(self, _request: web.Request) -> web.Response:
        return _json({"rows": self.sim.traffic.rows(), "rv": self.sim.rv,
                      "requests": [[u, p, v, n] for (u, p, v), n in sorted(self.sim.requests.items())]})

    async def h_traffic_reset(self, _request: web.Request) -> web.Response:
        self.sim.traffic.reset()
        self.sim.requests.clear()
        return _json({"rv": self.sim.rv})

    async def h_heartbeats(self, request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        return _json(self.heartbeats(int(q["count"]), [str(n) for n in q.get("nodes") or []]))

    async def h_churn(self, request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        return _json(self.churn(str(q["kind"]), int(q["count"]), int(q.get("seed", 0))))

    async def h_restart(self, request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        return _json(await self.restart(float(q.get("downtime", 1.0)), str(q["marker"])))

    async def h_rv(self, _request: web.Request) -> web.Response:
        return _json({"rv": self.sim.rv, "t": time.monotonic()})

    async def h_drive(self, request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        out = await self.drive(float(q["rate"]), float(q["duration"]), int(q.get("max_writes", 10**9)),
                               str(q.get("mode", "patch")), str(q.get("pool", "plain")), int(q.get("tag_start", 0)),
                               bool(q.get("record", False)), int(q.get("seed", 0)))
        return _json(out)

    async def h_relabel(self, request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        node, label, value = str(q["node"]), str(q["label"]), str(q["value"])
        expected = self.changed_slices(str(q.get("local", node)), node, label, value)
        obj = self.sim.patch_labels(NODES, None, node, {label: value})
        t_write = time.monotonic()
        return _json({"t_write": t_write, "rv": int(obj["metadata"]["resourceVersion"]), "expected": expected})


def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def serve(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    seed = scale_cluster(args.seed, nodes=args.nodes, zones=args.zones, units=args.units, services=args.services,
                         annotated_fraction=0.5, endpoints=args.endpoints, with_endpoints=args.with_endpoints,
                         realistic_nodes=args.realistic_nodes)
    t_gen = time.monotonic() - t0
    sim = Simulator(history_limit=args.history, bookmark_interval=args.bookmark_interval)
    counts = {"objects": sim.load(seed)}
    del seed
    t_load = time.monotonic() - t0 - t_gen
    # The empty-cluster baseline still holds the wrapper's own Node: a wrapper whose local node is
    # missing is (rightly) not ready.
    empty = Simulator()
    empty.load([(NODES, {"metadata": {"name": args.hostname, "labels": {"kubernetes.io/hostname": args.hostname}}})])
    up = Upstream(sim)
    url = await sim.start("127.0.0.1", 0)
    empty_url = await empty.start("127.0.0.1", 0)
    runner = web.AppRunner(up.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ctl = f"http://127.0.0.1:{runner.addresses[0][1]}"
    for r in (NODES, SERVICES, ENDPOINTSLICES):
        counts[r.plural] = sim.count(r)
    counts["endpoints_in_slices"] = sum(len(e.obj.get("endpoints") or [])
                                        for e in sim.store.of(ENDPOINTSLICES).objects.values())
    counts["plain_slices"] = len(up.plain)
    counts["visible_slices"] = len(up.all)
    print(orjson.dumps({"url": url, "empty_url": empty_url, "ctl": ctl, "generate_s": t_gen, "load_s": t_load,
                        "counts": counts}).decode(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The simulator stands in for a real apiserver, whose (Go) collector pauses for well under
    # a millisecond; CPython's full collections of this heap took 100-250 ms and showed up as
    # wrapper latency. So it gets the wrapper's own schedule: frozen heap, timed young passes.
    loaded = asyncio.Event()
    loaded.set()
    heap_task = asyncio.create_task(manage_heap(loaded))
    try:
        await stop.wait()
    finally:
        heap_task.cancel()
        await runner.cleanup()
        await empty.stop()
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.upstream")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--zones", type=int, default=10)
    p.add_argument("--units", type=int, default=20)
    p.add_argument("--services", type=int, default=5000)
    p.add_argument("--endpoints", type=int, default=50000)
    p.add_argument("--with-endpoints", action="store_true", help="also create core/v1 Endpoints objects")
    p.add_argument("--realistic-nodes", action="store_true",
                   help="Nodes as a real cluster stores them (images, conditions, managedFields: about 10 KB each)")
    p.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between bookmarks (default 60)")
    p.add_argument("--history", type=int, default=20_000)
    p.add_argument("--hostname", default="node-00000",
                   help="the wrapper's local node, the only Node of the empty cluster")
    args = p.parse_args(argv)
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
