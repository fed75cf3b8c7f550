"""The process heap: when the cyclic garbage collector runs, and giving freed memory back.

Every upstream event is decoded into dozens of small dicts and lists, and the cache keeps
hundreds of thousands of small objects (projections, index entries); nearly all are acyclic
and freed by reference counting, but CPython's collector still scans them. Its young-
generation trigger counts allocations minus deallocations, and in a cache every new object
replaces an old one, so the count barely moves while the young generation fills: at 2,000
events/s young collections held 15,000-30,000 objects and stalled the loop for 5-20 ms each,
more the longer the process ran (measured with gc.callbacks).

So after the first sync automatic collection is off, and a young collection runs on a timer
instead: its pause is bounded by what the event rate can allocate in one interval (about a
millisecond at 2,000 events/s). Its survivors are frozen at once, so no collection scans them
again. Cycles that die after being frozen (a long watch's task and frames, say) wait for the
hourly pass that unfreezes and collects everything, the only long pause.

Freed memory is only worth something if the kernel gets it back: after the first sync and
every minute, ``malloc_trim`` returns the malloc heap's free pages (the bytes of superseded
objects and evicted history events live there). glibc's mmap threshold is left dynamic:
pinning it low made every multi-megabyte list response a fresh mmap and its page faults,
which cost the full list 50% in the benchmark for no lasting memory gain.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import time

log = logging.getLogger("application_grid_wrapper.heap")

YOUNG_THRESHOLD = 2_000  # automatic young collections during the first sync
NEVER = 1_000_000_000  # older generations are left to the full pass
YOUNG_INTERVAL = 0.05  # seconds between timed young collections after the sync


M_ARENA_MAX = -8  # a mallopt parameter, from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (musl has no malloc_trim: not glibc)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def tune_malloc() -> bool:
    """Cap glibc's malloc arenas at two. False when not on glibc.

    The event loop is one thread; the resolver's and the snapshot writer's short-lived
    threads would otherwise each get an arena of their own, kept for the process's life.
    """
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, 2))


def trim() -> bool:
    """Return the malloc heap's free pages to the kernel; True if any were released."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


def young_only() -> None:
    gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)


def maintenance(*, unfreeze: bool) -> tuple[int, float]:
    """Collect everything not frozen (everything, with ``unfreeze``), then freeze the survivors."""
    started = time.perf_counter()
    if unfreeze:
        gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    trim()
    return collected, time.perf_counter() - started


async def manage_heap(
    ready: asyncio.Event, *, young_interval: float = YOUNG_INTERVAL, trim_interval: float = 60.0,
    full_interval: float = 3600.0,
) -> None:
    """Run for the process's life: see the module's docstring."""
    young_only()  # the first sync allocates the whole cache: keep automatic runs small meanwhile
    await ready.wait()
    collected, took = maintenance(unfreeze=False)
    log.debug("heap frozen after sync: %d objects collected in %.0f ms", collected, took * 1000)
    loop = asyncio.get_running_loop()
    next_trim = loop.time() + trim_interval
    next_full = loop.time() + full_interval
    gc.disable()
    try:
        while True:
            await asyncio.sleep(young_interval)
            gc.collect(0)
            gc.freeze()
            now = loop.time()
            if now >= next_full:
                collected, took = maintenance(unfreeze=True)
                log.debug("heap full pass: %d objects collected in %.0f ms", collected, took * 1000)
                next_full = now + full_interval
                next_trim = now + trim_interval
            elif now >= next_trim:
                trim()
                next_trim = now + trim_interval
    finally:
        gc.enable()
