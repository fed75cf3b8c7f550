"""Shrink decoded endpoint objects before the cache keeps them.

At edge scale the cache holds every endpoint twice (EndpointSlices and core Endpoints), and
decoded JSON costs about ten times its text. Most of an endpoint's strings repeat across the
cluster (node names, zones, namespaces, "Pod") and its conditions take one of a few shapes,
so equal values are made one shared object. The cache never mutates a stored object (filters
copy what they change), which is what makes sharing the conditions dicts safe.
"""

from __future__ import annotations

import sys
from typing import Any

_intern = sys.intern
# (ready, serving, terminating) -> one shared conditions dict per shape seen.
_CONDITIONS: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
_CONDITION_KEYS = frozenset({"ready", "serving", "terminating"})


def _shared_conditions(cond: dict[str, Any]) -> dict[str, Any]:
    if not cond.keys() <= _CONDITION_KEYS:
        return cond  # a field this build does not know: keep the object as it came
    shape = (cond.get("ready", ...), cond.get("serving", ...), cond.get("terminating", ...))
    if not all(v is ... or v is None or isinstance(v, bool) for v in shape):
        return cond  # malformed values are kept as they came (and at most 27 shapes exist)
    return _CONDITIONS.setdefault(shape, cond)


def _target_ref(ref: Any) -> None:
    if isinstance(ref, dict):
        for k in ("kind", "namespace"):
            v = ref.get(k)
            if isinstance(v, str):
                ref[k] = _intern(v)


def compact_slice(obj: dict[str, Any]) -> None:
    """Intern an EndpointSlice's repeated strings and share its conditions, in place (on ingest)."""
    endpoints = obj.get("endpoints")
    for ep in endpoints if isinstance(endpoints, list) else ():
        if not isinstance(ep, dict):
            continue
        for k in ("nodeName", "zone"):
            v = ep.get(k)
            if isinstance(v, str):
                ep[k] = _intern(v)
        cond = ep.get("conditions")
        if isinstance(cond, dict):
            ep["conditions"] = _shared_conditions(cond)
        _target_ref(ep.get("targetRef"))


def compact_endpoints(obj: dict[str, Any]) -> None:
    """Intern a core Endpoints object's repeated strings, in place (on ingest)."""
    subsets = obj.get("subsets")
    for subset in subsets if isinstance(subsets, list) else ():
        if not isinstance(subset, dict):
            continue
        for field in ("addresses", "notReadyAddresses"):
            addrs = subset.get(field)
            for addr in addrs if isinstance(addrs, list) else ():
                if not isinstance(addr, dict):
                    continue
                v = addr.get("nodeName")
                if isinstance(v, str):
                    addr["nodeName"] = _intern(v)
                _target_ref(addr.get("targetRef"))
