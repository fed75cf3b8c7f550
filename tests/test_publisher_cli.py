"""``application-grid-wrapper publish-topology`` as a real process against the simulator.

It publishes the buckets, holds the Lease while it runs, and on SIGTERM stops and hands the Lease
back; bad flags and configurations are one line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apisim import Simulator
from apisim.seeds import servicegrid_demo
from kubeapi.node_topology import LABEL_SELECTOR, BucketSet, decode_bucket
from kubeapi.resources import CONFIGMAPS, LEASES
from kubeapi.status import StatusError
from publisher.options import DEFAULT_LEASE_NAME, build_parser
from tests.support.faultkit import write_kubeconfig
from tests.support.stack import running_simulator
from tests.support.waiting import eventually

NS = "topology"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wrapper", "publish-topology", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_simulator(Simulator(servicegrid_demo, bookmark_interval=0.3)) as s:
        yield s


def test_the_defaults_are_client_gos_and_the_namespace_comes_from_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "kube-edge")
    args = build_parser().parse_args([])
    assert (args.leader_elect_lease_duration, args.leader_elect_renew_deadline, args.leader_elect_retry_period) == (
        15, 10, 2)
    assert args.leader_elect and args.namespace == "kube-edge" and args.nodes_per_bucket == 1000
    assert args.leader_elect_resource_name == DEFAULT_LEASE_NAME and args.debounce == 1


def test_inconsistent_lease_timings_are_one_line_error(tmp_path: Path) -> None:
    proc = run("--kubeconfig", str(tmp_path / "nope"), "--leader-elect-lease-duration", "10",
               "--leader-elect-renew-deadline", "10")
    assert_one_line_error(proc, "renew deadline")


def test_missing_kubeconfig_is_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(run("--kubeconfig", str(tmp_path / "nope")), "kubeconfig")


@pytest.mark.parametrize("flag", [["--namespace", "Not_A_Namespace"], ["--nodes-per-bucket", "0"],
                                  ["--debounce", "-1"], ["--leader-elect-retry-period", "nan"]])
def test_bad_values_are_usage_errors(flag: list[str]) -> None:
    proc = run(*flag)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and flag[0] in proc.stderr


async def test_the_process_publishes_holds_the_lease_and_hands_it_over_on_sigterm(
        sim: Simulator, tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "kubeconfig", sim.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wrapper", "publish-topology", "--kubeconfig", str(cfg), "--namespace", NS,
        "--leader-elect-retry-period", "0.2", "--debounce", "0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    def holder() -> str:
        try:
            return str(sim.get(LEASES, NS, DEFAULT_LEASE_NAME)["spec"].get("holderIdentity") or "")
        except StatusError:
            return ""

    def published() -> dict[str, dict[str, str]]:
        view = BucketSet()
        view.replace(decode_bucket(cm) for cm in sim.list(CONFIGMAPS, NS, label_selector=LABEL_SELECTOR))
        return view.nodes

    try:
        await eventually(lambda: published().get("bj-1") == {"location": "beijing"}, 30, "the buckets")
        assert len(published()) == 4 and holder()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "secret-token-never-logged" not in text
    assert "released lease" in text
    assert holder() == ""  # the next replica takes over at once
