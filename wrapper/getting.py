"""A GET of one object answered from a view: the object, a one-row Table or PartialObjectMetadata."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from cache.reader import ViewReader
from kubeapi import partial, status, tables
from kubeapi.negotiation import AS_IS, PARTIAL, PARTIAL_LIST, Target
from kubeapi.resources import key_of
from wrapper import requestlog
from wrapper.responses import json_response
from wrapper.serving import ServeSettings, wait_synced


async def serve_get(
    request: web.Request, view: ViewReader, settings: ServeSettings, namespace: str | None, name: str,
    target: Target = AS_IS,
) -> web.StreamResponse:
    started = time.perf_counter()
    await wait_synced(view, settings)
    entry = view.get(key_of(namespace, name))
    res = view.resource
    if entry is None:
        if requestlog.enabled():
            requestlog.log.debug("get %s: not found", requestlog.described(request))
        raise status.not_found(res.group, res.plural, name)
    if target.table:
        doc = tables.render_table(res, [entry.obj], list_rv=None,
                                  include_object=request.query.get("includeObject", "Metadata"),
                                  api_version=target.api_version)
        body = orjson.dumps(doc)
    elif target.kind == PARTIAL_LIST:
        raise partial.object_is_not_a_list(res)
    elif target.kind == PARTIAL:
        body = partial.partial_bytes(entry.raw, target.api_version)
    else:
        body = view.typed(entry.raw)
    if requestlog.enabled():
        requestlog.log.debug("get %s: %d bytes at resourceVersion %d, %.2f ms", requestlog.described(request),
                             len(body), entry.rv, (time.perf_counter() - started) * 1000)
    return json_response(body)
