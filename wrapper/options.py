"""The command line's flags, for the main command and the demo, and their checks.

Every value is checked when the flags are parsed (argparse prints one line and exits 2), and the
exposure rules (no plain HTTP beyond loopback by accident) before anything listens.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from collections.abc import Callable
from typing import Any

from cache.buildinfo import IMPLEMENTATION, PYTHON, VERSION
from cache.informers import (
    DEFAULT_ENDPOINTS_IDLE,
    DEFAULT_TOPOLOGY_NAMESPACE,
    ENDPOINTS_MODES,
    TOPOLOGY_MODES,
    UpstreamOptions,
)
from cache.reflector import ReflectorSettings
from filters.api import Filter
from filters.pipeline import ALL_ON_BY_DEFAULT, Pipeline, describe, select
from kubeapi.strconv import NumError, parse_decimal, parse_uint
from wrapper.authz import DEFAULT_CACHE_SIZE, DEFAULT_REVIEW_BURST, DEFAULT_REVIEW_QPS
from wrapper.compose import StartupError
from wrapper.heap import GC_TUNING_MODES, MEASURED_ON
from wrapper.listener import ConnectionLimits
from wrapper.serving import ServeSettings

DEFAULT_BIND = "127.0.0.1:51006"
DEFAULT_DEBUG_BIND = "127.0.0.1:51007"
DEFAULT_CACHE_DIR = "/var/lib/application-grid-wrapper"


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    try:
        port = parse_uint(port_text)
    except NumError:
        port = -1
    if not sep or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a finite number greater than 0, in ASCII digits (an int, or a plain decimal)."""

    def number_of(value: str) -> float | None:
        if kind is int:
            try:
                return parse_uint(value)
            except NumError:
                return None
        return parse_decimal(value)

    def parse(value: str) -> float:
        number = number_of(value)
        if number is None and value.startswith("-") and number_of(value[1:]) is not None:
            # A negative number is a number: say what is wrong with it.
            raise argparse.ArgumentTypeError(f"{value!r} must be a finite number greater than 0")
        if number is None:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {'whole ' if kind is int else ''}number")
        if not (number > 0 and math.isfinite(number)):
            raise argparse.ArgumentTypeError(f"{value!r} must be a finite number greater than 0")
        return number

    return parse


def filter_selection(value: str) -> tuple[Filter[Any], ...]:
    """An argparse type: ``--filters``, read by filters/ (the wrapper knows no filter's name)."""
    try:
        return select(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filters", type=filter_selection, default=select(ALL_ON_BY_DEFAULT), metavar="LIST",
                   help="which filters run: '*' for every filter on by default, NAME to add one, -NAME to remove "
                   f"one, as kube-controller-manager selects its controllers ({describe()}; default '*')")
    p.add_argument("--bind-address", type=parse_address, default=parse_address(DEFAULT_BIND),
                   help=f"address kube-proxy connects to (default {DEFAULT_BIND})")
    p.add_argument("--debug-bind-address", type=parse_address, default=parse_address(DEFAULT_DEBUG_BIND),
                   help=f"listener for /metrics and /debug/* (default {DEFAULT_DEBUG_BIND})")
    p.add_argument("--profiling", action=argparse.BooleanOptionalAction, default=True,
                   help="serve /debug/pprof/* on the debug listener (default on)")
    p.add_argument("--authorize-clients", action="store_true",
                   help="check each client's bearer token with TokenReview and SubjectAccessReview before serving "
                   "it from the cache (decisions cached briefly, and reused while offline)")
    p.add_argument("--authorize-clients-cache-size", type=positive(int), default=DEFAULT_CACHE_SIZE,
                   help="allowed decisions kept, least recently used out first; refusals get a quarter of it "
                   f"(default {DEFAULT_CACHE_SIZE})")
    p.add_argument("--authorize-clients-review-qps", type=positive(float), default=DEFAULT_REVIEW_QPS,
                   help="token reviews per second at most; past it, tokens without a cached decision get 429 "
                   f"(default {DEFAULT_REVIEW_QPS:g})")
    p.add_argument("--authorize-clients-review-burst", type=positive(int), default=DEFAULT_REVIEW_BURST,
                   help=f"token reviews at once above the rate (default {DEFAULT_REVIEW_BURST})")
    p.add_argument("--insecure-allow-remote", action="store_true",
                   help="allow non-loopback listeners without TLS (the debug listener never has TLS)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default info)")
    p.add_argument("--log-format", default="text", choices=["text", "json"], help="log format (default text)")
    p.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-private-key-file", help="private key for --tls-cert-file (PEM)")
    p.add_argument("--client-ca-file", help="require client certificates signed by this CA (mutual TLS)")
    defaults = ConnectionLimits()
    p.add_argument("--read-header-timeout", type=positive(float), default=defaults.header_timeout,
                   help="close a connection whose request headers are not complete this many seconds after its "
                   f"start, or after the first byte of a later request (default {defaults.header_timeout:g})")
    p.add_argument("--idle-timeout", type=positive(float), default=defaults.idle_timeout,
                   help="close a keep-alive connection idle this many seconds between requests "
                   f"(default {defaults.idle_timeout:g})")
    p.add_argument("--max-connections", type=positive(int), default=defaults.max_connections,
                   help="open connections per listener; more get 429 TooManyRequests with Retry-After "
                   f"(default {defaults.max_connections})")
    p.add_argument("--watch-write-timeout", type=positive(float), default=30.0, metavar="SECONDS",
                   help="cut off a watching client that accepts nothing for this long (default 30)")
    p.add_argument("--gc-tuning", choices=GC_TUNING_MODES, default="auto",
                   help="the heap regime (timed young GC passes, frozen survivors, malloc_trim): auto runs it on "
                   f"CPython {MEASURED_ON[0]}.{MEASURED_ON[1]}, where it was measured, and leaves CPython's defaults "
                   "alone on other versions; on or off forces it (default auto)")
    p.add_argument("--bookmark-interval", type=positive(float), default=60.0, help=argparse.SUPPRESS)


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    return ConnectionLimits(header_timeout=args.read_header_timeout, idle_timeout=args.idle_timeout,
                            max_connections=int(args.max_connections))


def pipeline(args: argparse.Namespace) -> Pipeline:
    return Pipeline(args.filters)


def version_line() -> str:
    return f"application-grid-wrapper {VERSION} ({IMPLEMENTATION} {PYTHON})"


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(bookmark_interval=args.bookmark_interval, write_timeout=args.watch_write_timeout)


def non_negative(value: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more, in ASCII digits."""
    number = parse_decimal(value)
    if number is None or not (number >= 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (0 or more)")
    return number


def _upstream(p: argparse.ArgumentParser) -> None:
    """What the wrapper watches upstream, and how it syncs."""
    namespace = os.environ.get("POD_NAMESPACE") or DEFAULT_TOPOLOGY_NAMESPACE
    p.add_argument("--node-topology", choices=TOPOLOGY_MODES, default="auto",
                   help="where other nodes' labels come from: the publisher's node topology buckets (publisher), a "
                   "metadata-only watch of every Node (nodes), or the buckets when a complete set exists and the Nodes "
                   "otherwise, following them (auto; default)")
    p.add_argument("--node-topology-namespace", default=namespace, metavar="NAMESPACE",
                   help="the namespace of the node topology buckets (default: $POD_NAMESPACE, the wrapper's own from "
                   f"the downward API, else {DEFAULT_TOPOLOGY_NAMESPACE})")
    p.add_argument("--endpoints-informer", choices=ENDPOINTS_MODES, default="lazy",
                   help="core/v1 Endpoints: watched only while clients read them (lazy; default), always (on), or "
                   "never, their requests passed through to the apiserver (off)")
    p.add_argument("--endpoints-idle-timeout", type=positive(float), default=DEFAULT_ENDPOINTS_IDLE, metavar="SECONDS",
                   help="a lazy Endpoints informer stops after this long with no Endpoints request and no open "
                   f"Endpoints watch (default {DEFAULT_ENDPOINTS_IDLE:g})")
    p.add_argument("--streaming-lists", action=argparse.BooleanOptionalAction, default=True,
                   help="sync with streaming lists (watch with sendInitialEvents) where the apiserver serves them, "
                   "falling back to lists as client-go does (default on)")
    p.add_argument("--relist-jitter", type=non_negative, default=ReflectorSettings.relist_jitter, metavar="SECONDS",
                   help="every relist (and the first request of a wrapper restored from its snapshot) waits a random "
                   "time below this, so a fleet does not relist in lockstep "
                   f"(default {ReflectorSettings.relist_jitter:g})")


def upstream_options(args: argparse.Namespace) -> UpstreamOptions:
    return UpstreamOptions(node_topology=args.node_topology, topology_namespace=args.node_topology_namespace,
                           endpoints=args.endpoints_informer, endpoints_idle=args.endpoints_idle_timeout)


def reflector_settings(args: argparse.Namespace) -> ReflectorSettings:
    return ReflectorSettings(streaming=args.streaming_lists, relist_jitter=args.relist_jitter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="application-grid-wrapper",
        description="Node-local topology proxy between kube-proxy and the apiserver. "
        "Run 'application-grid-wrapper demo' for a self-contained demo, and 'application-grid-wrapper "
        "publish-topology' (one per cluster) for the node topology publisher.",
    )
    p.add_argument("--version", action="version", version=version_line(),
                   help="print the version and the Python it runs on, then exit")
    p.add_argument("--kubeconfig", help="kubeconfig for the real apiserver (default: $KUBECONFIG if set, else the "
                   "in-cluster service account)")
    p.add_argument("--hostname", default=os.environ.get("NODE_NAME"),
                   help="name of the local node (default: $NODE_NAME)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help=f"where the cache is persisted for restarts while offline (default {DEFAULT_CACHE_DIR}; "
                   "empty disables)")
    p.add_argument("--snapshot-interval", type=positive(float), default=10.0,
                   help="write the cache to --cache-dir at most this often, in seconds (default 10)")
    p.add_argument("--ready-while-offline", action=argparse.BooleanOptionalAction, default=True,
                   help="keep /readyz ready while the apiserver is unreachable, once synced (default on); "
                   "with --no-ready-while-offline it turns not ready after --offline-grace seconds")
    p.add_argument("--offline-grace", type=positive(float), default=30.0, help="see --ready-while-offline (default 30)")
    _common(p)
    _upstream(p)
    return p


def build_demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="application-grid-wrapper demo",
        description="Start an in-process apiserver simulator seeded with the ServiceGrid example "
        "and the wrapper in front of it, as node bj-1.",
    )
    p.add_argument("--hostname", default="bj-1", help="local node the demo wrapper runs as (default bj-1)")
    p.add_argument("--simulator-address", type=parse_address, default=parse_address("127.0.0.1:51008"),
                   help="where the simulated apiserver listens (default 127.0.0.1:51008)")
    p.add_argument("--run-seconds", type=float, default=0, help=argparse.SUPPRESS)
    _common(p)
    return p


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_exposure(args: argparse.Namespace, has_tls: bool) -> None:
    """Refuse to expose kube-proxy's view or the debug pages beyond the node by accident."""
    if args.insecure_allow_remote:
        return
    host = args.bind_address[0]
    if not has_tls and not is_loopback(host):
        raise StartupError(f"refusing to serve plain HTTP on non-loopback address {host}: give "
                           "--tls-cert-file/--tls-private-key-file, or --insecure-allow-remote", 2)
    if not is_loopback(args.debug_bind_address[0]):
        raise StartupError(f"refusing to serve the debug listener on non-loopback address "
                           f"{args.debug_bind_address[0]} without --insecure-allow-remote", 2)


