"""List requests answered from a view: JSON lists, PartialObjectMetadataLists and Tables.

A list body is the join of the served entries' bytes; ``ListBodies`` keeps the bodies of each
view's current version, so the lists kube-proxies and kubectl ask for again and again between
changes are joined (and gzipped) once per version.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Hashable, Iterable

import orjson
from aiohttp import web

from cache.reader import Entry, ViewReader
from kubeapi import partial, status, tables
from kubeapi.listoptions import ListOptions
from kubeapi.negotiation import AS_IS, PARTIAL, PARTIAL_LIST, Target, accepts_gzip
from kubeapi.types import JSONDict
from wrapper import requestlog
from wrapper.responses import json_response
from wrapper.serving import Predicate, ServeSettings, ensure_rv, predicate, wait_synced

GZIP_MIN_BYTES = 128 * 1024  # the apiserver compresses non-watch responses above this size
SELECTIONS_PER_VERSION = 8  # bodies kept per view version, oldest selection out first
LIST_TOO_OLD = "The resourceVersion for the provided list is too old."

_Selection = tuple[object, ...]
_Body = tuple[bytes, bytes | None]  # the body, and its gzip once computed


class ListBodies:
    """The list bodies of each view's current version, per selection (namespace, selectors, form).

    Owns the bodies; nothing else holds them. Bodies of an older version can never be served
    again and are dropped as soon as a list finds the view changed (an EndpointSlice list is
    megabytes). Owned by the HTTP front (``wrapper.app.Front``, one per wrapper); ``serve_list``
    reads and fills it.
    """

    def __init__(self) -> None:
        self._by_view: dict[ViewReader, tuple[Hashable, dict[_Selection, _Body]]] = {}

    def body(
        self, view: ViewReader, namespace: str | None, opts: ListOptions, pred: Predicate | None, gzip_ok: bool,
        target: Target = AS_IS,
    ) -> tuple[bytes, bool]:
        """The list's JSON (gzipped if allowed and large: then True), as the resource's list or as
        a PartialObjectMetadataList (``target``)."""
        version = view.version
        held_version, bodies = self._by_view.get(view, (None, {}))
        if held_version != version:
            bodies = {}
            self._by_view[view] = (version, bodies)
        key = (namespace, opts.label, opts.field, target)
        held = bodies.get(key)
        if held is None:
            held = (_join(view, _matching(in_namespace(view, namespace), pred), target), None)
            if len(bodies) >= SELECTIONS_PER_VERSION:
                bodies.pop(next(iter(bodies)))
            bodies[key] = held
        body, compressed = held
        if not gzip_ok or len(body) <= GZIP_MIN_BYTES:
            return body, False
        if compressed is None:
            compressed = gzip.compress(body, compresslevel=1)
            bodies[key] = (body, compressed)
        return compressed, True

    def held(self, view: ViewReader) -> int:
        """How many bodies of ``view`` are kept (all of its current version)."""
        return len(self._by_view.get(view, (None, {}))[1])


def _join(view: ViewReader, entries: Iterable[Entry], target: Target) -> bytes:
    list_meta: JSONDict = {"resourceVersion": str(view.rv)}
    if target.kind == PARTIAL_LIST:
        return partial.partial_list_bytes(target.api_version, list_meta,
                                          (partial.partial_bytes(e.raw, target.api_version) for e in entries))
    res = view.resource
    head = orjson.dumps({"kind": res.list_kind, "apiVersion": res.api_version, "metadata": list_meta})
    return head[:-1] + b',"items":[' + b",".join(e.raw for e in entries) + b"]}"


def in_namespace(view: ViewReader, namespace: str | None) -> Iterable[Entry]:
    if not namespace:
        return view.sorted_entries()
    return (e for e in view.sorted_entries() if e.fields["metadata"].get("namespace") == namespace)


def _matching(entries: Iterable[Entry], pred: Predicate | None) -> list[Entry]:
    if pred is None:
        return list(entries)
    return [e for e in entries if pred(e.fields)]


async def _check_list_rv(view: ViewReader, opts: ListOptions, settings: ServeSettings) -> None:
    rv = opts.resource_version
    if opts.resource_version_match == "Exact":
        assert rv is not None  # validation: Exact needs a resourceVersion (and not "0")
        # The apiserver reads exactly rv from etcd: 504 ResourceVersionTooLarge (no retry hint)
        # for a revision etcd has not reached, 410 for one it compacted. This view only holds
        # its current state, and may lag the apiserver a moment: wait for it as for any
        # too-new RV, then serve only if it stopped exactly at rv.
        if rv > view.rv and not await view.wait_for_rv(rv, settings.too_large_wait):
            raise status.too_large_rv(rv, view.rv, retry_after=0)
        if rv != view.rv:
            raise status.expired(LIST_TOO_OLD)
    elif rv:
        await ensure_rv(view, rv, settings)


async def serve_list(
    request: web.Request, view: ViewReader, opts: ListOptions, settings: ServeSettings, namespace: str | None,
    bodies: ListBodies, target: Target = AS_IS,
) -> web.StreamResponse:
    started = time.perf_counter()
    await wait_synced(view, settings)
    await _check_list_rv(view, opts, settings)
    pred = predicate(opts)
    if target.table:
        entries = _matching(in_namespace(view, namespace), pred)
        doc = tables.render_table(
            view.resource, [e.obj for e in entries], list_rv=str(view.rv),
            include_object=request.query.get("includeObject", "Metadata"), api_version=target.api_version,
        )
        table = orjson.dumps(doc)
        if requestlog.enabled():
            requestlog.log.debug("list %s: a Table of %d rows, %d bytes at resourceVersion %d, %.2f ms",
                                 requestlog.described(request), len(entries), len(table), view.rv,
                                 (time.perf_counter() - started) * 1000)
        return json_response(table)
    if target.kind == PARTIAL:
        raise partial.list_is_not_an_object(view.resource)
    gzip_ok = accepts_gzip(request.headers.get("Accept-Encoding"))
    body, gzipped = bodies.body(view, namespace, opts, pred, gzip_ok, target)
    if requestlog.enabled():
        requestlog.log.debug("list %s: %d bytes%s at resourceVersion %d, %.2f ms", requestlog.described(request),
                             len(body), " gzipped" if gzipped else "", view.rv, (time.perf_counter() - started) * 1000)
    resp = json_response(body)
    if gzipped:
        resp.headers["Content-Encoding"] = "gzip"
        resp.headers["Vary"] = "Accept-Encoding"
    return resp
