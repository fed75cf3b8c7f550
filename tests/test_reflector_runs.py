"""Long scripted runs: hundreds of upstream changes, forced upstream expiries, short client watches.

kube-proxy's informers (ReflectorModel, both LIST+WATCH and the streaming list) plus a core
Endpoints watcher read through the wrapper while a seeded script changes the simulator.
The wrapper has to absorb the upstream expiries itself (it relists from the simulator);
its clients must never need a relist, and must end with exactly filters(upstream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES
from tests.support.churn import Churn
from tests.support.oracle import PROXY_LABELS, PROXY_SERVICE_FIELDS, comparable, holds, kube_proxy_truth
from tests.support.reflector import ReflectorModel, _Relist, running_clients
from tests.support.stack import Stack, stack, wait_applied
from tests.support.waiting import eventually, one_loop_step
from wrapper.compose import Running

LOCAL = "bj-1"
CHANGES = 400
FORCED_EXPIRIES = 4


def clients(url: str, *, streaming: bool, timeout_seconds: tuple[int, int]) -> dict[str, ReflectorModel]:
    accept = "application/vnd.kubernetes.protobuf, */*"
    common: dict[str, Any] = {"streaming": streaming, "timeout_seconds": timeout_seconds, "accept": accept}
    return {
        "services": ReflectorModel(url, SERVICES.collection_path(), "Service", "v1", label_selector=PROXY_LABELS,
                                   field_selector=PROXY_SERVICE_FIELDS, **common),
        "endpointslices": ReflectorModel(url, ENDPOINTSLICES.collection_path(), "EndpointSlice",
                                         "discovery.k8s.io/v1", label_selector=PROXY_LABELS, **common),
        "nodes": ReflectorModel(url, NODES.collection_path(), "Node", "v1", field_selector=f"metadata.name={LOCAL}",
                                **common),
        "endpoints": ReflectorModel(url, ENDPOINTS.collection_path(), "Endpoints", "v1", **common),
    }


async def converge(models: Mapping[str, ReflectorModel], sim: Simulator, timeout: float = 20) -> None:
    """Wait until every client holds exactly the filtered upstream state."""
    truth = kube_proxy_truth(sim, LOCAL)
    for name, m in models.items():
        try:
            await m.wait_until(holds(truth[name]), timeout)
        except AssertionError:
            got = comparable(m.store)
            diff = {k for k in got.keys() | truth[name].keys() if got.get(k) != truth[name].get(k)}
            raise AssertionError(f"{name}: differs from filters(upstream) at {sorted(diff)[:10]}: "
                                 f"{[(k, got.get(k), truth[name].get(k)) for k in sorted(diff)[:2]]}") from None


async def force_upstream_expiry(st: Stack, churn: Churn, changes: int) -> None:
    """Changes the wrapper's upstream watches cannot see, then history compaction and dropped watches:
    the wrapper's resume gets 410 from the simulator and it must relist (while the script goes on:
    its next ``wait_applied`` can only pass once the relist is done)."""
    st.sim.pause_watches()
    for _ in range(changes):
        churn.step()
    st.sim.compact()
    st.sim.close_watches()
    st.sim.resume_watches()
    await one_loop_step()  # the closed watches' handlers end before the script goes on


async def scripted_run(st: Stack, models: dict[str, ReflectorModel], seed: int,
                       after_phase: Callable[[], Awaitable[None]] | None = None) -> Churn:
    """CHANGES seeded changes in FORCED_EXPIRIES phases, each with a forced upstream expiry in its
    middle; the wrapper applies each ten changes before the next (it sees them as they come)."""
    churn = Churn(st.sim, seed, LOCAL)
    every = CHANGES // FORCED_EXPIRIES
    for i in range(CHANGES):
        if i % every == every // 2:
            await force_upstream_expiry(st, churn, 5)
        churn.step()
        if i % 10 == 9:
            await wait_applied(st.wrapper, st.sim)
        if after_phase is not None and i % every == every - 1:
            await after_phase()
    await converge(models, st.sim)
    return churn


def upstream_relists(w: Running) -> int:
    return sum(r.state.relists for r in w.informers.reflectors.values())


@pytest.mark.parametrize("streaming", [False, True], ids=["list-watch", "streaming-list"])
async def test_hundreds_of_changes_and_forced_upstream_expiries_converge_without_client_relists(
    streaming: bool,
) -> None:
    async with stack(servicegrid_demo(), node=LOCAL) as st, \
            running_clients(clients(st.wrapper.url, streaming=streaming, timeout_seconds=(300, 600))) as models:
        await scripted_run(st, models, seed=1 if streaming else 2)
        # The expiries really happened upstream: the wrapper relisted from the simulator ...
        assert upstream_relists(st.wrapper) >= FORCED_EXPIRIES
        # ... and absorbed them: no client relisted, none saw a protocol violation.
        for name, m in models.items():
            assert m.violations == [], (name, m.violations)
            assert m.relists == 0, (name, m.relist_reasons)
            assert m.lists == (0 if streaming else 1), name
        assert sum(m.events for m in models.values()) > CHANGES // 2


@pytest.mark.parametrize("streaming", [False, True], ids=["list-watch", "streaming-list"])
async def test_short_wrapper_side_watch_timeouts_resume_from_the_last_rv_without_relists(streaming: bool) -> None:
    async with stack(servicegrid_demo(), node=LOCAL) as st, \
            running_clients(clients(st.wrapper.url, streaming=streaming, timeout_seconds=(1, 2))) as models:
        watches = {name: m.watches for name, m in models.items()}
        phases = 0

        async def every_client_rewatched() -> None:
            """Let every other phase end only once the wrapper has ended each client's watch (since
            the last such end) and the client re-watched: changes land on both sides of each end."""
            nonlocal phases
            phases += 1
            if phases % 2:
                await eventually(lambda: all(m.watches > watches[name] for name, m in models.items()), 20,
                                 "the wrapper to end every client's 1-2 s watch, and the client to re-watch")
                watches.update({name: m.watches for name, m in models.items()})

        await scripted_run(st, models, seed=3 if streaming else 4, after_phase=every_client_rewatched)
        for name, m in models.items():
            assert m.violations == [], (name, m.violations)
            assert m.relists == 0, (name, m.relist_reasons)
            # The wrapper ended the 1-2 s watches in every other phase; each time the client re-watched.
            assert m.watches >= 1 + FORCED_EXPIRIES // 2, (name, m.watches)
        assert upstream_relists(st.wrapper) >= FORCED_EXPIRIES


class ResumingReflector(ReflectorModel):
    """A reflector that restarts from a resourceVersion it remembers (as after a process restart
    of a client that kept its RV) instead of listing first."""

    async def _run(self) -> None:
        need_list = False
        drop_rv = False
        while True:
            try:
                if need_list:
                    if self.streaming:
                        await self._watch(initial=True)
                    else:
                        await self._list(drop_rv)
                        await self._watch(initial=False)
                else:
                    await self._watch(initial=False)
                need_list = False
            except _Relist as exc:
                self.relist_reasons.append(str(exc))
                need_list, drop_rv = True, exc.drop_rv
                self.relists += 1
                await asyncio.sleep(0.05)  # the client's back-off before it relists (modelled, not a wait)


@pytest.mark.parametrize("streaming", [False, True], ids=["list-watch", "streaming-list"])
async def test_a_deliberately_too_old_rv_is_the_only_relist(streaming: bool) -> None:
    async with stack(servicegrid_demo(), node=LOCAL) as st:
        churn = Churn(st.sim, 5, LOCAL)
        for _ in range(50):
            churn.step()
        m = ResumingReflector(st.wrapper.url, ENDPOINTSLICES.collection_path(), "EndpointSlice",
                              "discovery.k8s.io/v1", label_selector=PROXY_LABELS, streaming=streaming,
                              timeout_seconds=(1, 2))
        m.last_rv = "1"  # older than anything the wrapper can replay
        models = {"endpointslices": m}
        m.start()
        try:
            for i in range(100):
                churn.step()
                if i % 10 == 9:
                    await wait_applied(st.wrapper, st.sim)  # the client's watch sees the changes as they come
            await converge(models, st.sim)
            assert m.relists == 1, m.relist_reasons
            assert m.relist_reasons[0].startswith("watch ERROR 410"), m.relist_reasons
            assert m.violations == []
            assert m.watches >= 2
        finally:
            await m.stop()
