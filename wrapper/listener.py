"""The wrapper's listening sockets: aiohttp's server behind a small connection guard.

aiohttp covers idle connections with its own knob: ``keepalive_timeout`` closes a connection
that has waited that long for its next (or first) request. It bounds neither a request whose
headers trickle in byte by byte nor how many connections are open. The guard adds both, and
keeps half-closed clients answerable:

- header timeout: from a connection's start, and from the first byte of each later request,
  the request's headers must be complete within ``header_timeout`` or the connection is closed.
  "Complete" is observed by the guard's middleware, which the request reaches only once aiohttp
  has parsed its headers, so a long-running watch (or a slow body) never counts as slow headers.
- cap: past ``max_connections`` open connections, a new one gets ``429 TooManyRequests`` (a
  Kubernetes Status, with ``Retry-After``) once its request head has arrived, and is closed; past
  as many again waiting for that answer, new connections are dropped at once.
- half-close: asyncio closes a plain TCP transport when the peer shuts down its write side,
  unless the protocol asks to keep it; aiohttp's handler does not ask, so a client that sends
  its request and then half-closes lost its answer. The guard keeps the transport open while a
  request is in (or arriving), and closes the connection once it is answered; an idle
  connection whose client ends its side is closed at once, and so is a watch (its answer
  has no end, and a client that is gone looks the same). (TLS has no half-close: there,
  the peer's close ends the connection.) To know when a request is answered, the middleware
  writes the response itself instead of leaving that to aiohttp after it returns.

Each connection's aiohttp protocol object is wrapped by a ``_Guarded`` protocol that forwards
every call to it, so aiohttp's own parsing, keep-alive, shutdown and cancellation are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from kubeapi import status
from wrapper.responses import raw_status_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HEAD_LIMIT = 16384  # bytes of a refused connection's request head read before answering anyway
_LINGER = 1.0  # seconds a refused connection stays open after its answer, for the rest of its request


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-listener limits (flags ``--read-header-timeout``, ``--idle-timeout``, ``--max-connections``)."""

    header_timeout: float = 30.0
    idle_timeout: float = 90.0
    max_connections: int = 512
    retry_after: int = 1


class ConnectionGuard:
    """Counts one listener's connections, refuses those past the cap and times out slow headers.

    Created by ``wrapper.compose.start_wrapper`` for each listener; ``middleware()`` must come first in
    that listener's application, and ``GuardedSite`` puts ``factory()`` in front of aiohttp's.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0  # connections served by aiohttp now
        self.refusing = 0  # connections past the cap, waiting for their 429
        self.refused = 0  # total answered 429 or dropped
        self.header_timeouts = 0  # total closed for slow headers
        self._conns: dict[RequestHandler, _Guarded] = {}
        self._warned_at = float("-inf")
        self.too_many = raw_status_response(status.too_many_requests(
            limits.retry_after, f"too many open connections to application-grid-wrapper (limit "
            f"{limits.max_connections}); retry later"))

    def factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for ``loop.create_server``: aiohttp's, guarded, or a refusal."""

        def make() -> asyncio.Protocol:
            if self.open < self.limits.max_connections:
                return _Guarded(self, server())
            self.refused += 1
            self._warn()
            if self.refusing >= self.limits.max_connections:
                return _Dropped()
            return _Refused(self)

        return make

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def mark_request(request: web.Request, handler: Handler) -> web.StreamResponse:
            conn = self._conns.get(request.protocol)
            if conn is None:
                return await handler(request)
            conn.request_started(streams=_streams(request))
            resp: web.StreamResponse | None = None
            try:
                resp = await handler(request)
                # Written here rather than after the middleware returns, so that "ended" below
                # means "answered": an end of input after that leaves nothing owed.
                with contextlib.suppress(ConnectionError):
                    await resp.prepare(request)
                    await resp.write_eof()
                return resp
            except web.HTTPException as exc:
                resp = exc
                raise
            finally:
                conn.request_ended(resp)

        return mark_request

    def _warn(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning("refusing connections with 429: %d are open, the limit (--max-connections) is %d; "
                        "%d refused so far", self.open, self.limits.max_connections, self.refused)


def _streams(request: web.Request) -> bool:
    """A request whose answer has no end: a watch (``watch=true``) or a followed log (``follow=true``)."""
    query = request.query
    return any(query.get(name, "").lower() in ("1", "t", "true") for name in ("watch", "follow"))


class _Guarded(asyncio.Protocol):
    """One accepted connection: forwards everything to aiohttp's handler, adds the header timer."""

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler) -> None:
        self.guard = guard
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request of this connection is in the application
        self.streams = False  # ... and it is a watch (or a followed log): an answer with no end
        self.partial = False  # bytes arrived since the last request ended (or the connection began)
        self.eof = False
        self.tls = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.tls = self.transport.get_extra_info("sslcontext") is not None
        self.guard.open += 1
        self.guard._conns[self.handler] = self
        self._arm()
        self.handler.connection_made(self.transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.partial = True
            if self.timer is None:
                self._arm()  # the first byte of the next request
        self.handler.data_received(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.handler.eof_received()
        # Keep the connection open while a request is in, or on its way in: it is owed an answer.
        # Otherwise nothing was asked and nothing is owed (and TLS cannot half-close): close now.
        # A stream has no end to wait for, and a client gone for good looks the same as one that
        # half-closed; so, as the apiserver cancels a request whose client's input ends, a watch
        # ends here (it would otherwise hold its handler until a write failed).
        if self.tls or (self.busy and self.streams):
            return False
        if self.busy:
            self._close_unless_answered()
        return self.busy or self.partial

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.transport = None
        self.guard.open -= 1
        self.guard._conns.pop(self.handler, None)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def request_started(self, *, streams: bool) -> None:
        self.busy = True
        self.streams = streams
        self.partial = False
        self._disarm()
        if self.eof:  # the request arrived with (or just before) the end of the client's input
            if streams:
                asyncio.get_running_loop().call_soon(self._close)
            else:
                self._close_unless_answered()

    def request_ended(self, resp: web.StreamResponse | None) -> None:
        self.busy = False
        if self.eof:
            self._disarm()
        if self.eof and resp is not None:
            resp.force_close()  # the client will send nothing more: close once this answer is out

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.limits.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _close_unless_answered(self) -> None:
        # Owed an answer, but not forever: a client gone for good must not pin its handler (on
        # a slow upstream, say) past the idle timeout.
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(self.guard.limits.idle_timeout, self._close)

    def _close(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.close()

    def _expired(self) -> None:
        self.timer = None
        if self.busy or self.transport is None:
            return
        self.guard.header_timeouts += 1
        peer = self.transport.get_extra_info("peername")
        log.debug("closing a connection from %s: no complete request header within %.0fs", peer,
                  self.guard.limits.header_timeout)
        self.transport.close()


class _Refused(asyncio.Protocol):
    """A connection past the cap: read its request head, answer 429 with a Status, close."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.answered = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.guard.refusing += 1
        self.timer = asyncio.get_running_loop().call_later(self.guard.limits.header_timeout, self._answer)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # the rest of the request, read only so closing does not reset the connection
        self.head += data
        if b"\r\n\r\n" in self.head or len(self.head) > _HEAD_LIMIT:
            self._answer()

    def eof_received(self) -> bool:
        if not self.answered:
            self._answer()
        return False  # the transport closes once the answer is written

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None
        self.guard.refusing -= 1

    def _answer(self) -> None:
        if self.answered or self.transport is None:
            return
        self.answered = True
        self.head.clear()
        self.transport.write(self.guard.too_many)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(_LINGER, self.transport.close)


class _Dropped(asyncio.Protocol):
    """Past the cap and past as many refusals in flight: closed without a word."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's ``TCPSite``, whose protocol factory is the guard's."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None) or ()  # asyncio.Server has them, AbstractServer not
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._guard.factory(server), self._host, self._port,
                                                ssl=self._ssl_context, backlog=128)
