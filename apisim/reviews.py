"""TokenReview and SubjectAccessReview, enough to test a client authorizer against.

Tokens map to users; a user is allowed a (verb, resource) if a rule grants it. Each review
the simulator answers is counted, so tests can see caching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeapi.types import JSONDict

TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SUBJECTACCESSREVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclass
class Reviews:
    tokens: dict[str, JSONDict] = field(default_factory=dict)  # token -> user info
    # (username, verb, resource) triples allowed; "*" matches any verb or resource.
    rules: set[tuple[str, str, str]] = field(default_factory=set)
    token_reviews: int = 0
    access_reviews: int = 0

    def add_user(self, token: str, username: str, groups: tuple[str, ...] = ()) -> None:
        self.tokens[token] = {"username": username, "uid": f"uid-{username}", "groups": list(groups)}

    def allow(self, username: str, verb: str = "*", resource: str = "*") -> None:
        self.rules.add((username, verb, resource))

    def token_review(self, body: Any) -> JSONDict:
        self.token_reviews += 1
        token = ((body or {}).get("spec") or {}).get("token", "")
        user = self.tokens.get(token)
        status: JSONDict = {"authenticated": True, "user": user} if user else {
            "authenticated": False, "error": "invalid bearer token"}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}, "status": status}

    def access_review(self, body: Any) -> JSONDict:
        self.access_reviews += 1
        spec = (body or {}).get("spec") or {}
        attrs = spec.get("resourceAttributes") or {}
        user, verb, resource = spec.get("user", ""), attrs.get("verb", ""), attrs.get("resource", "")
        allowed = any((u, v, r) in self.rules for u in (user,) for v in (verb, "*") for r in (resource, "*"))
        reason = "allowed by simulator rule" if allowed else f"{user} may not {verb} {resource}"
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec,
                "status": {"allowed": allowed, "reason": reason}}
