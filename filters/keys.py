"""Parse a Service's topology annotation into an ordered list of node-label keys.

Two annotation dialects are understood:

* SuperEdge ``topologyKeys``: a JSON list of node label keys, tried in order, optionally
  ending with ``"*"`` (any endpoint). This follows Kubernetes' removed alpha
  ``spec.topologyKeys`` (ordered preference, ``"*"`` only last, at most 16 keys), which is
  richer than what SuperEdge itself implemented.
* OpenYurt ``openyurt.io/topologyKeys``: a single value, ``kubernetes.io/hostname`` (same
  node), ``openyurt.io/nodepool`` or ``kubernetes.io/zone`` (both mean: same value of node
  label ``apps.openyurt.io/nodepool``, as OpenYurt does).

If both annotations are present the SuperEdge one wins, even when it is malformed: the
operator wrote an explicit ordered list and silently replacing it by a different policy
would be more surprising than reporting it.

``parse_topology_keys`` returns ``None`` when the Service does not opt in, a
``TopologyKeys`` when it does, and a ``MalformedKeys`` (never an exception) when the
annotation is present but unusable, so the caller can decide and log once.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from filters.api import Malformed

SUPEREDGE_ANNOTATION = "topologyKeys"
OPENYURT_ANNOTATION = "openyurt.io/topologyKeys"

HOSTNAME_KEY = "kubernetes.io/hostname"
WILDCARD = "*"
OPENYURT_NODEPOOL_LABEL = "apps.openyurt.io/nodepool"
# Kubernetes' alpha spec.topologyKeys limit (MaxServiceTopologyKeys), "*" included.
MAX_KEYS = 16

_OPENYURT_VALUES: Mapping[str, str] = {
    "kubernetes.io/hostname": HOSTNAME_KEY,
    "openyurt.io/nodepool": OPENYURT_NODEPOOL_LABEL,
    # OpenYurt maps "zone" onto the node pool, not onto topology.kubernetes.io/zone.
    "kubernetes.io/zone": OPENYURT_NODEPOOL_LABEL,
}

# Label key grammar (k8s.io/apimachinery IsQualifiedName).
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_NAME_MAX = 63
_PREFIX_MAX = 253


@dataclass(frozen=True)
class TopologyKeys:
    """A usable topology policy.

    ``keys`` are the node-label keys in preference order, without the trailing ``"*"``
    (that is ``wildcard``). ``kubernetes.io/hostname`` is kept as a key but is matched by
    node name rather than read from labels. ``source`` is the annotation it came from.
    """

    keys: tuple[str, ...]
    wildcard: bool
    source: str

    @property
    def label_keys(self) -> frozenset[str]:
        """Keys whose values are read from node labels (all but the hostname key)."""
        return frozenset(k for k in self.keys if k != HOSTNAME_KEY)

    @property
    def uses_hostname(self) -> bool:
        return HOSTNAME_KEY in self.keys


@dataclass(frozen=True)
class MalformedKeys(Malformed):
    """A topology annotation that is present but unusable; ``reason`` says why, for a log line."""


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key, or None if it is."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if "/" in prefix:
            return "may contain at most one '/'"
        if not prefix:
            return "has an empty prefix before '/'"
        if len(prefix) > _PREFIX_MAX:
            return f"prefix is longer than {_PREFIX_MAX} characters"
        if not _SUBDOMAIN_RE.fullmatch(prefix):
            return "prefix is not a lowercase DNS subdomain"
    if not name:
        return "has an empty name"
    if len(name) > _NAME_MAX:
        return f"name is longer than {_NAME_MAX} characters"
    if not _NAME_RE.fullmatch(name):
        return "name must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
    return None


def parse_topology_keys(annotations: Mapping[str, str] | None) -> TopologyKeys | MalformedKeys | None:
    """The Service's topology policy from its annotations (see the module docstring)."""
    if not annotations:
        return None
    if SUPEREDGE_ANNOTATION in annotations:
        return _parse_superedge(annotations[SUPEREDGE_ANNOTATION])
    if OPENYURT_ANNOTATION in annotations:
        return _parse_openyurt(annotations[OPENYURT_ANNOTATION])
    return None


# Thousands of Services carry the same few values: each is parsed once. Only short ones are kept
# (a real value is a few keys), so hostile annotations cannot grow the cache's memory.
_MEMO_VALUE_MAX = 512


def _parse_superedge(raw_value: object) -> TopologyKeys | MalformedKeys:
    if isinstance(raw_value, str) and len(raw_value) <= _MEMO_VALUE_MAX:
        return _parse_superedge_memo(raw_value)
    return _parse_superedge_value(raw_value)


@functools.lru_cache(maxsize=1024)
def _parse_superedge_memo(raw_value: str) -> TopologyKeys | MalformedKeys:
    return _parse_superedge_value(raw_value)


def _parse_superedge_value(raw_value: object) -> TopologyKeys | MalformedKeys:
    source = SUPEREDGE_ANNOTATION

    def bad(reason: str) -> MalformedKeys:
        return MalformedKeys(source=source, value=str(raw_value), reason=f"{source}: {reason}")

    # Annotations come from parsed JSON, so guard against a non-string value anyway.
    if not isinstance(raw_value, str):
        return bad(f"annotation value must be a string, got {type(raw_value).__name__}")
    try:
        parsed: object = json.loads(raw_value)
    except ValueError as exc:
        return bad(f"not valid JSON ({exc})")
    if not isinstance(parsed, list):
        return bad(f"must be a JSON list of strings, got {type(parsed).__name__}")
    if not parsed:
        return bad("the list is empty")
    if len(parsed) > MAX_KEYS:
        return bad(f"at most {MAX_KEYS} keys are allowed, got {len(parsed)}")
    seen: set[str] = set()
    keys: list[str] = []
    wildcard = False
    for index, item in enumerate(parsed):
        if not isinstance(item, str):
            return bad(f"key {index} is not a string: {json.dumps(item)}")
        if not item:
            return bad(f"key {index} is empty")
        if item in seen:
            return bad(f"duplicate key {json.dumps(item)}")
        seen.add(item)
        if item == WILDCARD:
            if index != len(parsed) - 1:
                return bad('"*" must be the last key')
            wildcard = True
            continue
        error = label_key_error(item)
        if error is not None:
            return bad(f"key {json.dumps(item)} is not a valid label key: {error}")
        keys.append(item)
    return TopologyKeys(keys=tuple(keys), wildcard=wildcard, source=source)


def _parse_openyurt(raw_value: object) -> TopologyKeys | MalformedKeys:
    source = OPENYURT_ANNOTATION
    if not isinstance(raw_value, str):
        return MalformedKeys(
            source=source,
            value=str(raw_value),
            reason=f"{source}: annotation value must be a string, got {type(raw_value).__name__}",
        )
    key = _OPENYURT_VALUES.get(raw_value.strip())
    if key is None:
        allowed = ", ".join(sorted(_OPENYURT_VALUES))
        return MalformedKeys(
            source=source,
            value=raw_value,
            reason=f"{source}: unsupported value {json.dumps(raw_value.strip())} (expected one of {allowed})",
        )
    return TopologyKeys(keys=(key,), wildcard=False, source=source)
