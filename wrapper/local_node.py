"""Makes a --hostname that names no Node of the cluster loud.

With the local node unknown, no Node's labels can match the local node's topology domain:
every opted-in Service whose keys do not end with "*" gets no endpoints (others are served
unchanged), and a kube-proxy running under the same name sees no Node in its own Node watch.
A typo there is silent otherwise, so once the cache has synced this
logs a warning at once, again every ``repeat_every`` seconds while the node stays missing, and
one line when it appears. /readyz and the ``local_node_known`` metric read the cache directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cache.cluster import ClusterCache
from kubeapi.resources import NODES

log = logging.getLogger(__name__)

DEFAULT_REPEAT = 300.0


class LocalNodeMonitor:
    """Logs whether the local node is among the cached Nodes; started and stopped by ``wrapper.compose``."""

    def __init__(self, cache: ClusterCache, repeat_every: float = DEFAULT_REPEAT) -> None:
        self.cache = cache
        self.repeat_every = repeat_every
        self.missing = False
        self._last_warning = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="local-node-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def check(self, now: float) -> float:
        """Log what changed at monotonic time ``now``; returns the seconds until a check is due."""
        if not self.cache.ready_event.is_set():
            return self.repeat_every
        node = self.cache.local_node
        if self.cache.local_node_known:
            if self.missing:
                log.info('local node "%s" is now among the cluster\'s Nodes; topology filtering applies', node)
                self.missing = False
            return self.repeat_every
        if not self.missing or now - self._last_warning >= self.repeat_every:
            self.missing = True
            self._last_warning = now
            log.warning('local node "%s" not found among the cluster\'s %d Nodes (check --hostname): opted-in '
                        'Services get no endpoints on this node unless their topology keys end with "*"',
                        node, len(self.cache.node_labels))
        return max(self._last_warning + self.repeat_every - now, 0.0)

    async def _run(self) -> None:
        await self.cache.ready_event.wait()
        view = self.cache.views[NODES.plural]
        loop = asyncio.get_running_loop()
        while True:
            cursor = view.head()
            due = self.check(loop.time())
            # Wakes on every change of the Nodes view (and on a reload), or when a repeat is due.
            await view.wait(cursor, due)
