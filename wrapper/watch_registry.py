"""The open watches of one HTTP front, and what watches of one view share."""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from aiohttp import web

from cache.reader import Entry, ViewReader
from wrapper.writers import SelectionLines

# Why the wrapper ended a client's watch on its own (metric label values).
CUT_OFF_WRITE_TIMEOUT = "write_timeout"  # no progress writing for the write timeout: connection aborted
CUT_OFF_FELL_BEHIND = "fell_behind"  # too far behind the history: 410 Expired, the client relists


@dataclass
class WatchInfo:
    """One open client watch, for the debug page and metrics."""

    resource: str
    query: str
    peer: str
    started: float
    view: ViewReader
    cursor: int = 0
    events_out: int = 0

    @property
    def backlog(self) -> int:
        """History events not yet sent to this client (selectors may skip some)."""
        return max(self.view.head() - self.cursor, 0)


class WatchRegistry:
    """The open watches of one HTTP front and what they share.

    Owns: each open watch's record, response and task (so shutdown can end them and /debug/cache,
    metrics and tests can count them), the watchers per resource, the totals of events sent and of
    watches cut off, and what the watches of one view share: a ``SelectionLines`` per selection
    (dropped with its last watcher) and the view's state ordered by resourceVersion at its
    current version (shared by every watch that starts from it). Built by ``wrapper.compose``
    (or ``build_app``); each ``WatchSession`` opens and closes its watch here; the front sets
    ``closing`` at shutdown; Debug and Metrics read it.
    """

    def __init__(self) -> None:
        self.open: weakref.WeakSet[web.StreamResponse] = weakref.WeakSet()
        self.tasks: set[asyncio.Task[object]] = set()
        self.watches: dict[asyncio.Task[object], WatchInfo] = {}
        self.closing = False
        self.events_out = 0
        self.cut_off: Counter[str] = Counter()
        self._watchers: Counter[str] = Counter()
        self._shared: dict[tuple[ViewReader, str], SelectionLines] = {}
        self._states: dict[ViewReader, tuple[Hashable, list[Entry]]] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def watchers(self, resource: str) -> int:
        """Watches open now on ``resource`` (its plural)."""
        return self._watchers[resource]

    def open_watch(self, task: asyncio.Task[object], resp: web.StreamResponse, info: WatchInfo) -> None:
        self.open.add(resp)
        self.tasks.add(task)
        self.watches[task] = info
        self._watchers[info.resource] += 1

    def close_watch(self, task: asyncio.Task[object], info: WatchInfo) -> None:
        self.tasks.discard(task)
        if self.watches.pop(task, None) is not None:
            self._watchers[info.resource] -= 1

    def join(self, view: ViewReader, selection: str) -> SelectionLines:
        """The lines shared by the watchers of ``selection`` on ``view``; ``leave`` when done."""
        shared = self._shared.get((view, selection))
        if shared is None:
            shared = self._shared[(view, selection)] = SelectionLines()
        shared.watchers += 1
        return shared

    def leave(self, view: ViewReader, selection: str) -> None:
        shared = self._shared.get((view, selection))
        if shared is not None:
            shared.watchers -= 1
            if shared.watchers <= 0:
                del self._shared[(view, selection)]
                # Its lines go now, even if something still holds the object.
                shared.lines = []

    def state_by_rv(self, view: ViewReader) -> tuple[int, int, list[Entry]]:
        """(cursor, resourceVersion, entries oldest RV first) of the view's current state; the
        list points at the view's own entries and is shared by watches starting at one version."""
        version = view.version
        held = self._states.get(view)
        if held is None or held[0] != version:
            held = (version, sorted(view.sorted_entries(), key=_entry_rv))
            self._states[view] = held
        return view.head(), view.rv, held[1]


def _entry_rv(e: Entry) -> int:
    return e.rv
