"""A tiny fake apiserver that lists normally but sends scripted (possibly garbage) watch lines.

The simulator only speaks well-formed JSON; this one lets a test put a truncated line, an
event of the wrong kind or one without a resourceVersion into one resource's watch stream.
Lists always answer the "truth" (``objects``), which includes every *valid* scripted event.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from kubeapi.resources import ALL, Resource, match_path
from tests.support.faultkit import key_of


@dataclass
class GarbageUpstream:
    seed: Iterable[tuple[Resource, dict[str, Any]]]
    # plural -> raw lines sent (in order) on the first watch of that resource, before bookmarks
    scripts: dict[str, list[bytes]] = field(default_factory=dict)
    # plural -> (HTTP status, body) answered, one per watch request, before any watch is served
    watch_answers: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    bookmark_every: float = 0.2
    rv: int = 0
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    lists: dict[str, int] = field(default_factory=dict)
    watches: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    url: str = ""

    def __post_init__(self) -> None:
        self.objects = {r.plural: {} for r in ALL}
        for resource, obj in self.seed:
            o = copy.deepcopy(obj)
            self.rv += 1
            o.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            self.objects[resource.plural][key_of(o)] = o
        self.lists = {r.plural: 0 for r in ALL}
        self.watches = {r.plural: 0 for r in ALL}

    # ---- what a test scripts -------------------------------------------------------------

    def good_event(self, resource: Resource, key: str, labels: dict[str, str]) -> bytes:
        """A valid MODIFIED event for ``key`` that also becomes the truth lists answer."""
        self.rv += 1
        obj = copy.deepcopy(self.objects[resource.plural][key])
        obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}), **labels}
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[resource.plural][key] = obj
        return self.line("MODIFIED", resource, obj)

    def line(self, type_: str, resource: Resource, obj: dict[str, Any], kind: str | None = None) -> bytes:
        typed = {"kind": kind or resource.kind, "apiVersion": resource.api_version, **obj}
        return orjson.dumps({"type": type_, "object": typed}) + b"\n"

    # ---- server ----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rp = match_path(request.path)
        if rp is None or rp.name is not None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404},
                                     status=404)
        res = rp.resource
        if request.query.get("sendInitialEvents") == "true":
            # As an apiserver with the WatchList gate off: the wrapper falls back to a list.
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                                      "reason": "Invalid", "message": "sendInitialEvents is forbidden for watch "
                                      "unless the WatchList feature gate is enabled"}, status=422)
        if request.query.get("watch") in ("1", "true"):
            return await self._watch(request, res)
        self.lists[res.plural] += 1
        doc = {"kind": res.list_kind, "apiVersion": res.api_version,
               "metadata": {"resourceVersion": str(self.rv)},
               "items": list(self.objects[res.plural].values())}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def _watch(self, request: web.Request, res: Resource) -> web.StreamResponse:
        self.watches[res.plural] += 1
        answers = self.watch_answers.get(res.plural)
        if answers:
            code, body = answers.pop(0)
            return web.Response(status=code, body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        script = self.scripts.pop(res.plural, [])
        for raw in script:
            await resp.write(raw)
        # Then only bookmarks, bounded: at most a minute of them (the pacing is this fake
        # apiserver's behaviour, as the real one bookmarks periodically; nothing waits on it).
        for _ in range(int(60 / self.bookmark_every)):
            await asyncio.sleep(self.bookmark_every)
            bm = {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version,
                                                 "metadata": {"resourceVersion": str(self.rv)}}}
            await resp.write(orjson.dumps(bm) + b"\n")
        return resp
