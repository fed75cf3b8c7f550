"""Ingest-time compaction of endpoint objects: equal content, shared storage."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from cache.compact import compact_endpoints, compact_slice


def decoded_slice(name: str, conditions: Any = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": ["10.0.0.1"], "nodeName": "edge-1", "zone": "z1",
                          "targetRef": {"kind": "Pod", "namespace": "ns", "name": name}}
    ep["conditions"] = conditions if conditions is not None else {"ready": True, "serving": True,
                                                                  "terminating": False}
    # Decoded from bytes, as the reflector does: no string is shared to begin with.
    out: dict[str, Any] = orjson.loads(orjson.dumps({"metadata": {"name": name}, "endpoints": [ep]}))
    return out


def test_compacting_a_slice_keeps_its_content_and_shares_repeated_values() -> None:
    a, b = decoded_slice("a"), decoded_slice("b")
    before = copy.deepcopy([a, b])
    compact_slice(a)
    compact_slice(b)
    assert [a, b] == before
    ea, eb = a["endpoints"][0], b["endpoints"][0]
    assert ea["nodeName"] is eb["nodeName"] and ea["zone"] is eb["zone"]
    assert ea["targetRef"]["kind"] is eb["targetRef"]["kind"]
    assert ea["targetRef"]["namespace"] is eb["targetRef"]["namespace"]
    assert ea["conditions"] is eb["conditions"]


def test_conditions_with_unknown_fields_or_malformed_values_are_left_alone() -> None:
    odd = decoded_slice("odd", {"ready": True, "serving": True, "terminating": False, "future": 1})
    bad = decoded_slice("bad", {"ready": "yes", "serving": [1], "terminating": {"x": 1}})
    ref = decoded_slice("ref")
    for s in (odd, bad, ref):
        compact_slice(s)
    assert odd["endpoints"][0]["conditions"] == {"ready": True, "serving": True, "terminating": False, "future": 1}
    assert odd["endpoints"][0]["conditions"] is not ref["endpoints"][0]["conditions"]
    assert bad["endpoints"][0]["conditions"] == {"ready": "yes", "serving": [1], "terminating": {"x": 1}}


def test_compaction_tolerates_garbage_shapes_without_raising() -> None:
    for obj in ({"endpoints": None}, {"endpoints": 5}, {"endpoints": "abc"}, {"subsets": 3},
                {"subsets": [{"addresses": 4}]}, {"endpoints": [1, "x", None]}, {"endpoints": [{"nodeName": 5}]},
                {"subsets": [None, {"addresses": [7, {"nodeName": None, "targetRef": "x"}]}]}):
        before = copy.deepcopy(obj)
        compact_slice(obj)
        compact_endpoints(obj)
        assert obj == before


def test_compacting_core_endpoints_shares_node_names_across_objects() -> None:
    def eps() -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(orjson.dumps({"subsets": [{"addresses": [
            {"ip": "10.0.0.1", "nodeName": "edge-7", "targetRef": {"kind": "Pod", "namespace": "ns", "name": "p"}}],
            "notReadyAddresses": [{"ip": "10.0.0.2", "nodeName": "edge-7"}]}]}))
        return out

    a, b = eps(), eps()
    before = copy.deepcopy(a)
    compact_endpoints(a)
    compact_endpoints(b)
    assert a == before
    assert a["subsets"][0]["addresses"][0]["nodeName"] is b["subsets"][0]["notReadyAddresses"][0]["nodeName"]
