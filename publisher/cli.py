"""``application-grid-wrapper publish-topology``: start the publisher, lead or wait, stop cleanly.

``wrapper.cli.main`` dispatches the subcommand here (and configures logging, runs the loop and
prints a ``StartupError`` as one line). On SIGTERM or SIGINT the publisher stops writing first, then
releases the Lease, so the next replica takes over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import uuid

from cache.apiclient import ApiClient, ConfigError
from publisher.leader import LeaderElector
from publisher.options import lease_settings
from publisher.writer import AlwaysLeader, PublisherSettings, TopologyPublisher

log = logging.getLogger("publisher")


class StartupError(Exception):
    """The publisher cannot start; ``str()`` is the one line to print, ``code`` the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def identity() -> str:
    """A candidate's identity, as client-go builds it: the host (the pod's name) and a fresh UUID."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


async def publish_main(args: argparse.Namespace) -> None:
    lease = lease_settings(args)
    if args.leader_elect and (problem := lease.problem()):
        raise StartupError(f"--leader-elect-*: {problem}", 2)
    try:
        client = await ApiClient.from_kubeconfig(args.kubeconfig)
    except ConfigError as exc:
        raise StartupError(str(exc), 2) from exc
    async with client:
        settings = PublisherSettings(per_bucket=args.nodes_per_bucket, debounce=args.debounce)
        publisher = TopologyPublisher(client, args.namespace, AlwaysLeader(), settings)
        elector: LeaderElector | None = None
        if args.leader_elect:  # before anything runs: the publisher writes only while the elector leads
            elector = LeaderElector(client, args.namespace, args.leader_elect_resource_name, identity(), lease,
                                    on_change=publisher.leadership_changed)
            publisher.leadership = elector
        tasks = [asyncio.create_task(publisher.run(), name="publisher")]
        if elector is not None:
            tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
        log.info("publishing node topology to %s/%s* (upstream %s, %s)", args.namespace, "node-topology-",
                 client.base_url, f"leader election on Lease {elector.description}" if elector else "no election")
        stop = _stop_on_signal()
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop:
                    task.result()  # a task ended on its own: a bug; its traceback is the log line
            log.info("shutting down")
        finally:
            for task in (*tasks, stop):  # the writes stop first ...
                task.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)
            if elector is not None:  # ... then the Lease goes to the next replica
                await elector.release()


def _stop_on_signal() -> asyncio.Task[None]:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, event.set)

    async def wait() -> None:
        await event.wait()

    return asyncio.create_task(wait(), name="signals")
