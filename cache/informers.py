"""Runs one reflector per cached resource, all feeding one ClusterCache.

It uses the apiserver client it is given; whoever created the client closes it.

It owns the reflectors' tasks, so it is also where they are coordinated: when one reflector
finds that the upstream's resourceVersions went back (a list below an RV already seen), every
resource has to be listed again on the new timeline, since RVs are one cluster-wide counter.
The cache is told to start over, and the other reflectors are restarted to relist at once
(their watches may still look healthy: the old RV can be valid on the new timeline too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cache.apiclient import ApiClient
from cache.cluster import ClusterCache
from cache.listwatch import Clock
from cache.reflector import Reflector, ReflectorSettings
from kubeapi.resources import ALL

log = logging.getLogger(__name__)


class Informers:
    """Owns the reflectors and their tasks. Created, started and stopped by ``wrapper.compose``;
    read by /readyz, metrics and debug pages."""

    def __init__(self, client: ApiClient, cache: ClusterCache, settings: ReflectorSettings | None = None,
                 *, clock: Clock = time.monotonic) -> None:
        self.client = client
        self.cache = cache
        self._clock = clock
        self.reflectors = {
            r.plural: Reflector(client, r, cache, settings, on_regression=self._timeline_went_back, clock=clock)
            for r in ALL
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._cancelled: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for reflector in self.reflectors.values():
            # A cache restored from disk: a first list below its RVs means the apiserver went back.
            reflector.rv = max(reflector.rv, self.cache.upstream_rv(reflector.resource))
            self._tasks.append(self._run(reflector))

    def _run(self, reflector: Reflector) -> asyncio.Task[None]:
        return asyncio.create_task(reflector.run(), name=f"reflector:{reflector.resource.plural}")

    def _timeline_went_back(self, source: Reflector, had: int, got: int) -> None:
        """``source`` listed at ``got`` after seeing ``had``: relist everything on the new timeline."""
        log.warning("the apiserver's resourceVersions went back (%s: %d, then %d): relisting every resource; "
                    "clients' watches will be ended with 410 Expired so they relist too",
                    source.resource.plural, had, got)
        self.cache.start_over()
        for i, (task, reflector) in enumerate(zip(self._tasks, self.reflectors.values(), strict=True)):
            if reflector is source:
                continue
            reflector.forget_rv()
            if not task.done():
                # Whatever it is doing (a healthy-looking watch, a list, a back-off) is on the old
                # timeline. Cancelling at an await point never leaves the cache half-applied.
                task.cancel()
                self._cancelled.add(task)
                task.add_done_callback(self._cancelled.discard)
            self._tasks[i] = self._run(reflector)

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._cancelled]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    @property
    def connected(self) -> bool:
        return all(r.state.connected for r in self.reflectors.values())

    def offline_for(self) -> float:
        """Seconds since some reflector lost the apiserver (0 while all are connected)."""
        since = [r.state.disconnected_since for r in self.reflectors.values() if not r.state.connected]
        return self._clock() - min(since) if since else 0.0
