"""LIST: resourceVersion semantics, selectors, limit/continue pagination, response bytes."""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from apisim.store import Entry, HistoryExpired, ResourceStore
from kubeapi import partial, status
from kubeapi.resources import Resource
from kubeapi.selectors import FieldSelector, LabelSelector

CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list."
)
LIST_TOO_OLD = "The resourceVersion for the provided list is too old."


@dataclass(frozen=True, slots=True)
class Filter:
    """What a list or watch selects: path namespace plus label and field selectors."""

    namespace: str | None = None
    label: LabelSelector | None = None
    field: FieldSelector | None = None
    name: str | None = None  # watch on an object path

    @property
    def selective(self) -> bool:
        return self.label is not None or self.field is not None or self.name is not None

    @property
    def narrows(self) -> bool:
        return self.selective or self.namespace is not None

    def matches(self, entry: Entry) -> bool:
        obj = entry.obj
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        if self.label is not None and not self.label.matches(meta.get("labels")):
            return False
        return self.field is None or self.field.matches(obj)


def encode_continue(rv: int, last_key: str) -> str:
    doc = {"v": "meta.k8s.io/v1", "rv": rv, "start": last_key + "\x00"}
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    """(rv, start key) of an apiserver-shaped token; malformed tokens are a 400."""
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        doc = None
    if (not isinstance(doc, dict) or doc.get("v") != "meta.k8s.io/v1" or not isinstance(doc.get("rv"), int)
            or not isinstance(doc.get("start"), str)):
        raise status.bad_request("continue key is not valid: illegal base64 data or unsupported token")
    return int(doc["rv"]), str(doc["start"])


def exact_state(rs: ResourceStore, rv: int, current: int, too_old: str) -> dict[str, Entry]:
    """The objects at exactly ``rv`` (410 Expired if history no longer covers it)."""
    if rv > current:
        raise status.expired(too_old)
    try:
        return rs.snapshot_at(rv)
    except HistoryExpired:
        raise status.expired(too_old) from None


@dataclass(slots=True)
class Page:
    items: list[Entry]
    rv: int
    continue_token: str = ""
    remaining: int | None = None


def paginate(state: Mapping[str, Entry], keys: list[str], rv: int, flt: Filter, limit: int,
             start: str = "") -> Page:
    """Walk ``keys`` (sorted) from ``start``, keeping matches, stopping after ``limit`` of them."""
    i = bisect.bisect_left(keys, start) if start else 0
    items: list[Entry] = []
    check = flt.narrows
    n = len(keys)
    while i < n:
        entry = state.get(keys[i])
        i += 1
        if entry is None or (check and not flt.matches(entry)):
            continue
        items.append(entry)
        if limit and len(items) >= limit:
            break
    page = Page(items, rv)
    if limit and len(items) >= limit and i < n:
        # More keys remain; the apiserver may hand out a token even if none of them match.
        page.continue_token = encode_continue(rv, keys[i - 1])
        if not flt.narrows:
            page.remaining = n - i
    return page


def _list_meta(page: Page) -> dict[str, object]:
    meta: dict[str, object] = {"resourceVersion": str(page.rv)}
    if page.continue_token:
        meta["continue"] = page.continue_token
        if page.remaining is not None:
            meta["remainingItemCount"] = page.remaining
    return meta


def partial_list_bytes(page: Page, api_version: str) -> bytes:
    """The page as a PartialObjectMetadataList (metadata informers), with the page's ListMeta."""
    return partial.partial_list_bytes(api_version, _list_meta(page),
                                      (partial.partial_bytes(e.raw, api_version) for e in page.items))


def list_bytes(resource: Resource, page: Page) -> bytes:
    meta = _list_meta(page)
    head = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[' % (
        resource.list_kind.encode(), resource.api_version.encode(), orjson.dumps(meta))
    return head + b",".join(e.raw for e in page.items) + b"]}"
