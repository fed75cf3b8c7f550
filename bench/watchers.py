"""A lightweight kube-proxy-style EndpointSlice watcher for measuring delivery times.

It opens the same WATCH kube-proxy opens (its label selector, bookmarks, JSON, no gzip) from a
given resourceVersion, and time-stamps each received chunk once. It does not decode objects: it
finds the ``bench/tag`` annotation and MODIFIED lines in the raw bytes, so twenty of them can
follow 2,000 events/s from one process. (tests/support/reflector.py decodes and stores every
object, which would make the bench process the bottleneck.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from urllib.parse import urlencode

import aiohttp
import orjson

SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
KUBE_PROXY_SELECTOR = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
_TAG = re.compile(rb'"bench/tag":"(\d+)"')
_MODIFIED = b'{"type":"MODIFIED"'
HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}


async def current_rv(session: aiohttp.ClientSession, base: str) -> int:
    """The resourceVersion of ``base``'s EndpointSlice list, via a list that matches nothing."""
    q = urlencode({"labelSelector": "bench.invalid/none=x"})
    async with session.get(f"{base}{SLICES}?{q}", headers=HEADERS) as resp:
        doc = orjson.loads(await resp.read())
    return int(doc["metadata"]["resourceVersion"])


class Watcher:
    def __init__(self, session: aiohttp.ClientSession, base: str, rv: int) -> None:
        self.session = session
        self.base = base
        self.rv = rv
        self.tags: dict[int, float] = {}  # tag -> first receive time
        self.lines = 0
        self.bytes = 0
        self.modified: list[tuple[float, int]] = []  # (receive time, MODIFIED lines in the chunk)
        self.errors: list[str] = []
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        q = urlencode({"labelSelector": KUBE_PROXY_SELECTOR, "resourceVersion": str(self.rv),
                       "allowWatchBookmarks": "true", "timeoutSeconds": "1800", "watch": "1"})
        try:
            async with self.session.get(f"{self.base}{SLICES}?{q}", headers=HEADERS) as resp:
                if resp.status != 200:
                    self.errors.append(f"HTTP {resp.status}")
                    return
                self.connected.set()
                buf = b""
                tags = self.tags
                async for chunk in resp.content.iter_any():
                    now = time.monotonic()
                    data = buf + chunk if buf else chunk
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        buf = data
                        continue
                    done, buf = data[: cut + 1], data[cut + 1:]
                    self.lines += done.count(b"\n")
                    self.bytes += len(done)
                    for m in _TAG.finditer(done):
                        tags.setdefault(int(m.group(1)), now)
                    n = done.count(_MODIFIED)
                    if n:
                        self.modified.append((now, n))
                    if b'{"type":"ERROR"' in done:
                        self.errors.append(done[done.find(b'{"type":"ERROR"'):][:300].decode(errors="replace"))
        except (aiohttp.ClientError, OSError) as exc:
            self.errors.append(repr(exc))
        finally:
            self.connected.set()
            self.ended.set()


async def open_watchers(session: aiohttp.ClientSession, base: str, n: int, timeout: float = 10.0) -> list[Watcher]:
    """``n`` watchers from ``base``'s current RV, each with its response headers received."""
    rv = await current_rv(session, base)
    ws = [Watcher(session, base, rv) for _ in range(n)]
    for w in ws:
        w.start()
    await asyncio.wait_for(asyncio.gather(*(w.connected.wait() for w in ws)), timeout)
    return ws
