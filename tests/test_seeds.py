"""The simulator's documented demo seeds are what they claim to be: every annotated Service is filtered.

A seed whose annotation the wrapper does not understand would make its demo silently show
unfiltered endpoints (the OpenYurt seed once used the node label key as the annotation value).
So for each demo seed and each annotated Service, the wrapper running as some node of that seed
must serve fewer endpoints than the simulator holds, and /debug/topology must report the Service
as parsed (keys, not "malformed").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from apisim.seeds import SEEDS, SeedList
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from tests.support.stack import stack

ANNOTATIONS = ("topologyKeys", "openyurt.io/topologyKeys")
DEMOS = [name for name in SEEDS if name != "empty"]


def _annotated(seed: SeedList) -> list[str]:
    return sorted(
        f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        for res, obj in seed
        if res is SERVICES and any(a in (obj["metadata"].get("annotations") or {}) for a in ANNOTATIONS)
    )


def _endpoint_count(slices: list[dict[str, Any]], service: str) -> int:
    ns, name = service.split("/")
    return sum(len(s.get("endpoints") or []) for s in slices
               if s["metadata"]["namespace"] == ns
               and s["metadata"]["labels"].get("kubernetes.io/service-name") == name)


@pytest.mark.parametrize("demo", DEMOS)
async def test_every_annotated_service_of_a_demo_seed_is_filtered_on_some_node(demo: str) -> None:
    make: Callable[[], SeedList] = SEEDS[demo]
    seed = make()
    services = _annotated(seed)
    assert services, f"the {demo} demo seed has no annotated Service"
    nodes = sorted(obj["metadata"]["name"] for res, obj in seed if res is NODES)
    narrowed: set[str] = set()
    async with aiohttp.ClientSession() as http:
        for node in nodes:
            async with stack(make(), node=node) as st:
                upstream = st.sim.list(ENDPOINTSLICES)
                async with http.get(f"{st.wrapper.url}/apis/discovery.k8s.io/v1/endpointslices") as resp:
                    served = (await resp.json())["items"]
                async with http.get(f"{st.wrapper.debug_url}/debug/topology") as resp:
                    report = await resp.json()
                parsed = {s["service"]: s for s in report["services"]}
                for svc in services:
                    assert svc in parsed and "malformed" not in parsed[svc], (demo, svc, parsed.get(svc))
                    if _endpoint_count(served, svc) < _endpoint_count(upstream, svc):
                        narrowed.add(svc)
    assert narrowed == set(services), f"{demo}: never filtered on any node: {sorted(set(services) - narrowed)}"
