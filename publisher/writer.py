"""The publisher's loop: keep the bucket ConfigMaps equal to what the cluster's Nodes and Services say.

Three informers feed it (``publisher.sources``): Nodes (metadata only), Services, and the bucket
ConfigMaps in the publisher's namespace. A change that can matter marks the buckets dirty; the
loop waits ``debounce`` seconds so that a burst (a rollout relabelling many nodes, a relist) costs
one pass, plans the writes (``publisher.plan``) and, while this process leads, performs them with
resourceVersion preconditions: every bucket of the new state first, deletions last. A conflict (the
object changed since it was read) is read again and retried once, then planned again after a
back-off.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from dataclasses import dataclass
from typing import Protocol

import orjson

from cache.apiclient import ApiClient
from cache.apierrors import ApiError, TransportError
from cache.listwatch import ReflectorSettings
from kubeapi.node_topology import LABEL_SELECTOR, NODES_PER_BUCKET
from kubeapi.resources import CONFIGMAPS, NODES, SERVICES
from kubeapi.types import JSONDict
from publisher.informer import Informer
from publisher.plan import MAX_BUCKET_BYTES, Plan, Put, plan_buckets
from publisher.sources import BucketObjects, NodeLabels, ServiceKeys

log = logging.getLogger("publisher")


class Leadership(Protocol):
    """Whether this process may write now (``publisher.leader.LeaderElector``)."""

    @property
    def is_leader(self) -> bool: ...


class AlwaysLeader:
    """Leadership without election (``--no-leader-elect``: a single replica)."""

    is_leader = True


@dataclass(frozen=True)
class PublisherSettings:
    per_bucket: int = NODES_PER_BUCKET  # nodes per bucket on average, at most
    max_bytes: int = MAX_BUCKET_BYTES  # data bytes per bucket, at most
    debounce: float = 1.0  # seconds a change waits for the others of its burst
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


@dataclass
class Counts:
    """What the publisher did, for logs and tests."""

    passes: int = 0
    created: int = 0
    replaced: int = 0
    deleted: int = 0
    conflicts: int = 0


class TopologyPublisher:
    """Owns the informers, their sinks and the write loop. Created and run by ``publisher.cli`` (and
    tests); writes only while ``leadership.is_leader``, and is told of a new term through
    ``leadership_changed`` so that a new leader starts from a full comparison."""

    def __init__(self, client: ApiClient, namespace: str, leadership: Leadership,
                 settings: PublisherSettings | None = None, reflect: ReflectorSettings | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self.leadership = leadership
        self.settings = settings or PublisherSettings()
        self.counts = Counts()
        self._dirty = asyncio.Event()
        self._rng = random.Random()
        self.services = ServiceKeys(self.changed)
        self.nodes = NodeLabels(lambda: self.services.keys, self.changed)
        self.buckets = BucketObjects(self.changed)
        self.informers = (
            Informer(client, NODES, self.nodes, metadata_only=True, settings=reflect),
            Informer(client, SERVICES, self.services, settings=reflect),
            Informer(client, CONFIGMAPS, self.buckets, namespace=namespace, label_selector=LABEL_SELECTOR,
                     settings=reflect),
        )
        self._busy = False  # a pass is waiting out its debounce or writing
        self._generation: int | None = None
        self._invalid_logged: set[tuple[str, str]] = set()

    @property
    def synced(self) -> bool:
        return all(i.synced for i in self.informers)

    @property
    def settled(self) -> bool:
        """No change is waiting to be written, and no pass is running."""
        return not self._dirty.is_set() and not self._busy

    def changed(self) -> None:
        self._dirty.set()

    def leadership_changed(self, leading: bool) -> None:
        if leading:
            self._dirty.set()

    async def run(self) -> None:
        tasks = [asyncio.create_task(i.run(), name=f"publisher-{i.resource.plural}") for i in self.informers]
        tasks.append(asyncio.create_task(self._write_loop(), name="publisher-writes"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _write_loop(self) -> None:
        backoff = self.settings.backoff_initial
        while True:
            await self._dirty.wait()
            self._busy = True
            try:
                backoff = await self._pass(backoff)
            finally:
                self._busy = False

    async def _pass(self, backoff: float) -> float:
        """One debounced pass, and its back-off if it has to be planned again; returns the next back-off."""
        s = self.settings
        await asyncio.sleep(s.debounce)  # the rest of the burst joins this pass
        self._dirty.clear()
        if not self.synced or not self.leadership.is_leader:
            return backoff  # the last informer's first list, or the next term, marks it dirty again
        try:
            if await self.publish_once():
                return s.backoff_initial
        except (ApiError, TransportError) as exc:
            log.warning("node topology: writing the buckets failed (%s); retrying in up to %.1fs", exc, backoff)
        await asyncio.sleep(self._rng.uniform(backoff / 2, backoff))
        self._dirty.set()
        return min(backoff * 2, s.backoff_max)

    async def publish_once(self) -> bool:
        """One pass: plan and write. False when it has to be planned again (something changed meanwhile)."""
        s = self.settings
        plan = plan_buckets(self.nodes.labels, self.services.keys, self.buckets.objects, namespace=self.namespace,
                            per_bucket=s.per_bucket, max_bytes=s.max_bytes)
        self.counts.passes += 1
        self._log_invalid(plan)
        if plan.empty:
            self._generation = plan.generation
            return True
        if self._generation is not None and plan.generation != self._generation:
            log.info("node topology: generation %d -> %d (%d buckets, keys %s): writing the new buckets before "
                     "deleting the old", self._generation, plan.generation, plan.buckets, sorted(plan.keys))
        for put in plan.puts:
            if not self.leadership.is_leader:
                return True  # no longer ours to write: the next leader compares everything again
            if not await self._put(put):
                return False
        for delete in plan.deletes:
            if not self.leadership.is_leader:
                return True
            if not await self._delete(delete.name, delete.resource_version):
                return False
        self._generation = plan.generation
        log.info("node topology: generation %d, %d buckets, %d nodes, keys %s: %d written, %d deleted",
                 plan.generation, plan.buckets, plan.nodes, sorted(plan.keys), len(plan.puts), len(plan.deletes))
        return True

    def _log_invalid(self, plan: Plan) -> None:
        for name, why in plan.invalid:
            rv = str(self.buckets.objects[name]["metadata"].get("resourceVersion", ""))
            if (name, rv) not in self._invalid_logged:
                self._invalid_logged.add((name, rv))
                log.warning("node topology: ConfigMap %s/%s is not a valid bucket (%s); it is rewritten or deleted",
                            self.namespace, name, why)
        if len(self._invalid_logged) > 4 * len(self.buckets.objects) + 64:
            self._invalid_logged.clear()  # bounded: at worst, one line again

    # ---- requests ----------------------------------------------------------------------------

    async def _put(self, put: Put) -> bool:
        if put.replaces is not None:
            return await self._replace(put.body, put.replaces)
        try:
            resp = await self.client.request("POST", CONFIGMAPS.collection_path(self.namespace), json=put.body)
        except ApiError as exc:
            if exc.code != 409:
                raise
            # It exists, unseen: not yet delivered, or no longer carrying the bucket labels.
            return await self._replace(put.body, await self._get(put.name))
        self.counts.created += 1
        self.buckets.wrote(_object(resp.body))
        return True

    async def _replace(self, body: JSONDict, current: JSONDict, *, retry: bool = True) -> bool:
        name = body["metadata"]["name"]
        desired = copy.deepcopy(body)
        desired["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion", "")
        try:
            resp = await self.client.request("PUT", CONFIGMAPS.object_path(name, self.namespace), json=desired)
        except ApiError as exc:
            if exc.code == 404:
                self.buckets.deleted(name)  # gone meanwhile: created on the next pass
                return False
            if exc.code != 409:
                raise
            self.counts.conflicts += 1
            if not retry:
                return False
            return await self._replace(body, await self._get(name), retry=False)
        self.counts.replaced += 1
        self.buckets.wrote(_object(resp.body))
        return True

    async def _get(self, name: str) -> JSONDict:
        return _object((await self.client.request("GET", CONFIGMAPS.object_path(name, self.namespace))).body)

    async def _delete(self, name: str, resource_version: str) -> bool:
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": resource_version}}
        try:
            await self.client.request("DELETE", CONFIGMAPS.object_path(name, self.namespace),
                                      json=options if resource_version else None)
        except ApiError as exc:
            if exc.code == 409:
                self.counts.conflicts += 1
                return False  # changed since we read it: plan again
            if exc.code != 404:
                raise
        else:
            self.counts.deleted += 1
        self.buckets.deleted(name)
        return True


def _object(body: bytes) -> JSONDict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransportError(f"a ConfigMap answer that is not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict) \
            or not isinstance(doc["metadata"].get("name"), str):
        raise TransportError("a ConfigMap answer that is not an object with a name")
    doc.pop("kind", None)
    doc.pop("apiVersion", None)
    return doc
