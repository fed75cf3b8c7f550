"""``python -m apisim --port 51008 --seed servicegrid``: run the simulator standalone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from apisim.seeds import SEEDS, SeedList, scale_cluster
from apisim.server import Simulator


def _seed(name: str, scale_seed: int) -> SeedList:
    if name == "scale":
        return scale_cluster(scale_seed)
    return SEEDS[name]()


async def _serve(args: argparse.Namespace) -> None:
    sim = Simulator(_seed(args.seed, args.scale_seed), bookmark_interval=args.bookmark_interval,
                    history_limit=args.history)
    url = await sim.start(args.host, args.port)
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apisim",
        description="An in-process Kubernetes apiserver simulator for Nodes, Services, EndpointSlices, "
        "Endpoints, ConfigMaps and Leases (list, get, watch, create, update, patch, delete), seeded with a demo "
        "cluster. It prints its "
        "URL and serves until interrupted; point kubectl or the wrapper at it.",
        epilog="Seeds: servicegrid is SuperEdge's ServiceGrid example (nodes bj-1, bj-3 with location=beijing, "
        "gz-2, gz-3 with location=guangzhou); openyurt is OpenYurt's node-pool example (pools beijing, hangzhou, "
        "shanghai); empty has no objects; scale is a reproducible large cluster (1,000 nodes, 5,000 Services, "
        "50,000 endpoints) drawn from --scale-seed.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)")
    parser.add_argument("--seed", choices=[*SEEDS, "scale"], default="servicegrid",
                        help="the cluster to load at start (default servicegrid; see below)")
    parser.add_argument("--scale-seed", type=int, default=1,
                        help="random seed of the generated cluster, with --seed scale (default 1)")
    parser.add_argument("--bookmark-interval", type=float, default=60.0,
                        help="seconds between BOOKMARK events on watches that ask for them (default 60, as the "
                        "apiserver)")
    parser.add_argument("--history", type=int, default=10_000,
                        help="events kept per resource for watches that resume from a resourceVersion; older "
                        "ones get 410 Expired (default 10000)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable without it
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
