"""List-then-watch of one collection for the publisher: a namespace, a label selector, metadata only.

The decisions (when to relist, resume or back off, what the sink is told) are the cache's own
sans-I/O machine, ``cache.listwatch.ListWatch``; this loop performs them, as
``cache.reflector.Reflector`` does, with three differences the publisher needs and the reflector
does not offer: the collection of one namespace (the bucket ConfigMaps, which the publisher's Role
lets it read only there), a label selector on every request, and metadata-only answers
(``as=PartialObjectMetadata``: a Node event is then about 3 KB instead of 10, and the publisher
reads only names and labels). Metadata answers are handed to the machine as objects of the
resource's own kind, since they carry everything it checks (metadata) and all the sink reads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from cache.apiclient import ApiClient
from cache.listwatch import Clock, ListPage, ListWatch, ReflectorSettings, Sink, Sleep, UpstreamState, Watch
from cache.reflector import log_say
from kubeapi.negotiation import PARTIAL, PARTIAL_LIST
from kubeapi.resources import Resource

# As client-go's metadata informers ask: the metadata form first, full objects from a server without it.
METADATA_LIST_ACCEPT = f"application/json;as={PARTIAL_LIST};g=meta.k8s.io;v=v1,application/json"
METADATA_ACCEPT = f"application/json;as={PARTIAL};g=meta.k8s.io;v=v1,application/json"


class Informer:
    """Keeps ``sink`` in step with one collection upstream. Owns its ``ListWatch`` machine and runs
    the loop that performs its actions with ``client`` (which it does not close). Created and run
    by ``publisher.writer.TopologyPublisher``."""

    def __init__(self, client: ApiClient, resource: Resource, sink: Sink, *, namespace: str | None = None,
                 label_selector: str = "", metadata_only: bool = False, settings: ReflectorSettings | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.client = client
        self.resource = resource
        self.path = resource.collection_path(namespace)
        self.label_selector = label_selector
        self.metadata_only = metadata_only
        self.settings = settings or ReflectorSettings()
        self.machine = ListWatch(resource, sink, self.settings, clock=clock, say=log_say)

    @property
    def state(self) -> UpstreamState:
        return self.machine.state

    @property
    def synced(self) -> bool:
        """The first list has reached the sink."""
        return self.machine.state.synced_once

    def _params(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, "labelSelector": self.label_selector} if self.label_selector else params

    async def run(self) -> None:
        machine = self.machine
        while True:
            action = machine.next_action()
            try:
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                elif isinstance(action, ListPage):
                    accept = METADATA_LIST_ACCEPT if self.metadata_only else action.accept
                    resp = await self.client.request("GET", self.path, params=self._params(action.params),
                                                     accept=accept, read_timeout=self.settings.read_timeout)
                    machine.list_page(self._as_list(resp.body) if self.metadata_only else resp.body)
                else:
                    await self._watch(action)
            except Exception as exc:  # CancelledError is not an Exception: stopping stays stopping
                machine.failed(exc)

    async def _watch(self, action: Watch) -> None:
        machine = self.machine
        accept = METADATA_ACCEPT if self.metadata_only else action.accept
        async with self.client.stream("GET", self.path, params=self._params(action.params),
                                      headers={"Accept": accept}, read_timeout=self.settings.read_timeout) as resp:
            machine.watch_opened()
            while True:
                line = await resp.content.readline()
                if not line:
                    break
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    machine.undecodable(exc)
                    return
                if self.metadata_only and isinstance(ev, dict) and ev.get("type") != "ERROR":
                    self._as_object(ev.get("object"))
                if not machine.event(ev):
                    return
        machine.watch_ended()

    def _as_object(self, obj: Any) -> None:
        if isinstance(obj, dict) and obj.get("kind") == PARTIAL:
            obj["kind"], obj["apiVersion"] = self.resource.kind, self.resource.api_version

    def _as_list(self, body: bytes) -> bytes:
        """A PartialObjectMetadataList as a list of the resource (anything else is left to the machine)."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(doc, dict) or doc.get("kind") != PARTIAL_LIST:
            return body
        items = doc.get("items")
        if items is None:
            items = doc["items"] = []  # the apiserver's empty metadata list has "items": null
        if isinstance(items, list):
            for item in items:
                self._as_object(item)
        doc["kind"], doc["apiVersion"] = self.resource.list_kind, self.resource.api_version
        return orjson.dumps(doc)
