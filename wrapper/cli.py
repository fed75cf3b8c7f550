"""Command line: ``application-grid-wrapper [flags]`` runs the wrapper; ``... demo`` runs the demo.

Start-up errors are one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvloop
from aiohttp import web

from cache.cluster import ClusterCache
from cache.informers import Informers
from cache.reflector import ReflectorSettings
from cache.snapshot import Identity, Persister, restore
from cache.upstream import ConfigError, UpstreamClient
from kubeapi.strconv import parse_decimal
from wrapper.app import ReadyCheck, build_app
from wrapper.authz import DEFAULT_CACHE_SIZE, DEFAULT_REVIEW_BURST, DEFAULT_REVIEW_QPS, ClientAuthorizer
from wrapper.debug import Debug
from wrapper.heap import manage_heap, tune_malloc
from wrapper.listener import ConnectionGuard, ConnectionLimits, GuardedSite
from wrapper.local_node import DEFAULT_REPEAT, LocalNodeMonitor
from wrapper.logs import configure_logging
from wrapper.metrics import Metrics
from wrapper.serving import ServeSettings, WatchRegistry

log = logging.getLogger("application-grid-wrapper")

DEFAULT_BIND = "127.0.0.1:51006"
DEFAULT_DEBUG_BIND = "127.0.0.1:51007"
DEFAULT_CACHE_DIR = "/var/lib/application-grid-wrapper"


class StartupError(Exception):
    """Printed as one line; the process exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    # isascii: str.isdigit() is true for "²" and Arabic-Indic digits, which int() reads or rejects.
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _positive_int(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return number
def positive_seconds(value: str) -> float:
    seconds = parse_decimal(value)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind-address", type=parse_address, default=parse_address(DEFAULT_BIND),
                   help=f"address kube-proxy connects to (default {DEFAULT_BIND})")
    p.add_argument("--debug-bind-address", type=parse_address, default=parse_address(DEFAULT_DEBUG_BIND),
                   help=f"listener for /metrics and /debug/* (default {DEFAULT_DEBUG_BIND})")
    p.add_argument("--profiling", action=argparse.BooleanOptionalAction, default=True,
                   help="serve /debug/pprof/* on the debug listener (default on)")
    p.add_argument("--authorize-clients", action="store_true",
                   help="check each client's bearer token with TokenReview and SubjectAccessReview before serving "
                   "it from the cache (decisions cached briefly, and reused while offline)")
    p.add_argument("--authorize-clients-cache-size", type=_positive_int, default=DEFAULT_CACHE_SIZE,
                   help="allowed decisions kept, least recently used out first; refusals get a quarter of it "
                   f"(default {DEFAULT_CACHE_SIZE})")
    p.add_argument("--authorize-clients-review-qps", type=_positive_float, default=DEFAULT_REVIEW_QPS,
                   help="token reviews per second at most; past it, tokens without a cached decision get 429 "
                   f"(default {DEFAULT_REVIEW_QPS:g})")
    p.add_argument("--authorize-clients-review-burst", type=_positive_int, default=DEFAULT_REVIEW_BURST,
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
    p.add_argument("--read-header-timeout", type=_positive(float), default=defaults.header_timeout,
                   help="close a connection whose request headers are not complete this many seconds after its "
                   f"start, or after the first byte of a later request (default {defaults.header_timeout:g})")
    p.add_argument("--idle-timeout", type=_positive(float), default=defaults.idle_timeout,
                   help="close a keep-alive connection idle this many seconds between requests "
                   f"(default {defaults.idle_timeout:g})")
    p.add_argument("--max-connections", type=_positive(int), default=defaults.max_connections,
                   help="open connections per listener; more get 429 TooManyRequests with Retry-After "
                   f"(default {defaults.max_connections})")
    p.add_argument("--watch-write-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                   help="cut off a watching client that accepts nothing for this long (default 30)")
    p.add_argument("--bookmark-interval", type=float, default=60.0, help=argparse.SUPPRESS)


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {kind.__name__}") from None
        if not (number > 0 and math.isfinite(number)):
            raise argparse.ArgumentTypeError(f"{value!r} must be a finite number greater than 0")
        return number

    return parse


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    return ConnectionLimits(header_timeout=args.read_header_timeout, idle_timeout=args.idle_timeout,
                            max_connections=int(args.max_connections))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="application-grid-wrapper",
        description="Node-local topology proxy between kube-proxy and the apiserver. "
        "Run 'application-grid-wrapper demo' for a self-contained demo.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig for the real apiserver (default: in-cluster config)")
    p.add_argument("--hostname", default=os.environ.get("NODE_NAME"),
                   help="name of the local node (default: $NODE_NAME)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help=f"where the cache is persisted for restarts while offline (default {DEFAULT_CACHE_DIR}; "
                   "empty disables)")
    p.add_argument("--snapshot-interval", type=float, default=10.0,
                   help="write the cache to --cache-dir at most this often, in seconds (default 10)")
    p.add_argument("--ready-while-offline", action=argparse.BooleanOptionalAction, default=True,
                   help="keep /readyz ready while the apiserver is unreachable, once synced (default on); "
                   "with --no-ready-while-offline it turns not ready after --offline-grace seconds")
    p.add_argument("--offline-grace", type=float, default=30.0, help="see --ready-while-offline (default 30)")
    _common(p)
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


@dataclass
class Running:
    runner: web.AppRunner
    informers: Informers
    cache: ClusterCache
    url: str
    watches: WatchRegistry
    debug_runner: web.AppRunner | None = None
    debug_url: str = ""
    persister: Persister | None = None
    local_node: LocalNodeMonitor | None = None
    guard: ConnectionGuard | None = None  # the main listener's


def tls_context(cert: str | None, key: str | None, client_ca: str | None = None) -> ssl.SSLContext | None:
    if not cert and not key:
        if client_ca:
            raise StartupError("--client-ca-file needs --tls-cert-file and --tls-private-key-file", 2)
        return None
    if not (cert and key):
        raise StartupError("--tls-cert-file and --tls-private-key-file must be given together", 2)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load TLS certificate {cert} / key {key}: {exc}", 2) from exc
    if client_ca:
        # Mutual TLS: the handshake fails for a client without a certificate signed by this CA.
        # (SuperEdge's wrapper accepted this flag but never verified client certificates.)
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"cannot load --client-ca-file {client_ca}: {exc}", 2) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    # aiohttp speaks HTTP/1.1 only; don't let Go clients negotiate h2.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def start_wrapper(
    client: UpstreamClient,
    hostname: str,
    bind: tuple[str, int],
    *,
    tls: ssl.SSLContext | None = None,
    serve: ServeSettings | None = None,
    reflect: ReflectorSettings | None = None,
    debug: tuple[str, int] | None = None,
    profiling: bool = True,
    cache_dir: Path | None = None,
    snapshot_interval: float = 10.0,
    offline_grace: float | None = None,
    authorizer: ClientAuthorizer | None = None,
    local_node_warn_every: float = DEFAULT_REPEAT,
    limits: ConnectionLimits | None = None,
) -> Running:
    """Start the informers, the HTTP front and the debug listener; used by the CLI, the demo and tests.

    ``offline_grace``: None keeps /readyz ready once synced, whatever the apiserver does (edge
    autonomy); a number makes it not ready after the apiserver has been lost that many seconds.
    ``local_node_warn_every``: how often a missing local Node is logged again.
    """
    cache = ClusterCache(hostname)
    informers = Informers(client, cache, reflect)
    persister = None
    if cache_dir is not None:
        identity = Identity(hostname, client.base_url)
        restore(cache, cache_dir, identity)
        persister = Persister(cache, cache_dir, identity, snapshot_interval)
    watches = WatchRegistry()
    metrics = Metrics(cache, informers, watches)

    def ready() -> bool:
        if not cache.ready:
            return False
        return offline_grace is None or informers.offline_for() < offline_grace

    limits = limits or ConnectionLimits()
    guard = ConnectionGuard(limits)
    app = build_app(cache.views, ready, client, serve, registry=watches,
                    middlewares=[guard.middleware(), metrics.middleware()], authorizer=authorizer,
                    checks=lambda: ready_checks(cache))
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5.0, access_log=None,
                           keepalive_timeout=limits.idle_timeout)
    url = await _listen(runner, bind, tls, guard)
    debug_runner = None
    debug_url = ""
    if debug is not None:
        debug_guard = ConnectionGuard(limits)
        debug_app = Debug(cache, informers, watches, metrics, profiling=profiling).app()
        debug_app.middlewares.insert(0, debug_guard.middleware())
        debug_runner = web.AppRunner(debug_app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None,
                                     keepalive_timeout=limits.idle_timeout)
        try:
            debug_url = await _listen(debug_runner, debug, None, debug_guard)
        except StartupError:
            await runner.cleanup()
            raise
    informers.start()
    if persister is not None:
        persister.start()
    local_node = LocalNodeMonitor(cache, local_node_warn_every)
    local_node.start()
    return Running(runner, informers, cache, url, watches, debug_runner, debug_url, persister, local_node, guard)


def ready_checks(cache: ClusterCache) -> list[ReadyCheck]:
    """/readyz lines beyond the caches' own: a resync in progress, and the local node."""
    checks: list[ReadyCheck] = []
    if cache.resyncing:
        checks.append(ReadyCheck("upstream-resync", False, "relisting every resource: the apiserver's "
                                 "resourceVersions went back (etcd restore or rebuilt cluster?)"))
    if cache.ready_event.is_set():
        if cache.local_node_known:
            checks.append(ReadyCheck("local-node", True, "ok"))
        else:
            checks.append(ReadyCheck("local-node", False, f'"{cache.local_node}" not found among the cluster\'s '
                                     "Nodes (check --hostname)"))
    return checks


def client_authorizer(client: UpstreamClient, args: argparse.Namespace) -> ClientAuthorizer | None:
    """The ``--authorize-clients`` authorizer the flags ask for, or None when it is off."""
    if not args.authorize_clients:
        return None
    return ClientAuthorizer(client, cache_size=args.authorize_clients_cache_size,
                            review_qps=args.authorize_clients_review_qps,
                            review_burst=args.authorize_clients_review_burst)


async def _listen(runner: web.AppRunner, bind: tuple[str, int], tls: ssl.SSLContext | None,
                  guard: ConnectionGuard) -> str:
    await runner.setup()
    site = GuardedSite(runner, bind[0], bind[1], guard, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {bind[0]}:{bind[1]}: {exc.strerror or exc}") from exc
    port = site.port
    scheme = "https" if tls else "http"
    host = f"[{bind[0]}]" if ":" in bind[0] else bind[0]
    return f"{scheme}://{host}:{port}"


async def stop_wrapper(running: Running) -> None:
    if running.local_node is not None:
        await running.local_node.stop()
    await running.runner.cleanup()
    if running.debug_runner is not None:
        await running.debug_runner.cleanup()
    await running.informers.stop()
    if running.persister is not None:
        await running.persister.stop()


async def wait_for_signal(run_seconds: float = 0) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if run_seconds:
        loop.call_later(run_seconds, stop.set)
    await stop.wait()


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


async def serve_main(args: argparse.Namespace) -> None:
    if not args.hostname:
        raise StartupError("the local node name is unknown: pass --hostname or set NODE_NAME", 2)
    tune_malloc()
    tls = tls_context(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    try:
        client = await UpstreamClient.from_kubeconfig(args.kubeconfig)
    except ConfigError as exc:
        raise StartupError(str(exc), 2) from exc
    check_exposure(args, tls is not None)
    running = await start_wrapper(client, args.hostname, args.bind_address, tls=tls,
                                  serve=ServeSettings(bookmark_interval=args.bookmark_interval,
                                                      write_timeout=args.watch_write_timeout),
                                  debug=args.debug_bind_address, profiling=args.profiling,
                                  cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                                  snapshot_interval=args.snapshot_interval,
                                  offline_grace=None if args.ready_while_offline else args.offline_grace,
                                  authorizer=client_authorizer(client, args),
                                  limits=connection_limits(args))
    log.info("serving %s for node %s, upstream %s", running.url, args.hostname, client.base_url)
    heap_task = asyncio.create_task(manage_heap(running.cache.ready_event), name="heap")
    try:
        await wait_for_signal()
        log.info("shutting down")
    finally:
        heap_task.cancel()
        await stop_wrapper(running)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        args = build_demo_parser().parse_args(argv[1:])
        from wrapper.demo import demo_main

        coro = demo_main(args)
    else:
        args = build_parser().parse_args(argv)
        coro = serve_main(args)
    configure_logging(args.log_level, args.log_format)
    try:
        uvloop.run(coro)
    except StartupError as exc:
        print(f"application-grid-wrapper: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        pass
    return 0
