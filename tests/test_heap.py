"""The heap regime: young-only automatic runs, freeze after sync, maintenance; shared by every
wrapper of the process, started by the composition root, and only on the interpreter it was
measured on unless forced."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import weakref
from collections.abc import Iterator

import pytest

from apisim.server import Simulator
from cache.apiclient import ApiClient
from tests.support.fake_clock import FakeClock
from tests.support.stack import wait_ready
from tests.support.waiting import eventually, one_loop_step
from wrapper.compose import Running, StartupError, start_wrapper, stop_wrapper
from wrapper.heap import HEAP, MEASURED_ON, NEVER, YOUNG_THRESHOLD, HeapManager, manage_heap, trim
from wrapper.options import build_parser


class Node:
    def __init__(self) -> None:
        self.peer: Node | None = None


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*saved)


def cyclic_garbage() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    return weakref.ref(a)


async def timed_pass(clock: FakeClock, seconds: float) -> None:
    """Move ``clock`` on by ``seconds`` and wait until the schedule has run its pass and sleeps again."""
    clock.advance(seconds)
    await eventually(lambda: clock.pending, what="the heap schedule to finish its pass and sleep again")


async def test_after_sync_automatic_collection_stops_and_timed_young_passes_freeze_their_survivors() -> None:
    clock = FakeClock()
    ready = asyncio.Event()
    task = asyncio.create_task(manage_heap(ready, young_interval=0.05, full_interval=3600, clock=clock,
                                           sleep=clock.sleep))
    await one_loop_step()  # the schedule has started: it waits for the sync
    assert gc.get_threshold() == (NEVER, NEVER, NEVER), "no collection while the first sync runs"
    assert gc.isenabled() and gc.get_freeze_count() == 0
    ready.set()
    await eventually(lambda: clock.pending, what="the schedule to wait for its first timed pass")
    assert not gc.isenabled(), "the timer replaces automatic runs"
    frozen = gc.get_freeze_count()
    assert frozen > 0, "what survived the first sync is frozen"
    survivors = [Node() for _ in range(100)]
    garbage = cyclic_garbage()
    assert garbage() is not None, "nothing collects while no timed pass is due"
    await timed_pass(clock, 0.05)
    assert garbage() is None, "a timed young pass collects young cycles"
    assert gc.get_freeze_count() >= frozen + len(survivors), "and freezes what survived it"
    assert gc.get_count()[0] < 100
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.isenabled(), "stopping the manager gives automatic collection back"


async def test_a_first_sync_past_its_grace_gets_young_collections_so_a_retrying_one_cannot_pile_up_cycles() -> None:
    clock = FakeClock()
    ready = asyncio.Event()
    task = asyncio.create_task(manage_heap(ready, sync_grace=2.0, clock=clock, sleep=clock.sleep))
    await eventually(lambda: clock.pending, what="the schedule to wait for the sync and its grace")
    assert gc.get_threshold() == (NEVER, NEVER, NEVER)
    clock.advance(1.9)
    await one_loop_step()
    assert gc.get_threshold() == (NEVER, NEVER, NEVER), "still within the grace"
    clock.advance(0.1)
    await eventually(lambda: gc.get_threshold() == (YOUNG_THRESHOLD, NEVER, NEVER),
                     what="automatic young collections once the grace is over")
    garbage = cyclic_garbage()
    live = [Node() for _ in range(YOUNG_THRESHOLD * 2)]  # enough allocations to trigger a young collection
    assert garbage() is None, "the collector runs on its own again while the sync goes on"
    del live
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_full_pass_reclaims_cycles_that_died_after_being_frozen() -> None:
    clock = FakeClock()
    ready = asyncio.Event()
    ready.set()
    alive = Node()
    alive.peer = alive  # alive and cyclic while frozen, garbage only later
    frozen_ref = weakref.ref(alive)
    task = asyncio.create_task(manage_heap(ready, young_interval=0.01, full_interval=0.15, clock=clock,
                                           sleep=clock.sleep))
    await eventually(lambda: clock.pending, what="the post-sync freeze")  # ``alive`` is frozen
    del alive
    for _ in range(5):
        await timed_pass(clock, 0.01)
    assert frozen_ref() is not None, "young passes never look at frozen objects"
    await timed_pass(clock, 0.2)  # past the full pass's interval
    assert frozen_ref() is None, "the full pass unfreezes and reclaims it"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_on_glibc_freed_heap_pages_can_be_returned() -> None:
    # The arena cap is MALLOC_ARENA_MAX in the image and the DaemonSet (test_deploy_files).
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB of heap blocks, below the mmap threshold
    del blocks
    assert trim(), "malloc_trim released the freed pages"


def gc_state() -> tuple[bool, tuple[int, ...], int]:
    return gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()


_CLIENTS: dict[int, ApiClient] = {}


async def start(sim: Simulator, gc_tuning: str = "auto") -> Running:
    client = ApiClient(sim.url)
    running = await start_wrapper(client, "bj-1", ("127.0.0.1", 0),
                                  gc_tuning=build_parser().parse_args(["--gc-tuning", gc_tuning]).gc_tuning)
    _CLIENTS[id(running)] = client  # whoever creates the client closes it: see stop()
    await wait_ready(running)
    return running


async def stop(running: Running) -> None:
    await stop_wrapper(running)
    await _CLIENTS.pop(id(running)).close()


@pytest.mark.skipif(sys.version_info[:2] != MEASURED_ON, reason="auto runs the regime only where it was measured")
async def test_wrappers_run_the_regime_from_the_composition_root_and_the_last_one_to_stop_restores_the_collector(
    sim: Simulator,
) -> None:
    before = gc_state()
    assert before[0] and before[2] == 0
    first = await start(sim)
    await eventually(lambda: not gc.isenabled(), 10, "the timed passes to replace automatic collection after sync")
    assert gc.get_freeze_count() > 0, "what survived the first sync is frozen"
    second = await start(sim)
    await stop(first)
    assert (HEAP.running, gc.isenabled()) == (True, False), "a wrapper still runs: the regime stays"
    await stop(second)
    assert not HEAP.running
    assert gc_state() == before, "the last wrapper to stop gives the collector back as it was"


async def test_gc_tuning_off_leaves_the_collector_alone(sim: Simulator) -> None:
    before = gc_state()
    running = await start(sim, "off")
    try:
        assert not HEAP.running and gc_state() == before
    finally:
        await stop(running)
    assert gc_state() == before


async def test_on_another_interpreter_auto_declines_once_and_on_forces_the_regime(
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = HeapManager(version=(MEASURED_ON[0], MEASURED_ON[1] + 2))
    ready = asyncio.Event()
    before = gc_state()
    with caplog.at_level("INFO", logger="application_grid_wrapper.heap"):
        assert other.hold(ready, "auto") is None
        assert other.hold(ready, "auto") is None
    declined = [r for r in caplog.records if "measured on" in r.getMessage()]
    assert len(declined) == 1, "said once, not per wrapper"
    assert (gc_state(), other.running) == (before, False)
    forced = other.hold(ready, "on")
    assert forced is not None
    assert other.running, "forced on"
    assert gc.get_freeze_count() > 0, "what the process held before its first wrapper is frozen at once"
    assert gc.get_threshold() == (NEVER, NEVER, NEVER), \
        "no collection from the hold on, before the loop runs anything (a snapshot restored right after)"
    await forced.release()
    await forced.release()  # releasing twice lets go once
    assert gc_state() == before and other.holders == 0


async def test_a_wrapper_that_cannot_start_gives_the_collector_back(sim: Simulator) -> None:
    before = gc_state()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    client = ApiClient(sim.url)
    try:
        with pytest.raises(StartupError):
            await start_wrapper(client, "bj-1", taken.getsockname()[:2], gc_tuning="on")
    finally:
        taken.close()
        await client.close()
    assert gc_state() == before and not HEAP.running


def test_holders_from_an_event_loop_that_ended_do_not_pin_the_regime() -> None:
    manager = HeapManager(version=MEASURED_ON)
    before = gc_state()

    async def leak() -> None:
        ready = asyncio.Event()
        ready.set()
        manager.hold(ready)  # never released: its loop ends with the regime running

    async def hold_and_release() -> None:
        hold = manager.hold(asyncio.Event())
        assert hold is not None and manager.holders == 1, "the ended loop's holder is forgotten"
        await hold.release()

    asyncio.run(leak())
    assert manager.holders == 1
    asyncio.run(hold_and_release())
    assert gc_state() == before and not manager.running
