"""List-then-watch against the apiserver for one resource, like client-go's reflector.

- Lists in pages, then watches from the list's RV with bookmarks requested.
- A normal end of the watch resumes from the last RV. Any answer meaning "that RV is not valid
  here" relists with no RV, as client-go does: 410 (HTTP or a watch ERROR event, any reason)
  and 504 ResourceVersionTooLarge (the apiserver is behind our RV, e.g. after an etcd restore).
- A list whose RV is lower than one already seen means the upstream's RVs went back (an etcd
  restore, a cluster rebuilt behind the same address); ``on_regression`` (the informers) then
  makes every resource relist, since RVs are one cluster-wide counter.
- A read timeout detects dead (half-open) connections.
- Errors back off exponentially with jitter, capped; 429's Retry-After is honoured.
- The HTTP status is checked here: nothing upstream of us raises on 4xx/5xx.
- Events that cannot be trusted (a wrong kind, no resourceVersion) make it relist, since
  skipping one silently could leave the cache wrong.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode

import aiohttp
import orjson

from cache.upstream import USER_AGENT, UpstreamClient
from kubeapi.resources import Resource
from kubeapi.rv import InvalidResourceVersion, parse_rv
from kubeapi.strconv import NumError, parse_uint
from kubeapi.types import JSONDict
from kubeapi.validation import valid_object

log = logging.getLogger(__name__)


class Sink(Protocol):
    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None: ...
    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None: ...
    def bookmark(self, resource: Resource, rv: int) -> None: ...


@dataclass
class ReflectorSettings:
    page_size: int = 500
    # No byte for this long means the connection is dead; the apiserver bookmarks every ~60 s.
    read_timeout: float = 90.0
    watch_timeout_min: int = 300
    watch_timeout_max: int = 600
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0


@dataclass
class UpstreamState:
    """What the reflector last saw; read by /readyz, metrics and the debug pages."""

    connected: bool = False
    # monotonic time the connection was last lost (or the reflector started)
    disconnected_since: float = field(default_factory=time.monotonic)
    synced_once: bool = False
    last_error: str = ""
    lists: int = 0
    relists: int = 0
    reconnects: int = 0
    events: int = 0
    last_event_at: float = 0.0


class UpstreamError(Exception):
    def __init__(self, message: str, *, status: int = 0, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _Expired(Exception):
    """Our RV is not valid upstream (too old, or newer than the apiserver's): relist with none."""


class _Untrusted(Exception):
    """An event we could not apply: the cache may have missed a change, so relist."""


def is_rv_rejection(http_status: int, status: JSONDict) -> bool:
    """Whether an error answer (HTTP status or watch ERROR Status) says our RV is not valid here.

    410 with any reason (Expired, Gone), or "too large resource version": recognised by its
    cause type as current apiservers send it, or by the message older ones send with a 504.
    """
    code = status.get("code")
    if http_status == 410 or code == 410:
        return True
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    messages: list[object] = [status.get("message")]
    for cause in causes if isinstance(causes, list) else ():
        if isinstance(cause, dict):
            if cause.get("type") == "ResourceVersionTooLarge":
                return True
            messages.append(cause.get("message"))
    timeout = http_status == 504 or code == 504 or status.get("reason") == "Timeout"
    return timeout and any(isinstance(m, str) and "Too large resource version" in m for m in messages)


def _parse_rv(value: object) -> int:
    try:
        return parse_rv(value)
    except InvalidResourceVersion as exc:
        raise _Untrusted(f"bad resourceVersion: {exc}") from None


# Told (reflector, RV it had, lower RV a list returned) when the upstream's RVs went back.
RegressionHandler = Callable[["Reflector", int, int], None]


class Reflector:
    """Keeps one resource of the sink in step with the apiserver; run by ``Informers``."""

    def __init__(
        self,
        client: UpstreamClient,
        resource: Resource,
        sink: Sink,
        settings: ReflectorSettings | None = None,
        on_regression: RegressionHandler | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.sink = sink
        self.settings = settings or ReflectorSettings()
        self.on_regression = on_regression
        self.state = UpstreamState()
        # The highest RV seen (or, before the first list, the one a snapshot was taken at).
        self.rv = 0
        self._need_list = True
        self._backoff = self.settings.backoff_initial

    def forget_rv(self) -> None:
        """Relist next, and take whatever RV that list has: another resource saw the RVs go back."""
        self.rv = 0
        self._need_list = True

    async def run(self) -> None:
        name = self.resource.plural
        while True:
            try:
                if self._need_list:
                    await self._list()
                    self._need_list = False
                await self._watch()
            except asyncio.CancelledError:
                raise
            except _Expired as exc:
                log.info("upstream %s: resourceVersion %d not valid upstream (%s); relisting", name, self.rv, exc)
                self._need_list = True
                await self._sleep(0)
            except _Untrusted as exc:
                log.warning("upstream %s: %s; relisting", name, exc)
                self._need_list = True
                await self._sleep(0)
            except aiohttp.http_exceptions.HttpProcessingError as exc:
                # e.g. a watch line over the read buffer: the stream can't be trusted from here.
                log.warning("upstream %s: unreadable watch stream (%s); relisting", name, exc)
                self.state.connected = False
                self.state.disconnected_since = time.monotonic()
                self._need_list = True
                await self._sleep(0)
            except (aiohttp.ClientError, TimeoutError, UpstreamError, OSError) as exc:
                msg = _describe(exc)
                if self.state.connected or msg != self.state.last_error:
                    log.warning("upstream %s: connection lost or failed: %s", name, msg)
                if self.state.connected:
                    self.state.disconnected_since = time.monotonic()
                self.state.connected = False
                self.state.last_error = msg
                self.state.reconnects += 1
                await self._sleep(exc.retry_after if isinstance(exc, UpstreamError) else 0)
            except Exception:
                # Never let one bad response end this resource's updates for good.
                log.exception("upstream %s: unexpected error; relisting", name)
                self.state.connected = False
                self._need_list = True
                await self._sleep(0)

    async def _sleep(self, at_least: float) -> None:
        # Full jitter keeps a fleet of edge nodes from reconnecting in lockstep.
        delay = max(at_least, random.uniform(self._backoff / 2, self._backoff))
        self._backoff = min(self._backoff * 2, self.settings.backoff_max)
        await asyncio.sleep(delay)

    async def _get(self, params: dict[str, str], timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        headers.update(await self.client.auth_headers())
        url = self.client.url(self.resource.collection_path() + "?" + urlencode(params))
        resp = await self.client.session.get(
            url, headers=headers, timeout=timeout, **self.client.request_kwargs()
        )
        if resp.status != 200:
            body = await resp.read()
            resp.release()
            status = _status_of(body)
            if is_rv_rejection(resp.status, status):
                raise _Expired(f"HTTP {resp.status}: {status.get('message') or status.get('reason') or ''}")
            retry = resp.headers.get("Retry-After", "")
            raise UpstreamError(
                f"HTTP {resp.status}: {status.get('message') or body[:200]!r}",
                status=resp.status,
                retry_after=_retry_after(retry),
            )
        return resp

    async def _list(self) -> None:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout)
        # Pages are kept as bytes and decoded again, one at a time, while the cache consumes
        # them: holding every page decoded at once was the largest allocation of the
        # process's life, and the memory it left fragmented stayed resident for good.
        pages: list[bytes] = []
        count = 0
        params = {"limit": str(s.page_size)}
        list_rv = 0
        while True:
            resp = await self._get(params, timeout)
            try:
                body = await resp.read()
            finally:
                resp.release()
            if resp.headers.get("Content-Encoding") == "gzip":
                import gzip

                body = gzip.decompress(body)
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise UpstreamError(f"list: response is not JSON: {exc}") from exc
            if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
                raise UpstreamError("list: response is not a list object")
            meta = doc.get("metadata") or {}
            try:
                page_rv = _parse_rv(meta.get("resourceVersion"))
            except _Untrusted as exc:
                raise UpstreamError(f"list: {exc}") from exc
            list_rv = list_rv or page_rv
            for item in doc.get("items") or []:
                if _valid_object(self.resource, item):
                    count += 1
                else:
                    log.warning("upstream %s: skipping malformed list item", self.resource.plural)
            pages.append(body)
            del doc
            token = meta.get("continue")
            if not token:
                break
            params = {"limit": str(s.page_size), "continue": str(token)}
        if list_rv < self.rv:
            # A consistent list is never older than an RV the apiserver has already served: its
            # RVs went back. Every resource has to start over (RVs are one counter).
            log.warning("upstream %s: listed at resourceVersion %d, below the %d already seen: the "
                        "apiserver's state went back (etcd restore or rebuilt cluster?)",
                        self.resource.plural, list_rv, self.rv)
            if self.on_regression is not None:
                self.on_regression(self, self.rv, list_rv)
        self.sink.replace(self.resource, _list_items(pages, self.resource), list_rv)
        self.rv = list_rv
        st = self.state
        st.lists += 1
        if st.synced_once:
            st.relists += 1
            log.info("upstream %s: relisted %d objects at resourceVersion %d",
                     self.resource.plural, count, list_rv)
        else:
            log.info("upstream %s: listed %d objects at resourceVersion %d", self.resource.plural, count, list_rv)
        st.synced_once = True
        st.connected = True
        st.last_error = ""

    async def _watch(self) -> None:
        s = self.settings
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": str(self.rv),
            "timeoutSeconds": str(random.randint(s.watch_timeout_min, s.watch_timeout_max)),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout)
        resp = await self._get(params, timeout)
        st = self.state
        if not st.connected:
            log.info("upstream %s: connected, watching from resourceVersion %d", self.resource.plural, self.rv)
        st.connected = True
        st.last_error = ""
        started = time.monotonic()
        events = 0
        try:
            while True:
                line = await resp.content.readline()
                if not line:
                    break
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    # A torn line means a broken stream: resume from the last applied RV.
                    raise UpstreamError(f"watch: undecodable event ({exc})") from exc
                self._handle(ev)
                events += 1
        finally:
            resp.release()
        if events or time.monotonic() - started > 1:
            self._backoff = s.backoff_initial
        else:
            # An empty, very short watch: don't spin.
            await self._sleep(0)

    def _handle(self, ev: object) -> None:
        if not isinstance(ev, dict) or not isinstance(ev.get("object"), dict):
            raise _Untrusted("watch event is not an object")
        type_ = ev.get("type")
        obj: JSONDict = ev["object"]
        if type_ == "ERROR":
            if is_rv_rejection(0, obj):
                raise _Expired(f"watch ERROR {obj.get('code')}: {obj.get('message') or obj.get('reason') or ''}")
            raise UpstreamError(f"watch error: {obj.get('message', obj)}", status=int(obj.get("code") or 0))
        kind = obj.get("kind")
        if kind is not None and kind != self.resource.kind:
            raise _Untrusted(f"watch event of kind {kind!r}, expected {self.resource.kind}")
        rv = _parse_rv((obj.get("metadata") or {}).get("resourceVersion"))
        if type_ == "BOOKMARK":
            self.sink.bookmark(self.resource, rv)
        elif type_ in ("ADDED", "MODIFIED", "DELETED"):
            if not _valid_object(self.resource, obj):
                raise _Untrusted("watch event object has no metadata.name")
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
            self.sink.apply(self.resource, type_, obj)
            self.state.events += 1
            self.state.last_event_at = time.time()
        else:
            raise _Untrusted(f"unknown watch event type {type_!r}")
        self.rv = max(self.rv, rv)


def _list_items(pages: list[bytes], resource: Resource) -> Iterator[JSONDict]:
    """The valid items of list pages already checked by ``_list``, decoded a page at a time."""
    while pages:
        doc = orjson.loads(pages.pop(0))
        for item in doc.get("items") or []:
            if _valid_object(resource, item):
                item.pop("kind", None)
                item.pop("apiVersion", None)
                yield item
        del doc


def _valid_object(resource: Resource, obj: object) -> bool:
    return valid_object(resource, obj)


def _retry_after(header: str) -> float:
    """Retry-After in delay-seconds (ASCII digits); anything else (an HTTP date, garbage) is no hint."""
    try:
        return float(min(parse_uint(header.strip()), 3600))
    except NumError:
        return 0.0


def _status_of(body: bytes) -> JSONDict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"no data within the read timeout ({type(exc).__name__})"
    return str(exc) or type(exc).__name__
