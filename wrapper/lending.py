"""When a pass-through request may go upstream with the wrapper's own credentials.

A client that sends its own ``Authorization`` header is forwarded with it, so the apiserver
decides. A client without credentials (kube-proxy pointed at ``http://127.0.0.1:51006``)
borrows the wrapper's identity, but only for what kube-proxy needs beyond the cache:

- reading API discovery, ``/version`` and OpenAPI documents;
- reading ServiceCIDRs (kube-proxy >= 1.33 watches them);
- creating and updating Events (kube-proxy's start-up and warning events).

Everything else answers 403, so a local process cannot use the wrapper to read Secrets or
write objects with the wrapper's ServiceAccount.
"""

from __future__ import annotations

import re

_READ = frozenset({"GET", "HEAD"})
_EVENT_WRITE = frozenset({"POST", "PUT", "PATCH"})

_DISCOVERY = re.compile(
    r"^/(?:version|api|apis|openapi/.+|api/v1|apis/[^/]+|apis/[^/]+/[^/]+)/?$"
)
_SERVICECIDRS = re.compile(r"^/apis/networking\.k8s\.io/[^/]+/servicecidrs(?:/[^/]+)?/?$")
_EVENTS = re.compile(
    r"^/(?:api/v1|apis/events\.k8s\.io/v1)/namespaces/[^/]+/events(?:/[^/]+)?/?$"
)


def may_lend_identity(method: str, path: str) -> bool:
    if method in _READ and (_DISCOVERY.match(path) or _SERVICECIDRS.match(path)):
        return True
    return method in _EVENT_WRITE and bool(_EVENTS.match(path))
