"""A test client that behaves like client-go's reflector as kube-proxy runs it.

It follows the rules in ``shared/reference/list-watch-protocol.md``:

- LIST with ``limit=500&resourceVersion=0`` (following ``continue``), then WATCH from the
  list's resourceVersion with ``allowWatchBookmarks=true`` and ``timeoutSeconds``;
- reopen the watch from the last resourceVersion when it ends; relist on 410 (first with
  the last RV, then, if that fails, with no RV); the streaming form, like client-go's
  watch-list, drops its RV on a 410 or a too-large answer;
- a watch under 1 s with no events is an error (``VeryShortWatchError``);
- reject events without ``kind``/``apiVersion``, of the wrong kind, of an unknown type, or
  whose resourceVersion goes backwards on the stream (below the RV it resumed from, or
  below the previous event's); all such rejections are recorded as violations,
  which tests assert to be empty;
- the streaming-list form (``sendInitialEvents=true``) waits for the
  ``k8s.io/initial-events-end`` bookmark before it replaces its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
EVENT_TYPES = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"}


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def rv_of(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class _Relist(Exception):
    def __init__(self, reason: str, *, drop_rv: bool = False) -> None:
        super().__init__(reason)
        self.drop_rv = drop_rv


@dataclass
class ReflectorModel:
    base_url: str
    path: str  # e.g. /apis/discovery.k8s.io/v1/endpointslices
    kind: str  # e.g. EndpointSlice
    api_version: str
    label_selector: str = ""
    field_selector: str = ""
    streaming: bool = False
    timeout_seconds: tuple[int, int] = (300, 600)
    accept: str = "application/json"
    # Sent with every request besides Accept (a User-Agent, an Authorization header).
    headers: dict[str, str] = field(default_factory=dict)

    store: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_rv: str = ""
    lists: int = 0
    relists: int = 0
    watches: int = 0
    events: int = 0
    violations: list[str] = field(default_factory=list)
    relist_reasons: list[str] = field(default_factory=list)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _stream_rv: int = 0  # the lowest RV the next event on the current stream may carry
    _task: asyncio.Task[None] | None = None
    _session: aiohttp.ClientSession | None = None

    # ---- running -------------------------------------------------------------------

    def start(self) -> None:
        self._session = aiohttp.ClientSession(read_bufsize=2**21)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def wait_until(self, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 10) -> None:
        """Wait until ``predicate(store)`` holds; fail with the last store on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.synced.is_set() and predicate(self.store):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"reflector for {self.path} did not converge; store={sorted(self.store)}; "
                                     f"violations={self.violations}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    async def _run(self) -> None:
        backoff = 0.05
        need_list = True
        drop_rv = False
        while True:
            try:
                if self.streaming:
                    await self._watch(initial=need_list)
                else:
                    if need_list:
                        await self._list(drop_rv)
                    await self._watch(initial=False)
                need_list = False
                backoff = 0.05
            except _Relist as exc:
                self.relist_reasons.append(str(exc))
                need_list, drop_rv = True, exc.drop_rv
                if self.streaming and exc.drop_rv:
                    self.last_rv = ""  # client-go's watch-list: the RV is "unavailable"
                self.relists += 1
                await asyncio.sleep(backoff)  # client-go's back-off, modelled (not a wait for anything)
                backoff = min(backoff * 2, 1.0)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Transport errors: re-watch from the last RV after a back-off, as client-go does.
                self.relist_reasons.append(f"transport: {exc!r}")
                await asyncio.sleep(backoff)  # the modelled back-off
                backoff = min(backoff * 2, 1.0)

    # ---- list ----------------------------------------------------------------------

    def _selectors(self) -> dict[str, str]:
        q: dict[str, str] = {}
        if self.label_selector:
            q["labelSelector"] = self.label_selector
        if self.field_selector:
            q["fieldSelector"] = self.field_selector
        return q

    async def _get(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assert self._session is not None
        url = f"{self.base_url}{self.path}?{urlencode(sorted(query.items()))}"
        async with self._session.get(url, headers={**self.headers, "Accept": self.accept}) as resp:
            body = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith("application/json"):
                self.violations.append(f"list answered with Content-Type {ctype!r}")
            return resp.status, orjson.loads(body)

    async def _list(self, drop_rv: bool) -> None:
        self.lists += 1
        query = self._selectors()
        if self.last_rv and not drop_rv:
            query["resourceVersion"] = self.last_rv  # relist: no limit, served from cache
        else:
            query["resourceVersion"] = "0" if not drop_rv else ""
            query["limit"] = "500"
        query = {k: v for k, v in query.items() if v}
        items: list[dict[str, Any]] = []
        while True:
            code, doc = await self._get(query)
            if code in (410, 504):
                raise _Relist(f"list answered {code}", drop_rv=True)
            if code != 200:
                raise _Relist(f"list answered {code}: {doc.get('message')}")
            if doc.get("kind") != f"{self.kind}List":
                self.violations.append(f"list kind {doc.get('kind')!r}")
            items.extend(doc.get("items") or [])
            token = (doc.get("metadata") or {}).get("continue")
            list_rv = (doc.get("metadata") or {}).get("resourceVersion", "")
            if not token:
                break
            query = {**self._selectors(), "continue": token, "limit": "500"}
        if not list_rv:
            self.violations.append("list without metadata.resourceVersion")
        self.store = {key_of(o): o for o in items}
        self.last_rv = list_rv
        self.synced.set()
        self.changed.set()

    # ---- watch ---------------------------------------------------------------------

    async def _watch(self, *, initial: bool) -> None:
        assert self._session is not None
        self.watches += 1
        query = {**self._selectors(), "watch": "true", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(random.randint(*self.timeout_seconds))}
        if self.last_rv:
            query["resourceVersion"] = self.last_rv
        if initial:
            query["sendInitialEvents"] = "true"
            query["resourceVersionMatch"] = "NotOlderThan"
        url = f"{self.base_url}{self.path}?{urlencode(sorted(query.items()))}"
        started = time.monotonic()
        seen = 0
        pending: dict[str, dict[str, Any]] | None = {} if initial else None
        # A resumed watch carries only what came after its RV; a streaming list's initial
        # objects carry their own (older) RVs.
        self._stream_rv = int(self.last_rv) if self.last_rv and not initial else 0
        async with self._session.get(url, headers={**self.headers, "Accept": self.accept}) as resp:
            if resp.status != 200:
                doc = orjson.loads(await resp.read())
                if resp.status == 410 or resp.status == 504:
                    raise _Relist(f"watch answered {resp.status}", drop_rv=resp.status == 504 or initial)
                raise _Relist(f"watch answered {resp.status}: {doc.get('message')}")
            ctype = resp.headers.get("Content-Type", "")
            if ctype.split(";")[0].strip() != "application/json":
                self.violations.append(f"watch answered with Content-Type {ctype!r}")
            async for raw_line in resp.content:
                line = raw_line.strip()
                if not line:
                    continue
                seen += 1
                pending = self._event(orjson.loads(line), pending)
        if seen == 0 and time.monotonic() - started < 1.0:
            raise _Relist("very short watch: under 1 s with no events")
        if pending is not None:
            raise _Relist("streaming list ended before the initial-events-end bookmark")

    def _event(self, ev: dict[str, Any], pending: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        type_ = ev.get("type")
        obj = ev.get("object")
        if type_ not in EVENT_TYPES or not isinstance(obj, dict):
            self.violations.append(f"undecodable event {str(ev)[:200]}")
            raise _Relist("undecodable event")
        if type_ == "ERROR":
            if obj.get("kind") != "Status" or obj.get("apiVersion") != "v1":
                self.violations.append(f"ERROR object is not a v1 Status: {obj}")
            if obj.get("code") in (410, 504):
                raise _Relist(f"watch ERROR {obj.get('code')} {obj.get('reason')}",
                              drop_rv=obj.get("code") == 504 or pending is not None)
            raise _Relist(f"watch ERROR {obj.get('code')}: {obj.get('message')}")
        if obj.get("kind") != self.kind or obj.get("apiVersion") != self.api_version:
            self.violations.append(f"{type_} object has kind/apiVersion {obj.get('kind')}/{obj.get('apiVersion')}")
            raise _Relist("wrong kind")
        rv_raw = (obj.get("metadata") or {}).get("resourceVersion")
        try:
            if not isinstance(rv_raw, str | int):
                raise ValueError(rv_raw)
            rv = int(rv_raw)
        except ValueError:
            self.violations.append(f"{type_} without a resourceVersion")
            raise _Relist("event without resourceVersion") from None
        if rv < self._stream_rv:
            self.violations.append(f"{type_} {key_of(obj) if type_ != 'BOOKMARK' else ''} went back from "
                                   f"{self._stream_rv} to {rv}")
        self._stream_rv = rv
        self.events += 1
        self.last_rv = str(rv)
        target = pending if pending is not None else self.store
        if type_ == "BOOKMARK":
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            if pending is not None and annotations.get(INITIAL_EVENTS_END) == "true":
                self.store = pending
                self.synced.set()
                self.changed.set()
                return None
            return pending
        if type_ == "DELETED":
            target.pop(key_of(obj), None)
        else:
            target[key_of(obj)] = obj
        if pending is None:
            self.changed.set()
        return pending


@contextlib.asynccontextmanager
async def running_clients(models: dict[str, ReflectorModel]) -> AsyncIterator[dict[str, ReflectorModel]]:
    """Start every model, wait for each one's first sync, and stop them all on exit."""
    for m in models.values():
        m.start()
    try:
        for m in models.values():
            await m.wait_until(lambda store: True)
        yield models
    finally:
        for m in models.values():
            await m.stop()
