"""When the cyclic garbage collector runs.

The cache is a large heap of decoded JSON: millions of small dicts and lists, all acyclic, all
freed by reference counting. CPython's collector still scans them: with its default schedule a
full collection at edge scale stalls the loop for hundreds of milliseconds, and even young
collections of 50,000 objects took 20-80 ms in the benchmark, delaying watch events.

So after the first sync the heap is frozen (never scanned again), automatic collections are
young-only and small, and a maintenance pass every few minutes collects what survived them and
freezes the rest. Cycles among frozen objects (a finished watch's task and frames, say) are
reclaimed by an hourly pass that unfreezes first; that pass is the only long one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("application_grid_wrapper.heap")

YOUNG_THRESHOLD = 2_000  # a young collection then scans a few thousand objects: about a millisecond
NEVER = 1_000_000_000  # older generations are left to the maintenance pass


def young_only() -> None:
    gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)


def maintenance(*, unfreeze: bool) -> tuple[int, float]:
    """Collect everything not frozen (everything, with ``unfreeze``), then freeze the survivors."""
    started = time.perf_counter()
    if unfreeze:
        gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    return collected, time.perf_counter() - started


async def manage_heap(ready: asyncio.Event, *, interval: float = 300.0, full_every: int = 12) -> None:
    """Run for the process's life: freeze after the first sync, then maintain every ``interval``."""
    young_only()
    await ready.wait()
    collected, took = maintenance(unfreeze=False)
    log.debug("heap frozen after sync: %d objects collected in %.0f ms", collected, took * 1000)
    passes = 0
    while True:
        await asyncio.sleep(interval)
        passes += 1
        full = passes % full_every == 0
        collected, took = maintenance(unfreeze=full)
        log.debug("heap maintenance (%s): %d objects collected in %.0f ms",
                  "full" if full else "young", collected, took * 1000)
