"""Command line: ``application-grid-wrapper [flags]`` runs the wrapper; ``... demo`` runs the demo;
``... publish-topology`` runs the cluster's node topology publisher (``publisher/``, a program of its
own: only its entry points are named here).

Start-up errors are one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvloop

from cache.apiclient import ApiClient, ConfigError
from wrapper.compose import StartupError, client_authorizer, start_wrapper, stop_wrapper, tls_context, wait_for_signal
from wrapper.logs import configure_logging
from wrapper.options import (
    build_demo_parser,
    build_parser,
    check_exposure,
    connection_limits,
    pipeline,
    reflector_settings,
    serve_settings,
    upstream_options,
)

log = logging.getLogger("application-grid-wrapper")


def upstream_config(flag: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """Which kubeconfig reaches the apiserver, and how to say so: ``--kubeconfig``, then ``$KUBECONFIG``
    (as kubectl reads it), else the in-cluster service account (None)."""
    if flag:
        return flag, f"--kubeconfig {flag}"
    if env.get("KUBECONFIG"):
        return env["KUBECONFIG"], f"$KUBECONFIG ({env['KUBECONFIG']})"
    return None, "the in-cluster service account (no --kubeconfig and no $KUBECONFIG)"


async def serve_main(args: argparse.Namespace) -> None:
    if not args.hostname:
        raise StartupError("the local node name is unknown: pass --hostname or set NODE_NAME", 2)
    tls = tls_context(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    kubeconfig, source = upstream_config(args.kubeconfig, os.environ)
    try:
        client = await ApiClient.from_kubeconfig(kubeconfig)
    except ConfigError as exc:
        raise StartupError(str(exc), 2) from exc
    async with client:  # created here, so closed here
        check_exposure(args, tls is not None)
        running = await start_wrapper(client, args.hostname, args.bind_address, tls=tls,
                                      serve=serve_settings(args),
                                      debug=args.debug_bind_address, profiling=args.profiling,
                                      cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                                      snapshot_interval=args.snapshot_interval,
                                      offline_grace=None if args.ready_while_offline else args.offline_grace,
                                      authorizer=client_authorizer(client, args),
                                      limits=connection_limits(args), gc_tuning=args.gc_tuning,
                                      pipeline=pipeline(args), reflect=reflector_settings(args),
                                      upstream=upstream_options(args))
        log.info("serving %s for node %s; apiserver %s, from %s", running.url, args.hostname, client.base_url,
                 source)
        try:
            await wait_for_signal()
            log.info("shutting down")
        finally:
            await stop_wrapper(running)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    refusals: tuple[type[Exception], ...] = (StartupError,)
    if argv[:1] == ["demo"]:
        args = build_demo_parser().parse_args(argv[1:])
        from wrapper.demo import demo_main

        coro = demo_main(args)
    elif argv[:1] == ["publish-topology"]:
        # Imported here: the wrapper on every node starts without the publisher's code (time to ready).
        from publisher import cli as publisher_cli
        from publisher import options as publisher_options

        args = publisher_options.build_parser().parse_args(argv[1:])
        coro = publisher_cli.publish_main(args)
        refusals = (StartupError, publisher_cli.StartupError)
    else:
        args = build_parser().parse_args(argv)
        coro = serve_main(args)
    configure_logging(args.log_level, args.log_format)
    try:
        uvloop.run(coro)
    except refusals as exc:
        print(f"application-grid-wrapper: {exc}", file=sys.stderr)
        return getattr(exc, "code", 1)
    except KeyboardInterrupt:
        pass
    return 0
