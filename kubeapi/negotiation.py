"""Content negotiation for list, get and watch answers, as the apiserver negotiates them.

What we produce is JSON only: the resource itself, a ``meta.k8s.io`` Table, or metadata
only (``PartialObjectMetadata`` / ``PartialObjectMetadataList``). The apiserver's rules
(``k8s.io/apiserver`` ``handlers/negotiation``): the Accept clauses are tried best first;
a clause is usable if its media range covers ``application/json`` and its parameters ask for
nothing we cannot do (``as``/``g``/``v`` must name one of the transforms above in
``meta.k8s.io`` v1 or v1beta1, ``stream`` may only be ``watch``, ``sv`` only ``v1``).
No usable clause is a 406 NotAcceptable. An empty Accept means JSON.

Parsing is a little kinder than the apiserver's (which splits on every comma and compares
case-sensitively): media types and parameter names are case-insensitive and quoted values
are unquoted, as RFC 9110 says. A ``q=0`` clause is "not acceptable" (RFC 9110) and is
dropped; a malformed q counts as 1.

Also here: Accept-Encoding, for deciding whether a list may be gzipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubeapi import status
from kubeapi.status import StatusError
from kubeapi.strconv import parse_decimal

JSON = "application/json"
META_GROUP = "meta.k8s.io"
META_VERSIONS = {"v1": "meta.k8s.io/v1", "v1beta1": "meta.k8s.io/v1beta1"}

TABLE = "Table"
PARTIAL = "PartialObjectMetadata"
PARTIAL_LIST = "PartialObjectMetadataList"
_TRANSFORMS = {k.lower(): k for k in (TABLE, PARTIAL, PARTIAL_LIST)}
# Bounds on what one header may cost to parse.
MAX_ACCEPT_LENGTH = 16 * 1024
MAX_CLAUSES = 64


@dataclass(frozen=True, slots=True)
class Target:
    """What to answer with: ``kind`` "" is the resource's own JSON; otherwise a transform
    (Table, PartialObjectMetadata or PartialObjectMetadataList) in ``api_version``."""

    kind: str = ""
    api_version: str = ""

    @property
    def table(self) -> bool:
        return self.kind == TABLE

    @property
    def partial(self) -> bool:
        return self.kind in (PARTIAL, PARTIAL_LIST)


AS_IS = Target()

# One token or one quoted string; commas and semicolons inside quotes do not split.
_PIECE = re.compile(r'"(?:[^"\\]|\\.)*"|[^,;"]+|[,;]')


def _split(header: str) -> list[list[str]]:
    """Split a header into comma-separated elements, each a list of ``;``-separated parts."""
    elements: list[list[str]] = []
    parts: list[str] = []
    current = ""
    for m in _PIECE.finditer(header):
        tok = m.group(0)
        if tok == ";":
            parts.append(current)
            current = ""
        elif tok == ",":
            parts.append(current)
            elements.append(parts)
            parts, current = [], ""
            if len(elements) >= MAX_CLAUSES:
                return elements
        else:
            current += tok
    parts.append(current)
    elements.append(parts)
    return elements


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _qvalue(params: dict[str, str]) -> float:
    raw = params.pop("q", None)
    if raw is None:
        return 1.0
    q = parse_decimal(raw)
    return 1.0 if q is None else min(q, 1.0)


def parse_accept(accept: str | None) -> list[tuple[str, dict[str, str]]]:
    """Media ranges as (lower-case type/subtype, params with lower-case names), best first.

    Ranges with q=0 are dropped. Equal q keeps the more specific range first, then header
    order (a stable sort).
    """
    if not accept:
        return []
    parsed: list[tuple[float, int, int, str, dict[str, str]]] = []
    for i, parts in enumerate(_split(accept[:MAX_ACCEPT_LENGTH])):
        media = parts[0].strip().lower()
        if not media:
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            name, sep, value = p.partition("=")
            if sep:
                params[name.strip().lower()] = _unquote(value)
        q = _qvalue(params)
        if q <= 0:
            continue
        kind, _, sub = media.partition("/")
        wildness = (kind == "*") + (sub == "*")
        parsed.append((q, wildness, i, media, params))
    parsed.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(media, params) for _, _, _, media, params in parsed]


def _usable(media: str, params: dict[str, str]) -> Target | None:
    """The target a clause asks for, or None if we cannot answer it."""
    if media not in (JSON, "application/*", "*/*", "*"):
        return None
    stream = params.get("stream", "")
    if stream and stream != "watch":
        return None
    server_version = params.get("sv", "")
    if server_version and server_version != "v1":
        return None
    if not any(k in params for k in ("as", "g", "v")):
        return AS_IS
    kind = _TRANSFORMS.get(params.get("as", "").lower())
    if kind is None or params.get("g", "").lower() != META_GROUP:
        return None
    api_version = META_VERSIONS.get(params.get("v", "").lower())
    if api_version is None:
        return None
    return Target(kind, api_version)


def negotiate(accept: str | None) -> Target:
    """The first usable Accept clause's target; raises 406 NotAcceptable if there is none."""
    if not accept or not accept.strip():
        return AS_IS
    for media, params in parse_accept(accept):
        target = _usable(media, params)
        if target is not None:
            return target
    raise not_acceptable()


def not_acceptable(message: str | None = None) -> StatusError:
    return StatusError(status.failure(
        406, message or f"only the following media types are accepted: {JSON}", "NotAcceptable"))


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``gzip`` is acceptable under RFC 9110 section 12.5.3.

    An explicit ``gzip`` (or ``x-gzip``) entry decides by its q-value; without one, ``*``
    does. ``gzip;q=0`` therefore refuses gzip even next to ``*``.
    """
    if not accept_encoding:
        return False
    star: float | None = None
    for parts in _split(accept_encoding[:MAX_ACCEPT_LENGTH]):
        coding = parts[0].strip().lower()
        params: dict[str, str] = {}
        for p in parts[1:]:
            name, sep, value = p.partition("=")
            if sep:
                params[name.strip().lower()] = _unquote(value)
        raw_q = params.get("q")
        q = 1.0 if raw_q is None else parse_decimal(raw_q)
        if q is None:
            q = 0.0  # a malformed weight is not a yes
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            star = q
    return star is not None and star > 0
