"""Declared indexes over a resource's objects, in the manner of client-go's ``Indexers``, and
the cache's own: their names, functions and fact records.

Each index has a name and a function from an object's facts (a small record the cache computes
once per object version, never the decoded object) to the values it is filed under. One
``Indexer.update`` maintains every index of a store for a change, and each kind of index drops
what a change empties in its one ``update``, so no caller keeps an index by hand.

Two kinds: ``KeysIndex`` files the object's key (client-go's); ``OwnersIndex`` files the
object's owner, counted, so that several objects of one owner (a Service's EndpointSlices and
its Endpoints) file it once; stores may share one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping, Set
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from filters.pipeline import Policies
from kubeapi.resources import key_of
from kubeapi.types import JSONDict

F = TypeVar("F")
F_contra = TypeVar("F_contra", contravariant=True)
IndexFunc = Callable[[F], Collection[str]]

_NONE: frozenset[str] = frozenset()


class Index(Protocol[F_contra]):
    def update(self, key: str, old: F_contra | None, new: F_contra | None) -> None: ...

    def get(self, value: str) -> Set[str]: ...

    def values(self) -> Set[str]:
        """Every value something is filed under (live: do not keep or change it)."""
        ...

    def __len__(self) -> int: ...

    def clear(self) -> None: ...


class KeysIndex(Generic[F]):
    """Value -> the keys of the objects filed under it."""

    def __init__(self, func: IndexFunc[F]) -> None:
        self._func = func
        self._keys: dict[str, set[str]] = {}

    def update(self, key: str, old: F | None, new: F | None) -> None:
        if old is None and new is not None:  # the common case, every object of a list
            for value in self._func(new):
                keys = self._keys.get(value)
                if keys is None:
                    self._keys[value] = {key}
                else:
                    keys.add(key)
            return
        before = self._func(old) if old is not None else _NONE
        after = self._func(new) if new is not None else _NONE
        if before == after:
            return
        for value in before:
            if value not in after:
                keys = self._keys[value]
                keys.discard(key)
                if not keys:
                    del self._keys[value]
        for value in after:
            if value not in before:
                self._keys.setdefault(value, set()).add(key)

    def get(self, value: str) -> Set[str]:
        return self._keys.get(value, _NONE)

    def values(self) -> Set[str]:
        return self._keys.keys()

    def __len__(self) -> int:
        """How many values have something filed under them."""
        return len(self._keys)

    def clear(self) -> None:
        self._keys.clear()


class OwnersIndex(Generic[F]):
    """Value -> the owners of the objects filed under it; an object without an owner is not filed."""

    def __init__(self, func: IndexFunc[F], owner: Callable[[F], str | None]) -> None:
        self._func = func
        self._owner = owner
        self._counts: dict[str, dict[str, int]] = {}

    def update(self, key: str, old: F | None, new: F | None) -> None:
        if old is None:  # the common case, every object of a list
            if new is not None and (owner := self._owner(new)) is not None:
                self._add(self._func(new), owner)
            return
        old_owner = self._owner(old)
        new_owner = self._owner(new) if new is not None else None
        before = self._func(old) if old_owner is not None else _NONE
        after = self._func(new) if new is not None and new_owner is not None else _NONE
        moved = old_owner != new_owner
        if not moved and before == after:
            return
        if old_owner is not None:
            for value in before:
                if moved or value not in after:
                    self._remove(value, old_owner)
        if new_owner is not None:
            self._add(after if moved else [v for v in after if v not in before], new_owner)

    def _add(self, values: Collection[str], owner: str) -> None:
        counts_by_value = self._counts
        for value in values:
            counts = counts_by_value.get(value)
            if counts is None:
                counts_by_value[value] = {owner: 1}
            else:
                counts[owner] = counts.get(owner, 0) + 1

    def _remove(self, value: str, owner: str) -> None:
        counts = self._counts[value]
        counts[owner] -= 1
        if not counts[owner]:
            del counts[owner]
            if not counts:
                del self._counts[value]

    def get(self, value: str) -> Set[str]:
        counts = self._counts.get(value)
        return counts.keys() if counts is not None else _NONE

    def values(self) -> Set[str]:
        return self._counts.keys()

    def __len__(self) -> int:
        """How many values have an owner filed under them."""
        return len(self._counts)

    def clear(self) -> None:
        self._counts.clear()


class Indexer(Generic[F]):
    """The declared indexes of one ``cache.store.Store``, by name: the store calls ``update`` on
    every change; the cache's planner and outputs read ``get``."""

    def __init__(self, indexes: Mapping[str, Index[F]]) -> None:
        self._indexes = dict(indexes)
        self._updates = tuple(index.update for index in self._indexes.values())

    def update(self, key: str, old: F | None, new: F | None) -> None:
        """``key``'s facts went from ``old`` to ``new`` (None: absent)."""
        for update in self._updates:
            update(key, old, new)

    def get(self, name: str, value: str) -> Set[str]:
        """What index ``name`` files under ``value`` (live: do not keep or change it)."""
        return self._indexes[name].get(value)

    def values(self, name: str) -> Set[str]:
        """Every value index ``name`` files something under (live: do not keep or change it)."""
        return self._indexes[name].values()

    def clear(self) -> None:
        for index in self._indexes.values():
            index.clear()


# ---- the cache's declared indexes ----------------------------------------------------------

BY_LABEL_READ = "label"  # Services by a node label key their policies read (any filter's)
# Per filter (values made by ``filed_under``), for the filters' own account of a Node change:
BY_FILTER_LABEL_READ = "filter-label"  # Services by (filter, a node label key its policy reads)
BY_FILTER_PRESENCE_READ = "filter-presence"  # Services by a filter whose policy reads which nodes exist
BY_FILTER_LOCAL_LABEL_READ = "filter-local-label"  # by (filter, a local node label key its policy reads)
BY_SERVICE = "service"  # EndpointSlices by their Service
BY_NODE = "node"  # Services by the nodes of their EndpointSlices' and Endpoints' endpoints

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_intern = sys.intern


@dataclass(slots=True)
class Refs:
    """The facts of an EndpointSlice or Endpoints: its Service, and the nodes of its endpoints."""

    service: str | None
    nodes: frozenset[str]


def slice_refs(_key: str, obj: JSONDict) -> Refs:
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    # Interned: the same few node names are held by thousands of index entries.
    return Refs(key_of(meta.get("namespace"), name) if name else None,
                frozenset(_intern(n) for e in obj.get("endpoints") or () if (n := e.get("nodeName"))))


def endpoints_refs(key: str, obj: JSONDict) -> Refs:
    """An Endpoints object is its Service's: same namespace and name."""
    return Refs(key, frozenset(
        _intern(n) for sub in obj.get("subsets") or ()
        for field in ("addresses", "notReadyAddresses") for a in sub.get(field) or () if (n := a.get("nodeName"))
    ))


def service_indexes() -> dict[str, Index[Policies]]:
    """A Service is filed under what its policies read about Nodes."""
    return {
        BY_LABEL_READ: KeysIndex(lambda p: p.reads.label_keys),
        BY_FILTER_LABEL_READ: KeysIndex(lambda p: [filed_under(name, key) for name, reads in p.reads_by_filter
                                                   for key in reads.label_keys]),
        BY_FILTER_PRESENCE_READ: KeysIndex(lambda p: [name for name, reads in p.reads_by_filter
                                                      if reads.node_presence]),
        BY_FILTER_LOCAL_LABEL_READ: KeysIndex(lambda p: [filed_under(name, key) for name, reads in p.reads_by_filter
                                                         for key in reads.local_labels]),
    }


def filed_under(reader: str, key: str) -> str:
    """The value a Service is filed under when the policy of filter ``reader`` reads ``key``
    (a filter's name has no NUL, so the pair is unambiguous)."""
    return f"{reader}\x00{key}"


def reference_indexes() -> tuple[dict[str, Index[Refs]], dict[str, Index[Refs]]]:
    """The EndpointSlices' and the Endpoints' indexes; both file their Service under their
    endpoints' nodes, in one shared index."""
    services_by_node: OwnersIndex[Refs] = OwnersIndex(lambda r: r.nodes, owner=lambda r: r.service)
    return ({BY_SERVICE: KeysIndex(lambda r: (r.service,) if r.service else ()), BY_NODE: services_by_node},
            {BY_NODE: services_by_node})
