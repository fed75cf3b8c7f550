"""Seeded random cluster changes against the simulator, for long scripted runs.

Every change goes through the simulator's direct API (same registry as HTTP writes). The
local node is never deleted (kube-proxy exits when its Node goes away).
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from apisim.seeds import endpoint_slice, endpoints, node, service
from apisim.server import Simulator
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES

JSONDict = dict[str, Any]
LOCATIONS = ("beijing", "guangzhou", "shanghai")
ANNOTATIONS: tuple[dict[str, str] | None, ...] = (
    None,
    {"topologyKeys": '["location"]'},
    {"topologyKeys": '["location", "*"]'},
    {"topologyKeys": '["kubernetes.io/hostname", "location"]'},
    {"topologyKeys": '["topology.kubernetes.io/zone", "*"]'},
    {"topologyKeys": '["location"'},  # malformed: passes unfiltered
    {"topologyKeys": '["*", "location"]'},  # malformed
    {"openyurt.io/topologyKeys": "kubernetes.io/hostname"},
    {"openyurt.io/topologyKeys": "openyurt.io/nodepool"},
    {"openyurt.io/topologyKeys": "bogus"},  # malformed
)


class Churn:
    def __init__(self, sim: Simulator, seed: int, local_node: str) -> None:
        self.sim = sim
        self.rng = random.Random(seed)
        self.local = local_node
        self.next_id = 0
        self.applied = 0

    # ---- helpers -------------------------------------------------------------------

    def _nodes(self) -> list[str]:
        return [n["metadata"]["name"] for n in self.sim.list(NODES)]

    def _services(self) -> list[JSONDict]:
        return self.sim.list(SERVICES)

    def _endpoint(self, family: str) -> JSONDict:
        rng = self.rng
        n = rng.randrange(1, 250)
        ip = f"10.{rng.randrange(1, 250)}.{rng.randrange(250)}.{n}" if family == "IPv4" else f"fd00::{n:x}"
        ep: JSONDict = {"addresses": [ip]}
        state = rng.random()
        if state < 0.6:
            ep["conditions"] = {"ready": True, "serving": True, "terminating": False}
        elif state < 0.8:
            ep["conditions"] = {"ready": False, "serving": True, "terminating": True}
        elif state < 0.9:
            ep["conditions"] = {"ready": False}
        where = rng.random()
        if where < 0.85:
            ep["nodeName"] = rng.choice(self._nodes())
        elif where < 0.95:
            ep["nodeName"] = "ghost-node"
        return ep

    def _slice_of(self, svc: JSONDict) -> JSONDict | None:
        meta = svc["metadata"]
        found = self.sim.list(ENDPOINTSLICES, meta["namespace"], label_selector=f"kubernetes.io/service-name="
                              f"{meta['name']}")
        return found[0] if found else None

    # ---- changes -------------------------------------------------------------------

    def relabel_node(self) -> None:
        name = self.rng.choice(self._nodes())
        labels: dict[str, str | None] = {"location": self.rng.choice(LOCATIONS)}
        if self.rng.random() < 0.2:
            labels["topology.kubernetes.io/zone"] = None if self.rng.random() < 0.5 else self.rng.choice(LOCATIONS)
        if self.rng.random() < 0.2:
            labels["apps.openyurt.io/nodepool"] = self.rng.choice(LOCATIONS)
        self.sim.patch_labels(NODES, None, name, labels)

    def add_node(self) -> None:
        self.next_id += 1
        loc = self.rng.choice(LOCATIONS)
        self.sim.create(NODES, node(f"churn-{self.next_id}", f"192.168.200.{self.next_id % 250}",
                                    {"location": loc, "apps.openyurt.io/nodepool": loc}))

    def delete_node(self) -> None:
        extra = [n for n in self._nodes() if n.startswith("churn-")]
        if extra:
            self.sim.delete(NODES, None, self.rng.choice(extra))
        else:
            self.add_node()

    def scale(self) -> None:
        svcs = self._services()
        svc = self.rng.choice(svcs)
        sl = self._slice_of(svc)
        if sl is None:
            return self.add_service()
        sl = copy.deepcopy(sl)
        family = sl.get("addressType", "IPv4")
        sl["endpoints"] = [self._endpoint(family) for _ in range(self.rng.randrange(0, 6))]
        self.sim.update(ENDPOINTSLICES, sl)
        meta = svc["metadata"]
        try:
            ep = copy.deepcopy(self.sim.get(ENDPOINTS, meta["namespace"], meta["name"]))
        except Exception:
            return None
        ready = [{"ip": e["addresses"][0], **({"nodeName": e["nodeName"]} if "nodeName" in e else {})}
                 for e in sl["endpoints"] if (e.get("conditions") or {}).get("ready") is not False]
        not_ready = [{"ip": e["addresses"][0], **({"nodeName": e["nodeName"]} if "nodeName" in e else {})}
                     for e in sl["endpoints"] if (e.get("conditions") or {}).get("ready") is False]
        subset: JSONDict = {"ports": [{"port": 8080, "protocol": "TCP"}]}
        if ready:
            subset["addresses"] = ready
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        ep["subsets"] = [subset] if ready or not_ready else []
        self.sim.update(ENDPOINTS, ep)
        return None

    def add_service(self) -> None:
        self.next_id += 1
        rng = self.rng
        name = f"churn-svc-{self.next_id}"
        ns = rng.choice(("default", "edge"))
        labels: dict[str, str] = {}
        if rng.random() < 0.1:
            labels["service.kubernetes.io/service-proxy-name"] = "other-proxy"
        headless = rng.random() < 0.1
        svc = service(ns, name, "None" if headless else f"10.96.{self.next_id // 250}.{self.next_id % 250 + 1}",
                      80, 8080, selector={"app": name}, labels=labels or None,
                      annotations=rng.choice(ANNOTATIONS))
        if headless:
            svc["spec"]["clusterIPs"] = ["None"]
        created = self.sim.create(SERVICES, svc)
        sl = endpoint_slice(created, [], 8080)
        family = "IPv6" if rng.random() < 0.3 else "IPv4"
        sl["addressType"] = family
        sl["endpoints"] = [self._endpoint(family) for _ in range(rng.randrange(0, 5))]
        self.sim.create(ENDPOINTSLICES, sl)
        self.sim.create(ENDPOINTS, endpoints(created, [], 8080))

    def delete_service(self) -> None:
        churned = [s for s in self._services() if s["metadata"]["name"].startswith("churn-svc-")]
        if not churned:
            return self.add_service()
        svc = self.rng.choice(churned)
        meta = svc["metadata"]
        self.sim.delete(SERVICES, meta["namespace"], meta["name"])
        sl = self._slice_of(svc)
        if sl is not None:
            self.sim.delete(ENDPOINTSLICES, meta["namespace"], sl["metadata"]["name"])
        self.sim.delete(ENDPOINTS, meta["namespace"], meta["name"])
        return None

    def reannotate(self) -> None:
        svc = self.rng.choice(self._services())
        meta = svc["metadata"]
        new = self.rng.choice(ANNOTATIONS) or {}
        patch: dict[str, str | None] = {"topologyKeys": None, "openyurt.io/topologyKeys": None, **new}
        self.sim.patch(SERVICES, meta["namespace"], meta["name"], {"metadata": {"annotations": patch}})

    def step(self) -> str:
        ops = (("relabel_node", 4), ("scale", 6), ("add_service", 2), ("delete_service", 1), ("reannotate", 2),
               ("add_node", 1), ("delete_node", 1))
        name = self.rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
        getattr(self, name)()
        self.applied += 1
        return name


def describe(obj: JSONDict) -> str:
    return json.dumps(obj, sort_keys=True)[:300]
