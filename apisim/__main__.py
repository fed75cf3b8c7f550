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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apisim", description="In-process Kubernetes apiserver simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", choices=[*SEEDS, "scale"], default="servicegrid")
    parser.add_argument("--scale-seed", type=int, default=1, help="random seed for --seed scale")
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("--history", type=int, default=10_000, help="events kept per resource for watch resume")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable without it
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
