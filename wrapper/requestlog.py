"""The debug log of the reads served from the cache: one line per list and get, two per watch.

At ``--log-level debug`` the front says, for each read it answers from a view, what was asked
(method, path, selection), by whom (peer, User-Agent), what it answered (bytes, or events sent)
and how long it took. Nothing here runs per event; the callers check ``log.isEnabledFor`` before
measuring anything.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from aiohttp import web

log = logging.getLogger("wrapper.requests")


def enabled() -> bool:
    """Whether the read log is on (``--log-level debug``)."""
    return log.isEnabledFor(logging.DEBUG)


def described(request: web.Request) -> str:
    """``GET /path?selection`` (the query decoded, as the client wrote it), its peer and User-Agent."""
    query = request.query_string
    target = f"{request.path}?{unquote(query)[:500]}" if query else request.path
    agent = request.headers.get("User-Agent", "-")[:120]
    return f"{request.method} {target} from {request.remote} ({agent})"
