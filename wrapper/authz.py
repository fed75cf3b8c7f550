"""``--authorize-clients``: check each client's bearer token before serving it from the cache.

Like kube-rbac-proxy: a TokenReview says who the token belongs to, a SubjectAccessReview
says whether that user may ``list``/``get``/``watch`` the resource. Decisions are cached
briefly by (token hash, verb, resource, namespace, name). While the apiserver is unreachable,
cached decisions keep being used (up to ``offline_max_age``), so a disconnected node keeps
serving the clients it served before.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from cache.upstream import UpstreamClient
from kubeapi import status
from kubeapi.resources import Resource
from kubeapi.status import StatusError

log = logging.getLogger(__name__)

TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SUBJECTACCESSREVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    user: str
    reason: str
    decided_at: float


class _Unreachable(Exception):
    pass


def unauthorized(message: str) -> StatusError:
    return StatusError(status.failure(401, message, "Unauthorized"))


def forbidden(user: str, verb: str, resource: Resource, namespace: str | None, reason: str) -> StatusError:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    what = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    msg = f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource.plural}" in API group ' \
          f'"{resource.group}"{where}'
    if reason:
        msg += f": {reason}"
    return StatusError(status.failure(403, msg, "Forbidden", {"group": resource.group, "kind": resource.plural}))


class ClientAuthorizer:
    def __init__(
        self,
        upstream: UpstreamClient,
        *,
        allowed_ttl: float = 60.0,
        denied_ttl: float = 10.0,
        offline_max_age: float = 24 * 3600.0,
        timeout: float = 5.0,
    ) -> None:
        self.upstream = upstream
        self.allowed_ttl = allowed_ttl
        self.denied_ttl = denied_ttl
        self.offline_max_age = offline_max_age
        self.timeout = timeout
        self._cache: dict[tuple[str, ...], Decision] = {}
        self.reviews = 0

    async def check(
        self, authorization: str | None, verb: str, resource: Resource, namespace: str | None, name: str | None
    ) -> None:
        """Raise a 401/403 (or 503 when undecidable offline) StatusError unless the request is allowed."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Unauthorized: a bearer token is required (--authorize-clients is on)")
        # Never keep tokens themselves, not even in memory longer than the request.
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        key = (digest, verb, resource.group, resource.plural, namespace or "", name or "")
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached.decided_at < (self.allowed_ttl if cached.allowed else self.denied_ttl):
            return self._enforce(cached, verb, resource, namespace)
        try:
            decision = await self._review(token.strip(), verb, resource, namespace, name)
        except _Unreachable as exc:
            if cached is not None and now - cached.decided_at < self.offline_max_age:
                return self._enforce(cached, verb, resource, namespace)
            raise StatusError(status.failure(
                503, f"cannot authorize the request: the apiserver is unreachable ({exc}) and there is no "
                "earlier decision for this client", "ServiceUnavailable")) from None
        self._cache[key] = decision
        if len(self._cache) > 10_000:
            self._prune(now)
        return self._enforce(decision, verb, resource, namespace)

    @staticmethod
    def _enforce(decision: Decision, verb: str, resource: Resource, namespace: str | None) -> None:
        if not decision.user:
            raise unauthorized(f"Unauthorized: {decision.reason}")
        if not decision.allowed:
            raise forbidden(decision.user, verb, resource, namespace, decision.reason)

    def _prune(self, now: float) -> None:
        horizon = max(self.allowed_ttl, self.denied_ttl)
        for key in [k for k, d in self._cache.items() if now - d.decided_at > horizon]:
            del self._cache[key]

    async def _post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   **(await self.upstream.auth_headers())}
        try:
            async with self.upstream.session.post(
                self.upstream.url(path), data=orjson.dumps(doc), headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout), **self.upstream.request_kwargs(),
            ) as resp:
                body = await resp.read()
                if resp.status >= 500 or resp.status == 429:
                    raise _Unreachable(f"HTTP {resp.status}")
                if resp.status >= 300:
                    log.warning("authorizer: %s answered %d; is the wrapper allowed to create reviews?",
                                path, resp.status)
                    raise _Unreachable(f"HTTP {resp.status} from {path}")
                result: dict[str, Any] = orjson.loads(body)
                return result
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            raise _Unreachable(type(exc).__name__) from None

    async def _review(
        self, token: str, verb: str, resource: Resource, namespace: str | None, name: str | None
    ) -> Decision:
        self.reviews += 1
        now = time.monotonic()
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
