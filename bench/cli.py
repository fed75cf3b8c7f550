"""``python -m bench [SUBCOMMAND] ...``: the benchmark suite and its separate runs.

Without a subcommand, the edge-scale suite (``bench.run``: the wrapper against 1,000 nodes and 50,000
endpoints, every figure beside its baseline and target; ``--runs N`` repeats it and reports ranges).
The subcommands are runs of their own, each with its own --help:

- ``upstream-cost`` (``bench.upstream_cost``): what one wrapper costs the apiserver, beside kube-proxy;
- ``fleet`` (``bench.fleet``): 50 wrappers as real processes against one simulator, then its restart;
- ``tenfold`` (``bench.tenfold``): ten times the suite's scale (10,000 nodes, 500,000 endpoints).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

SUBCOMMANDS: dict[str, str] = {
    "upstream-cost": "bench.upstream_cost",
    "fleet": "bench.fleet",
    "tenfold": "bench.tenfold",
}


def subcommand(name: str) -> Callable[[list[str] | None], int]:
    """The ``main`` of a subcommand's module."""
    module = importlib.import_module(SUBCOMMANDS[name])
    entry: Callable[[list[str] | None], int] = module.main
    return entry


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        return subcommand(args[0])(args[1:])
    from bench.run import main as suite

    return suite(args)
