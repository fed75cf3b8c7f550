"""kube-proxy 1.34's request set, replayed straight against an apiserver (the simulator), to count
what kube-proxy itself costs the apiserver.

kube-proxy 1.34 (k/k ``cmd/kube-proxy/app/server.go``, ``ProxyServer.Run``) runs one client-go
informer per resource it reads:

- Services: ``labelSelector=!service.kubernetes.io/service-proxy-name`` and
  ``fieldSelector=spec.clusterIP!=None`` (headless Services are DNS's business);
- EndpointSlices: ``labelSelector=!service.kubernetes.io/headless``;
- its own Node: ``fieldSelector=metadata.name=<node>`` (the NodeManager's informer);
- ServiceCIDRs (``networking.k8s.io/v1``, no selector; MultiCIDRServiceAllocator is on by default
  since 1.33). The simulator does not serve them, so they are left out here. A wrapper passes
  kube-proxy's ServiceCIDR requests through unchanged, so they cost the apiserver the same either
  way and the comparison does not change.

Each informer's reflector lists (``resourceVersion=0&limit=500``, followed page by page while the
server pages; client-go's streaming lists, WatchListClient, are off by default up to 1.34), then
watches from the list's resourceVersion with ``allowWatchBookmarks=true`` and a random
``timeoutSeconds`` in [300, 600), resuming where a watch ended and listing again after a 410.

Real kube-proxy asks for protobuf; the simulator speaks JSON only, so both sides of the
comparison are measured in JSON (protobuf is smaller, for kube-proxy and the wrapper's informers
alike, where the apiserver sends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
import orjson

USER_AGENT = "kube-proxy/v1.34.1 (linux/amd64) kubernetes/bench-replay"
SERVICES = "/api/v1/services"
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
NODES = "/api/v1/nodes"


@dataclass(frozen=True)
class InformerSpec:
    name: str
    path: str
    params: dict[str, str]


def request_set(node: str) -> list[InformerSpec]:
    """kube-proxy 1.34's informers for node ``node`` (ServiceCIDRs aside: see the module docstring)."""
    return [
        InformerSpec("services", SERVICES, {"labelSelector": "!service.kubernetes.io/service-proxy-name",
                                            "fieldSelector": "spec.clusterIP!=None"}),
        InformerSpec("endpointslices", SLICES, {"labelSelector": "!service.kubernetes.io/headless"}),
        InformerSpec("nodes", NODES, {"fieldSelector": f"metadata.name={node}"}),
    ]


@dataclass
class Informer:
    """One reflector of the replay: list, then watch; counts what it received."""

    spec: InformerSpec
    http: aiohttp.ClientSession
    base: str
    headers: dict[str, str]
    rng: random.Random
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    rv: str = ""
    listed: int = 0
    events: int = 0
    lists: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            try:
                if not self.rv:
                    await self._list()
                await self._watch()
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                self.errors.append(repr(exc)[:200])
                del self.errors[:-20]
                await asyncio.sleep(0.5 + self.rng.random())

    async def _list(self) -> None:
        params = {**self.spec.params, "resourceVersion": "0", "limit": "500"}
        count = 0
        rv = ""
        while True:
            async with self.http.get(f"{self.base}{self.spec.path}?{urlencode(params)}", headers=self.headers) as r:
                body = await r.read()
                if r.status != 200:
                    raise ValueError(f"list {self.spec.name}: HTTP {r.status}")
            doc = orjson.loads(body)
            count += len(doc.get("items") or [])
            meta = doc.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion", ""))
            token = meta.get("continue")
            if not token:
                break
            params = {**self.spec.params, "limit": "500", "continue": str(token)}
        self.rv, self.listed = rv, count
        self.lists += 1
        self.synced.set()

    async def _watch(self) -> None:
        params = {**self.spec.params, "watch": "true", "resourceVersion": self.rv, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(self.rng.randrange(300, 600))}
        async with self.http.get(f"{self.base}{self.spec.path}?{urlencode(params)}", headers=self.headers) as r:
            if r.status == 410:
                self.rv = ""
                return
            if r.status != 200:
                raise ValueError(f"watch {self.spec.name}: HTTP {r.status}")
            async for line in r.content:
                if not line.strip():
                    continue
                ev = orjson.loads(line)
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        self.rv = ""
                    return
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.rv = str(rv)
                if ev.get("type") != "BOOKMARK":
                    self.events += 1


class KubeProxyReplay:
    """kube-proxy's informers for one node, as one client (its own token and User-Agent)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, node: str, token: str, seed: int = 0) -> None:
        headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": USER_AGENT,
                   "Authorization": f"Bearer {token}"}
        rng = random.Random(seed)
        self.informers = [Informer(spec, http, base, headers, rng) for spec in request_set(node)]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, timeout: float = 60) -> None:
        """Run every informer; returns once each has listed."""
        self._tasks = [asyncio.create_task(i.run(), name=f"kube-proxy-replay:{i.spec.name}") for i in self.informers]
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers)), timeout)

    def counts(self) -> dict[str, dict[str, int]]:
        return {i.spec.name: {"listed": i.listed, "events": i.events, "lists": i.lists} for i in self.informers}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
