"""Runs one reflector per cached resource, all feeding one ClusterCache."""

from __future__ import annotations

import asyncio
import contextlib
import time

from cache.cluster import ClusterCache
from cache.reflector import Reflector, ReflectorSettings
from cache.upstream import UpstreamClient
from kubeapi.resources import ALL


class Informers:
    def __init__(self, client: UpstreamClient, cache: ClusterCache, settings: ReflectorSettings | None = None) -> None:
        self.client = client
        self.cache = cache
        self.reflectors = {r.plural: Reflector(client, r, cache, settings) for r in ALL}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, reflector in self.reflectors.items():
            self._tasks.append(asyncio.create_task(reflector.run(), name=f"reflector:{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.client.close()

    @property
    def connected(self) -> bool:
        return all(r.state.connected for r in self.reflectors.values())

    def offline_for(self) -> float:
        """Seconds since some reflector lost the apiserver (0 while all are connected)."""
        since = [r.state.disconnected_since for r in self.reflectors.values() if not r.state.connected]
        return time.monotonic() - min(since) if since else 0.0
