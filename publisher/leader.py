"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

A candidate creates the Lease when there is none, or takes it over once its holder has not renewed
it for ``leaseDurationSeconds``, by an update whose resourceVersion precondition makes exactly one
of several candidates win. The leader renews it every ``retry_period``; if no renewal succeeds
within ``renew_deadline`` it stops leading (before any other candidate may take over: the renew
deadline is shorter than the lease duration). Stopping releases the Lease (holder emptied, duration
1 s), so a successor takes over at once instead of after the lease duration.

As in client-go, expiry is judged by the local clock, from when this candidate last saw the Lease
record change, never from the timestamps written in it: clocks of different machines need not
agree, only run at about the same rate. There is no fencing: ``is_leader`` turns false when the
renew deadline passes, and the publisher asks it before every write.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cache.apiclient import ApiClient
from cache.apierrors import ApiError, TransportError
from kubeapi.resources import LEASES
from kubeapi.types import JSONDict

log = logging.getLogger("publisher.leader")

JITTER = 1.2  # client-go's JitterFactor for the acquire loop


@dataclass(frozen=True)
class LeaseSettings:
    """client-go's defaults (and kube-controller-manager's --leader-elect-* flags)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problem(self) -> str | None:
        """What client-go's NewLeaderElector would refuse, or None."""
        if self.lease_duration <= self.renew_deadline:
            return "the lease duration must be greater than the renew deadline"
        if self.renew_deadline <= JITTER * self.retry_period:
            return f"the renew deadline must be greater than {JITTER} times the retry period"
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            return "the lease duration, renew deadline and retry period must be greater than 0"
        if self.lease_duration < 1:
            return "the lease duration must be at least 1 second (the Lease counts whole seconds)"
        return None


def micro_time(when: datetime) -> str:
    """A metav1.MicroTime, as the Lease's acquireTime and renewTime are written."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec(lease: JSONDict | None) -> JSONDict:
    spec = (lease or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class LeaderElector:
    """One candidate for one Lease. Owns the Lease as last observed and whether it leads; ``run()``
    campaigns and leads until cancelled; ``release()`` gives the Lease up. Created by
    ``publisher.cli``; the publisher asks ``is_leader`` before each write and is told of changes
    through ``on_change(leading)``.

    ``clock`` (monotonic seconds) decides expiry and the renew deadline, ``wall`` only writes the
    Lease's timestamps: tests drive the first.
    """

    def __init__(self, client: ApiClient, namespace: str, name: str, identity: str,
                 settings: LeaseSettings | None = None, *, on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 rng: random.Random | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.settings = settings or LeaseSettings()
        self._on_change = on_change
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self._lease: JSONDict | None = None  # the Lease as last read or written (with its resourceVersion)
        self._observed: JSONDict = {}  # its spec
        self._observed_at = 0.0  # local time the spec was last seen to change
        self._leading = False
        self._renewed_at = 0.0  # local time of the last successful acquire or renew
        self._reported = ""

    @property
    def description(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def holder(self) -> str:
        """The holder last observed ("" for none)."""
        return str(self._observed.get("holderIdentity") or "")

    @property
    def is_leader(self) -> bool:
        """Leading, and renewed within the renew deadline (so no one else can have taken over)."""
        return self._leading and self._clock() - self._renewed_at < self.settings.renew_deadline

    async def run(self) -> None:
        """Campaign, lead until a renewal deadline passes, and campaign again; until cancelled."""
        while True:
            log.info("attempting to acquire leader lease %s...", self.description)
            await self._acquire()
            log.info("successfully acquired lease %s as %s", self.description, self.identity)
            self._set_leading(True)
            try:
                await self._renew()
            finally:
                self._set_leading(False)
            log.warning("stopped leading: lease %s not renewed within %gs", self.description,
                        self.settings.renew_deadline)

    async def release(self) -> bool:
        """Give the Lease up if we hold it (stopping cleanly): True when released or not held."""
        if self.holder != self.identity or self._lease is None:
            return True
        self._set_leading(False)
        now = micro_time(self._wall())
        spec = {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now,
                "leaseTransitions": _int(self._observed.get("leaseTransitions"))}
        try:
            await self._update(spec)
        except (ApiError, TransportError) as exc:
            log.error("failed to release lease %s: %s", self.description, exc)
            return False
        log.info("released lease %s", self.description)
        return True

    # ---- the campaign ------------------------------------------------------------------------

    async def _acquire(self) -> None:
        period = self.settings.retry_period
        while True:
            if await self._try_acquire_or_renew():
                return
            await asyncio.sleep(period * (1 + JITTER * self._rng.random()))

    async def _renew(self) -> None:
        s = self.settings
        while True:
            deadline = self._clock() + s.renew_deadline
            while not await self._try_acquire_or_renew():
                if self._clock() >= deadline:
                    return
                await asyncio.sleep(s.retry_period)
            await asyncio.sleep(s.retry_period)

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            if self._on_change is not None:
                self._on_change(leading)

    def _observe(self, lease: JSONDict) -> None:
        self._lease = lease
        spec = _spec(lease)
        if spec != self._observed:
            self._observed = spec
            self._observed_at = self._clock()
        holder = self.holder
        if holder != self._reported:
            self._reported = holder
            if holder and holder != self.identity:
                log.info("lease %s is held by %s", self.description, holder)

    def _valid(self) -> bool:
        """The observed holder's lease has not run out (by our clock, since we saw it change)."""
        duration = _int(self._observed.get("leaseDurationSeconds"))
        return self._observed_at + duration > self._clock()

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time(self._wall())
        record: JSONDict = {"holderIdentity": self.identity,
                            "leaseDurationSeconds": int(self.settings.lease_duration),
                            "acquireTime": now, "renewTime": now}
        ours = self.holder == self.identity
        if ours and self._valid() and self._lease is not None:
            # The fast path: renew the version we last saw; on any failure, read it again.
            try:
                await self._update({**record, "acquireTime": self._observed.get("acquireTime", now),
                                    "leaseTransitions": _int(self._observed.get("leaseTransitions"))})
                return self._renewed()
            except (ApiError, TransportError) as exc:
                log.debug("renewing lease %s optimistically failed (%s); reading it", self.description, exc)
        try:
            lease = (await self.client.request("GET", LEASES.object_path(self.name, self.namespace),
                                               total_timeout=self.settings.renew_deadline)).body
            current = _decode(lease)
        except ApiError as exc:
            if exc.code != 404:
                log.error("error retrieving lease %s: %s", self.description, exc)
                return False
            return await self._create({**record, "leaseTransitions": 0})
        except TransportError as exc:
            log.error("error retrieving lease %s: %s", self.description, exc)
            return False
        if current is None:
            log.error("lease %s: the apiserver's answer is not a Lease", self.description)
            return False
        self._observe(current)
        holder = self.holder
        if holder and holder != self.identity and self._valid():
            return False
        transitions = _int(self._observed.get("leaseTransitions"))
        if holder == self.identity:
            record = {**record, "acquireTime": self._observed.get("acquireTime", now), "leaseTransitions": transitions}
        else:
            record = {**record, "leaseTransitions": transitions + 1}
        try:
            await self._update(record)
        except (ApiError, TransportError) as exc:
            log.info("failed to update lease %s: %s", self.description, exc)
            return False
        return self._renewed()

    def _renewed(self) -> bool:
        self._renewed_at = self._clock()
        return True

    async def _create(self, spec: JSONDict) -> bool:
        body = {"apiVersion": LEASES.api_version, "kind": LEASES.kind,
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        try:
            resp = await self.client.request("POST", LEASES.collection_path(self.namespace), json=body,
                                             total_timeout=self.settings.renew_deadline)
        except ApiError as exc:
            if exc.code == 409:  # another candidate created it first: it is read on the next attempt
                log.info("lease %s was created by another candidate", self.description)
            else:
                log.error("error initially creating lease %s: %s", self.description, exc)
            return False
        except TransportError as exc:
            log.error("error initially creating lease %s: %s", self.description, exc)
            return False
        created = _decode(resp.body)
        if created is None:
            return False
        self._observe(created)
        return self._renewed()

    async def _update(self, spec: JSONDict) -> None:
        """Replace the Lease's spec, on the condition that it is still the version last seen."""
        assert self._lease is not None
        body = {**self._lease, "apiVersion": LEASES.api_version, "kind": LEASES.kind, "spec": spec}
        resp = await self.client.request("PUT", LEASES.object_path(self.name, self.namespace), json=body,
                                         total_timeout=self.settings.renew_deadline)
        updated = _decode(resp.body)
        if updated is None:
            raise TransportError("the apiserver's answer to a Lease update is not a Lease")
        self._observe(updated)


def _decode(body: bytes) -> JSONDict | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return None
    return doc
