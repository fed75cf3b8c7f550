"""Namespaces, derived from the stored objects: get, list and watch as the apiserver answers them.

The simulator stores no Namespace objects: the four built-in namespaces and every namespace that
holds an object exist. Each carries the label the apiserver sets on every namespace since 1.21
(``kubernetes.io/metadata.name``) and, as its resourceVersion, that of the oldest object in it (1
for a built-in one). They are never deleted, so a watch sends ADDED when a namespace first appears
(and an initial burst of ADDED for ``resourceVersion`` unset or 0, or ``sendInitialEvents``), and
bookmarks, until its timeout. Label and field selectors (``metadata.name``, ``status.phase``) apply
to lists and watches alike. Clients such as CoreDNS list and watch them; kubectl completes with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from apisim.listing import Filter
from apisim.store import Entry, Store
from apisim.watch import INITIAL_EVENTS_END, WatchControl
from kubeapi import status
from kubeapi.listoptions import parse_list_options
from kubeapi.resources import Resource
from kubeapi.types import JSONDict

NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
                      extra_fields=("status.phase",))
BUILTIN = ("default", "kube-node-lease", "kube-public", "kube-system")
NAME_LABEL = "kubernetes.io/metadata.name"
JSON = "application/json"


def current(store: Store, created: str) -> dict[str, Entry]:
    """Every namespace now, by name, as stored entries (``created``: their creationTimestamp)."""
    rvs = dict.fromkeys(BUILTIN, 1)
    for rs in store.resources.values():
        if not rs.resource.namespaced:
            continue
        for key, entry in rs.objects.items():
            ns = key.split("/", 1)[0]
            rvs[ns] = min(rvs.get(ns, entry.rv), entry.rv)
    out: dict[str, Entry] = {}
    for name in sorted(rvs):
        obj: JSONDict = {"metadata": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                                      "resourceVersion": str(rvs[name]), "creationTimestamp": created,
                                      "labels": {NAME_LABEL: name}},
                         "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        out[name] = Entry(obj, orjson.dumps(obj), rvs[name])
    return out


def _typed(entry: Entry) -> bytes:
    return orjson.dumps({"kind": "Namespace", "apiVersion": "v1", **entry.obj})


def _line(type_: str, obj: bytes) -> bytes:
    return b'{"type":"' + type_.encode() + b'","object":' + obj + b"}\n"


async def serve(request: web.Request, store: Store, ctl: WatchControl, created: str, name: str | None,
                wait_rv: Callable[[int], Awaitable[bool]], default_timeout: float) -> web.StreamResponse:
    """GET of one namespace, or a list or watch of them."""
    if name is not None:
        entry = current(store, created).get(name)
        if entry is None:
            raise status.not_found("", "namespaces", name)
        return web.Response(body=_typed(entry), content_type=JSON)
    opts = parse_list_options(request.query, NAMESPACES)
    flt = Filter(None, opts.label, opts.field)
    if not opts.watch:
        items = [e.obj for e in current(store, created).values() if flt.matches(e)]
        body = {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": str(store.rv)},
                "items": items}
        return web.Response(body=orjson.dumps(body), content_type=JSON)
    timeout = float(opts.timeout_seconds or default_timeout * (1 + random.random()))
    resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away
        await _stream(resp, store, ctl, created, flt, opts.resource_version, opts.send_initial_events,
                      opts.allow_bookmarks, timeout, wait_rv)
    return resp


async def _stream(resp: web.StreamResponse, store: Store, ctl: WatchControl, created: str, flt: Filter,
                  rv: int | None, send_initial: bool | None, bookmarks: bool, timeout: float,
                  wait_rv: Callable[[int], Awaitable[bool]]) -> None:
    if rv and not await wait_rv(rv):
        await resp.write(_line("ERROR", orjson.dumps(status.too_large_rv(rv, store.rv).status)))
        return
    seen = current(store, created)
    if send_initial or (send_initial is None and not rv):
        for entry in seen.values():
            if flt.matches(entry):
                await resp.write(_line("ADDED", _typed(entry)))
        if send_initial and bookmarks:
            await resp.write(_bookmark(store.rv, initial_end=True))
    elif rv:  # a resume: what appeared after rv is new to this client
        seen = {n: e for n, e in seen.items() if e.rv <= rv}
    await _follow(resp, store, ctl, created, flt, seen, bookmarks, timeout)


async def _follow(resp: web.StreamResponse, store: Store, ctl: WatchControl, created: str, flt: Filter,
                  seen: dict[str, Entry], bookmarks: bool, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    next_bookmark = loop.time() + ctl.bookmark_interval
    while not ctl.stopping and loop.time() < deadline:
        now = current(store, created)
        for entry in sorted((e for n, e in now.items() if n not in seen), key=lambda e: e.rv):
            seen[entry.obj["metadata"]["name"]] = entry
            if flt.matches(entry):
                await resp.write(_line("ADDED", _typed(entry)))
        if bookmarks and loop.time() >= next_bookmark:
            await resp.write(_bookmark(store.rv))
            next_bookmark = loop.time() + ctl.bookmark_interval
        wake = min(deadline, next_bookmark) if bookmarks else deadline
        await asyncio.wait({store.changed.future(), ctl.notifier.future()}, timeout=max(0.0, wake - loop.time()),
                           return_when=asyncio.FIRST_COMPLETED)


def _bookmark(rv: int, *, initial_end: bool = False) -> bytes:
    meta: JSONDict = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return _line("BOOKMARK", orjson.dumps({"kind": "Namespace", "apiVersion": "v1", "metadata": meta}))
