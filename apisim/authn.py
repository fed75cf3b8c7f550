"""Authentication as the apiserver does it, and a record of who each request ran as.

The apiserver asks its authenticators in turn and the first answer wins:

1. a client certificate verified against its client CA: user = the certificate's CN,
   groups = its O values (the TLS handshake itself refuses a certificate from another CA);
2. ``Authorization: Bearer <token>``: a token it knows gives that user; one it does not know
   is refused with 401, even though anonymous requests are allowed;
3. anonymous: ``system:anonymous`` in group ``system:unauthenticated``. A request with another
   scheme (``Basic``: password authentication was removed in 1.19) or an empty bearer token is
   not claimed by any authenticator, so it is anonymous too.

The token table is the simulator's ``Reviews.tokens`` (the same users its TokenReview answers
with). Checking tokens is optional (``Simulator(authenticate=True)``): without it an unknown
token is recorded as ``UNCHECKED`` and served, as the simulator always did.
"""

from __future__ import annotations

import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

ANONYMOUS_GROUPS = ("system:unauthenticated",)


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    via: str = "anonymous"  # "x509", "token" or "anonymous"


ANONYMOUS = UserInfo("system:anonymous", ANONYMOUS_GROUPS, "anonymous")
UNCHECKED = UserInfo("<unchecked token>", (), "token")


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the simulator saw it."""

    method: str
    path: str  # the request line's path, exactly as received (no query)
    user: UserInfo | None  # None: refused with 401
    headers: frozenset[str]  # lower-cased names of the request's headers
    impersonate: str | None  # the Impersonate-User header, if any


def server_tls_context(cert_chain_file: str, key_file: str, client_ca_file: str | None = None) -> ssl.SSLContext:
    """A serving context that asks for client certificates and verifies those it gets, as the
    apiserver does with ``--client-ca-file`` (a client without a certificate is still accepted)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_chain_file, key_file)
    if client_ca_file:
        ctx.load_verify_locations(cafile=client_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _from_certificate(cert: Any) -> UserInfo | None:
    if not isinstance(cert, dict) or not cert.get("subject"):
        return None
    names: list[str] = []
    groups: list[str] = []
    for rdn in cert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
            elif key == "organizationName":
                groups.append(value)
    if not names:
        return None
    return UserInfo(names[0], (*groups, "system:authenticated"), "x509")


class Authenticator:
    """Decides who a request is (see the module docstring) and keeps a bounded record of it."""

    def __init__(self, tokens: dict[str, Any], *, check_tokens: bool, keep: int = 10_000) -> None:
        self.tokens = tokens  # token -> {"username": ..., "groups": [...]}, shared with Reviews
        self.check_tokens = check_tokens
        self.seen: deque[Seen] = deque(maxlen=keep)

    def authenticate(self, request: web.Request) -> UserInfo | None:
        """The request's user, or None when its bearer token is refused (401)."""
        transport = request.transport
        if transport is not None:
            user = _from_certificate(transport.get_extra_info("peercert"))
            if user is not None:
                return user
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            known = self.tokens.get(token)
            if known is not None:
                groups = tuple(known.get("groups") or ())
                return UserInfo(str(known.get("username", "")), (*groups, "system:authenticated"), "token")
            return None if self.check_tokens else UNCHECKED
        return ANONYMOUS

    def record(self, request: web.Request, user: UserInfo | None) -> None:
        self.seen.append(Seen(request.method, request.raw_path.partition("?")[0], user,
                              frozenset(k.lower() for k in request.headers), request.headers.get("Impersonate-User")))
