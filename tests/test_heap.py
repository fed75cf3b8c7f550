"""The garbage collector's schedule: young-only automatic runs, freeze after sync, maintenance."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from wrapper.heap import NEVER, YOUNG_THRESHOLD, manage_heap


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


async def test_only_young_collections_run_automatically_and_the_heap_is_frozen_after_sync() -> None:
    ready = asyncio.Event()
    task = asyncio.create_task(manage_heap(ready, interval=3600))
    await asyncio.sleep(0)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, NEVER, NEVER)
    assert gc.get_freeze_count() == 0
    ready.set()
    await asyncio.sleep(0.05)
    assert gc.get_freeze_count() > 0, "what survived the first sync is frozen"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_maintenance_reclaims_cycles_including_those_among_frozen_objects() -> None:
    ready = asyncio.Event()
    ready.set()
    alive = Node()
    alive.peer = alive  # alive and cyclic while frozen, garbage only later
    frozen_ref = weakref.ref(alive)
    task = asyncio.create_task(manage_heap(ready, interval=0.05, full_every=2))
    await asyncio.sleep(0.02)  # the post-sync freeze has run: ``alive`` is now frozen
    del alive
    young_ref = cyclic_garbage()
    await asyncio.sleep(0.08)  # one young maintenance pass
    assert young_ref() is None, "a young pass collects unfrozen cycles"
    for _ in range(40):  # the full pass (every second one) unfreezes first
        if frozen_ref() is None:
            break
        await asyncio.sleep(0.02)
    assert frozen_ref() is None, "the full pass reclaims cycles that were frozen"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
