"""The read side of a View: all the HTTP front (``wrapper/``) may use of the cache's served state.

``cache.view.View`` implements ``ViewReader``; ``wrapper/`` imports this module, never
``cache.view`` (an import contract in pyproject.toml holds it to that). What the front derives
from a view (list bodies, per-selection watch lines, the count of watchers) it keeps itself,
keyed by ``version`` and the events' ``seq``: nothing of the front's is written into the view.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from cache.view import Entry, Event, Expired, stamp
from kubeapi.resources import Resource
from kubeapi.selectors import FieldSelector

__all__ = ["Demand", "Entry", "Event", "Expired", "ViewReader", "stamp"]


class Demand(Protocol):
    """What the front tells the cache about its reads, for informers that run only while read
    (``cache.informers.Informers`` implements it: the lazy Endpoints informer)."""

    def lazy(self, resource: Resource) -> bool:
        """Whether ``resource``'s view is loaded only while clients read it."""
        ...

    def touch(self, resource: Resource) -> None:
        """A client asked for ``resource`` (list, get or watch): start its informer if it is not running."""
        ...

    def watching(self, resource: Resource) -> AbstractContextManager[None]:
        """Hold ``resource``'s informer for the length of a watch (``with``)."""
        ...


class ViewReader(Protocol):
    """One resource's served objects and their bounded event history, read-only.

    Served objects are ``Entry`` records in list-item JSON form; the history is ``Event``
    records at increasing cursors (``Event.seq``). Every method is cheap and none awaits except
    ``wait`` and ``wait_for_rv``.
    """

    @property
    def resource(self) -> Resource: ...

    @property
    def scope(self) -> FieldSelector | None:
        """The objects the view holds all of: those this field selector (equality requirements)
        matches; None for the whole collection. A read the scope does not cover is not the
        view's to answer (the front passes it through)."""
        ...

    @property
    def rv(self) -> int:
        """The resourceVersion a list served now carries."""
        ...

    @property
    def synced(self) -> bool:
        """Whether a full state has been loaded (until then reads wait, then get 429)."""
        ...

    @property
    def version(self) -> Hashable:
        """Changes whenever anything a list would return changes (objects or RV): what derived
        data, such as a joined list body, is cached by."""
        ...

    def get(self, key: str) -> Entry | None:
        """The object at ``namespace/name`` (``kubeapi.resources.key_of``)."""
        ...

    def count(self) -> int:
        """How many objects are served."""
        ...

    def sorted_entries(self) -> Iterator[Entry]:
        """The objects in key order, as lists return them."""
        ...

    def head(self) -> int:
        """The cursor for "from now on": the next event's ``seq``."""
        ...

    def oldest(self) -> int:
        """The cursor of the oldest event still in the history (``head()`` when it is empty)."""
        ...

    def cursor_after(self, rv: int) -> int:
        """Where a watch resuming at ``rv`` starts; raises Expired when it cannot resume there."""
        ...

    def read(self, cursor: int, limit: int = 1000) -> list[Event]:
        """Up to ``limit`` events from ``cursor`` on; raises Expired when ``cursor`` was evicted."""
        ...

    async def wait(self, cursor: int, timeout: float) -> None:
        """Until an event at or after ``cursor`` exists, ``timeout`` passes, or ``wake``."""
        ...

    async def wait_for_rv(self, rv: int, timeout: float) -> bool:
        """Until the view has reached ``rv``; False if ``timeout`` passed first."""
        ...

    def wake(self) -> None:
        """Release every ``wait`` now (the served state is untouched): the front's shutdown."""
        ...

    def typed(self, raw: bytes) -> bytes:
        """An entry's bytes with kind and apiVersion, as a single GET answers."""
        ...

    def watch_line(self, type_: str, raw: bytes) -> bytes:
        """The watch line for an event of ``type_`` on the object ``raw``."""
        ...

    def retype(self, line: bytes, type_: str) -> bytes:
        """The same watch line with another event type."""
        ...

    def bookmark_line(self, rv: int, *, initial_events_end: bool = False) -> bytes: ...

    def history_depth(self) -> int:
        """Events in the history now."""
        ...

    def stats(self) -> dict[str, Any]:
        """Objects, RV, sync state and history, for /debug/cache."""
        ...
