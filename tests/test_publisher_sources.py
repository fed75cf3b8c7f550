"""What the publisher's informers keep, and when they ask for a pass: only for what can change the
buckets (pure: fed by hand, as the informers feed them)."""

from __future__ import annotations

from typing import Any

from kubeapi.resources import CONFIGMAPS, NODES, SERVICES
from publisher.sources import BucketObjects, NodeLabels, ServiceKeys


def test_the_keys_in_use_change_only_when_a_key_gains_its_first_or_loses_its_last_service() -> None:
    calls: list[frozenset[str]] = []
    keys = ServiceKeys(lambda: calls.append(keys.keys))

    def svc(name: str, annotation: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "default", "resourceVersion": "1"}
        if annotation is not None:
            meta["annotations"] = {"topologyKeys": annotation}
        return {"metadata": meta}

    keys.replace(SERVICES, [svc("a", '["zone","x"]'), svc("b", '["x"]')], 1)
    assert calls == [frozenset({"zone", "x"})]
    keys.apply(SERVICES, "MODIFIED", svc("a", '["zone"]'))  # b still reads x
    keys.apply(SERVICES, "MODIFIED", svc("b", '["x","kubernetes.io/hostname"]'))  # hostname is no label
    assert len(calls) == 1
    keys.apply(SERVICES, "MODIFIED", svc("a", '["zone","region"]'))
    keys.apply(SERVICES, "DELETED", svc("b", None))
    keys.apply(SERVICES, "ADDED", svc("c", None))  # not opted in
    assert calls[1:] == [frozenset({"zone", "x", "region"}), frozenset({"zone", "region"})]


def node(name: str, labels: dict[str, str], **status: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "1", "labels": labels}, "status": status}


def test_node_changes_ask_for_a_pass_only_for_presence_and_tracked_labels() -> None:
    calls: list[str] = []
    nodes = NodeLabels(lambda: {"zone"}, lambda: calls.append("pass"))
    nodes.replace(NODES, [node("a", {"zone": "1", "os": "linux"})], 1)
    assert calls == ["pass"]  # every (re)list
    nodes.apply(NODES, "MODIFIED", node("a", {"zone": "1", "os": "linux"}, heartbeat="t1"))
    nodes.apply(NODES, "MODIFIED", node("a", {"zone": "1", "os": "windows"}))
    assert calls == ["pass"]
    nodes.apply(NODES, "MODIFIED", node("a", {"zone": "2", "os": "windows"}))
    nodes.apply(NODES, "ADDED", node("b", {}))
    nodes.apply(NODES, "DELETED", node("b", {}))
    nodes.apply(NODES, "DELETED", node("never-seen", {}))
    assert calls == ["pass"] * 4
    assert nodes.labels == {"a": {"zone": "2", "os": "windows"}}  # all labels kept: the keys may change


def cm(name: str, rv: int, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}, "data": data}


def test_the_publishers_own_writes_are_not_undone_by_their_late_events() -> None:
    calls: list[str] = []
    buckets = BucketObjects(lambda: calls.append("pass"))
    buckets.replace(CONFIGMAPS, [cm("b", 5, {"n": "old"})], 5)
    buckets.wrote(cm("b", 7, {"n": "ours"}))
    buckets.apply(CONFIGMAPS, "MODIFIED", cm("b", 6, {"n": "between"}))  # on its way before our write
    buckets.apply(CONFIGMAPS, "MODIFIED", cm("b", 7, {"n": "ours"}))  # our write's own event
    assert buckets.objects["b"]["data"] == {"n": "ours"} and calls == ["pass"]
    buckets.apply(CONFIGMAPS, "MODIFIED", cm("b", 9, {"n": "someone"}))  # someone else's edit
    assert buckets.objects["b"]["data"] == {"n": "someone"} and calls == ["pass"] * 2
    buckets.wrote(cm("c", 11, {}))
    buckets.replace(CONFIGMAPS, [cm("b", 9, {"n": "someone"})], 10)  # a relist older than our write
    assert set(buckets.objects) == {"b", "c"}
    buckets.deleted("c")
    buckets.apply(CONFIGMAPS, "DELETED", cm("c", 12, {}))  # our delete's own event
    assert set(buckets.objects) == {"b"} and calls == ["pass"] * 3
