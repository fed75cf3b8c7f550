"""The connection to the real apiserver, as two transports.

kubernetes-asyncio only loads configuration and produces credentials; requests go through
long-lived aiohttp sessions of ours, so bodies stay raw bytes (parsed with orjson) and we
control timeouts, which kubernetes-asyncio's watch leaves unset.

Two sessions, because a TLS client certificate is a property of the connection, not of the
request: any request sent on a connection that presented the wrapper's certificate runs as
the wrapper, whatever ``Authorization`` header it carries (the apiserver authenticates the
certificate first).
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

import aiohttp
from yarl import URL

from cache import kubeconfig_loaders

USER_AGENT = "application-grid-wrapper/0.1.0"


class ConfigError(Exception):
    """The upstream configuration (kubeconfig or in-cluster) cannot be used."""


class UpstreamClient:
    """The wrapper's client for the apiserver. Owns two aiohttp sessions.

    ``session`` speaks as the wrapper: its TLS context presents the wrapper's client
    certificate (if the kubeconfig has one), and callers add ``auth_headers()`` (token or basic
    auth). The reflectors, the client authorizer, and the pass-through requests the wrapper
    chooses to lend its identity to (wrapper/lending.py) use it.

    ``forwarding_session`` trusts the same CA and checks the same server name, but presents no
    client certificate, and nothing of the wrapper's is ever added to its requests: pass-through
    requests that carry the client's own credentials travel only on it, so the apiserver sees
    the client's identity or none. Neither session keeps cookies or reads the environment
    (proxies, .netrc), so no credential is picked up implicitly.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        forwarding_ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        configuration: Any = None,
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
        # kubernetes_asyncio Configuration; its hooks refresh rotating tokens.
        self._configuration = configuration
        self._session: aiohttp.ClientSession | None = None
        self._forwarding: aiohttp.ClientSession | None = None

    @classmethod
    async def from_kubeconfig(cls, path: str | None) -> UpstreamClient:
        """Load ``path``, or the in-cluster service account when ``path`` is None."""
        kconfig, configuration_class = kubeconfig_loaders.load()

        cfg = configuration_class()
        if path and not os.path.isfile(path):  # noqa: ASYNC240 (once, at start-up)
            raise ConfigError(f"cannot load kubeconfig {path}: no such file")
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

    @property
    def session(self) -> aiohttp.ClientSession:
        """Requests that speak as the wrapper (add ``auth_headers()``)."""
        if self._session is None or self._session.closed:
            self._session = _new_session(self.ssl_context)
        return self._session

    @property
    def forwarding_session(self) -> aiohttp.ClientSession:
        """Requests that carry only their client's credentials; never add ``auth_headers()``."""
        if self._forwarding is None or self._forwarding.closed:
            self._forwarding = _new_session(self.forwarding_ssl_context)
        return self._forwarding

    async def auth_headers(self) -> dict[str, str]:
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

    def url(self, path_qs: str) -> str:
        return self.base_url + path_qs

    def request_kwargs(self) -> dict[str, Any]:
        return {"server_hostname": self.server_hostname} if self.server_hostname else {}

    async def close(self) -> None:
        for session in (self._session, self._forwarding):
            if session is not None:
                await session.close()
        self._session = self._forwarding = None


def _server_trust(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """A client TLS context that trusts the kubeconfig's CA, with no client certificate yet."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _new_session(ctx: ssl.SSLContext | None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx if ctx else False, limit=200),
        # Watch lines of big objects exceed aiohttp's default line limit.
        read_bufsize=2**21,
        # Never route node-local traffic through an HTTP(S)_PROXY, nor read .netrc, from the environment.
        trust_env=False,
        # Cookies set by an upstream (or a proxy in front of it) for one client must not ride on another's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
