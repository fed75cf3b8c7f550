"""The composition root: builds, starts and stops one wrapper (cache, informers, HTTP front, debug
listener, snapshot persister, local-node monitor). The command line, the demo and the tests all start
the wrapper here, so they run the same assembly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from cache.apiclient import ApiClient
from cache.cluster import ClusterCache
from cache.informers import Informers, UpstreamOptions
from cache.reflector import ReflectorSettings
from cache.snapshot import Identity, Persister, restore
from filters.pipeline import Pipeline
from kubeapi.resources import ENDPOINTS
from wrapper.app import ReadyCheck, build_app
from wrapper.authz import ClientAuthorizer
from wrapper.debug import Debug
from wrapper.heap import HEAP, GcTuning, HeapHold
from wrapper.listener import ConnectionGuard, ConnectionLimits, GuardedSite
from wrapper.local_node import DEFAULT_REPEAT, LocalNodeMonitor
from wrapper.metrics import Metrics
from wrapper.serving import ServeSettings
from wrapper.watch_registry import WatchRegistry


class StartupError(Exception):
    """Printed as one line; the process exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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
    heap: HeapHold | None = None  # this wrapper's hold on the process's heap regime (wrapper/heap.py)


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
    client: ApiClient,
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
    gc_tuning: GcTuning = "auto",
    pipeline: Pipeline | None = None,
    upstream: UpstreamOptions | None = None,
) -> Running:
    """Start the informers, the HTTP front and the debug listener; used by the CLI, the demo and tests.

    ``client`` stays the caller's: the wrapper uses it and ``stop_wrapper`` leaves it open.

    ``offline_grace``: None keeps /readyz ready once synced, whatever the apiserver does (edge
    autonomy); a number makes it not ready after the apiserver has been lost that many seconds.
    ``local_node_warn_every``: how often a missing local Node is logged again.
    ``gc_tuning``: ``--gc-tuning``; the heap regime of wrapper/heap.py, shared by every wrapper of
    the process, so the tests and the demo run what production runs.
    ``pipeline``: the filters (``--filters``); None runs those on by default, counted for this wrapper.
    ``upstream``: what is watched upstream (node topology source, the Endpoints informer).
    """
    upstream = upstream or UpstreamOptions()
    cache = ClusterCache(hostname, pipeline=pipeline if pipeline is not None else Pipeline())
    informers = Informers(client, cache, reflect, options=upstream)
    # Held before a snapshot is restored: restoring is the first sync's work, done at once.
    heap = HEAP.hold(cache.ready_event, gc_tuning)
    try:
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
        # With the Endpoints informer off, Endpoints reads pass through to the apiserver.
        views = {plural: view for plural, view in cache.views.items()
                 if plural != ENDPOINTS.plural or upstream.endpoints != "off"}
        app = build_app(views, ready, client, serve, registry=watches,
                        middlewares=[guard.middleware(), metrics.middleware()], authorizer=authorizer,
                        checks=lambda: ready_checks(cache), demand=informers, notes=informers.upstream_note)
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
        return Running(runner, informers, cache, url, watches, debug_runner, debug_url, persister, local_node, guard,
                       heap)
    except BaseException:
        if heap is not None:
            await heap.release()
        raise


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


def client_authorizer(client: ApiClient, args: argparse.Namespace) -> ClientAuthorizer | None:
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
    if running.heap is not None:
        await running.heap.release()


async def wait_for_signal(run_seconds: float = 0) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if run_seconds:
        loop.call_later(run_seconds, stop.set)
    await stop.wait()
