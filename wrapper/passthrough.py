"""Everything we don't serve from the cache goes to the apiserver unchanged, streamed both ways.

Bodies are never parsed or buffered: protobuf event POSTs, discovery documents and
watches of other resources are copied chunk by chunk, with compression left as it was.
Which identity a request uses is decided by the caller (wrapper/app.py, with wrapper/lending.py);
the apiserver client (cache/apiclient.py) holds the transports that carry it. If the apiserver's response breaks off
after its headers have been passed on, the client's connection is aborted, so the client
sees a failed response (as it would talking to the apiserver) instead of a short one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from cache.apiclient import ApiClient, Identity
from cache.apierrors import TransportError
from kubeapi import status
from wrapper.lending import LENT_HEADERS
from wrapper.paths import Target
from wrapper.responses import status_response

log = logging.getLogger(__name__)

# RFC 9110 hop-by-hop headers, plus ones aiohttp recomputes for each leg.
_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})


# The apiserver's own limit on request bodies is 3 MiB; nothing kube-proxy sends comes close.
MAX_BODY = 3 << 20


class _TooLarge(Exception):
    pass


def _too_large() -> web.Response:
    return status_response(status.request_entity_too_large(MAX_BODY))


async def _limited(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream.iter_any():
        seen += len(chunk)
        if seen > MAX_BODY:
            raise _TooLarge
        yield chunk


async def forward(request: web.Request, client: ApiClient, target: Target, *, lend: bool) -> web.StreamResponse:
    """Send ``request`` to ``target.forwarded`` upstream and stream the answer back, whatever its status.

    ``lend``: speak as the wrapper (``Identity.WRAPPER``: its transport and credentials, and only the
    client headers in ``LENT_HEADERS``). Otherwise the request keeps the client's headers, its
    ``Authorization`` included, and goes as ``Identity.FORWARDED``, which carries nothing of the wrapper's.
    """
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _too_large()
    if lend:
        headers = {k: v for k, v in request.headers.items() if k.lower() in LENT_HEADERS}
        identity = Identity.WRAPPER
    else:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        identity = Identity.FORWARDED
    body = _limited(request.content) if request.body_exists else None
    resp: web.StreamResponse | None = None
    try:
        async with client.stream(request.method, target.forwarded, headers=headers, body=body, identity=identity,
                                 check=False) as upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
    except _TooLarge:
        return _too_large()
    except TransportError as exc:
        if _caused_by_too_large(exc):
            return _too_large()
        if resp is not None and resp.prepared:
            # Mid-body: the status line is gone, so the only honest signal left is a broken
            # connection (ending the chunked body cleanly would hand the client a short body
            # as if it were whole). aiohttp then finds the transport closed and writes nothing.
            log.info("pass-through %s %s: the response broke off (%s); aborting the client's connection",
                     request.method, target.path[:200], exc)
            if request.transport is not None:
                request.transport.abort()
            return resp
        log.warning("pass-through %s %s: apiserver unreachable: %s", request.method, target.path[:200], exc)
        return status_response(status.service_unavailable(f"the apiserver is unreachable from the wrapper: {exc}"))


def _caused_by_too_large(exc: BaseException) -> bool:
    """Whether the client's body went over MAX_BODY while aiohttp was sending it (it wraps the error)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, _TooLarge):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False
