"""What every read served from a view shares: its settings, the waits for the first sync and for a
client's resourceVersion, and selectors as one predicate.

The reads themselves are ``wrapper/listing.py`` (list), ``wrapper/getting.py`` (get) and
``wrapper/watching.py`` (watch). They know HTTP and the List/Watch protocol; what the objects
contain (topology) was decided upstream of them, in the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from cache.reader import ViewReader
from kubeapi import status
from kubeapi.listoptions import ListOptions
from kubeapi.types import JSONDict

WRITE_BATCH_BYTES = 256 * 1024


@dataclass
class ServeSettings:
    bookmark_interval: float = 60.0
    # How long a request waits for a view that is behind the client's RV (the apiserver: 3 s).
    too_large_wait: float = 3.0
    # How long a request waits for the first sync before answering 429.
    sync_wait: float = 3.0
    # Watches without timeoutSeconds end after [min, 2*min), like the apiserver's minRequestTimeout.
    default_watch_timeout: float = 1800.0
    # A watcher further behind than this many history events gets a 410 and relists.
    max_backlog: int = 10_000
    # A client that takes longer than this to accept one write has stopped reading: cut it off
    # (--watch-write-timeout).
    write_timeout: float = 30.0
    # Watch writes are batches of about this many bytes (one more event at most): the bound on
    # what one watcher holds beyond the shared history and objects.
    write_batch_bytes: int = WRITE_BATCH_BYTES


Predicate = Callable[[JSONDict], bool]


def predicate(opts: ListOptions) -> Predicate | None:
    """The label and field selectors as one test of an object's selectable fields (None: all match)."""
    label, field = opts.label, opts.field
    if label is None and field is None:
        return None

    def match(obj: JSONDict) -> bool:
        if label is not None and not label.matches((obj.get("metadata") or {}).get("labels")):
            return False
        return field is None or field.matches(obj)

    return match


async def wait_synced(view: ViewReader, settings: ServeSettings) -> None:
    if view.synced:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.sync_wait
    while not view.synced and loop.time() < deadline:
        await view.wait(view.head(), deadline - loop.time())
    if not view.synced:
        # What the apiserver's cacher answers while it initializes; clients retry.
        raise status.too_many_requests(1, "storage is (re)initializing")


async def ensure_rv(view: ViewReader, rv: int, settings: ServeSettings) -> None:
    if rv > view.rv and not await view.wait_for_rv(rv, settings.too_large_wait):
        raise status.too_large_rv(rv, view.rv)
