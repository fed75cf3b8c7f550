"""Request targets the wrapper routes: canonical origin-form paths only.

The cache routing and the lending decision read a request's path; the apiserver acts on the
path it decodes from what we forward (and Go's HTTP stack cleans dot-segments). A path whose
meaning changes under decoding or cleaning, like ``/api/v1/namespaces/default/events/../../secrets``
or its ``%2e%2e`` and ``%2f`` forms, could be checked as one thing and acted on as another.
aiohttp does not help here: ``request.path`` is percent-decoded but keeps dot-segments, while
``request.url`` removes literal dot-segments but not encoded ones. So every request target is
parsed once, here, from the bytes on the request line; a non-canonical one gets 400 before
any routing, and the same parsed target is what gets checked and what gets forwarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from kubeapi import status
from kubeapi.status import StatusError

_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Target:
    """A canonical request target, split once.

    ``path``: percent-decoded; what the apiserver will act on, and what routing and lending read.
    ``raw_path`` and ``query``: exactly as received; what is forwarded.
    """

    path: str
    raw_path: str
    query: str

    @property
    def escaped(self) -> bool:
        """True when the path uses percent-escapes, so its bytes differ from ``path``."""
        return self.raw_path != self.path

    @property
    def forwarded(self) -> str:
        return self.raw_path + ("?" + self.query if self.query else "")


def _reject(what: str, target: str) -> StatusError:
    return status.bad_request(f"the request path is not canonical ({what}): {target[:200]!r}")


def parse_target(target: str) -> Target:
    """Split and check the request target exactly as sent; 400 BadRequest if it is not canonical.

    Refused: anything but an origin-form path (absolute-form ``http://host/...``, ``*``), a
    fragment, empty segments (``//``; one trailing slash is allowed), ``.`` and ``..`` segments
    (also as ``%2e``), encoded slashes (``%2f``), malformed escapes, control characters and
    escapes that are not UTF-8.
    """
    if not target.startswith("/"):
        raise _reject("not an origin-form path", target)
    raw_path, _, query = target.partition("?")
    if "#" in raw_path:
        raise _reject("a fragment", target)
    if _ESCAPE.search(raw_path):
        raise _reject("a malformed percent-escape", target)
    segments = raw_path[1:].split("/")
    decoded: list[str] = []
    for i, seg in enumerate(segments):
        if not seg and i != len(segments) - 1:
            raise _reject("an empty segment", target)
        try:
            text = unquote_to_bytes(seg).decode("utf-8") if "%" in seg else seg
        except UnicodeDecodeError:
            raise _reject("an escape that is not UTF-8", target) from None
        if "/" in text:
            raise _reject("an encoded slash", target)
        if text in (".", ".."):
            raise _reject("a dot-segment", target)
        if _CONTROL.search(text):
            raise _reject("a control character", target)
        decoded.append(text)
    return Target("/" + "/".join(decoded), raw_path, query)
