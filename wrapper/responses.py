"""What a client gets for a Kubernetes Status error: the one place a ``StatusError`` becomes a response.

The Status itself is built by ``kubeapi.status``; here it becomes an aiohttp response (the HTTP
front, pass-through, the debug listener) or, for a connection refused before aiohttp sees it
(``wrapper/listener.py``), the raw HTTP/1.1 response bytes. Both carry ``Retry-After`` when the
Status has ``retryAfterSeconds``, as the apiserver's do.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
from aiohttp import web

from kubeapi.status import StatusError

JSON = "application/json"


def json_response(body: bytes, status_code: int = 200) -> web.Response:
    return web.Response(body=body, status=status_code, content_type=JSON)


def _retry_after(err: StatusError) -> int | None:
    retry = (err.status.get("details") or {}).get("retryAfterSeconds")
    return int(retry) if retry else None


def status_response(err: StatusError) -> web.Response:
    resp = json_response(orjson.dumps(err.status), err.code)
    retry = _retry_after(err)
    if retry:
        resp.headers["Retry-After"] = str(retry)
    return resp


def raw_status_response(err: StatusError) -> bytes:
    """The whole HTTP/1.1 response, closing the connection, for a socket aiohttp does not serve."""
    body = orjson.dumps(err.status)
    retry = _retry_after(err)
    head = (f"HTTP/1.1 {err.code} {HTTPStatus(err.code).phrase}\r\n"
            f"Content-Type: {JSON}\r\n"
            + (f"Retry-After: {retry}\r\n" if retry else "")
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body
