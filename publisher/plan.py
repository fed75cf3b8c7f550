"""Which bucket ConfigMaps to write and delete so that they say what the cluster is: pure, no I/O.

``plan_buckets`` compares the buckets the nodes and the keys in use call for
(``kubeapi.node_topology``: ``bucket_count``, ``bucket_of``, ``encode_bucket``) with the ConfigMaps
that exist, and returns the writes: first every bucket of the target generation that is missing or
differs (a bucket someone edited into something that does not decode is simply one that differs),
then, once those are written, the deletion of everything else the bucket label selects (older
generations, leftovers, garbage). Readers take each node from the highest generation that lists
it, so no node is ever missing from their view while the buckets switch generations.

The generation moves on when the bucket count or the tracked keys change. The count grows as soon
as nodes exceed ``per_bucket`` on average, or a bucket's data would pass ``max_bytes``; it shrinks
only once a quarter of it would do, so a fleet hovering at a power-of-two boundary does not re-shard
on every join and leave.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from dataclasses import dataclass

from kubeapi.node_topology import (
    ANNOTATION_BUCKETS,
    ANNOTATION_GENERATION,
    ANNOTATION_KEYS,
    MAX_BUCKETS,
    NODES_PER_BUCKET,
    Bucket,
    InvalidBucket,
    bucket_count,
    bucket_name,
    bucket_of,
    decode_bucket,
    encode_bucket,
)
from kubeapi.types import JSONDict

# A ConfigMap's data may hold 1 MiB (keys and values); staying at half leaves room for long label
# values without ever meeting the apiserver's limit.
MAX_BUCKET_BYTES = 512 * 1024
_OURS = (ANNOTATION_BUCKETS, ANNOTATION_KEYS, ANNOTATION_GENERATION)


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``body``: create it (``replaces`` None) or replace ``replaces`` (its resourceVersion
    is the precondition)."""

    body: JSONDict
    replaces: JSONDict | None

    @property
    def name(self) -> str:
        name: str = self.body["metadata"]["name"]
        return name


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``name`` if it is still at ``resource_version``."""

    name: str
    resource_version: str


@dataclass(frozen=True, slots=True)
class Plan:
    generation: int
    buckets: int
    keys: frozenset[str]
    nodes: int
    puts: tuple[Put, ...]  # first, all of them
    deletes: tuple[Delete, ...]  # only once every put is done
    invalid: tuple[tuple[str, str], ...]  # (name, why) of selected ConfigMaps that are no bucket

    @property
    def empty(self) -> bool:
        return not self.puts and not self.deletes


def tracked_labels(labels: Mapping[str, Mapping[str, str]], keys: Set[str]) -> dict[str, dict[str, str]]:
    """Each node's labels among ``keys`` (``{}`` for a node with none: its presence matters too)."""
    return {node: {k: v for k in keys if (v := node_labels.get(k)) is not None}
            for node, node_labels in labels.items()}


def choose_bucket_count(nodes: int, current: int | None, per_bucket: int = NODES_PER_BUCKET) -> int:
    need = bucket_count(nodes, per_bucket)
    if current is None or current & (current - 1) or need > current:  # none yet, not a power of two, too few
        return need
    return need if need * 4 <= current else current


def _data_bytes(entries: Mapping[str, str], buckets: int) -> int:
    """The largest bucket's data size, counted as the apiserver counts it (keys plus values)."""
    sizes = [0] * buckets
    for node, value in entries.items():
        sizes[bucket_of(node, buckets)] += len(node) + len(value)
    return max(sizes)


def _same(existing: JSONDict, desired: JSONDict) -> bool:
    """Whether ``existing`` already says what ``desired`` says (labels and annotations of others kept)."""
    if (existing.get("data") or {}) != desired["data"] or existing.get("binaryData"):
        return False
    annotations = existing["metadata"].get("annotations") or {}
    labels = existing["metadata"].get("labels") or {}
    meta = desired["metadata"]
    return (all(annotations.get(k) == meta["annotations"][k] for k in _OURS)
            and all(labels.get(k) == v for k, v in meta["labels"].items()))


def plan_buckets(labels: Mapping[str, Mapping[str, str]], keys: Set[str], existing: Mapping[str, JSONDict], *,
                 namespace: str, per_bucket: int = NODES_PER_BUCKET, max_bytes: int = MAX_BUCKET_BYTES) -> Plan:
    """The writes that make ``existing`` (name -> ConfigMap, all the bucket selector selects) hold
    ``labels`` (node -> all its labels) under the tracked ``keys``."""
    valid: dict[str, Bucket] = {}
    invalid: list[tuple[str, str]] = []
    for name, cm in existing.items():
        try:
            valid[name] = decode_bucket(cm)
        except InvalidBucket as exc:
            invalid.append((name, str(exc)))
    newest = max((b.generation for b in valid.values()), default=None)
    current = [b for b in valid.values() if b.generation == newest]
    counts = {b.buckets for b in current}
    current_count = counts.pop() if len(counts) == 1 else None

    nodes = tracked_labels(labels, keys)
    buckets = choose_bucket_count(len(nodes), current_count, per_bucket)
    entries = {node: json.dumps(dict(sorted(ls.items())), separators=(",", ":")) for node, ls in nodes.items()}
    while buckets < MAX_BUCKETS and entries and _data_bytes(entries, buckets) > max_bytes:
        buckets *= 2

    tracked = frozenset(keys)
    if newest is not None and current_count == buckets and all(b.keys == tracked for b in current):
        generation = newest
    else:
        generation = (newest or 0) + 1

    members: list[dict[str, dict[str, str]]] = [{} for _ in range(buckets)]
    for node, node_labels in nodes.items():
        members[bucket_of(node, buckets)][node] = node_labels
    puts: list[Put] = []
    wanted: set[str] = set()
    for index in range(buckets):
        desired = encode_bucket(index, buckets, generation, tracked, members[index], namespace)
        name = bucket_name(generation, index)
        wanted.add(name)
        have = existing.get(name)
        if have is None or not _same(have, desired):
            puts.append(Put(desired, have))
    deletes = tuple(Delete(name, str(cm["metadata"].get("resourceVersion", "")))
                    for name, cm in sorted(existing.items()) if name not in wanted)
    return Plan(generation, buckets, tracked, len(nodes), tuple(puts), deletes, tuple(sorted(invalid)))
