"""The process heap: when the cyclic garbage collector runs, and giving freed memory back.

Nearly everything the cache allocates is acyclic and freed by reference counting, yet CPython's
collector scans it: its young-generation trigger counts allocations minus deallocations, and in a
cache every new object replaces an old one, so young collections grew large and stalled the loop
for milliseconds at a time (measured on CPython 3.11; see bench/ and README "Benchmark").

The first sync runs with no collection at all: what it allocates is the cache, which survives,
and a young collection would only scan it (about 3% of the time to ready, bench/); the full pass
right after the sync finds the few cycles it made. A first sync still running after
``SYNC_GRACE`` seconds (a big cluster, or an apiserver that keeps failing) gets automatic young
collections again, so the cycles its failures leave cannot pile up while it retries.

After the first sync automatic collection is off, and a young collection runs on a timer
instead (its pause is bounded by what one interval can allocate); its survivors are frozen at
once, so no collection scans them again. Cycles that die after being frozen wait for the hourly
pass that unfreezes and collects everything. After the first sync and every minute,
``malloc_trim`` returns the malloc heap's free pages to the kernel. (The malloc arena cap is
``MALLOC_ARENA_MAX=2`` in the image and the DaemonSet, where glibc reads it at start.)

The collector's generations and thresholds differ between CPython minor versions, so the regime
applies by default only to the version it was measured on (``MEASURED_ON``); ``--gc-tuning``
forces it on or off. GC state is process-global: ``HEAP`` shares one schedule among every
wrapper of the process and restores the collector when the last one stops.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Literal

log = logging.getLogger("application_grid_wrapper.heap")

YOUNG_THRESHOLD = 2_000  # automatic young collections during a first sync past its grace
NEVER = 1_000_000_000  # older generations are left to the full pass
SYNC_GRACE = 2.0  # seconds of the first sync without any collection
YOUNG_INTERVAL = 0.05  # seconds between timed young collections after the sync

# The interpreter the regime was measured on (the image's, Dockerfile).
MEASURED_ON = (3, 11)

GcTuning = Literal["auto", "on", "off"]
GC_TUNING_MODES: tuple[GcTuning, ...] = ("auto", "on", "off")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    # glibc's soname first: ``find_library`` runs ldconfig in a subprocess, at every start.
    for name in ("libc.so.6", None):
        try:
            libc = ctypes.CDLL(name or ctypes.util.find_library("c"))
            libc.malloc_trim  # noqa: B018 (musl has no malloc_trim: not glibc)
        except (OSError, AttributeError, TypeError):
            continue
        return libc
    return None


_LIBC = _glibc()


def trim() -> bool:
    """Return the malloc heap's free pages to the kernel; True if any were released."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


def young_only(threshold: int = YOUNG_THRESHOLD) -> None:
    gc.set_threshold(threshold, NEVER, NEVER)


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
    ready: asyncio.Event, *, young_interval: float = YOUNG_INTERVAL, sync_grace: float = SYNC_GRACE,
    trim_interval: float = 60.0,
    full_interval: float = 3600.0, clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """The schedule, until cancelled: see the module's docstring. Wrappers run it through ``HEAP``;
    the benchmark's own processes run it directly. ``clock`` (default: the loop's) and ``sleep``
    are what the timed passes read and wait with: tests pass a fake clock's."""
    young_only(NEVER)  # the first sync allocates the cache, which survives: nothing to collect

    async def past_grace() -> None:
        await sleep(sync_grace)
        young_only()

    grace = asyncio.create_task(past_grace(), name="heap-sync-grace")
    try:
        await ready.wait()
    finally:
        grace.cancel()
    collected, took = maintenance(unfreeze=False)
    log.debug("heap frozen after sync: %d objects collected in %.0f ms", collected, took * 1000)
    now_of = clock if clock is not None else asyncio.get_running_loop().time
    next_trim = now_of() + trim_interval
    next_full = now_of() + full_interval
    gc.disable()
    try:
        while True:
            await sleep(young_interval)
            gc.collect(0)
            gc.freeze()
            now = now_of()
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


class HeapManager:
    """The process's heap regime, shared by every wrapper the process runs.

    Owns the schedule's task, the collector state saved before it started and the count of
    wrappers holding it. The first holder saves the collector's state, freezes what the process
    already holds and starts the schedule, which turns to its timed passes once any holder's
    cache has synced; the last holder to let go stops it and restores that state (automatic
    collection and thresholds as they were, nothing frozen). Freezing what the process holds at
    the first hold keeps the post-sync collection to what the wrappers allocated: a process that
    starts many wrappers (the tests) does not scan its whole heap for each. Called by
    ``wrapper.compose``: ``start_wrapper`` holds it, ``stop_wrapper`` lets go. One per process
    (``HEAP``); tests build their own to fake the interpreter version.
    """

    def __init__(self, version: tuple[int, int] | None = None) -> None:
        self.version = version if version is not None else (sys.version_info.major, sys.version_info.minor)
        self.holders = 0
        self._task: asyncio.Task[None] | None = None
        self._synced: asyncio.Event | None = None
        self._saved: tuple[bool, tuple[int, ...]] | None = None
        self._declined = False
        self._era = 0  # bumped at each restore: a hold from an earlier era has nothing left to release

    def applies(self, mode: GcTuning) -> bool:
        """Whether ``--gc-tuning=mode`` runs the regime under this interpreter (says once when not)."""
        if mode != "auto":
            return mode == "on"
        if self.version == MEASURED_ON:
            return True
        if not self._declined:
            self._declined = True
            log.info("CPython %d.%d: the heap regime (--gc-tuning) was measured on %d.%d only; CPython's garbage "
                     "collector and malloc are left at their defaults (--gc-tuning=on forces it)",
                     *self.version, *MEASURED_ON)
        return False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def hold(self, ready: asyncio.Event, mode: GcTuning = "auto") -> HeapHold | None:
        """Join the regime until ``HeapHold.release``; ``ready``: the holder's cache has synced.
        None when ``mode`` leaves the heap alone under this interpreter."""
        if not self.applies(mode):
            return None
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:
            # Its holders' event loop ended without them letting go: the regime ended with it.
            self._restore()
        if self.holders == 0:
            self._saved = (gc.isenabled(), gc.get_threshold())
            # What the process holds before a wrapper starts (imports, flags, config) lives as long
            # as the process: frozen now, so the post-sync collection scans only what wrappers allocated.
            gc.freeze()
            # At once, not when the schedule's task first runs: a snapshot restored right after
            # this call is the first sync's work, done before the loop runs anything else.
            young_only(NEVER)
            self._synced = asyncio.Event()
            self._task = loop.create_task(manage_heap(self._synced), name="heap")
        assert self._synced is not None
        self.holders += 1
        return HeapHold(self, ready, self._synced, self._era)

    async def _let_go(self, era: int) -> None:
        if era != self._era:
            return
        self.holders -= 1
        if self.holders > 0:
            return
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.wait([task])
        self._restore()

    def _restore(self) -> None:
        gc.unfreeze()
        if self._saved is not None:
            enabled, threshold = self._saved
            gc.set_threshold(*threshold)
            if enabled:
                gc.enable()
            else:
                gc.disable()
        self._saved = None
        self._task = None
        self._synced = None
        self.holders = 0
        self._era += 1


class HeapHold:
    """One wrapper's hold on the process's heap regime (``HeapManager.hold``)."""

    def __init__(self, manager: HeapManager, ready: asyncio.Event, synced: asyncio.Event, era: int) -> None:
        self._manager = manager
        self._era = era
        self._released = False
        self._forward: asyncio.Task[None] | None = None
        if ready.is_set():
            synced.set()
        else:
            self._forward = asyncio.create_task(self._when_ready(ready, synced), name="heap-ready")

    @staticmethod
    async def _when_ready(ready: asyncio.Event, synced: asyncio.Event) -> None:
        await ready.wait()
        synced.set()

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._forward is not None:
            self._forward.cancel()
        await self._manager._let_go(self._era)


HEAP = HeapManager()
