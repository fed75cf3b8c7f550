"""The connection to the real apiserver.

kubernetes-asyncio only loads configuration and produces credentials; requests go through
one long-lived aiohttp session of ours, so bodies stay raw bytes (parsed with orjson) and
we control timeouts, which kubernetes-asyncio's watch leaves unset.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

import aiohttp

from cache import kubeconfig_loaders

USER_AGENT = "application-grid-wrapper/0.1.0"


class ConfigError(Exception):
    """The upstream configuration (kubeconfig or in-cluster) cannot be used."""


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        configuration: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        # kubernetes_asyncio Configuration; its hooks refresh rotating tokens.
        self._configuration = configuration
        self._session: aiohttp.ClientSession | None = None

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
        ctx: ssl.SSLContext | None = None
        if host.startswith("https://"):
            try:
                ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
                if cfg.cert_file:
                    ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load TLS material from {path or 'in-cluster config'}: {exc}") from exc
            if not cfg.verify_ssl:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        return cls(host, ssl_context=ctx, server_hostname=cfg.tls_server_name, configuration=cfg)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context else False, limit=200),
                # Watch lines of big objects exceed aiohttp's default line limit.
                read_bufsize=2**21,
                # Never route node-local traffic through an HTTP(S)_PROXY from the environment.
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

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
        if self._session is not None:
            await self._session.close()
            self._session = None
