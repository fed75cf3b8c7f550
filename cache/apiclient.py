"""The one client of the real apiserver: every request the wrapper sends upstream goes through it.

kubernetes-asyncio only loads the configuration and produces credentials (tokens refreshed by its
hooks); requests go through long-lived aiohttp sessions of ours, so bodies stay raw bytes (parsed
with orjson) and timeouts are ours (kubernetes-asyncio's watch leaves them unset).

Two entry points, both checking every answer (kopf's ``request``/``check_response``, httpcore's
``request``/``stream``):

- ``request()`` reads a whole answer (lists, reviews), decompressed;
- ``stream()`` hands over the open response for reading as it arrives (watches, pass-through).

A non-2xx answer raises ``ApiError`` with the decoded Status; no usable answer raises
``TransportError`` (``ReadTimeout``, ``UnreadableStream``), also for failures while a stream's body
is read inside its ``async with``. Only pass-through asks ``stream(check=False)``: passing the
apiserver's error answers on unchanged is its job.

Two transports, because a TLS client certificate is a property of the connection, not of the
request: any request sent on a connection that presented the wrapper's certificate runs as the
wrapper, whatever ``Authorization`` header it carries (the apiserver authenticates the
certificate first). ``Identity.WRAPPER`` requests use the session that presents the wrapper's
certificate, with the wrapper's token or basic auth added here; ``Identity.FORWARDED`` requests
use a session that trusts the same CA and checks the same server name but presents no
certificate, and nothing of the wrapper's is ever added to them, so the apiserver sees their
client's own credentials or none. Neither session keeps cookies or reads the environment
(proxies, .netrc), and neither adds headers of its own choosing (User-Agent, Accept-Encoding), so
no credential or preference is picked up implicitly.
"""

from __future__ import annotations

import enum
import gzip
import logging
import os
import socket
import ssl
import zlib
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import yaml
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from cache import kubeconfig_loaders
from cache.apierrors import ApiError, ReadTimeout, TransportError, UnreadableStream
from cache.buildinfo import USER_AGENT

JSON = "application/json"
DEFAULT_CONNECT_TIMEOUT = 10.0

# Failures of the transport, as aiohttp and the socket layer raise them.
_TRANSPORT = (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError, TimeoutError, OSError)
# Headers of the caller that never travel with the wrapper's identity (lending filters them too).
_NOT_LENT = ("Authorization", "Cookie", "Proxy-Authorization")


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """TCP keepalive on every upstream socket: how a dead connection is found without dropping
    healthy quiet ones (a watch of a resource nobody writes gets no bookmark for minutes). After
    ``idle`` seconds without traffic the kernel probes every ``interval`` seconds and gives up
    after ``count`` unanswered probes (about a minute); unacknowledged data also fails the
    connection after that long (TCP_USER_TIMEOUT), instead of after ~15 minutes of retransmits."""

    idle: int = 30
    interval: int = 10
    count: int = 3

    @property
    def user_timeout_ms(self) -> int:
        return (self.idle + self.interval * self.count) * 1000


KEEPALIVE = KeepAlive()


def set_keepalive(sock: socket.socket, keepalive: KeepAlive = KEEPALIVE) -> None:
    """Turn TCP keepalive on for ``sock`` with ``keepalive``'s timings (those the OS offers)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", keepalive.idle), ("TCP_KEEPINTVL", keepalive.interval),
                        ("TCP_KEEPCNT", keepalive.count), ("TCP_USER_TIMEOUT", keepalive.user_timeout_ms)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def keepalive_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """The sockets the client's connections use (aiohttp's ``socket_factory``): keepalive on."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=type_, proto=proto)
    try:
        set_keepalive(sock)
    except OSError:
        sock.close()
        raise
    return sock


class ConfigError(Exception):
    """The upstream configuration (kubeconfig or in-cluster) cannot be used."""


class Identity(enum.Enum):
    """Whose credentials a request carries upstream."""

    WRAPPER = "wrapper"  # the wrapper's client certificate and token
    FORWARDED = "forwarded"  # only what its client sent; nothing of the wrapper's


@dataclass(frozen=True, slots=True)
class Response:
    """A whole answer from ``request()``: always 2xx, body decompressed."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def kubeconfig_problem(path: str) -> str | None:
    """Why the kubeconfig at ``path`` cannot be used, in one line naming the file, or None.

    ``path`` may be a list separated by ``os.pathsep``, as ``$KUBECONFIG`` is (missing files in such
    a list are skipped, as kubectl skips them). Checked before kubernetes-asyncio's loader, whose own
    errors for these cases are a Python traceback's last line ("'NoneType' object does not support
    item assignment" for an empty file).
    """
    files = [p for p in path.split(os.pathsep) if p]
    present = [p for p in files if os.path.exists(p)]
    if not present:
        return f"cannot load kubeconfig {path}: no such file"
    for file in present:
        if os.path.isdir(file):
            return f"cannot load kubeconfig {file}: it is a directory, not a kubeconfig file"
        try:
            with open(file, "rb") as f:
                text = f.read(4 << 20)
        except OSError as exc:
            return f"cannot load kubeconfig {file}: {exc.strerror or exc}"
        if not text.strip():
            return f"cannot load kubeconfig {file}: the file is empty"
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            return f"cannot load kubeconfig {file}: not valid YAML{where}"
        if not isinstance(doc, dict):
            return f"cannot load kubeconfig {file}: not a kubeconfig (its top level is {type(doc).__name__}, " \
                   "not a mapping)"
        if len(present) == 1:
            if not doc.get("clusters"):
                return f"cannot load kubeconfig {file}: it names no cluster (clusters: is empty)"
            if not doc.get("current-context"):
                return f"cannot load kubeconfig {file}: it has no current-context"
    return None


class ApiClient:
    """The wrapper's client of the apiserver. Owns its two aiohttp sessions and its timeouts.

    Created by whoever starts the wrapper (``wrapper.cli``, ``wrapper.demo``, tests), who also
    closes it (``close()``, or ``async with``); the reflectors (``cache.reflector``), the client
    authorizer (``wrapper.authz``) and pass-through (``wrapper.passthrough``) only use it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        forwarding_ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        configuration: Any = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        url = URL(base_url)
        if url.user is not None or url.password is not None:
            # aiohttp would turn them into basic auth on every request, the forwarded ones too.
            raise ConfigError("the apiserver URL must not carry credentials; put them in the kubeconfig user")
        self.base_url = base_url.rstrip("/")
        self.ssl_context = ssl_context
        if forwarding_ssl_context is None and self.base_url.startswith("https://"):
            # Without the kubeconfig's CA, trust the system's; a mismatch fails closed.
            forwarding_ssl_context = ssl.create_default_context()
        self.forwarding_ssl_context = forwarding_ssl_context
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        # kubernetes_asyncio Configuration; its hooks refresh rotating tokens.
        self._configuration = configuration
        self._sessions: dict[Identity, aiohttp.ClientSession] = {}

    @classmethod
    async def from_kubeconfig(cls, path: str | None) -> ApiClient:
        """Load ``path``, or the in-cluster service account when ``path`` is None."""
        loaders = kubeconfig_loaders.load()
        kconfig = loaders.config
        cfg = loaders.configuration()
        if path:
            problem = kubeconfig_problem(path)
            if problem is not None:
                raise ConfigError(problem)
        # Its loader warns on its own before raising; we report the error once ourselves.
        logging.getLogger("kubernetes_asyncio").setLevel(logging.ERROR)
        try:
            if path:
                await kconfig.load_kube_config(config_file=path, client_configuration=cfg)
            else:
                kconfig.load_incluster_config(client_configuration=cfg)
        except Exception as exc:  # the loaders raise many unrelated types
            where = f"kubeconfig {path}" if path else "in-cluster config"
            # YAML errors span several lines; start-up errors must be one line.
            detail = " ".join(str(exc).split())
            raise ConfigError(f"cannot load {where}: {detail[:500]}") from exc
        host = str(cfg.host or "")
        if not host.startswith(("http://", "https://")):
            raise ConfigError(f"kubeconfig {path}: server {host!r} is not an http(s) URL")
        own: ssl.SSLContext | None = None
        forwarding: ssl.SSLContext | None = None
        if host.startswith("https://"):
            try:
                own = _server_trust(cfg.ssl_ca_cert, bool(cfg.verify_ssl))
                forwarding = _server_trust(cfg.ssl_ca_cert, bool(cfg.verify_ssl))
                if cfg.cert_file:
                    own.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load TLS material from {path or 'in-cluster config'}: {exc}") from exc
        return cls(host, ssl_context=own, forwarding_ssl_context=forwarding, server_hostname=cfg.tls_server_name,
                   configuration=cfg)

    async def auth_headers(self) -> dict[str, str]:
        """The wrapper's token or basic auth: what ``Identity.WRAPPER`` requests get added (never others)."""
        cfg = self._configuration
        if cfg is None:
            return {}
        settings = await cfg.auth_settings()
        bearer = settings.get("BearerToken")
        if bearer and bearer.get("value"):
            return {"Authorization": str(bearer["value"])}
        if cfg.username or cfg.password:
            token = cfg.get_basic_auth_token()
            if token:
                return {"Authorization": str(token)}
        return {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        accept: str = JSON,
        read_timeout: float | None = None,
        total_timeout: float | None = None,
    ) -> Response:
        """Send one request as the wrapper and read its whole answer (gzip undone).

        ``path`` is already URL-encoded; ``params`` are encoded here. Raises ``ApiError`` for a
        non-2xx answer and ``TransportError`` when there is no usable answer.
        """
        headers = {"Accept": accept, "Accept-Encoding": "gzip"}
        body = None
        if json is not None:
            headers["Content-Type"] = JSON
            body = orjson.dumps(json)
        async with self.stream(method, path, params=params, headers=headers, body=body,
                               read_timeout=read_timeout, total_timeout=total_timeout) as resp:
            data = await resp.read()
            encoding = resp.headers.get("Content-Encoding", "").strip().lower()
            if encoding == "gzip":
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError, zlib.error) as exc:
                    raise UnreadableStream(f"a gzip body that does not inflate ({exc})") from exc
            elif encoding not in ("", "identity"):
                raise UnreadableStream(f"a body in an encoding not asked for ({encoding[:40]!r})")
            return Response(resp.status, resp.headers, data)

    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | AsyncIterable[bytes] | None = None,
        identity: Identity = Identity.WRAPPER,
        check: bool = True,
        read_timeout: float | None = None,
        total_timeout: float | None = None,
    ) -> Stream:
        """An ``async with`` that opens the request and yields the response, its body unread.

        ``path`` is already URL-encoded and sent byte for byte; ``params`` are encoded here.
        ``read_timeout``: the most seconds without a byte (None: no limit, for quiet watches);
        ``total_timeout``: the most seconds for the whole exchange (None: no limit).
        ``check=False`` (pass-through only) yields non-2xx answers too.
        """
        url = self.base_url + path
        if params:
            url += "?" + urlencode(params)
        timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=self.connect_timeout,
                                        sock_read=read_timeout)
        return Stream(self, method, URL(url, encoded=True), headers or {}, body, identity, check, timeout)

    def _session(self, identity: Identity) -> aiohttp.ClientSession:
        session = self._sessions.get(identity)
        if session is None or session.closed:
            ctx = self.ssl_context if identity is Identity.WRAPPER else self.forwarding_ssl_context
            session = self._sessions[identity] = _new_session(ctx)
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


class Stream:
    """One open request of ``ApiClient.stream()``; use it with ``async with``.

    Entering sends the request and checks the status (``ApiError`` unless 2xx, when checking);
    leaving releases the connection. Transport failures raised inside the block (reading the
    body) leave it as ``TransportError``.
    """

    def __init__(self, client: ApiClient, method: str, url: URL, headers: Mapping[str, str],
                 body: bytes | AsyncIterable[bytes] | None, identity: Identity, check: bool,
                 timeout: aiohttp.ClientTimeout) -> None:
        self._client = client
        self._method = method
        self._url = url
        self._headers = headers
        self._body = body
        self._identity = identity
        self._check = check
        self._timeout = timeout
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        client = self._client
        headers = CIMultiDict(self._headers)
        extra: dict[str, Any] = {"server_hostname": client.server_hostname} if client.server_hostname else {}
        try:
            if self._identity is Identity.WRAPPER:
                for name in _NOT_LENT:
                    headers.popall(name, None)
                headers.setdefault("User-Agent", USER_AGENT)
                headers.update(await client.auth_headers())
            resp = await client._session(self._identity).request(
                self._method, self._url, headers=headers, data=self._body, allow_redirects=False,
                timeout=self._timeout, **extra)
        except _TRANSPORT as exc:
            raise transport_error(exc) from exc
        if self._check and not 200 <= resp.status < 300:
            try:
                body = await resp.read()
            except _TRANSPORT:
                body = b""
            finally:
                resp.release()
            raise ApiError.from_response(resp.status, body, resp.headers.get("Retry-After"))
        self._resp = resp
        return resp

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._resp is not None:
            self._resp.release()
        if exc is not None and isinstance(exc, _TRANSPORT):
            raise transport_error(exc) from exc


def transport_error(exc: BaseException) -> TransportError:
    """The ``TransportError`` that an aiohttp or socket failure stands for."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.http_exceptions.HttpProcessingError):
        return UnreadableStream(f"{exc.message or name}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportError(f"no connection within the connect timeout ({name})")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return ReadTimeout(f"no data within the read timeout ({name})")
    if isinstance(exc, TimeoutError):
        return ReadTimeout(f"no answer in time ({name})")
    return TransportError(str(exc) or name)


def _server_trust(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """A client TLS context that trusts the kubeconfig's CA, with no client certificate yet."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _new_session(ctx: ssl.SSLContext | None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx if ctx else False, limit=200, socket_factory=keepalive_socket),
        # Watch lines of big objects exceed aiohttp's default line limit.
        read_bufsize=2**21,
        # Never route node-local traffic through an HTTP(S)_PROXY, nor read .netrc, from the environment.
        trust_env=False,
        # Cookies set by an upstream (or a proxy in front of it) for one client must not ride on another's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=DEFAULT_CONNECT_TIMEOUT),
        # Bodies pass through as sent (pass-through forwards them compressed); request() inflates its own.
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
