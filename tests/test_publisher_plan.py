"""The publisher's bucket plans (pure): what it writes, in which order, and when it writes nothing.

Every plan is applied to an in-memory set of ConfigMaps here, and what a wrapper reads from them
(``kubeapi.node_topology.BucketSet``) is checked after each single write, as a watching reader
would see them one by one.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubeapi.node_topology import (
    ANNOTATION_KEYS,
    BUCKET_LABELS,
    BucketSet,
    bucket_name,
    decode_bucket,
)
from publisher.plan import Plan, choose_bucket_count, plan_buckets, tracked_labels

NS = "edge-system"
Labels = dict[str, dict[str, str]]


def cluster(n: int, **extra: str) -> Labels:
    return {f"node-{i}": {"zone": f"z{i % 3}", "kubernetes.io/os": "linux", **extra} for i in range(n)}


class Apiserver:
    """ConfigMaps by name, with resourceVersions, written one request at a time."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 1
        self.writes = 0

    def put(self, body: dict[str, Any]) -> None:
        self.rv += 1
        self.writes += 1
        obj = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        self.objects[obj["metadata"]["name"]] = obj

    def delete(self, name: str) -> None:
        self.writes += 1
        del self.objects[name]

    def reader_view(self) -> dict[str, dict[str, str]]:
        view = BucketSet()
        view.replace(decode_bucket(cm) for cm in self.objects.values())
        return view.nodes

    def apply(self, plan: Plan, *, check: set[str] | None = None) -> None:
        """Perform ``plan`` in order; after each write, every node in ``check`` is in the readers' view."""
        for put in plan.puts:
            self.put(put.body)
            assert check is None or check <= set(self.reader_view())
        for delete in plan.deletes:
            self.delete(delete.name)
            assert check is None or check <= set(self.reader_view())

    def plan(self, labels: Labels, keys: set[str], **kw: Any) -> Plan:
        return plan_buckets(labels, keys, self.objects, namespace=NS, **kw)


def test_the_first_plan_writes_every_node_with_its_tracked_labels_only() -> None:
    api = Apiserver()
    labels = cluster(5)
    plan = api.plan(labels, {"zone", "location"})
    assert (plan.generation, plan.buckets, plan.deletes) == (1, 1, ())
    api.apply(plan)
    assert api.reader_view() == {n: {"zone": ls["zone"]} for n, ls in labels.items()}
    (cm,) = api.objects.values()
    assert cm["metadata"]["namespace"] == NS and cm["metadata"]["labels"] == dict(BUCKET_LABELS)
    assert cm["metadata"]["annotations"][ANNOTATION_KEYS] == '["location","zone"]'


def test_a_node_without_any_tracked_label_is_listed_with_no_labels() -> None:
    api = Apiserver()
    api.apply(api.plan({"edge-1": {"other": "x"}}, {"zone"}))
    assert api.reader_view() == {"edge-1": {}}


def test_nothing_is_written_when_the_buckets_already_say_it() -> None:
    api = Apiserver()
    labels = cluster(7)
    api.apply(api.plan(labels, {"zone"}, per_bucket=2))
    writes = api.writes
    labels["node-3"]["kubernetes.io/os"] = "windows"  # not tracked
    assert api.plan(labels, {"zone"}, per_bucket=2).empty
    assert api.writes == writes


def test_a_tracked_label_change_rewrites_only_that_nodes_bucket_in_the_same_generation() -> None:
    api = Apiserver()
    labels = cluster(40)
    first = api.plan(labels, {"zone"}, per_bucket=10)
    api.apply(first)
    labels["node-7"]["zone"] = "elsewhere"
    plan = api.plan(labels, {"zone"}, per_bucket=10)
    assert plan.generation == first.generation and len(plan.puts) == 1 and not plan.deletes
    api.apply(plan)
    assert api.reader_view()["node-7"] == {"zone": "elsewhere"}


def test_a_node_that_goes_is_removed_from_its_bucket() -> None:
    api = Apiserver()
    labels = cluster(4)
    api.apply(api.plan(labels, {"zone"}))
    del labels["node-2"]
    api.apply(api.plan(labels, {"zone"}))
    assert "node-2" not in api.reader_view() and len(api.reader_view()) == 3


def test_new_keys_start_a_new_generation_written_before_the_old_one_is_deleted() -> None:
    api = Apiserver()
    labels = cluster(30, location="bj")
    api.apply(api.plan(labels, {"zone"}, per_bucket=10))
    plan = api.plan(labels, {"zone", "location"}, per_bucket=10)
    assert plan.generation == 2 and len(plan.puts) == plan.buckets
    assert {d.name for d in plan.deletes} == {bucket_name(1, i) for i in range(plan.buckets)}
    api.apply(plan, check=set(labels))
    assert all(ls == {"zone": labels[n]["zone"], "location": "bj"} for n, ls in api.reader_view().items())
    assert {decode_bucket(cm).generation for cm in api.objects.values()} == {2}


def test_growing_past_the_bound_re_shards_without_a_node_ever_missing_from_a_reader() -> None:
    api = Apiserver()
    labels: Labels = {}
    generations = set()
    for i in range(40):
        labels[f"node-{i}"] = {"zone": "a"}
        plan = api.plan(labels, {"zone"}, per_bucket=4)
        api.apply(plan, check=set(labels) - {f"node-{i}"})
        generations.add(plan.generation)
        assert api.reader_view().keys() == labels.keys()
        assert all(len(decode_bucket(cm).nodes) <= 4 * 3 for cm in api.objects.values())
    assert plan.buckets == 16 and len(generations) == 5  # 1, 2, 4, 8, 16 buckets


@pytest.mark.parametrize(("nodes", "current", "expected"), [
    (0, None, 1), (10, None, 1), (11, None, 2), (41, None, 8),
    (11, 4, 4),   # fewer nodes than 4 buckets need: kept (no re-shard at every join and leave)
    (10, 4, 1),   # a quarter does: shrunk
    (21, 4, 4), (41, 4, 8),
    (5, 3, 1),    # not a power of two (someone's edit): chosen afresh
])
def test_bucket_count_grows_at_once_and_shrinks_only_to_a_quarter(nodes: int, current: int | None,
                                                                  expected: int) -> None:
    assert choose_bucket_count(nodes, current, per_bucket=10) == expected


def test_buckets_also_double_when_their_data_would_grow_too_large() -> None:
    api = Apiserver()
    labels = {f"node-{i}": {"zone": "z" * 60} for i in range(50)}
    plan = api.plan(labels, {"zone"}, max_bytes=2000)
    assert plan.buckets > 1
    api.apply(plan)
    for cm in api.objects.values():
        assert sum(len(k) + len(v) for k, v in cm["data"].items()) <= 2000


def test_a_bucket_edited_into_garbage_is_rewritten_and_strays_are_deleted() -> None:
    api = Apiserver()
    labels = cluster(6)
    api.apply(api.plan(labels, {"zone"}))
    name = bucket_name(1, 0)
    api.objects[name]["data"] = {"node-1": "not json"}
    api.objects["node-topology-junk"] = {"metadata": {"name": "node-topology-junk", "resourceVersion": "99",
                                                      "labels": dict(BUCKET_LABELS)}}
    plan = api.plan(labels, {"zone"})
    assert {n for n, _ in plan.invalid} == {name, "node-topology-junk"}
    assert [p.name for p in plan.puts] == [name] and plan.puts[0].replaces is api.objects[name]
    assert [(d.name, d.resource_version) for d in plan.deletes] == [("node-topology-junk", "99")]
    api.apply(plan)
    assert api.reader_view() == tracked_labels(labels, {"zone"})


def test_a_valid_bucket_of_a_higher_generation_than_ours_is_taken_over() -> None:
    # Someone's (or an old publisher's) generation 9: readers take it, so the plan builds on it.
    api = Apiserver()
    labels = cluster(3)
    api.apply(api.plan(labels, {"zone"}))
    api.objects[bucket_name(9, 0)] = {**api.objects[bucket_name(1, 0)]}
    api.objects[bucket_name(9, 0)]["metadata"] = {
        **api.objects[bucket_name(1, 0)]["metadata"], "name": bucket_name(9, 0),
        "annotations": {**api.objects[bucket_name(1, 0)]["metadata"]["annotations"],
                        "topology.application-grid-wrapper.io/generation": "9"}}
    api.objects[bucket_name(9, 0)]["data"] = {}
    plan = api.plan(labels, {"zone"})
    assert plan.generation == 9 and [p.name for p in plan.puts] == [bucket_name(9, 0)]
    api.apply(plan, check=set(labels))
    assert api.reader_view() == tracked_labels(labels, {"zone"})
    assert set(api.objects) == {bucket_name(9, 0)}

