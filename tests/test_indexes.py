"""Declared indexes (cache/indexes.py): one update per change keeps every index exact and sparse."""

from __future__ import annotations

from dataclasses import dataclass

from cache.indexes import Indexer, KeysIndex, OwnersIndex


@dataclass(frozen=True)
class Facts:
    owner: str | None
    nodes: frozenset[str]


def facts(owner: str | None, *nodes: str) -> Facts:
    return Facts(owner, frozenset(nodes))


def test_one_update_maintains_every_index_and_drops_what_it_empties() -> None:
    by_node: KeysIndex[Facts] = KeysIndex(lambda f: f.nodes)
    by_owner: KeysIndex[Facts] = KeysIndex(lambda f: (f.owner,) if f.owner else ())
    indexer = Indexer({"node": by_node, "owner": by_owner})
    indexer.update("s1", None, facts("svc-a", "n1", "n2"))
    indexer.update("s2", None, facts("svc-a", "n2"))
    assert indexer.get("node", "n2") == {"s1", "s2"} and indexer.get("owner", "svc-a") == {"s1", "s2"}
    indexer.update("s1", facts("svc-a", "n1", "n2"), facts("svc-b", "n3"))
    assert indexer.get("node", "n1") == set() and indexer.get("node", "n3") == {"s1"}
    assert indexer.get("owner", "svc-a") == {"s2"} and indexer.get("owner", "svc-b") == {"s1"}
    indexer.update("s1", facts("svc-b", "n3"), None)
    indexer.update("s2", facts("svc-a", "n2"), None)
    # Nothing is left behind, not even empty sets.
    assert len(by_node) == 0 and len(by_owner) == 0


def test_an_owners_index_files_an_owner_once_while_any_of_its_objects_is_filed() -> None:
    owners: OwnersIndex[Facts] = OwnersIndex(lambda f: f.nodes, owner=lambda f: f.owner)
    slices, endpoints = Indexer({"node": owners}), Indexer({"node": owners})  # two stores, one index
    slices.update("ns/a-1", None, facts("ns/a", "n1"))
    slices.update("ns/a-2", None, facts("ns/a", "n1", "n2"))
    endpoints.update("ns/a", None, facts("ns/a", "n2"))
    slices.update("ns/orphan", None, facts(None, "n1"))  # a slice without a Service files nothing
    assert set(slices.get("node", "n1")) == {"ns/a"} and set(endpoints.get("node", "n2")) == {"ns/a"}
    slices.update("ns/a-2", facts("ns/a", "n1", "n2"), None)
    assert set(owners.get("n1")) == {"ns/a"} and set(owners.get("n2")) == {"ns/a"}  # still filed by others
    slices.update("ns/a-1", facts("ns/a", "n1"), facts("ns/b", "n1"))
    assert set(owners.get("n1")) == {"ns/b"}
    endpoints.update("ns/a", facts("ns/a", "n2"), None)
    slices.update("ns/a-1", facts("ns/b", "n1"), None)
    assert len(owners) == 0
