"""Metadata-only answers (``PartialObjectMetadata``), shaped as the apiserver shapes them.

Metadata informers (client-go ``metadatainformer``) ask for lists with
``Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`` and for gets
and watches with ``as=PartialObjectMetadata``. The apiserver (``handlers/response.go``
``asPartialObjectMetadata``/``asPartialObjectMetadataList``) answers each object as
``{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{...}}`` with the
object's whole ObjectMeta, and a list as a ``PartialObjectMetadataList`` in the requested
group version whose ListMeta is the list's; an empty list has ``"items": null`` (the Go
slice is built by appending). Asking for the list form of one object, or the object form of
a list, is a 406.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from kubeapi.negotiation import PARTIAL, PARTIAL_LIST, not_acceptable
from kubeapi.resources import Resource
from kubeapi.status import StatusError
from kubeapi.types import JSONDict

# The Go packages of the internal types the apiserver names in its 406 messages.
_GO_PACKAGES = {"": "core", "discovery.k8s.io": "discovery", "events.k8s.io": "events"}


def go_type(resource: Resource, *, is_list: bool) -> str:
    """``%T`` of the internal object the apiserver's handler holds, e.g. ``*core.NodeList``."""
    package = _GO_PACKAGES.get(resource.group, resource.group.split(".")[0])
    return f"*{package}.{resource.kind}{'List' if is_list else ''}"


def list_is_not_an_object(resource: Resource) -> StatusError:
    return not_acceptable(f"you requested {PARTIAL}, but the requested object is a list "
                          f"({go_type(resource, is_list=True)})")


def object_is_not_a_list(resource: Resource) -> StatusError:
    return not_acceptable(f"you requested {PARTIAL_LIST}, but the requested object is not a list "
                          f"({go_type(resource, is_list=False)})")


def partial_object(obj: JSONDict, api_version: str) -> JSONDict:
    """The PartialObjectMetadata of a decoded object (or of a bookmark's stub)."""
    meta: Any = obj.get("metadata")
    return {"kind": PARTIAL, "apiVersion": api_version, "metadata": meta if isinstance(meta, dict) else {}}


def partial_bytes(raw: bytes, api_version: str) -> bytes:
    """The PartialObjectMetadata JSON of one object's JSON bytes."""
    return orjson.dumps(partial_object(orjson.loads(raw), api_version))


def partial_list_bytes(api_version: str, list_meta: JSONDict, items: Iterable[bytes]) -> bytes:
    """A PartialObjectMetadataList around already encoded PartialObjectMetadata items."""
    head = orjson.dumps({"kind": PARTIAL_LIST, "apiVersion": api_version, "metadata": list_meta})
    body = b",".join(items)
    return head[:-1] + b',"items":' + (b"[" + body + b"]" if body else b"null") + b"}"
