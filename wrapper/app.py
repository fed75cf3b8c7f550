"""The HTTP front: routes each request to the reads served from the cache or to pass-through."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from cache.apiclient import ApiClient
from cache.reader import Demand, ViewReader
from kubeapi import status
from kubeapi.listoptions import ListOptions, parse_list_options
from kubeapi.negotiation import Target, negotiate
from kubeapi.resources import ResourcePath, match_path
from kubeapi.selectors import FieldRequirement, FieldSelector
from kubeapi.status import StatusError
from wrapper.authz import ClientAuthorizer
from wrapper.failures import FAILURES, FailureLog, failures_of
from wrapper.getting import serve_get
from wrapper.lending import check_lending
from wrapper.listing import ListBodies, serve_list
from wrapper.passthrough import forward
from wrapper.paths import parse_target
from wrapper.responses import status_response
from wrapper.serving import ServeSettings
from wrapper.watch_registry import WatchRegistry
from wrapper.watching import serve_watch

log = logging.getLogger(__name__)

Middleware = Callable[..., Awaitable[web.StreamResponse]]


class _QuietBadRequests(logging.Filter):
    """aiohttp logs malformed requests (oversized headers, bad request lines) with a traceback
    at ERROR; any local client could flood the log that way. One line at INFO is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "rejected a malformed HTTP request: %s", (str(exc).splitlines()[0][:200],)
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())

@dataclass(frozen=True)
class ReadyCheck:
    """One line of /readyz beyond the caches' own: ``[+]name detail`` or ``[-]name detail``."""

    name: str
    ok: bool
    detail: str


ReadyChecks = Callable[[], Sequence[ReadyCheck]]
# /readyz?verbose: what to add to a view's line (by plural, and whether it has synced); "" for nothing.
UpstreamNotes = Callable[[str, bool], str]

VIEWS = web.AppKey("views", Mapping[str, ViewReader])
REGISTRY = web.AppKey("watch_registry", WatchRegistry)


class Front:
    """The HTTP front: routes each request to health, a read served from the cache (list, get,
    watch) or pass-through to the apiserver.

    Owns the routing, the identity decision for pass-through (with wrapper/lending.py), the list
    bodies of its views (``ListBodies``) and its watches (``WatchRegistry``). It reads the cache
    only through the views it is given (``cache.reader.ViewReader``). A read is served from a
    view only if the view covers it (``covers``: a view declares the objects it holds all of);
    any other read, and any resource without a view, passes through. The ``Demand``, if given,
    is told of every read (a lazily watched resource starts its informer on the first). Built by
    ``build_app``, which the composition root (``wrapper.compose``) and the tests call; aiohttp
    calls ``handle`` for every request and ``on_shutdown`` once.
    """

    def __init__(
        self,
        views: Mapping[str, ViewReader],
        ready: Callable[[], bool],
        upstream: ApiClient | None,
        settings: ServeSettings,
        registry: WatchRegistry | None = None,
        authorizer: ClientAuthorizer | None = None,
        checks: ReadyChecks | None = None,
        demand: Demand | None = None,
        notes: UpstreamNotes | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.notes = notes
        self.demand = demand
        self.views = views
        self.ready = ready
        self.checks = checks
        self.upstream = upstream
        self.settings = settings
        self.registry = registry if registry is not None else WatchRegistry()  # empty is falsy
        self.list_bodies = ListBodies()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except StatusError as err:
            if err.code >= 500 or err.code == 429:
                log.info("%s %s: %d %s", request.method, request.path_qs, err.code, err.status.get("message"))
            else:
                log.info("rejected %s %s: %d %s", request.method, request.path_qs[:300], err.code,
                         err.status.get("message"))
            return status_response(err)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        # One parse of the request line's target: what is routed, checked and forwarded.
        target = parse_target(request.raw_path)
        path = target.path
        if path in ("/healthz", "/livez"):
            return web.Response(text="ok")
        if path == "/readyz":
            return self._readyz(verbose="verbose" in request.query)
        rp = match_path(path)
        view = self.views.get(rp.resource.plural) if rp is not None and rp.subresource is None else None
        if rp is not None and view is not None and request.method in ("GET", "HEAD"):
            # As the apiserver's handlers: the media type first (406), then the query (400, 422).
            form = negotiate(request.headers.get("Accept"))
            opts = parse_list_options(request.query, rp.resource)
            if covers(view.scope, rp, opts):
                return await self._serve(request, view, rp, opts, form)
        if self.upstream is None:
            raise status.not_found("", "", path)
        if "Authorization" in request.headers:
            # The client's own credentials, on a connection without the wrapper's.
            return await forward(request, self.upstream, target, lend=False)
        check_lending(request.method, path, target.escaped, request.headers.keys())
        return await forward(request, self.upstream, target, lend=True)

    async def _serve(self, request: web.Request, view: ViewReader, rp: ResourcePath, opts: ListOptions,
                     form: Target) -> web.StreamResponse:
        """A read the view covers: get, watch or list."""
        if self.authorizer is not None:
            verb = "get" if rp.name is not None else "watch" if opts.watch else "list"
            await self.authorizer.check(request.headers.get("Authorization"), verb, rp.resource, rp.namespace,
                                        rp.name)
        if self.demand is not None:
            self.demand.touch(rp.resource)
        if rp.name is not None:
            if opts.watch:
                raise status.bad_request("watch on a single object path is not supported; "
                                         "use a fieldSelector of metadata.name")
            return await serve_get(request, view, self.settings, rp.namespace, rp.name, form)
        if opts.watch:
            if self.demand is None:
                return await serve_watch(request, view, opts, self.settings, rp.namespace, self.registry, form)
            with self.demand.watching(rp.resource):
                return await serve_watch(request, view, opts, self.settings, rp.namespace, self.registry, form)
        return await serve_list(request, view, opts, self.settings, rp.namespace, self.list_bodies, form)

    def _readyz(self, verbose: bool = False) -> web.Response:
        """One ``[+]``/``[-]`` line per check. ``?verbose`` adds, as the apiserver's verbose
        checks do, why a cache is not synced (the upstream's last error and the next attempt), or
        that a synced one is served while its upstream is lost."""
        lines = []
        for name, v in self.views.items():
            note = self.notes(name, v.synced) if verbose and self.notes is not None else ""
            if v.synced:
                lines.append(f"[+]cache-{name} ok" + (f" (upstream lost: {note})" if note else ""))
            elif self.demand is not None and self.demand.lazy(v.resource):
                lines.append(f"[+]cache-{name} not synced: watched only while clients read it")
            else:
                lines.append(f"[-]cache-{name} not synced" + (f": {note}" if note else ""))
        checks = self.checks() if self.checks is not None else ()
        lines.extend(f"[{'+' if c.ok else '-'}]{c.name} {c.detail}" for c in checks)
        ok = self.ready() and all(c.ok for c in checks)
        body = "\n".join(lines) + ("\nreadyz check passed\n" if ok else "\nreadyz check failed\n")
        return web.Response(text=body, status=200 if ok else 503)

    async def on_shutdown(self, _app: web.Application) -> None:
        # End open watches cleanly so kube-proxy reconnects (to the next wrapper) at once.
        self.registry.closing = True
        for view in self.views.values():
            view.wake()


def covers(scope: FieldSelector | None, rp: ResourcePath, opts: ListOptions) -> bool:
    """Whether a view holding all objects of ``scope`` (None: all of them) can answer the read
    ``rp`` with ``opts``: when what the read selects (its field selector, its path's namespace
    and name) implies the scope. Label selectors only narrow further."""
    if scope is None:
        return True
    selected = list(opts.field.requirements) if opts.field is not None else []
    if rp.namespace:
        selected.append(FieldRequirement("metadata.namespace", rp.namespace, True))
    if rp.name is not None:
        selected.append(FieldRequirement("metadata.name", rp.name, True))
    return FieldSelector(tuple(selected)).implies(scope)


@web.middleware
async def _no_tracebacks(request: web.Request, handler: Callable[[web.Request], object]) -> web.StreamResponse:
    """A bug answers a Status 500 and is logged without a traceback per request (FailureLog)."""
    try:
        resp = await handler(request)  # type: ignore[misc]
        assert isinstance(resp, web.StreamResponse)
        return resp
    except web.HTTPException:
        raise
    except Exception as exc:
        failures_of(request).record(exc, f"{request.method} {request.path_qs[:300]}")
        return status_response(status.internal_error("application-grid-wrapper could not serve this request; "
                                                     "see its log"))


def build_app(
    views: Mapping[str, ViewReader],
    ready: Callable[[], bool],
    upstream: ApiClient | None,
    settings: ServeSettings | None = None,
    *,
    registry: WatchRegistry | None = None,
    middlewares: Sequence[Middleware] = (),
    authorizer: ClientAuthorizer | None = None,
    client_max_size: int = 3 << 20,
    checks: ReadyChecks | None = None,
    demand: Demand | None = None,
    notes: UpstreamNotes | None = None,
) -> web.Application:
    front = Front(views, ready, upstream, settings or ServeSettings(), registry, authorizer, checks, demand, notes)
    app = web.Application(middlewares=[*middlewares, _no_tracebacks], client_max_size=client_max_size,
                          handler_args={"max_field_size": 16384, "max_line_size": 16384})
    app[VIEWS] = views
    app[REGISTRY] = front.registry
    app[FAILURES] = FailureLog()
    app.router.add_route("*", "/{tail:.*}", front.handle)
    app.on_shutdown.append(front.on_shutdown)
    return app
