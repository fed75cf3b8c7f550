"""Lease leader election against the simulator, over real sockets, with the candidates' clocks injected.

Expiry and the renew deadline are judged by each candidate's own clock, so the tests move that
clock instead of waiting out 15 s leases; requests, retries and renewals run for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from apisim import Simulator
from cache.apiclient import ApiClient
from kubeapi.resources import LEASES
from publisher.leader import LeaderElector, LeaseSettings
from tests.support.stack import running_simulator
from tests.support.waiting import eventually

NS = "edge-system"
LEASE = "topology-publisher"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE}"
# client-go's defaults, in seconds of the injected clocks; retries run every 20 ms of real time.
SETTINGS = LeaseSettings(lease_duration=15, renew_deadline=10, retry_period=0.02)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Candidate:
    elector: LeaderElector
    clock: Clock
    task: asyncio.Task[None]
    changes: list[bool]

    async def crash(self) -> None:
        """Stop without releasing the Lease (a killed process)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def stop(self) -> None:
        """Stop as on SIGTERM: stop campaigning, then release."""
        await self.crash()
        assert await self.elector.release()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_simulator(Simulator()) as s:
        yield s


@asynccontextmanager
async def candidates(sim: Simulator, *names: str) -> AsyncIterator[list[Candidate]]:
    async with ApiClient(sim.url) as client:
        out = []
        for name in names:
            clock = Clock()
            changes: list[bool] = []
            elector = LeaderElector(client, NS, LEASE, name, SETTINGS, on_change=changes.append, clock=clock)
            out.append(Candidate(elector, clock, asyncio.create_task(elector.run()), changes))
        try:
            yield out
        finally:
            for c in out:
                await c.crash()


def lease(sim: Simulator) -> dict[str, object]:
    spec: dict[str, object] = sim.get(LEASES, NS, LEASE)["spec"]
    return spec


def lease_reads(sim: Simulator) -> int:
    return sum(1 for s in sim.seen if s.method == "GET" and s.path == LEASE_PATH)


def lease_writes(sim: Simulator) -> int:
    return sum(1 for s in sim.seen if s.method == "PUT" and s.path == LEASE_PATH)


async def test_one_of_two_candidates_leads_and_keeps_renewing_while_the_other_waits(sim: Simulator) -> None:
    async with candidates(sim, "a", "b") as (a, b):
        await eventually(lambda: a.elector.is_leader or b.elector.is_leader, what="a leader")
        leader, follower = (a, b) if a.elector.is_leader else (b, a)
        writes = lease_writes(sim)
        await eventually(lambda: lease_writes(sim) >= writes + 5, what="five renewals")
        assert leader.elector.is_leader and not follower.elector.is_leader
        assert lease(sim)["holderIdentity"] == leader.elector.identity
        assert lease(sim)["leaseDurationSeconds"] == 15 and lease(sim)["leaseTransitions"] == 0
        assert follower.elector.holder == leader.elector.identity
        assert leader.changes == [True] and follower.changes == []


async def test_when_the_leader_dies_the_other_takes_over_once_the_lease_duration_has_passed(sim: Simulator) -> None:
    async with candidates(sim, "a", "b") as (a, b):
        await eventually(lambda: a.elector.is_leader or b.elector.is_leader, what="a leader")
        leader, follower = (a, b) if a.elector.is_leader else (b, a)
        await leader.crash()
        # The follower keeps reading the Lease and sees its last renewal (at its clock's "now") ...
        reads = lease_reads(sim)
        await eventually(lambda: lease_reads(sim) >= reads + 2, what="the follower's attempts")
        # ... and by its clock the holder's term has not run out yet.
        follower.clock.now += 14.9
        reads = lease_reads(sim)
        await eventually(lambda: lease_reads(sim) >= reads + 5, what="the follower's attempts")
        assert not follower.elector.is_leader and lease(sim)["holderIdentity"] == leader.elector.identity
        follower.clock.now += 0.2  # 15.1 s since it last saw the Lease change: expired
        await eventually(lambda: follower.elector.is_leader, what="the takeover")
        spec = lease(sim)
        assert spec["holderIdentity"] == follower.elector.identity and spec["leaseTransitions"] == 1


async def test_a_leader_that_stops_releases_the_lease_and_the_other_takes_over_at_once(sim: Simulator) -> None:
    async with candidates(sim, "a", "b") as (a, b):
        await eventually(lambda: a.elector.is_leader or b.elector.is_leader, what="a leader")
        leader, follower = (a, b) if a.elector.is_leader else (b, a)
        await leader.stop()
        assert leader.changes == [True, False]
        # No clock moves: an empty holder is free to take.
        await eventually(lambda: follower.elector.is_leader, what="the takeover")
        assert lease(sim)["holderIdentity"] == follower.elector.identity


async def test_a_leader_that_cannot_renew_stops_leading_when_its_renew_deadline_passes(sim: Simulator) -> None:
    async with candidates(sim, "a") as (a,):
        await eventually(lambda: a.elector.is_leader, what="a leader")
        # Another holder takes the Lease behind its back (as after a long pause of this process).
        current = sim.get(LEASES, NS, LEASE)
        current["spec"]["holderIdentity"] = "someone-else"
        sim.update(LEASES, current)
        reads = lease_reads(sim)
        await eventually(lambda: lease_reads(sim) >= reads + 3, what="failed renewals")
        assert a.elector.holder == "someone-else"
        a.clock.now += 9.9
        await eventually(lambda: lease_reads(sim) >= reads + 6, what="more failed renewals")
        assert a.changes == [True]  # still within its renew deadline
        a.clock.now += 0.2
        await eventually(lambda: a.changes == [True, False], what="stepping down")
        assert not a.elector.is_leader and lease(sim)["holderIdentity"] == "someone-else"


async def test_is_leader_turns_false_by_itself_once_renewals_stop_succeeding(sim: Simulator) -> None:
    async with candidates(sim, "a") as (a,):
        await eventually(lambda: a.elector.is_leader, what="a leader")
        await a.crash()  # no more renewals, whatever the reason
        a.clock.now += 10.0
        assert not a.elector.is_leader  # the publisher asks this before each write


@pytest.mark.parametrize(("settings", "problem"), [
    (LeaseSettings(), None),
    (LeaseSettings(10, 10, 2), "greater than the renew deadline"),
    (LeaseSettings(15, 2.4, 2), "1.2 times the retry period"),
    (LeaseSettings(0.5, 0.3, 0.1), "at least 1 second"),
])
def test_lease_timings_are_checked_as_client_go_checks_them(settings: LeaseSettings, problem: str | None) -> None:
    found = settings.problem()
    assert (found is None) if problem is None else (found is not None and problem in found)
