"""A raw watch on the wrapper whose events are kept, in order, while the test changes the cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson


class WatchLog:
    """``GET path?watch=true&...`` from ``resource_version``; every event line decoded into ``events``."""

    def __init__(self, base_url: str, path: str, resource_version: str, **selectors: str) -> None:
        query = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "300",
                 "resourceVersion": resource_version, **selectors}
        self.url = f"{base_url}{path}?{urlencode(sorted(query.items()))}"
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()

    async def __aenter__(self) -> WatchLog:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        assert self._session is not None
        async with self._session.get(self.url) as resp:
            assert resp.status == 200, await resp.text()
            self._opened.set()
            async for raw in resp.content:
                if raw.strip():
                    self.events.append(orjson.loads(raw))
                    self._changed.set()

    def changes(self) -> list[tuple[str, str]]:
        """(type, name) of every event but bookmarks."""
        return [(e["type"], e["object"]["metadata"]["name"]) for e in self.events if e["type"] != "BOOKMARK"]

    async def wait_for(self, predicate: Callable[[WatchLog], bool], what: str, timeout: float = 10) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"watch {self.url}: never saw {what}; saw {self.changes()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
