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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from typing import Any

import orjson
from aiohttp import web

from apisim.seeds import HEADLESS, SERVICE_NAME, scale_cluster
from apisim.server import Simulator
from filters.keys import TopologyKeys, parse_topology_keys
from filters.topology import TopologyContext, filter_endpoint_slices
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from kubeapi.types import JSONDict
from wrapper.heap import manage_heap

TAG = "bench/tag"
PROXY_NAME = "service.kubernetes.io/service-proxy-name"


class Upstream:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.plain: list[tuple[str, str]] = []
        self.all: list[tuple[str, str]] = []
        self._index()

    def _index(self) -> None:
        annotated: set[str] = set()
        for svc in self.sim.list(SERVICES):
            meta = svc["metadata"]
            if isinstance(parse_topology_keys(meta.get("annotations")), TopologyKeys):
                annotated.add(f"{meta['namespace']}/{meta['name']}")
        for sl in self.sim.list(ENDPOINTSLICES):
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

    # ---- control HTTP ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ctl/rv", self.h_rv)
        app.router.add_post("/ctl/drive", self.h_drive)
        app.router.add_post("/ctl/relabel", self.h_relabel)
        return app

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
                         annotated_fraction=0.5, endpoints=args.endpoints, with_endpoints=args.with_endpoints)
    t_gen = time.monotonic() - t0
    sim = Simulator(history_limit=args.history)
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
    counts["endpoints_in_slices"] = sum(len(s.get("endpoints") or []) for s in sim.list(ENDPOINTSLICES))
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
