"""The garbage collector's schedule: young-only automatic runs, freeze after sync, maintenance."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from wrapper.heap import NEVER, YOUNG_THRESHOLD, manage_heap, trim, tune_malloc


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


async def test_after_sync_automatic_collection_stops_and_timed_young_passes_freeze_their_survivors() -> None:
    ready = asyncio.Event()
    task = asyncio.create_task(manage_heap(ready, young_interval=0.02, full_interval=3600))
    await asyncio.sleep(0)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, NEVER, NEVER), "young-only while the first sync runs"
    assert gc.isenabled() and gc.get_freeze_count() == 0
    ready.set()
    await asyncio.sleep(0.01)
    assert not gc.isenabled(), "the timer replaces automatic runs"
    frozen = gc.get_freeze_count()
    assert frozen > 0, "what survived the first sync is frozen"
    survivors = [Node() for _ in range(100)]
    garbage = cyclic_garbage()
    await asyncio.sleep(0.06)  # at least one timed young pass
    assert garbage() is None, "a timed young pass collects young cycles"
    assert gc.get_freeze_count() >= frozen + len(survivors), "and freezes what survived it"
    assert gc.get_count()[0] < 100
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.isenabled(), "stopping the manager gives automatic collection back"


async def test_the_full_pass_reclaims_cycles_that_died_after_being_frozen() -> None:
    ready = asyncio.Event()
    ready.set()
    alive = Node()
    alive.peer = alive  # alive and cyclic while frozen, garbage only later
    frozen_ref = weakref.ref(alive)
    task = asyncio.create_task(manage_heap(ready, young_interval=0.01, full_interval=0.15))
    await asyncio.sleep(0.05)  # the post-sync freeze and young passes have run: ``alive`` is frozen
    del alive
    await asyncio.sleep(0.05)
    assert frozen_ref() is not None, "young passes never look at frozen objects"
    for _ in range(40):
        if frozen_ref() is None:
            break
        await asyncio.sleep(0.02)
    assert frozen_ref() is None, "the full pass unfreezes and reclaims it"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_on_glibc_malloc_is_tuned_and_freed_heap_pages_can_be_returned() -> None:
    assert tune_malloc(), "mallopt accepted the arena cap"
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB of heap blocks, below the mmap threshold
    del blocks
    assert trim(), "malloc_trim released the freed pages"
