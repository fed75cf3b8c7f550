"""A GET of one object answered from a view: the object, a one-row Table or PartialObjectMetadata."""

from __future__ import annotations

import orjson
from aiohttp import web

from cache.reader import ViewReader
from kubeapi import partial, status, tables
from kubeapi.negotiation import AS_IS, PARTIAL, PARTIAL_LIST, Target
from kubeapi.resources import key_of
from wrapper.responses import json_response
from wrapper.serving import ServeSettings, wait_synced


async def serve_get(
    request: web.Request, view: ViewReader, settings: ServeSettings, namespace: str | None, name: str,
    target: Target = AS_IS,
) -> web.StreamResponse:
    await wait_synced(view, settings)
    entry = view.get(key_of(namespace, name))
    res = view.resource
    if entry is None:
        raise status.not_found(res.group, res.plural, name)
    if target.table:
        doc = tables.render_table(res, [entry.obj], list_rv=None,
                                  include_object=request.query.get("includeObject", "Metadata"),
                                  api_version=target.api_version)
        return json_response(orjson.dumps(doc))
    if target.kind == PARTIAL_LIST:
        raise partial.object_is_not_a_list(res)
    if target.kind == PARTIAL:
        return json_response(partial.partial_bytes(entry.raw, target.api_version))
    return json_response(view.typed(entry.raw))
