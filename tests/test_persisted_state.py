"""Persisted state never crash-loops the process: every snapshot item is checked like an upstream object.

A snapshot whose checksum verifies can still hold items the cache cannot take (a missing
name, a wrong type, null where a list belongs). One validator (``kubeapi.validation``) gates
both the reflector and the snapshot decoder; a snapshot with any bad item is logged once and
ignored as a whole, and the wrapper syncs from the apiserver.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from apisim import seeds
from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache import snapshot
from cache.cluster import ClusterCache
from cache.publisher import Publisher
from kubeapi.resources import ALL, BY_PLURAL, ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.validation import object_problem, valid_object
from tests.support.faultkit import LOCAL_NODE, get_text, list_items, running_wrapper
from tests.support.garbage_upstream import GarbageUpstream
from tests.support.oracle import comparable, served_state
from tests.support.waiting import eventually

JSONDict = dict[str, Any]
UPSTREAM = "https://apiserver.example:6443"
IDENTITY = snapshot.Identity(LOCAL_NODE, UPSTREAM)
EXAMPLES = int(os.environ.get("AGW_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _demo() -> tuple[dict[str, list[JSONDict]], int]:
    sim = Simulator()
    sim.load(servicegrid_demo())
    return {r.plural: sim.list(r) for r in ALL}, sim.rv


BASE, BASE_RV = _demo()


def snapshot_bytes(items: dict[str, list[Any]], rv: Any = BASE_RV, identity: snapshot.Identity = IDENTITY,
                   **rvs: Any) -> bytes:
    """A snapshot of exactly ``items``, with a valid checksum and header for ``identity``."""
    payload = orjson.dumps({"resources": {p: {"rv": rvs.get(p, rv), "items": its} for p, its in items.items()}})
    header = {"magic": snapshot.MAGIC, "version": snapshot.VERSION, "node": identity.node,
              "upstream": identity.upstream, "created": time.time(), "size": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest()}
    return orjson.dumps(header) + b"\n" + payload


def state_of(cache: ClusterCache) -> tuple[Any, ...]:
    """Everything the cache serves and decides with, for comparing two caches."""
    return (
        cache.ready,
        {r.plural: cache.raw_items(r) for r in ALL},
        {r.plural: {k: (e.raw, e.rv) for k, e in cache.views[r.plural].objects.items()} for r in ALL},
        {r.plural: cache.upstream_rv(r) for r in ALL},
        cache.explain(),
    )


def loaded(items: dict[str, list[JSONDict]], rv: int = BASE_RV) -> ClusterCache:
    cache = ClusterCache(LOCAL_NODE)
    for r in ALL:
        cache.replace(r, copy.deepcopy(items[r.plural]), rv)
    return cache


@contextmanager
def snapshot_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the snapshot module (caplog is function-scoped, which hypothesis refuses)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("cache.snapshot")
    handler, level = Keep(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ---- the validator, case by case ------------------------------------------------------------


def _item(plural: str, name: str | None = None) -> JSONDict:
    items = BASE[plural]
    found = [o for o in items if o["metadata"]["name"] == name] if name else items
    return copy.deepcopy(found[0])


def _topology_slice() -> JSONDict:
    """The slice of the demo's topology-aware Service: the filters read every field of it."""
    return copy.deepcopy(next(o for o in BASE["endpointslices"]
                              if o["metadata"]["labels"]["kubernetes.io/service-name"] != "kubernetes"
                              and len(o.get("endpoints") or ()) > 1))


def _topology_endpoints() -> JSONDict:
    return copy.deepcopy(next(o for o in BASE["endpoints"] if len((o.get("subsets") or [{}])[0].get(
        "addresses") or ()) > 1))


Edit = Callable[[JSONDict], None]


SERVICE_LABEL = ("metadata", "labels", "kubernetes.io/service-name")


def _parts(path: str | tuple[str, ...]) -> tuple[str, ...]:
    return path if isinstance(path, tuple) else tuple(path.split("."))


def _parent(obj: JSONDict, parts: tuple[str, ...]) -> Any:
    cur: Any = obj
    for part in parts[:-1]:
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def _set(path: str | tuple[str, ...], value: Any) -> Edit:
    """An edit that sets the value at a dotted path (list indices as numbers)."""
    parts = _parts(path)

    def edit(obj: JSONDict) -> None:
        parent = _parent(obj, parts)
        parent[int(parts[-1]) if isinstance(parent, list) else parts[-1]] = value
    return edit


def _drop(path: str | tuple[str, ...]) -> Edit:
    parts = _parts(path)

    def edit(obj: JSONDict) -> None:
        del _parent(obj, parts)[parts[-1]]
    return edit


MALFORMED: dict[str, tuple[Resource, Callable[[], JSONDict], Edit, str]] = {
    "node-without-name": (NODES, lambda: _item("nodes"), _drop("metadata.name"), "metadata.name is null"),
    "service-without-metadata": (SERVICES, lambda: _item("services"), _drop("metadata"), "metadata is null"),
    "metadata-a-list": (SERVICES, lambda: _item("services"), _set("metadata", []), "metadata is a list"),
    "name-a-number": (NODES, lambda: _item("nodes"), _set("metadata.name", 5), "metadata.name is a number"),
    "name-with-a-slash": (SERVICES, lambda: _item("services"), _set("metadata.name", "a/b"), "DNS-1123"),
    "name-uppercase": (SERVICES, lambda: _item("services"), _set("metadata.name", "Web_Svc"), "DNS-1123"),
    "name-dot-dot": (ENDPOINTSLICES, _topology_slice, _set("metadata.name", ".."), "DNS-1123"),
    "name-huge": (NODES, lambda: _item("nodes"), _set("metadata.name", "a" * 254), "longer than 253"),
    "service-without-namespace": (SERVICES, lambda: _item("services"), _drop("metadata.namespace"),
                                  "metadata.namespace is null"),
    "service-empty-namespace": (SERVICES, lambda: _item("services"), _set("metadata.namespace", ""), "empty"),
    "node-with-namespace": (NODES, lambda: _item("nodes"), _set("metadata.namespace", "default"),
                            "cluster-scoped"),
    "rv-superscript": (NODES, lambda: _item("nodes"), _set("metadata.resourceVersion", "²"), "resourceVersion"),
    "rv-arabic-digits": (NODES, lambda: _item("nodes"), _set("metadata.resourceVersion", "١٢"), "resourceVersion"),
    "rv-underscore": (NODES, lambda: _item("nodes"), _set("metadata.resourceVersion", "1_0"), "resourceVersion"),
    "rv-a-number": (NODES, lambda: _item("nodes"), _set("metadata.resourceVersion", 12), "resourceVersion"),
    "rv-negative": (NODES, lambda: _item("nodes"), _set("metadata.resourceVersion", "-1"), "resourceVersion"),
    "rv-past-uint64": (NODES, lambda: _item("nodes"), _set("metadata.resourceVersion", str(1 << 64)),
                       "resourceVersion"),
    "rv-missing": (SERVICES, lambda: _item("services"), _drop("metadata.resourceVersion"), "resourceVersion"),
    "labels-a-list": (NODES, lambda: _item("nodes"), _set("metadata.labels", ["location"]), "metadata.labels is"),
    "labels-a-string": (NODES, lambda: _item("nodes"), _set("metadata.labels", "location=beijing"),
                        "metadata.labels is a string"),
    "label-value-a-list": (NODES, lambda: _item("nodes"), _set("metadata.labels.location", ["beijing"]),
                           "metadata.labels['location']"),
    "label-value-null": (ENDPOINTSLICES, _topology_slice, _set(SERVICE_LABEL, None),
                         "metadata.labels"),
    "annotations-a-string": (SERVICES, lambda: _item("services"), _set("metadata.annotations", "topologyKeys"),
                             "metadata.annotations is a string"),
    "annotations-a-list": (SERVICES, lambda: _item("services"), _set("metadata.annotations", ["topologyKeys"]),
                           "metadata.annotations is a list"),
    "kind-of-another-resource": (NODES, lambda: _item("nodes"), _set("kind", "Pod"), "kind is 'Pod'"),
    "api-version-of-another-group": (ENDPOINTSLICES, _topology_slice, _set("apiVersion", "v1"), "apiVersion"),
    "service-spec-a-list": (SERVICES, lambda: _item("services"), _set("spec", []), "spec is a list"),
    "service-cluster-ip-a-list": (SERVICES, lambda: _item("services"), _set("spec.clusterIP", ["10.0.0.1"]),
                                  "spec.clusterIP"),
    "slice-without-address-type": (ENDPOINTSLICES, _topology_slice, _drop("addressType"), "addressType"),
    "slice-endpoints-an-object": (ENDPOINTSLICES, _topology_slice, _set("endpoints", {"a": 1}),
                                  "endpoints is an object"),
    "slice-endpoint-a-string": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0", "10.0.0.1"), "endpoints[0]"),
    "slice-addresses-a-string": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.addresses", "10.0.0.1"),
                                 "addresses"),
    "slice-node-name-a-number": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.nodeName", 5), "nodeName"),
    "slice-node-name-a-list": (ENDPOINTSLICES, _topology_slice, _set("endpoints.1.nodeName", ["bj-1"]), "nodeName"),
    "slice-conditions-a-list": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.conditions", [True]),
                                "conditions"),
    "slice-ready-a-string": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.conditions.ready", "true"),
                             "conditions.ready"),
    "slice-port-a-string": (ENDPOINTSLICES, _topology_slice, _set("ports.0.port", "80"), "ports[0].port"),
    "slice-port-a-boolean": (ENDPOINTSLICES, _topology_slice, _set("ports.0.port", True), "ports[0].port"),
    "endpoints-subsets-an-object": (ENDPOINTS, _topology_endpoints, _set("subsets", {"a": 1}), "subsets is"),
    "endpoints-address-a-string": (ENDPOINTS, _topology_endpoints, _set("subsets.0.addresses.0", "10.0.0.1"),
                                   "subsets[0].addresses[0]"),
    "endpoints-ip-missing": (ENDPOINTS, _topology_endpoints, _drop("subsets.0.addresses.0.ip"), ".ip is null"),
    "endpoints-node-name-a-list": (ENDPOINTS, _topology_endpoints, _set("subsets.0.addresses.0.nodeName", ["x"]),
                                   "nodeName"),
    "endpoints-port-an-object": (ENDPOINTS, _topology_endpoints, _set("subsets.0.ports.0.port", {}), "port"),
    "item-emptied": (NODES, lambda: _item("nodes"), lambda o: o.clear(), "metadata is null"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_the_validator_rejects_each_malformed_shape_with_its_reason(case: str) -> None:
    resource, make, edit, reason = MALFORMED[case]
    obj = make()
    assert valid_object(resource, obj), "the unedited object is valid"
    edit(obj)
    problem = object_problem(resource, obj)
    assert problem is not None and reason in problem, problem


ODD_BUT_VALID: dict[str, tuple[Resource, Callable[[], JSONDict], Edit]] = {
    "labels-null": (NODES, lambda: _item("nodes", LOCAL_NODE), _set("metadata.labels", None)),
    "no-labels": (NODES, lambda: _item("nodes", "gz-2"), _drop("metadata.labels")),
    "node-empty-namespace": (NODES, lambda: _item("nodes"), _set("metadata.namespace", "")),
    "annotations-null": (SERVICES, lambda: _item("services"), _set("metadata.annotations", None)),
    "service-without-spec": (SERVICES, lambda: _item("services"), _drop("spec")),
    "unicode-label-value": (NODES, lambda: _item("nodes", LOCAL_NODE), _set("metadata.labels.location", "北京")),
    "slice-without-service-label": (ENDPOINTSLICES, _topology_slice,
                                    _drop(SERVICE_LABEL)),
    "slice-labels-null": (ENDPOINTSLICES, _topology_slice, _set("metadata.labels", None)),
    "slice-endpoints-null": (ENDPOINTSLICES, _topology_slice, _set("endpoints", None)),
    "slice-endpoints-empty": (ENDPOINTSLICES, _topology_slice, _set("endpoints", [])),
    "slice-node-name-null": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.nodeName", None)),
    "slice-conditions-null": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.conditions", None)),
    "slice-ready-null": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.conditions.ready", None)),
    "slice-unknown-node": (ENDPOINTSLICES, _topology_slice, _set("endpoints.0.nodeName", "nowhere")),
    "slice-ports-null": (ENDPOINTSLICES, _topology_slice, _set("ports", None)),
    "slice-with-its-kind": (ENDPOINTSLICES, _topology_slice, _set("kind", "EndpointSlice")),
    "endpoints-subsets-null": (ENDPOINTS, _topology_endpoints, _set("subsets", None)),
    "endpoints-addresses-null": (ENDPOINTS, _topology_endpoints, _set("subsets.0.addresses", None)),
    "endpoints-ip-not-an-ip": (ENDPOINTS, _topology_endpoints, _set("subsets.0.addresses.0.ip", "not-an-ip")),
}


@pytest.mark.parametrize("case", sorted(ODD_BUT_VALID))
def test_an_odd_but_valid_object_loads_from_a_snapshot_and_applies_as_a_watch_event(
    case: str, tmp_path: Path
) -> None:
    resource, make, edit = ODD_BUT_VALID[case]
    obj = make()
    edit(obj)
    assert object_problem(resource, obj) is None
    items = copy.deepcopy(BASE)
    items[resource.plural] = [obj if o["metadata"]["name"] == obj["metadata"]["name"] else o
                              for o in items[resource.plural]]
    (tmp_path / snapshot.FILENAME).write_bytes(snapshot_bytes(items))
    restored = ClusterCache(LOCAL_NODE)
    assert snapshot.restore(restored, tmp_path, IDENTITY)
    assert state_of(restored) == state_of(loaded(items))
    # The same object as a watch event on a cache synced with the clean state, then deleted.
    live = loaded(BASE)
    event = copy.deepcopy(obj)
    event["metadata"]["resourceVersion"] = str(BASE_RV + 1)
    live.apply(resource, "MODIFIED", event)
    assert live.views[resource.plural].objects
    live.apply(resource, "DELETED", copy.deepcopy(event))


# ---- item-level fuzzing of decode/restore ---------------------------------------------------

WRONG_TYPES: list[Any] = [None, 0, -1, 1.5, True, False, "", "x", [], {}, ["x"], {"a": 1}, [{}], [None]]
ODD_STRINGS = ["名前", "²", "١٢", "1_0", "-1", "a/b", "..", "%2e", "\x00", "é", "UPPER", " ", "\n",
               "99999999999999999999999", "18446744073709551616", "kubernetes.io/service-name"]
HUGE: list[Any] = ["x" * 100_000, "9" * 5_000, (1 << 63) - 1, (1 << 64) - 1, -(1 << 63), 1e308,
                   ["a"] * 2_000, {f"k{i}": "v" for i in range(2_000)}]


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indices), the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(paths_of(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(paths_of(v, (*prefix, i)))
    return out


def _get(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


@st.composite
def mutations(draw: st.DrawFn, items: dict[str, list[Any]]) -> str:
    """Change one value somewhere in one item (in place) and say what was done."""
    plural = draw(st.sampled_from(sorted(items)))
    if not items[plural]:
        return "nothing"
    index = draw(st.integers(0, len(items[plural]) - 1))
    item = items[plural][index]
    path = draw(st.sampled_from(paths_of(item)))
    action = draw(st.sampled_from(["drop", "null", "wrong-type", "huge", "unicode", "duplicate", "swap-kind"]))
    if action == "duplicate":
        items[plural].append(copy.deepcopy(item))
        return f"{plural}[{index}] duplicated"
    if action == "swap-kind":
        other = draw(st.sampled_from([p for p in sorted(items) if p != plural]))
        items[other].append(copy.deepcopy(item))
        return f"{plural}[{index}] also filed under {other}"
    if not path:
        items[plural][index] = copy.deepcopy(draw(st.sampled_from(WRONG_TYPES)))
        return f"{plural}[{index}] replaced"
    parent, last = _get(item, path[:-1]), path[-1]
    current = parent[last]
    if action == "drop":
        del parent[last]
    elif action == "null":
        parent[last] = None
    elif action == "wrong-type":
        parent[last] = copy.deepcopy(draw(st.sampled_from(WRONG_TYPES)))
    elif action == "huge":
        parent[last] = copy.deepcopy(draw(st.sampled_from(HUGE)))  # never share a drawn container
    elif isinstance(current, str):
        parent[last] = draw(st.sampled_from([*ODD_STRINGS, current + "名", current.upper(), current * 3]))
    else:
        parent[last] = draw(st.sampled_from(ODD_STRINGS))
    return f"{plural}[{index}] {'.'.join(map(str, path))}: {action}"


snapshot_rvs: st.SearchStrategy[object] = st.one_of(
    st.just(BASE_RV), st.sampled_from([0, -1, True, 1.5, "7", None, [], (1 << 64) - 1]))


@FUZZ
@given(data=st.data(), count=st.integers(1, 3), rv=snapshot_rvs)
def test_restore_never_raises_and_loads_exactly_the_snapshot_or_nothing(
    data: st.DataObject, count: int, rv: Any
) -> None:
    items = copy.deepcopy(BASE)
    done = [data.draw(mutations(items)) for _ in range(count)]
    raw = snapshot_bytes(items, rv=rv)
    with tempfile.TemporaryDirectory() as directory, snapshot_log() as records:
        (Path(directory) / snapshot.FILENAME).write_bytes(raw)
        cache = ClusterCache(LOCAL_NODE)
        restored = snapshot.restore(cache, Path(directory), IDENTITY)
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    event("restored" if restored else "ignored")
    if restored:
        # What loaded is what a clean decode of those very bytes gives, every item of it.
        assert not warnings, [r.getMessage() for r in warnings]
        _, body = snapshot.decode(raw, IDENTITY)
        decoded = {p: body["resources"][p]["items"] for p in items}
        assert state_of(cache) == state_of(loaded(decoded, rv)), done
        assert all(len(cache.views[p].objects) == len(its) for p, its in decoded.items()), done
        for plural, its in decoded.items():
            for obj in its:
                assert valid_object(BY_PLURAL[plural], obj)
    else:
        # Ignored as a whole, said once, and nothing of it left behind: the first lists from
        # the apiserver build exactly what they build in a fresh cache.
        assert len(warnings) == 1 and "ignored" in warnings[0].getMessage(), [r.getMessage() for r in records]
        assert not cache.ready and not any(v.objects for v in cache.views.values())
        for r in ALL:
            cache.replace(r, copy.deepcopy(BASE[r.plural]), BASE_RV)
        assert state_of(cache) == state_of(loaded(BASE)), done


@FUZZ
@given(data=st.data())
def test_any_object_the_validator_admits_applies_to_a_synced_cache_without_raising(data: st.DataObject) -> None:
    items = copy.deepcopy(BASE)
    data.draw(mutations(items))
    cache = loaded(BASE)
    rv = BASE_RV
    for plural, its in items.items():
        resource = BY_PLURAL[plural]
        for obj in its:
            if not valid_object(resource, obj):
                continue
            rv += 1
            event = copy.deepcopy(obj)
            event["metadata"]["resourceVersion"] = str(rv)
            cache.apply(resource, "MODIFIED", event)
            cache.apply(resource, "DELETED", copy.deepcopy(event))
    cache.explain()


def test_a_loading_failure_the_validator_missed_is_logged_and_leaves_an_empty_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence: a bug while loading a checked snapshot still never stops start-up."""
    (tmp_path / snapshot.FILENAME).write_bytes(snapshot_bytes(BASE))
    cache = ClusterCache(LOCAL_NODE)
    finish_load = Publisher.finish_load

    def broken_finish_load(self: Publisher, rvs: Mapping[str, int], *, new_timeline: bool) -> None:
        finish_load(self, rvs, new_timeline=new_timeline)  # the views loaded, half-built state...
        cache.node_labels_changed("phantom", {"location": "nowhere"}, BASE_RV)
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(Publisher, "finish_load", broken_finish_load)
        caplog.set_level(logging.WARNING, logger="cache.snapshot")
        assert not snapshot.restore(cache, tmp_path, IDENTITY)
    [record] = caplog.records
    assert "ignored" in record.getMessage() and record.exc_info is not None
    assert not cache.ready and cache.upstream_rv(NODES) == 0
    assert all(not v.synced and not v.objects and v.rv == 0 for v in cache.views.values())
    # ...none of which survives: the first lists build what they build in a fresh cache.
    for r in ALL:
        cache.replace(r, copy.deepcopy(BASE[r.plural]), BASE_RV)
    assert "phantom" not in cache.node_labels
    assert state_of(cache) == state_of(loaded(BASE))


def test_a_header_field_outside_the_checksum_is_checked_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    head, _, payload = snapshot_bytes(BASE).partition(b"\n")
    header = orjson.loads(head)
    header["created"] = "yesterday"
    (tmp_path / snapshot.FILENAME).write_bytes(orjson.dumps(header) + b"\n" + payload)
    caplog.set_level(logging.WARNING, logger="cache.snapshot")
    cache = ClusterCache(LOCAL_NODE)
    assert not snapshot.restore(cache, tmp_path, IDENTITY)
    [record] = caplog.records
    assert "header is malformed" in record.getMessage()


# ---- a wrapper started on a malformed snapshot, apiserver reachable ------------------------------


def _spoiled(plural: str, edit: Callable[[JSONDict], None]) -> Callable[[dict[str, list[JSONDict]]], None]:
    def spoil(items: dict[str, list[JSONDict]]) -> None:
        edit(items[plural][-1])
    return spoil


# Representative: each crashed start-up before items were checked.
SPOILED: dict[str, tuple[Callable[[dict[str, list[JSONDict]]], None], str]] = {
    "node-without-name": (_spoiled("nodes", lambda o: o["metadata"].pop("name")), "metadata.name"),
    "node-labels-a-list": (_spoiled("nodes", lambda o: o["metadata"].__setitem__("labels", ["a"])),
                           "metadata.labels"),
    "service-annotations-a-string": (_spoiled("services", lambda o: o["metadata"].__setitem__(
        "annotations", "topologyKeys")), "metadata.annotations"),
    "slice-endpoints-an-object": (_spoiled("endpointslices", lambda o: o.__setitem__("endpoints", {"a": 1})),
                                  "endpoints"),
    "slice-node-name-a-number": (_spoiled("endpointslices", lambda o: o["endpoints"][0].__setitem__(
        "nodeName", 7)), "nodeName"),
    "endpoints-subsets-an-object": (_spoiled("endpoints", lambda o: o.__setitem__("subsets", {"a": 1})),
                                    "subsets"),
}


@pytest.mark.parametrize("case", sorted(SPOILED))
async def test_a_wrapper_started_on_a_malformed_snapshot_ignores_it_and_serves_the_apiservers_state(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    spoil, reason = SPOILED[case]
    items = {r.plural: sim.list(r) for r in ALL}
    # A Service only the snapshot has: if any of the file were loaded, it would be served first.
    ghost = copy.deepcopy(items["services"][0])
    ghost["metadata"]["name"] = "ghost"
    items["services"].append(ghost)
    spoil(items)
    (tmp_path / snapshot.FILENAME).write_bytes(snapshot_bytes(items, rv=sim.rv,
                                                              identity=snapshot.Identity(LOCAL_NODE, sim.url)))
    caplog.set_level(logging.INFO, logger="cache.snapshot")
    async with running_wrapper(sim.url, cache_dir=tmp_path, snapshot_interval=0.2, wait=False) as w:
        assert not w.cache.ready, "nothing of the snapshot was loaded"
        [record] = [r for r in caplog.records if "snapshot" in r.getMessage()]
        assert record.levelno == logging.WARNING and "ignored" in record.getMessage()
        assert reason in record.getMessage()
        await eventually(lambda: w.cache.ready, 15, "the first sync from the apiserver")
        for r in ALL:
            assert comparable(await list_items(w.url, r)) == comparable(served_state(sim, r, LOCAL_NODE)), r
        # The next snapshot written is a sound one, and restores.
        await eventually(lambda: w.persister is not None and w.persister.writes > 0, 15, "a fresh snapshot")
    fresh = ClusterCache(LOCAL_NODE)
    assert snapshot.restore(fresh, tmp_path, snapshot.Identity(LOCAL_NODE, sim.url))
    assert "default/ghost" not in fresh.views["services"].objects


# ---- the same validator on the upstream path -------------------------------------------------


async def test_upstream_items_failing_the_shared_validator_are_skipped_and_a_bad_watch_event_relists(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seed = servicegrid_demo()
    bad_node = seeds.node("bad-node", "10.9.9.9")
    bad_node["metadata"]["labels"] = ["location"]
    bad_service = seeds.service("default", "bad-svc", "172.16.33.99", 80, 8080)
    bad_service["metadata"]["annotations"] = "topologyKeys"
    bad_slice = copy.deepcopy(next(o for r, o in seed if r is ENDPOINTSLICES and len(o.get("endpoints") or ()) > 1))
    bad_slice["metadata"]["name"] = "bad-slice"
    bad_slice["endpoints"][0]["nodeName"] = 7
    fake = GarbageUpstream([*seed, (NODES, bad_node), (SERVICES, bad_service), (ENDPOINTSLICES, bad_slice)])
    truth = {p: {k: o for k, o in objs.items() if "bad" not in k} for p, objs in fake.objects.items()}
    # A watch event whose object would corrupt the local node's labels: untrusted, so a relist.
    local = copy.deepcopy(fake.objects["nodes"][LOCAL_NODE])
    local["metadata"]["labels"] = {"location": ["guangzhou"]}
    local["metadata"]["resourceVersion"] = str(fake.rv + 1)
    fake.scripts["nodes"] = [fake.line("MODIFIED", NODES, local)]
    caplog.set_level(logging.WARNING, logger="cache.reflector")
    await fake.start()
    try:
        async with running_wrapper(fake.url) as w:
            await eventually(lambda: fake.lists["nodes"] >= 2 and w.informers.reflectors["nodes"].state.connected,
                           10, "the relist after the bad watch event")
            for r in ALL:
                served = await list_items(w.url, r)
                # Of Nodes, the wrapper serves the local one.
                want = {LOCAL_NODE} if r is NODES else set(truth[r.plural])
                assert set(served) == want, r.plural
            served_nodes = await list_items(w.url, NODES)
            assert served_nodes[LOCAL_NODE]["metadata"]["labels"]["location"] == "beijing"
            assert (await get_text(w.url + "/readyz"))[0] == 200
    finally:
        await fake.stop()
    skipped = [r.getMessage() for r in caplog.records if "malformed list item" in r.getMessage()]
    # node-labels: the node topology feed's metadata-only watch of every Node (this fake has no buckets).
    assert {m.split()[1].rstrip(":") for m in skipped} == {"nodes", "node-labels", "services", "endpointslices"}
    assert any("relisting" in r.getMessage() and "nodes" in r.getMessage() for r in caplog.records)
