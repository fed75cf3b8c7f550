"""Property: for random clusters and random change sequences, a client watching through the
wrapper always converges to filters(upstream).

Each example starts its own simulator and wrapper on real sockets. The default run is small;
set AGW_PROPERTY_EXAMPLES (e.g. 200) for a longer one.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apisim.seeds import node, service
from apisim.server import Simulator
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from tests.support.oracle import comparable, filtered_state, holds
from tests.support.reflector import ReflectorModel
from tests.support.stack import stack
from tests.support.waiting import one_loop_step

LOCAL = "n0"
NODE_NAMES = ("n0", "n1", "n2", "n3", "n4")
EXAMPLES = int(os.environ.get("AGW_PROPERTY_EXAMPLES", "25"))
ANNOTATIONS = st.sampled_from([
    None,
    {"topologyKeys": '["location"]'},
    {"topologyKeys": '["location", "*"]'},
    {"topologyKeys": '["zone", "location"]'},
    {"topologyKeys": '["kubernetes.io/hostname", "*"]'},
    {"topologyKeys": '["*"]'},
    {"topologyKeys": '["location"'},  # malformed JSON
    {"topologyKeys": "[]"},  # malformed: empty
    {"topologyKeys": '["*", "location"]'},  # malformed: "*" not last
    {"topologyKeys": '["bad key!"]'},  # malformed: not a label key
    {"topologyKeys": '"location"'},  # malformed: not a list
    {"openyurt.io/topologyKeys": "kubernetes.io/hostname"},
    {"openyurt.io/topologyKeys": "openyurt.io/nodepool"},
    {"openyurt.io/topologyKeys": "kubernetes.io/zone"},
    {"openyurt.io/topologyKeys": "nonsense"},  # malformed
    {"topologyKeys": '["location"]', "openyurt.io/topologyKeys": "kubernetes.io/hostname"},
])
LABELS = st.fixed_dictionaries({}, optional={
    "location": st.sampled_from(["a", "b"]),
    "zone": st.sampled_from(["z1", "z2"]),
    "apps.openyurt.io/nodepool": st.sampled_from(["p1", "p2"]),
})
CONDITIONS = st.sampled_from([
    None, {"ready": True}, {"ready": False}, {"ready": True, "serving": True, "terminating": False},
    {"ready": False, "serving": True, "terminating": True}, {"ready": False, "serving": False, "terminating": True},
])
NODE_REF = st.sampled_from([*NODE_NAMES, "ghost", None])


@st.composite
def endpoint(draw: st.DrawFn, family: str) -> dict[str, Any]:
    n = draw(st.integers(1, 250))
    ep: dict[str, Any] = {"addresses": [f"10.1.0.{n}" if family == "IPv4" else f"fd00::{n:x}"]}
    cond = draw(CONDITIONS)
    if cond is not None:
        ep["conditions"] = cond
    ref = draw(NODE_REF)
    if ref is not None:
        ep["nodeName"] = ref
    return ep


@st.composite
def slice_spec(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    return family, draw(st.lists(endpoint(family), max_size=5))


@dataclass
class ServiceSpec:
    name: str
    annotations: dict[str, str] | None
    slices: list[tuple[str, list[dict[str, Any]]]]


@st.composite
def cluster(draw: st.DrawFn) -> tuple[dict[str, dict[str, str]], list[ServiceSpec]]:
    names = draw(st.lists(st.sampled_from(NODE_NAMES[1:]), unique=True, max_size=4))
    nodes = {n: draw(LABELS) for n in [LOCAL, *names]}
    services = [ServiceSpec(f"svc-{i}", draw(ANNOTATIONS), draw(st.lists(slice_spec(), min_size=1, max_size=2)))
                for i in range(draw(st.integers(1, 4)))]
    return nodes, services


CHANGES = st.lists(st.one_of(
    st.tuples(st.just("relabel"), st.sampled_from(NODE_NAMES), LABELS),
    st.tuples(st.just("delete_node"), st.sampled_from(NODE_NAMES[1:])),
    st.tuples(st.just("annotate"), st.integers(0, 3), ANNOTATIONS),
    st.tuples(st.just("endpoints"), st.integers(0, 3), st.integers(0, 1), slice_spec()),
    st.tuples(st.just("delete_service"), st.integers(0, 3)),
), max_size=12)


def seed_of(nodes: dict[str, dict[str, str]], services: list[ServiceSpec]) -> list[tuple[Resource, Any]]:
    items: list[tuple[Resource, Any]] = [(NODES, node(n, f"192.168.0.{i + 1}", labels))
                                         for i, (n, labels) in enumerate(nodes.items())]
    for i, spec in enumerate(services):
        svc = service("default", spec.name, f"10.96.0.{i + 10}", 80, 8080, annotations=spec.annotations)
        items.append((SERVICES, svc))
        for j, (family, eps) in enumerate(spec.slices):
            items.append((ENDPOINTSLICES, slice_obj(spec.name, j, family, eps)))
        items.append((ENDPOINTS, endpoints_obj(spec.name, [ep for _, eps in spec.slices for ep in eps])))
    return items


def slice_obj(svc: str, j: int, family: str, eps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": f"{svc}-{j}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family, "endpoints": eps, "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}


def endpoints_obj(svc: str, eps: list[dict[str, Any]]) -> dict[str, Any]:
    def addr(ep: dict[str, Any]) -> dict[str, Any]:
        return {"ip": ep["addresses"][0], **({"nodeName": ep["nodeName"]} if "nodeName" in ep else {})}

    ready = [addr(e) for e in eps if (e.get("conditions") or {}).get("ready") is not False]
    not_ready = [addr(e) for e in eps if (e.get("conditions") or {}).get("ready") is False]
    subset: dict[str, Any] = {"ports": [{"port": 8080, "protocol": "TCP"}]}
    if ready:
        subset["addresses"] = ready
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    return {"metadata": {"name": svc, "namespace": "default"}, "subsets": [subset] if ready or not_ready else []}


def apply(sim: Simulator, change: tuple[Any, ...]) -> None:
    op = change[0]
    exists = {s["metadata"]["name"] for s in sim.list(SERVICES)}
    if op == "relabel":
        _, name, labels = change
        current = {n["metadata"]["name"] for n in sim.list(NODES)}
        if name in current:
            old = sim.get(NODES, None, name)["metadata"].get("labels") or {}
            patch: dict[str, str | None] = {k: None for k in ("location", "zone", "apps.openyurt.io/nodepool")
                                            if k in old}
            sim.patch_labels(NODES, None, name, {**patch, **labels})
        else:
            sim.create(NODES, node(name, "192.168.1.1", labels))
    elif op == "delete_node":
        if change[1] in {n["metadata"]["name"] for n in sim.list(NODES)}:
            sim.delete(NODES, None, change[1])
    elif op == "annotate":
        name = f"svc-{change[1]}"
        if name in exists:
            ann: dict[str, str | None] = {"topologyKeys": None, "openyurt.io/topologyKeys": None, **(change[2] or {})}
            sim.patch(SERVICES, "default", name, {"metadata": {"annotations": ann}})
    elif op == "endpoints":
        _, i, j, (family, eps) = change
        name = f"svc-{i}"
        if name not in exists:
            return
        slice_name = f"{name}-{j}"
        slices = {s["metadata"]["name"]: s for s in sim.list(ENDPOINTSLICES, "default")}
        if slice_name in slices:
            obj = slices[slice_name]
            obj.update(addressType=family, endpoints=eps)
            sim.update(ENDPOINTSLICES, obj)
        else:
            sim.create(ENDPOINTSLICES, slice_obj(name, j, family, eps))
        all_eps = [ep for s in sim.list(ENDPOINTSLICES, "default",
                                        label_selector=f"kubernetes.io/service-name={name}")
                   for ep in s.get("endpoints") or []]
        ep_obj = sim.get(ENDPOINTS, "default", name)
        ep_obj["subsets"] = endpoints_obj(name, all_eps)["subsets"]
        sim.update(ENDPOINTS, ep_obj)
    elif op == "delete_service":
        name = f"svc-{change[1]}"
        if name in exists:
            sim.delete(SERVICES, "default", name)
            for s in sim.list(ENDPOINTSLICES, "default", label_selector=f"kubernetes.io/service-name={name}"):
                sim.delete(ENDPOINTSLICES, "default", s["metadata"]["name"])
            sim.delete(ENDPOINTS, "default", name)


async def scenario(nodes: dict[str, dict[str, str]], services: list[ServiceSpec], changes: list[tuple[Any, ...]],
                   streaming: bool) -> None:
    async with stack(seed_of(nodes, services), node=LOCAL, sim_bookmarks=0.2, wrapper_bookmarks=0.2) as stk:
        models = {
            "endpointslices": ReflectorModel(stk.wrapper.url, ENDPOINTSLICES.collection_path(), "EndpointSlice",
                                             "discovery.k8s.io/v1", streaming=streaming),
            "endpoints": ReflectorModel(stk.wrapper.url, ENDPOINTS.collection_path(), "Endpoints", "v1",
                                        streaming=streaming),
        }
        resources = {"endpointslices": ENDPOINTSLICES, "endpoints": ENDPOINTS}
        for m in models.values():
            m.start()
        try:
            for name, m in models.items():
                want = comparable(filtered_state(stk.sim, resources[name], LOCAL))
                await m.wait_until(holds(want))
            for i, change in enumerate(changes):
                apply(stk.sim, change)
                if i % 3 == 0:
                    # Interleaves the changes with the wrapper's work in a way the seed decides,
                    # instead of letting them all reach it in one batch (not a wait for anything).
                    await one_loop_step()
            for name, m in models.items():
                want = comparable(filtered_state(stk.sim, resources[name], LOCAL))
                try:
                    await m.wait_until(holds(want), timeout=10)
                except AssertionError:
                    got = comparable(m.store)
                    diff = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
                    raise AssertionError(f"{name} did not converge at {diff}: got "
                                         f"{json.dumps([got.get(k) for k in diff])[:1500]} want "
                                         f"{json.dumps([want.get(k) for k in diff])[:1500]}") from None
                assert m.violations == [], m.violations
                assert m.relists == 0, m.relist_reasons
        finally:
            for m in models.values():
                await m.stop()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)
@given(cluster(), CHANGES, st.booleans())
def test_a_watching_client_always_converges_to_the_filtered_upstream(
    generated: tuple[dict[str, dict[str, str]], list[ServiceSpec]], changes: list[tuple[Any, ...]], streaming: bool
) -> None:
    nodes, services = generated
    asyncio.run(scenario(nodes, services, changes, streaming))
