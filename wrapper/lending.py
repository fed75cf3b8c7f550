"""When a pass-through request may go upstream with the wrapper's own identity, and with what.

A client that sends an ``Authorization`` header (any scheme, even empty) is forwarded with it,
on a connection that carries none of the wrapper's credentials, so the apiserver decides.
A client without one (kube-proxy pointed at ``http://127.0.0.1:51006``; a client certificate
presented to the wrapper under ``--client-ca-file`` is not a credential that can be forwarded)
borrows the wrapper's identity, but only for what kube-proxy, a node-local CoreDNS and a local
``kubectl get`` need beyond the cache (client-go sends no kubeconfig credentials to an
``http://`` server, so each of them arrives here without any):

- ``GET``/``HEAD`` of API discovery (``/api``, ``/apis``, a group, a group version) and
  ``/version``: kubectl resolves resource names with them;
- ``GET``/``HEAD`` of the ServiceCIDR collection (list and watch; kube-proxy >= 1.33, or with
  the MultiCIDRServiceAllocator gate on);
- ``events.k8s.io/v1`` Events: ``POST`` to a namespace's collection and ``PATCH`` of a named
  Event, in any namespace (kube-proxy reports about its Node in ``default`` and about Services
  in their own namespaces; it creates, then patches event series, and never reads);
- ``GET``/``HEAD`` of Namespaces (list, watch, one by name): a node-local CoreDNS reads them
  beside the Services and EndpointSlices the cache serves, and answers NXDOMAIN for every name
  until it has them (its ``namespaceExposed``). The wrapper's ServiceAccount gets that right only
  from the optional ``manifests/components/coredns``; without it the apiserver refuses (403).
  A CoreDNS that reaches the wrapper over HTTPS sends its own token and is forwarded with it.

Everything else answers 403. The path checked is the canonical, unescaped one that is then
forwarded byte for byte (wrapper/paths.py). A lent request carries only the headers in
``LENT_HEADERS``; one that asks for impersonation is refused rather than stripped, so it never
runs as someone it did not ask to be.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from kubeapi import status

_READ = frozenset({"GET", "HEAD"})
_VERSION = r"v[0-9]+(?:(?:alpha|beta)[0-9]+)?"
_GROUP = r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?"

_DISCOVERY = re.compile(rf"^/(?:version|api|api/v1|apis|apis/{_GROUP}|apis/{_GROUP}/{_VERSION})/?$")
_SERVICECIDRS = re.compile(r"^/apis/networking\.k8s\.io/(?:v1|v1beta1|v1alpha1)/servicecidrs$")
_NAMESPACES = re.compile(r"^/api/v1/namespaces(?:/[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)?$")
_EVENTS = re.compile(r"^/apis/events\.k8s\.io/v1/namespaces/[a-z0-9](?:[a-z0-9-]*[a-z0-9])?/events$")
_EVENT = re.compile(
    r"^/apis/events\.k8s\.io/v1/namespaces/[a-z0-9](?:[a-z0-9-]*[a-z0-9])?/events/[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$"
)

# What a lent request keeps of its client's headers: enough to negotiate the content (kube-proxy
# posts protobuf Events) and to show who asked in the apiserver's audit log. Everything else, such
# as X-Remote-User (front-proxy authentication), cookies or Impersonate-*, is never sent with
# the wrapper's identity.
LENT_HEADERS = frozenset({"accept", "accept-encoding", "content-type", "user-agent"})

IMPERSONATE_PREFIX = "impersonate-"


def may_lend_identity(method: str, path: str) -> bool:
    """Whether a request without credentials may use the wrapper's identity for ``path`` (canonical)."""
    if method in _READ:
        return bool(_DISCOVERY.match(path) or _SERVICECIDRS.match(path) or _NAMESPACES.match(path))
    if method == "POST":
        return bool(_EVENTS.match(path))
    if method == "PATCH":
        return bool(_EVENT.match(path))
    return False


def check_lending(method: str, path: str, escaped: bool, header_names: Iterable[str]) -> None:
    """Raise 403 unless a request without credentials may borrow the wrapper's identity."""
    asks = sorted({h for h in header_names if h.lower().startswith(IMPERSONATE_PREFIX)})
    if asks:
        raise status.forbidden(
            f"forbidden: impersonation ({', '.join(asks)[:200]}) is never done with the wrapper's identity; "
            "send your own credentials (Authorization header)")
    if escaped or not may_lend_identity(method, path):
        raise status.forbidden(
            f"forbidden: {method} {path[:200]} is not served with the wrapper's identity; "
            "send your own credentials (Authorization header) for it")
