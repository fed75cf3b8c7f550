"""Node topology buckets: each Node's topology labels, published once per cluster in a few ConfigMaps.

A wrapper needs, of every Node, only its name and the labels that topology decisions read (the
label keys Services' topologyKeys name, the OpenYurt pool label, ...), which change rarely. A
cluster-level publisher writes them into ConfigMaps, and every wrapper watches those instead of
every Node (whose status heartbeats would cost each wrapper a few KB per node every few minutes).

The format, written by the publisher and read by the wrappers' bucket feed:

- ConfigMaps in one namespace, labelled ``BUCKET_LABELS``, named ``node-topology-<g>-<k>`` for
  bucket ``k`` in ``[0, B)`` of generation ``g``; a node's bucket is ``bucket_of(name, B)`` (a stable
  hash), and ``B`` grows in powers of two so that no bucket holds more than ``NODES_PER_BUCKET``
  nodes (no object grows without bound; a ConfigMap holds at most 1 MiB).
- ``data``: node name -> a JSON object of that node's labels among the tracked keys (``{}`` for a
  node that has none of them: its presence matters too).
- annotations: ``ANNOTATION_BUCKETS`` (``B``), ``ANNOTATION_KEYS`` (a JSON list of the tracked label
  keys) and ``ANNOTATION_GENERATION`` (bumped whenever ``B`` or the tracked keys change).

While the publisher re-shards or changes the tracked keys, it writes the new generation's buckets
(new names) before it deletes the old generation's, so a reader that takes, for each node, the entry of the
highest generation among all buckets always sees every node (``BucketSet``).

Pure: no I/O. Used by ``publisher/`` (writes) and ``cache/`` (reads).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeapi.strconv import NumError, parse_uint

BUCKET_LABELS: Mapping[str, str] = {
    "app.kubernetes.io/name": "application-grid-wrapper",
    "app.kubernetes.io/component": "node-topology",
}
LABEL_SELECTOR = ",".join(f"{k}={v}" for k, v in sorted(BUCKET_LABELS.items()))
NAME_PREFIX = "node-topology-"
ANNOTATION_BUCKETS = "topology.application-grid-wrapper.io/buckets"
ANNOTATION_KEYS = "topology.application-grid-wrapper.io/keys"
ANNOTATION_GENERATION = "topology.application-grid-wrapper.io/generation"
NODES_PER_BUCKET = 1000
MAX_BUCKETS = 1 << 12

NodeLabels = dict[str, str]


def bucket_count(nodes: int, per_bucket: int = NODES_PER_BUCKET) -> int:
    """The smallest power of two ``B`` with at most ``per_bucket`` nodes per bucket on average."""
    buckets = 1
    while nodes > buckets * per_bucket and buckets < MAX_BUCKETS:
        buckets *= 2
    return buckets


def bucket_of(node: str, buckets: int) -> int:
    """A node's bucket: stable across processes and versions (not Python's salted ``hash``)."""
    digest = hashlib.sha256(node.encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def bucket_name(generation: int, index: int) -> str:
    return f"{NAME_PREFIX}{generation}-{index}"


@dataclass(frozen=True)
class Bucket:
    """One decoded bucket ConfigMap."""

    name: str
    index: int
    buckets: int
    generation: int
    keys: frozenset[str]
    nodes: Mapping[str, NodeLabels]


def encode_bucket(index: int, buckets: int, generation: int, keys: Iterable[str],
                  nodes: Mapping[str, Mapping[str, str]], namespace: str) -> dict[str, Any]:
    """The ConfigMap (without resourceVersion) holding ``nodes`` (name -> tracked labels) of bucket ``index``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": bucket_name(generation, index),
            "namespace": namespace,
            "labels": dict(BUCKET_LABELS),
            "annotations": {
                ANNOTATION_BUCKETS: str(buckets),
                ANNOTATION_KEYS: json.dumps(sorted(keys), separators=(",", ":")),
                ANNOTATION_GENERATION: str(generation),
            },
        },
        "data": {name: json.dumps(dict(sorted(labels.items())), separators=(",", ":"))
                 for name, labels in sorted(nodes.items())},
    }


class InvalidBucket(ValueError):
    """A ConfigMap that is not a well-formed bucket; ``str()`` says why."""


def _count(annotations: Mapping[str, Any], key: str) -> int:
    try:
        return parse_uint(str(annotations.get(key, "")))
    except NumError:
        raise InvalidBucket(f"annotation {key} is not a count: {str(annotations.get(key))[:64]!r}") from None


def decode_bucket(cm: Mapping[str, Any]) -> Bucket:
    """The bucket in a ConfigMap, or InvalidBucket."""
    meta = cm.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise InvalidBucket("no metadata.name")
    name = meta["name"]
    gen_text, _, index_text = name.removeprefix(NAME_PREFIX).partition("-")
    try:
        if not name.startswith(NAME_PREFIX):
            raise NumError("ParseUint", name, "no prefix")
        named_generation, index = parse_uint(gen_text), parse_uint(index_text)
    except NumError:
        raise InvalidBucket(f"{name}: not named {NAME_PREFIX}<generation>-<index>") from None
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        raise InvalidBucket(f"{name}: no annotations")
    buckets = _count(annotations, ANNOTATION_BUCKETS)
    generation = _count(annotations, ANNOTATION_GENERATION)
    if generation != named_generation:
        raise InvalidBucket(f"{name}: annotated generation {generation}")
    if not 0 <= index < buckets <= MAX_BUCKETS:
        raise InvalidBucket(f"{name}: index {index} outside {buckets} buckets")
    try:
        keys = json.loads(str(annotations.get(ANNOTATION_KEYS, "")))
    except ValueError:
        raise InvalidBucket(f"{name}: annotation {ANNOTATION_KEYS} is not JSON") from None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InvalidBucket(f"{name}: annotation {ANNOTATION_KEYS} is not a list of label keys")
    data = cm.get("data") or {}
    if not isinstance(data, dict):
        raise InvalidBucket(f"{name}: data is not a map")
    nodes: dict[str, NodeLabels] = {}
    for node, raw in data.items():
        try:
            labels = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            labels = None
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise InvalidBucket(f"{name}: node {str(node)[:64]!r} has no label map")
        nodes[str(node)] = labels
    return Bucket(name, index, buckets, generation, frozenset(keys), nodes)


@dataclass
class BucketSet:
    """What a wrapper knows from the buckets it has seen: every node's labels, from the highest
    generation that lists it. ``put``/``remove`` return the nodes whose labels changed (None: gone)."""

    buckets: dict[str, Bucket] = field(default_factory=dict)
    nodes: dict[str, NodeLabels] = field(default_factory=dict)
    _source: dict[str, tuple[int, str]] = field(default_factory=dict)  # node -> (generation, bucket)

    def put(self, bucket: Bucket) -> dict[str, NodeLabels | None]:
        old = self.buckets.get(bucket.name)
        self.buckets[bucket.name] = bucket
        touched = set(bucket.nodes) | (set(old.nodes) if old is not None else set())
        return self._resolve(touched)

    def remove(self, name: str) -> dict[str, NodeLabels | None]:
        old = self.buckets.pop(name, None)
        return self._resolve(set(old.nodes)) if old is not None else {}

    def replace(self, buckets: Iterable[Bucket]) -> dict[str, NodeLabels | None]:
        """A full list of buckets (a relist): the changes against what was known."""
        before = set(self.nodes)
        self.buckets = {b.name: b for b in buckets}
        touched = before.union(*(b.nodes for b in self.buckets.values()))
        return self._resolve(touched)

    @property
    def keys(self) -> frozenset[str]:
        """The label keys the newest generation tracks (empty before any bucket)."""
        newest = max(self.buckets.values(), key=lambda b: b.generation, default=None)
        return newest.keys if newest is not None else frozenset()

    def _resolve(self, touched: set[str]) -> dict[str, NodeLabels | None]:
        changes: dict[str, NodeLabels | None] = {}
        for node in touched:
            best: tuple[int, str] | None = None
            for bucket in self.buckets.values():
                if node in bucket.nodes and (best is None or (bucket.generation, bucket.name) > best):
                    best = (bucket.generation, bucket.name)
            new = self.buckets[best[1]].nodes[node] if best is not None else None
            if new != self.nodes.get(node) or (new is None) != (node not in self.nodes):
                changes[node] = new
            if new is None:
                self.nodes.pop(node, None)
                self._source.pop(node, None)
            else:
                self.nodes[node] = dict(new)
                assert best is not None
                self._source[node] = best
        return changes
