"""The flags of ``application-grid-wrapper publish-topology``, and their checks.

Every value is checked when the flags are parsed (argparse prints one line and exits 2); the
leader-election timings are checked against each other as client-go checks them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable

from kubeapi.node_topology import MAX_BUCKETS, NODES_PER_BUCKET
from kubeapi.strconv import NumError, parse_decimal, parse_uint
from publisher.leader import LeaseSettings

PROG = "application-grid-wrapper publish-topology"
DEFAULT_NAMESPACE = "edge-system"
DEFAULT_LEASE_NAME = "application-grid-wrapper-topology-publisher"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _seconds(most: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = parse_decimal(value)
        if number is None or not math.isfinite(number) or not 0 < number <= most:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds in (0, {most:g}]")
        return number

    return parse


def _count(most: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = parse_uint(value)
        except NumError:
            number = 0
        if not 0 < number <= most:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number in [1, {most}]")
        return number

    return parse


def _name(pattern: re.Pattern[str], limit: int, what: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if len(value) > limit or not pattern.match(value):
            raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a valid {what}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Publish every node's topology labels (the label keys Services' topology annotations read) "
        "in a few ConfigMaps, so that each wrapper watches those instead of every Node. Runs as a Deployment "
        "with Lease-based leader election; only the leader writes.",
    )
    p.add_argument("--kubeconfig", default=None, metavar="PATH",
                   help="kubeconfig for the apiserver (default: the in-cluster service account)")
    p.add_argument("--namespace", type=_name(_DNS_LABEL, 63, "namespace"), metavar="NAMESPACE",
                   default=os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
                   help="namespace of the bucket ConfigMaps and of the Lease (default: $POD_NAMESPACE, else "
                   f"{DEFAULT_NAMESPACE})")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="elect a leader among the replicas with a Lease; only the leader writes (default on; off "
                   "only for a single replica)")
    d = LeaseSettings()
    p.add_argument("--leader-elect-lease-duration", metavar="SECONDS", type=_seconds(3600), default=d.lease_duration,
                   help="seconds a candidate waits, after it last saw the Lease renewed, before it takes the Lease "
                   f"over (default {d.lease_duration:g})")
    p.add_argument("--leader-elect-renew-deadline", metavar="SECONDS", type=_seconds(3600), default=d.renew_deadline,
                   help="seconds the leader keeps trying to renew before it stops leading; less than the lease "
                   f"duration (default {d.renew_deadline:g})")
    p.add_argument("--leader-elect-retry-period", metavar="SECONDS", type=_seconds(600), default=d.retry_period,
                   help=f"seconds between attempts to acquire or renew the Lease (default {d.retry_period:g})")
    p.add_argument("--leader-elect-resource-name", metavar="NAME", type=_name(_DNS_SUBDOMAIN, 253, "Lease name"),
                   default=DEFAULT_LEASE_NAME, help=f"name of the Lease (default {DEFAULT_LEASE_NAME})")
    p.add_argument("--nodes-per-bucket", metavar="N", type=_count(100_000), default=NODES_PER_BUCKET,
                   help="nodes per bucket ConfigMap on average, at most; the buckets double, up to "
                   f"{MAX_BUCKETS}, as nodes pass it (default {NODES_PER_BUCKET})")
    p.add_argument("--debounce", metavar="SECONDS", type=_seconds(60), default=1.0,
                   help="seconds a change waits for the rest of its burst before the buckets are written "
                   "(default 1)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default info)")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text, or one JSON object per line (default text)")
    return p


def lease_settings(args: argparse.Namespace) -> LeaseSettings:
    return LeaseSettings(lease_duration=args.leader_elect_lease_duration,
                         renew_deadline=args.leader_elect_renew_deadline,
                         retry_period=args.leader_elect_retry_period)
