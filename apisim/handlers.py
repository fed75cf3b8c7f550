"""HTTP layer: routes every request to discovery, health, events or a resource verb."""

from __future__ import annotations

import random
import re
import uuid
from typing import Any, Protocol

import orjson
from aiohttp import web

from apisim import discovery, errors, listing, namespaces, reviews
from apisim.faults import Faults
from apisim.patch import PATCH_TYPES
from apisim.registry import Registry, copy_json, now_rfc3339
from apisim.resources import SERVED_BY_PLURAL, WITHOUT_STATUS
from apisim.reviews import Reviews
from apisim.store import Entry, Store, with_type
from apisim.traffic import Cost
from apisim.watch import TableMode, WatchControl, WatchRequest, error_line, run_watch
from kubeapi import partial, status, tables
from kubeapi.listoptions import parse_list_options
from kubeapi.negotiation import PARTIAL, PARTIAL_LIST, Target, negotiate
from kubeapi.resources import Resource, ResourcePath, match_path
from kubeapi.status import StatusError
from kubeapi.types import JSONDict

JSON = "application/json"
_EVENTS = re.compile(r"^/(?:api/v1|apis/events\.k8s\.io/v1)/namespaces/(?P<ns>[^/]+)/events(?:/(?P<name>[^/]+))?/?$")
_NAMESPACES = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")
_HEALTH = ("/healthz", "/readyz", "/livez")


def json_response(body: bytes, code: int = 200) -> web.Response:
    return web.Response(body=body, status=code, content_type=JSON)


class MeteredStream(web.StreamResponse):
    """A watch's response: what it writes is added to the client's ``Cost`` as it goes."""

    def __init__(self, cost: Cost, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cost = cost

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.cost.add_watch_chunk(data if isinstance(data, bytes) else bytes(data))
        await super().write(data)


def _metered(resp: web.Response, cost: Cost, objects: int) -> web.Response:
    body = resp.body
    if isinstance(body, bytes):
        cost.add_body(body, objects)
    return resp


def status_response(err: StatusError) -> web.Response:
    return json_response(orjson.dumps(err.status), err.code)


def _not_found_path() -> StatusError:
    return StatusError(status.failure(404, "the server could not find the requested resource", "NotFound",
                                      {"causes": [{"type": "UnexpectedServerResponse", "message": "404 page not "
                                                   "found"}]}))


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise status.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None


class SimState(Protocol):
    """What the handlers read and drive of a simulator (``apisim.server.Simulator`` implements it)."""

    host: str
    port: int
    started_at: str
    default_watch_timeout: float
    paginate_rv0: bool
    watch_list: str
    store: Store
    registry: Registry
    faults: Faults
    reviews: Reviews
    watch_ctl: WatchControl

    async def wait_rv(self, rv: int) -> bool: ...

    def record_request(self, request: web.Request, plural: str, verb: str) -> Cost: ...

    def record_event(self, obj: JSONDict) -> None: ...


class Handlers:
    """The simulated apiserver's request handlers; the simulator's app routes every request here."""

    def __init__(self, sim: SimState) -> None:
        self.sim = sim

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except StatusError as err:
            return status_response(err)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in _HEALTH or any(path.startswith(h + "/") for h in _HEALTH):
            return web.Response(text="ok", content_type="text/plain")
        if request.method == "GET":
            host = request.host or f"{self.sim.host}:{self.sim.port}"
            doc = discovery.document(path, host)
            if doc is not None:
                return json_response(doc)
        if request.method == "POST" and path in (reviews.TOKENREVIEWS, reviews.SUBJECTACCESSREVIEWS):
            body = await _body(request)
            review = (self.sim.reviews.token_review(body) if path == reviews.TOKENREVIEWS
                   else self.sim.reviews.access_review(body))
            return json_response(orjson.dumps(review), 201)
        m = _EVENTS.match(path)
        if m:
            return await self._event(request, m.group("ns"), m.group("name"))
        m = _NAMESPACES.match(path)
        if m and request.method == "GET":
            sim = self.sim
            return await namespaces.serve(request, sim.store, sim.watch_ctl, sim.started_at, m.group("name"),
                                          sim.wait_rv, sim.default_watch_timeout)
        rp = match_path(path, SERVED_BY_PLURAL)
        if rp is None:
            raise _not_found_path()
        err = self.sim.faults.take()
        if err is not None:
            raise err
        return await self._resource(request, rp)

    # -- resources -----------------------------------------------------------------------

    async def _resource(self, request: web.Request, rp: ResourcePath) -> web.StreamResponse:
        method, res, reg = request.method, rp.resource, self.sim.registry
        if rp.subresource not in (None, "status") or (rp.subresource and res in WITHOUT_STATUS):
            raise status.not_found(res.group, f"{res.plural}/{rp.subresource}", rp.name or "")
        # Every resource handler of the apiserver negotiates the answer's media type first (406).
        target = negotiate(request.headers.get("Accept"))
        if method == "GET":
            if rp.name is None:
                return await self._list_or_watch(request, rp, target)
            query = request.query
            if query.get("watch", "").lower() in ("1", "true", "t"):
                return await self._list_or_watch(request, rp, target)
            cost = self.sim.record_request(request, res.plural, "get")
            return _metered(self._object(request, res, reg.get(res, rp.namespace, rp.name), target), cost, 1)
        if method == "POST":
            if rp.name is not None or rp.subresource is not None or (res.namespaced and not rp.namespace):
                raise status.method_not_allowed(method, res.plural)
            body = await _body(request)
            if not isinstance(body, dict):
                raise status.bad_request("the body must be a JSON object")
            return self._object(request, res, reg.create(res, body, rp.namespace), target, 201)
        if rp.name is None:
            raise status.method_not_allowed(method, res.plural)
        if method == "PUT":
            body = await _body(request)
            if not isinstance(body, dict):
                raise status.bad_request("the body must be a JSON object")
            entry = reg.update(res, body, rp.namespace, rp.name, rp.subresource)
            return self._object(request, res, entry, target)
        if method == "PATCH":
            ctype = request.content_type
            if ctype not in PATCH_TYPES:
                raise errors.unsupported_media_type(ctype)
            patch = await _body(request)
            entry = reg.patch(res, rp.namespace, rp.name, patch, ctype, rp.subresource)
            return self._object(request, res, entry, target)
        if method == "DELETE":
            pre: JSONDict | None = None
            if request.can_read_body and (await request.read()).strip():
                opts = await _body(request)  # DeleteOptions
                if isinstance(opts, dict) and isinstance(opts.get("preconditions"), dict):
                    pre = opts["preconditions"]
            return self._object(request, res, reg.delete(res, rp.namespace, rp.name, pre), target)
        raise status.method_not_allowed(method, res.plural)

    def _object(self, request: web.Request, res: Resource, entry: Entry, target: Target, code: int = 200,
                ) -> web.Response:
        if target.table:
            table = tables.render_table(res, [entry.obj], list_rv=None,
                                        include_object=request.query.get("includeObject", ""),
                                        api_version=target.api_version)
            return json_response(orjson.dumps(table), code)
        if target.kind == PARTIAL_LIST:
            raise partial.object_is_not_a_list(res)
        if target.kind == PARTIAL:
            return json_response(partial.partial_bytes(entry.raw, target.api_version), code)
        return json_response(with_type(res, entry.raw), code)

    async def _list_or_watch(self, request: web.Request, rp: ResourcePath, target: Target) -> web.StreamResponse:
        res = rp.resource
        query = dict(request.query)
        token = query.pop("continue", "")
        opts = parse_list_options(query, res)
        if token and opts.watch:
            raise status.bad_request("continue: Forbidden: continue is forbidden for watch")
        flt = listing.Filter(rp.namespace, opts.label, opts.field, rp.name)
        table = None
        if target.table:
            include = tables.check_include_object(query.get("includeObject", ""))
            table = TableMode(target.api_version, include)
        streaming = bool(opts.watch and opts.send_initial_events)
        cost = self.sim.record_request(request, res.plural,
                                       "watchlist" if streaming else "watch" if opts.watch else "list")
        if streaming and self.sim.watch_list == "off":
            # Validation, as with the WatchList feature gate off (apimachinery ValidateListOptions).
            raise status.invalid("ListOptions", "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for "
                                 "watch unless the WatchList feature gate is enabled", "sendInitialEvents")
        if opts.watch:
            if target.kind == PARTIAL_LIST:
                # The apiserver fails to encode the first event as a list and ends the stream.
                raise partial.object_is_not_a_list(res)
            # timeoutSeconds absent or 0: the server's limit, jittered as --min-request-timeout is.
            timeout = float(opts.timeout_seconds or self.sim.default_watch_timeout * (1 + random.random()))
            wreq = WatchRequest(res, flt, opts.resource_version, opts.send_initial_events, opts.allow_bookmarks,
                                timeout, table, target.api_version if target.kind == PARTIAL else "")
            if streaming and self.sim.watch_list == "error":
                return await self._failed_watch(request, cost)
            return await self._watch(request, wreq, cost)
        page = await self._list(res, flt, opts.resource_version, opts.resource_version_match, opts.limit, token)
        if table is not None:
            doc = tables.render_table(res, [e.obj for e in page.items], list_rv=str(page.rv),
                                      include_object=table.include_object, api_version=table.api_version)
            if page.continue_token:
                doc["metadata"]["continue"] = page.continue_token
            return _metered(json_response(orjson.dumps(doc)), cost, len(page.items))
        if target.kind == PARTIAL:
            raise partial.list_is_not_an_object(res)
        if target.kind == PARTIAL_LIST:
            return _metered(json_response(listing.partial_list_bytes(page, target.api_version)), cost,
                            len(page.items))
        return _metered(json_response(listing.list_bytes(res, page)), cost, len(page.items))

    async def _list(self, res: Resource, flt: listing.Filter, rv: int | None, match: str, limit: int,
                    token: str) -> listing.Page:
        store = self.sim.store
        rs = store.of(res)
        start = ""
        if token:
            if rv:
                raise status.bad_request("specifying resource version is not allowed when using continue")
            rv, start = listing.decode_continue(token)
            state = listing.exact_state(rs, rv, store.rv, listing.CONTINUE_TOO_OLD)
        elif rv is None or (rv == 0 and match != "Exact"):
            if rv == 0 and not self.sim.paginate_rv0:
                limit = 0  # served "from the watch cache": the apiserver ignores limit for RV=0
            state, rv = rs.objects, store.rv
        elif match == "Exact" or (match == "" and limit):
            # Exact reads go to etcd, which answers a future revision at once: 504 without a
            # retry hint (etcd3 store GetList, ErrFutureRev).
            if rv > store.rv:
                raise status.too_large_rv(rv, store.rv, retry_after=0)
            state = listing.exact_state(rs, rv, store.rv, listing.LIST_TOO_OLD)
        else:
            if not await self.sim.wait_rv(rv):
                raise status.too_large_rv(rv, store.rv)
            state, rv = rs.objects, store.rv
        keys = rs.sorted_keys() if state is rs.objects else sorted(state)
        return listing.paginate(state, keys, rv, flt, limit, start)

    async def _watch(self, request: web.Request, wreq: WatchRequest, cost: Cost) -> web.StreamResponse:
        sim = self.sim
        resp = MeteredStream(cost, status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
        await resp.prepare(request)  # sends the headers now: quiet watches must not look hung
        sim.watch_ctl.requests[id(request)] = request
        try:
            await run_watch(resp, sim.store, sim.watch_ctl, wreq, sim.wait_rv)
        except (ConnectionError, RuntimeError):
            pass  # the client went away (or close_watches dropped it)
        finally:
            sim.watch_ctl.requests.pop(id(request), None)
        return resp

    async def _failed_watch(self, request: web.Request, cost: Cost) -> web.StreamResponse:
        """A watch accepted, then ended by an ERROR event: the apiserver's cacher answers a
        streaming list so when its etcd cannot do progress notifications (an error watcher,
        since "client-go is going to fall back to a standard LIST on any error")."""
        resp = MeteredStream(cost, status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
        await resp.prepare(request)
        # The error watcher's Status for a plain error: the message as it is, 500 InternalError.
        err = StatusError(status.failure(500, "a watch stream was requested by the client but the required storage "
                                         "feature RequestWatchProgress is disabled", "InternalError"))
        await resp.write(error_line(err))
        return resp

    # -- events ------------------------------------------------------------------------------

    async def _event(self, request: web.Request, namespace: str, name: str | None) -> web.Response:
        """Accept kube-proxy's events (often protobuf) and keep the JSON ones for inspection."""
        api_version = "events.k8s.io/v1" if request.path.startswith("/apis/") else "v1"
        if request.method not in ("POST", "PATCH", "PUT"):
            if request.method == "GET" and name is None:
                body = {"kind": "EventList", "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(self.sim.store.rv)}, "items": []}
                return json_response(orjson.dumps(body))
            raise status.not_found("events.k8s.io" if api_version != "v1" else "", "events", name or "")
        raw = await request.read()
        obj: JSONDict = {}
        if request.content_type == JSON or request.content_type.endswith("+json"):
            try:
                parsed = orjson.loads(raw)
                if isinstance(parsed, dict):
                    obj = parsed
            except orjson.JSONDecodeError:
                pass
        obj = copy_json(obj)
        meta = obj.setdefault("metadata", {}) if isinstance(obj.get("metadata", {}), dict) else {}
        meta.setdefault("name", name or f"apisim.{uuid.uuid4().hex[:16]}")
        meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        meta["resourceVersion"] = str(self.sim.store.rv)
        obj["metadata"], obj["kind"], obj["apiVersion"] = meta, "Event", api_version
        self.sim.record_event(obj)
        return json_response(orjson.dumps(obj), 201 if request.method == "POST" else 200)
