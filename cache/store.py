"""The upstream store: every upstream object of one resource as its JSON bytes.

Objects are kept as bytes, not decoded dicts: decoded JSON costs about ten times its text and,
being young, a garbage-collector scan per event (figures: bench/). Only the objects of a Service
some filter acts on are ever decoded again, to re-filter them. Bytes are never mutated, only
replaced, so a reader (the snapshot writer) can hold a list of them while the cache moves on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from cache.indexes import Index, Indexer
from kubeapi.resources import Resource
from kubeapi.types import JSONDict

F = TypeVar("F")


@dataclass(slots=True)
class Stored(Generic[F]):
    """One upstream object: its JSON, its resourceVersion, and the facts its indexes read."""

    raw: bytes
    rv: int
    facts: F

    def obj(self) -> JSONDict:
        decoded: JSONDict = orjson.loads(self.raw)
        return decoded


class Store(Generic[F]):
    """One resource's upstream objects, the upstream's resourceVersion for it, and its declared
    indexes, which every ``put`` and ``delete`` keeps in step. Owned and written by
    ``ClusterCache``; read by its planner and outputs, and by the snapshot writer."""

    def __init__(self, resource: Resource, indexes: Mapping[str, Index[F]] | None = None) -> None:
        self.resource = resource
        self.objects: dict[str, Stored[F]] = {}
        self.index: Indexer[F] = Indexer(indexes or {})
        self.rv = 0  # the highest upstream resourceVersion seen (list, event or bookmark)
        self.listed = False  # a full list arrived since the cache last (re)started loading

    def get(self, key: str) -> Stored[F] | None:
        return self.objects.get(key)

    def put(self, key: str, stored: Stored[F]) -> Stored[F] | None:
        """Keep ``stored`` as ``key``'s record; returns the record it replaces."""
        old = self.objects.get(key)
        # Indexes are functions of the facts: equal facts (most changes) leave them as they are.
        if old is None or (old.facts is not stored.facts and old.facts != stored.facts):
            self.index.update(key, old.facts if old is not None else None, stored.facts)
        self.objects[key] = stored
        return old

    def delete(self, key: str) -> Stored[F] | None:
        old = self.objects.pop(key, None)
        if old is not None:
            self.index.update(key, old.facts, None)
        return old

    def raw_items(self) -> list[bytes]:
        return [stored.raw for stored in self.objects.values()]

    def clear(self) -> None:
        self.objects = {}
        self.index.clear()
        self.rv = 0
        self.listed = False
