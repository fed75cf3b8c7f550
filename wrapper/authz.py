"""``--authorize-clients``: check each client's bearer token before serving it from the cache.

Like kube-rbac-proxy: a TokenReview says who the token belongs to, a SubjectAccessReview
says whether that user may ``list``/``get``/``watch`` the resource. Decisions are keyed by
(token hash, verb, resource, namespace, name) and kept in a ``DecisionCache``: two bounded
LRUs, allowed decisions in one and refusals (unauthenticated or forbidden) in a smaller one,
so a flood of junk tokens churns only the refusals and never pushes out kube-proxy's
recently used decision. A decision is fresh for ``allowed_ttl`` (``denied_ttl`` for a
refusal); after that it is reviewed again, and meanwhile still used (up to
``offline_max_age``) when the apiserver is unreachable or the review cap is reached. After
a review finds the apiserver unreachable, stale decisions answer at once for
``unreachable_pause`` seconds rather than each waiting for a review to time out.

Reviews are capped by a ``TokenBucket`` (``review_qps``, ``review_burst``). While it is
empty, a token with no usable decision gets ``429 TooManyRequests`` with ``Retry-After``,
as the apiserver answers when it sheds load, so every junk token costs the apiserver at
most its share of the cap.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from cache.apiclient import ApiClient
from cache.apierrors import ApiError, TransportError
from kubeapi import status
from kubeapi.resources import Resource
from kubeapi.status import forbidden_verb, too_many_requests, unauthorized

log = logging.getLogger(__name__)

TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SUBJECTACCESSREVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

# Defaults, also the CLI's (README "Flags").
DEFAULT_CACHE_SIZE = 4096  # allowed decisions kept; refusals get a quarter of it
DEFAULT_REVIEW_QPS = 5.0
DEFAULT_REVIEW_BURST = 20


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    user: str
    reason: str
    decided_at: float


# (sha256 of the token, verb, group, resource, namespace, name): the token itself is never kept.
DecisionKey = tuple[bytes, str, str, str, str, str]


class DecisionCache:
    """The decisions a ``ClientAuthorizer`` keeps, bounded, least recently used first out.

    Allowed decisions and refusals live in separate LRUs of their own sizes, so refusals
    (what a flood of junk or stolen-and-revoked tokens produces) can only evict each other.
    A lookup counts as a use. Owned by ``ClientAuthorizer``; nothing else writes it.
    """

    def __init__(self, allowed_size: int, refused_size: int) -> None:
        self.allowed_size = allowed_size
        self.refused_size = refused_size
        self._allowed: OrderedDict[DecisionKey, Decision] = OrderedDict()
        self._refused: OrderedDict[DecisionKey, Decision] = OrderedDict()

    def get(self, key: DecisionKey) -> Decision | None:
        for lru in (self._allowed, self._refused):
            decision = lru.get(key)
            if decision is not None:
                lru.move_to_end(key)
                return decision
        return None

    def put(self, key: DecisionKey, decision: Decision) -> None:
        lru, other, size = ((self._allowed, self._refused, self.allowed_size) if decision.allowed
                            else (self._refused, self._allowed, self.refused_size))
        other.pop(key, None)
        if size <= 0:
            lru.pop(key, None)
            return
        lru[key] = decision
        lru.move_to_end(key)
        while len(lru) > size:
            lru.popitem(last=False)

    def __iter__(self) -> Iterator[DecisionKey]:
        """Allowed decisions, then refusals, least recently used first."""
        yield from self._allowed
        yield from self._refused

    def __len__(self) -> int:
        return len(self._allowed) + len(self._refused)

    @property
    def sizes(self) -> tuple[int, int]:
        """(allowed decisions kept, refusals kept)."""
        return len(self._allowed), len(self._refused)


class TokenBucket:
    """At most ``burst`` takes at once, refilled at ``rate`` per second (``clock``: seconds, monotonic)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + max(now - self._updated, 0.0) * self.rate)
        self._updated = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self) -> float:
        """Seconds until ``take`` can succeed (0 if it can now)."""
        self._refill()
        return max(1.0 - self._tokens, 0.0) / self.rate


class _Unreachable(Exception):
    pass


class ClientAuthorizer:
    """Decides, per request, whether a client's token may read a cached resource.

    Owns the decision cache and the review cap; the HTTP front (``wrapper.app``) calls
    ``check`` before serving a cached resource. Reviews go through the apiserver client it is
    given, as the wrapper. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        upstream: ApiClient,
        *,
        allowed_ttl: float = 60.0,
        denied_ttl: float = 10.0,
        offline_max_age: float = 24 * 3600.0,
        timeout: float = 5.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
        refused_cache_size: int | None = None,
        review_qps: float = DEFAULT_REVIEW_QPS,
        review_burst: int = DEFAULT_REVIEW_BURST,
        unreachable_pause: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.allowed_ttl = allowed_ttl
        self.denied_ttl = denied_ttl
        self.offline_max_age = offline_max_age
        self.timeout = timeout
        self.clock = clock
        self.decisions = DecisionCache(
            cache_size, refused_cache_size if refused_cache_size is not None else max(cache_size // 4, 1))
        self.limiter = TokenBucket(review_qps, review_burst, clock)
        # After a review failed for want of the apiserver, stale decisions are used at once for
        # this long instead of each waiting out a review timeout (a dead link at the edge often
        # drops packets rather than refusing connections).
        self.unreachable_pause = unreachable_pause
        self._unreachable_until = float("-inf")
        self.reviews = 0  # decisions asked of the apiserver
        self.throttled = 0  # requests that found the review cap reached
        self._throttled_logged = 0  # ``throttled`` when the current episode was logged

    async def check(
        self, authorization: str | None, verb: str, resource: Resource, namespace: str | None, name: str | None
    ) -> None:
        """Raise a 401/403, 429 (review cap) or 503 (undecidable offline) StatusError unless allowed."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Unauthorized: a bearer token is required (--authorize-clients is on)")
        # Never keep tokens themselves, not even in memory longer than the request.
        key: DecisionKey = (hashlib.sha256(token.encode()).digest(), verb, resource.group, resource.plural,
                            namespace or "", name or "")
        now = self.clock()
        cached = self.decisions.get(key)
        if cached is not None and now - cached.decided_at < (self.allowed_ttl if cached.allowed else self.denied_ttl):
            return self._enforce(cached, verb, resource, namespace)
        # A stale decision still answers when no fresh one can be had, up to offline_max_age.
        usable = cached if cached is not None and now - cached.decided_at < self.offline_max_age else None
        if usable is not None and now < self._unreachable_until:
            return self._enforce(usable, verb, resource, namespace)
        if not self.limiter.take():
            self.throttled += 1
            if usable is not None:
                return self._enforce(usable, verb, resource, namespace)
            if self._throttled_logged == 0:
                log.warning("authorizer: more than %g reviews/s (burst %d) asked for; tokens without a cached "
                            "decision get 429 until the rate falls", self.limiter.rate, self.limiter.burst)
                self._throttled_logged = self.throttled
            raise too_many_requests(self.limiter.wait())
        if self._throttled_logged:
            log.info("authorizer: reviews under the cap again; %d requests found it reached meanwhile",
                     self.throttled - self._throttled_logged + 1)
            self._throttled_logged = 0
        try:
            decision = await self._review(token, verb, resource, namespace, name)
        except _Unreachable as exc:
            self._unreachable_until = self.clock() + self.unreachable_pause
            if usable is not None:
                return self._enforce(usable, verb, resource, namespace)
            raise status.service_unavailable(
                f"cannot authorize the request: the apiserver is unreachable ({exc}) and there is no "
                "earlier decision for this client") from None
        self.decisions.put(key, decision)
        return self._enforce(decision, verb, resource, namespace)

    @staticmethod
    def _enforce(decision: Decision, verb: str, resource: Resource, namespace: str | None) -> None:
        if not decision.user:
            raise unauthorized(f"Unauthorized: {decision.reason}")
        if not decision.allowed:
            raise forbidden_verb(decision.user, verb, resource, namespace, decision.reason)

    async def _post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self.upstream.request("POST", path, json=doc, total_timeout=self.timeout)
        except ApiError as exc:
            if exc.code < 500 and exc.code != 429:
                log.warning("authorizer: %s answered %d; is the wrapper allowed to create reviews?", path, exc.code)
                raise _Unreachable(f"HTTP {exc.code} from {path}") from None
            raise _Unreachable(f"HTTP {exc.code}") from None
        except TransportError as exc:
            raise _Unreachable(str(exc)[:200]) from None
        try:
            result = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise _Unreachable(f"{path} answered something that is not JSON") from None
        if not isinstance(result, dict):
            raise _Unreachable(f"{path} answered something that is not an object")
        return result

    async def _review(
        self, token: str, verb: str, resource: Resource, namespace: str | None, name: str | None
    ) -> Decision:
        self.reviews += 1
        now = self.clock()
        tr = await self._post(TOKENREVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                             "spec": {"token": token}})
        st = tr.get("status") or {}
        if not st.get("authenticated"):
            return Decision(False, "", str(st.get("error") or "invalid bearer token"), now)
        user = st.get("user") or {}
        attrs: dict[str, Any] = {"verb": verb, "group": resource.group, "version": resource.version,
                                 "resource": resource.plural}
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        sar = await self._post(SUBJECTACCESSREVIEWS, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.get("username", ""), "uid": user.get("uid", ""),
                     "groups": user.get("groups") or [], "extra": user.get("extra") or {},
                     "resourceAttributes": attrs},
        })
        sst = sar.get("status") or {}
        return Decision(bool(sst.get("allowed")), str(user.get("username", "")), str(sst.get("reason") or ""), now)
