"""What the publisher's informers keep: the sinks ``publisher.informer.Informer`` feeds.

- ``NodeLabels``: every Node's name and labels;
- ``ServiceKeys``: the node label keys Services' policies read, asked of ``filters/``;
- ``BucketObjects``: the bucket ConfigMaps as last seen, or as the publisher's own writes left them.

Each calls ``on_change`` only for what can change the buckets: a Node's status heartbeat, or a change
of a label no Service reads, calls nothing. Owned by ``publisher.writer.TopologyPublisher``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Set
from typing import Any

from filters.pipeline import PIPELINE, Pipeline
from kubeapi.resources import Resource, object_key
from kubeapi.rv import InvalidResourceVersion, parse_rv
from kubeapi.types import JSONDict

log = logging.getLogger("publisher")

OnChange = Callable[[], None]


def _labels(obj: JSONDict) -> dict[str, str]:
    labels = obj["metadata"].get("labels")
    return dict(labels) if labels else {}


class NodeLabels:
    """Each Node's labels (all of them: the tracked keys can change without a relist).

    ``on_change`` is called when a node appears or goes, when a label among ``tracked()`` changes
    value, and on every (re)list.
    """

    def __init__(self, tracked: Callable[[], Set[str]], on_change: OnChange) -> None:
        self.labels: dict[str, dict[str, str]] = {}
        self._tracked = tracked
        self._on_change = on_change

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        self.labels = {obj["metadata"]["name"]: _labels(obj) for obj in items}
        self._on_change()

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        name = obj["metadata"]["name"]
        if type_ == "DELETED":
            if self.labels.pop(name, None) is not None:
                self._on_change()
            return
        old, new = self.labels.get(name), _labels(obj)
        self.labels[name] = new
        if old is None or any(old.get(k) != new.get(k) for k in self._tracked()):
            self._on_change()

    def bookmark(self, resource: Resource, rv: int) -> None:
        pass


class ServiceKeys:
    """The node label keys in use: the union, over every Service, of what the registered filters
    read of Nodes for it (``Reads.label_keys | Reads.local_labels``). Annotations are parsed by
    ``filters/`` only. A Service whose annotation is malformed adds nothing, and is logged once per
    malformed value. ``on_change`` is called when the set of keys changes, and on every (re)list.
    """

    def __init__(self, on_change: OnChange, pipeline: Pipeline = PIPELINE) -> None:
        self._pipeline = pipeline
        self._on_change = on_change
        self._reads: dict[str, frozenset[str]] = {}  # Service key -> keys it reads
        self._counts: Counter[str] = Counter()
        self._malformed: dict[str, tuple[Any, ...]] = {}  # Service key -> what was logged about it

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._counts)

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        self._reads, self._counts = {}, Counter()
        seen: set[str] = set()
        for obj in items:
            key = object_key(obj)
            seen.add(key)
            self._set(key, obj)
        for gone in self._malformed.keys() - seen:
            del self._malformed[gone]
        self._on_change()

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        key = object_key(obj)
        if type_ == "DELETED":
            changed = self._drop(key)
            self._malformed.pop(key, None)
        else:
            changed = self._set(key, obj)
        if changed:
            self._on_change()

    def bookmark(self, resource: Resource, rv: int) -> None:
        pass

    def _set(self, key: str, service: JSONDict) -> bool:
        """Record what ``service`` reads; True when the set of keys in use changed."""
        policies = self._pipeline.policies_of(service)
        self._log_malformed(key, policies.malformed)
        reads = policies.reads
        keys = reads.label_keys | reads.local_labels
        if self._reads.get(key, frozenset()) == keys:
            return False
        # Count the new keys before uncounting the old ones: a key kept by the change never drops to 0.
        changed = False
        for k in keys:
            self._counts[k] += 1
            changed = changed or self._counts[k] == 1
        changed = self._drop(key) or changed
        if keys:
            self._reads[key] = keys
        return changed

    def _drop(self, key: str) -> bool:
        changed = False
        for k in self._reads.pop(key, ()):
            self._counts[k] -= 1
            if not self._counts[k]:
                del self._counts[k]
                changed = True
        return changed

    def _log_malformed(self, key: str, malformed: tuple[Any, ...]) -> None:
        if not malformed:
            self._malformed.pop(key, None)
            return
        said = tuple((f.name, m.source, m.value, m.reason) for f, m in malformed)
        if self._malformed.get(key) == said:
            return
        self._malformed[key] = said
        for name, source, value, reason in said:
            log.warning("Service %s: annotation %s=%.120r is malformed (%s); the %s filter reads no node labels for "
                        "it", key, source, value, reason, name)


def resource_version(obj: JSONDict) -> int:
    """An object's resourceVersion (0 if it has none that parses: such an object is older than any)."""
    try:
        return parse_rv(obj.get("metadata", {}).get("resourceVersion"))
    except InvalidResourceVersion:
        return 0


class BucketObjects:
    """The bucket ConfigMaps (name -> object): the newest of what the watch delivered and what the
    publisher's own writes returned, so a write is never planned twice while its event is on the way.

    ``on_change`` is called for every change the publisher did not make itself (another writer's
    edit, a deletion), and on every (re)list.
    """

    def __init__(self, on_change: OnChange) -> None:
        self.objects: dict[str, JSONDict] = {}
        self._on_change = on_change

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        listed = {obj["metadata"]["name"]: obj for obj in items}
        for name, obj in self.objects.items():
            if resource_version(obj) > rv:  # our own write, newer than the list
                listed[name] = obj
        self.objects = listed
        self._on_change()

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        name = obj["metadata"]["name"]
        known = self.objects.get(name)
        if known is not None and resource_version(known) >= resource_version(obj):
            return  # what we wrote ourselves (or something older)
        if type_ == "DELETED":
            if known is None:
                return
            del self.objects[name]
        else:
            self.objects[name] = obj
        self._on_change()

    def bookmark(self, resource: Resource, rv: int) -> None:
        pass

    def wrote(self, obj: JSONDict) -> None:
        """The answer to our own create or update."""
        self.objects[obj["metadata"]["name"]] = obj

    def deleted(self, name: str) -> None:
        """Our own delete succeeded (or found nothing)."""
        self.objects.pop(name, None)
