"""The node topology bucket format (kubeapi/node_topology.py): encode, decode, and merging buckets."""

from __future__ import annotations

from typing import Any

import pytest

from kubeapi.node_topology import (
    ANNOTATION_BUCKETS,
    ANNOTATION_GENERATION,
    ANNOTATION_KEYS,
    NODES_PER_BUCKET,
    BucketSet,
    InvalidBucket,
    bucket_count,
    bucket_of,
    decode_bucket,
    encode_bucket,
)

KEYS = ("location", "apps.openyurt.io/nodepool")


@pytest.mark.parametrize(("nodes", "buckets"), [(0, 1), (1, 1), (NODES_PER_BUCKET, 1), (NODES_PER_BUCKET + 1, 2),
                                                  (10_000, 16), (100_000, 128)])
def test_bucket_count_keeps_buckets_at_most_the_bound_on_average(nodes: int, buckets: int) -> None:
    assert bucket_count(nodes) == buckets


def test_a_node_keeps_its_bucket_and_buckets_spread_nodes() -> None:
    assert bucket_of("edge-node-7", 16) == bucket_of("edge-node-7", 16)
    counts = [0] * 16
    for i in range(16_000):
        counts[bucket_of(f"node-{i:05d}", 16)] += 1
    assert max(counts) < 1.2 * 1000 and min(counts) > 0.8 * 1000


def test_encode_then_decode_gives_the_same_bucket() -> None:
    nodes = {"bj-1": {"location": "beijing"}, "gz-2": {}}
    cm = encode_bucket(3, 4, 7, KEYS, nodes, "edge-system")
    assert cm["metadata"]["namespace"] == "edge-system" and cm["metadata"]["name"] == "node-topology-7-3"
    bucket = decode_bucket(cm)
    assert (bucket.index, bucket.buckets, bucket.generation, bucket.keys) == (3, 4, 7, frozenset(KEYS))
    assert bucket.nodes == nodes


def _bad(mutate: Any) -> dict[str, Any]:
    cm = encode_bucket(0, 2, 1, KEYS, {"bj-1": {"location": "beijing"}}, "edge-system")
    mutate(cm)
    return cm


@pytest.mark.parametrize("mutate", [
    lambda cm: cm["metadata"].update(name="other"),
    lambda cm: cm["metadata"].update(name="node-topology-1-x"),
    lambda cm: cm["metadata"].update(name="node-topology-1-2"),
    lambda cm: cm["metadata"].update(name="node-topology-2-0"),
    lambda cm: cm["metadata"]["annotations"].update({ANNOTATION_BUCKETS: "two"}),
    lambda cm: cm["metadata"]["annotations"].update({ANNOTATION_GENERATION: "\u0661"}),
    lambda cm: cm["metadata"]["annotations"].update({ANNOTATION_KEYS: "location"}),
    lambda cm: cm["metadata"]["annotations"].update({ANNOTATION_KEYS: "[1]"}),
    lambda cm: cm["metadata"].pop("annotations"),
    lambda cm: cm.update(data={"bj-1": "[]"}),
    lambda cm: cm.update(data={"bj-1": '{"location": 1}'}),
    lambda cm: cm.update(data={"bj-1": "{"}),
    lambda cm: cm.update(data=["bj-1"]),
], ids=["name", "index", "index-range", "generation-name", "buckets", "generation", "keys-json", "keys-type",
        "no-annotations", "labels-list", "label-value", "labels-json", "data-list"])
def test_a_malformed_bucket_is_refused_with_a_reason(mutate: Any) -> None:
    with pytest.raises(InvalidBucket):
        decode_bucket(_bad(mutate))


def test_the_set_takes_each_node_from_the_newest_generation_and_reports_changes() -> None:
    s = BucketSet()
    old = decode_bucket(encode_bucket(0, 1, 1, ["location"], {"a": {"location": "x"}, "b": {}}, "ns"))
    assert s.put(old) == {"a": {"location": "x"}, "b": {}}
    assert s.put(old) == {}  # the same bucket again changes nothing
    # Re-sharding to two buckets with another key: the new generation is written first...
    new0 = decode_bucket(encode_bucket(0, 2, 2, ["zone"], {"a": {"zone": "z1"}}, "ns"))
    assert s.put(new0) == {"a": {"zone": "z1"}}
    new1 = decode_bucket(encode_bucket(1, 2, 2, ["zone"], {"b": {"zone": "z2"}}, "ns"))
    assert s.put(new1) == {"b": {"zone": "z2"}}
    assert s.keys == frozenset({"zone"})
    # Then the old generation goes: nothing changes for a reader.
    assert s.remove("node-topology-1-0") == {}
    # A node gone from every bucket is reported gone.
    assert s.put(decode_bucket(encode_bucket(1, 2, 2, ["zone"], {}, "ns"))) == {"b": None}
    assert s.nodes == {"a": {"zone": "z1"}}


def test_a_full_relist_reports_what_differs_from_what_was_known() -> None:
    s = BucketSet()
    s.put(decode_bucket(encode_bucket(0, 1, 1, ["location"], {"a": {"location": "x"}, "b": {}}, "ns")))
    changes = s.replace([decode_bucket(encode_bucket(0, 1, 1, ["location"], {"a": {"location": "y"}}, "ns"))])
    assert changes == {"a": {"location": "y"}, "b": None}
