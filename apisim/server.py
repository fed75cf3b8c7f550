"""The Simulator: an aiohttp apiserver on 127.0.0.1 plus direct methods for tests and benchmarks.

Direct methods (create/update/patch/delete) are synchronous and go through the same
registry as HTTP writes, so they bump the RV and wake watchers exactly like HTTP writes.
They return a private copy of the stored object (without kind/apiVersion, as stored).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from apisim import errors
from apisim.authn import Authenticator, Seen, UserInfo
from apisim.faults import Faults
from apisim.handlers import Handlers, status_response
from apisim.listing import Filter
from apisim.patch import MERGE
from apisim.registry import Registry, now_rfc3339
from apisim.resources import SERVED
from apisim.reviews import Reviews
from apisim.store import Entry, SavedState, Store, wait_for_change
from apisim.traffic import Cost, Traffic
from apisim.watch import WatchControl
from kubeapi.resources import SERVICES, Resource
from kubeapi.selectors import parse_field_selector, parse_label_selector
from kubeapi.types import JSONDict

SeedItems = Iterable[tuple[Resource, JSONDict]]
Seed = SeedItems | Callable[[], SeedItems]
_EVENTS_KEPT = 1000
_READS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Read:
    """One read of a resource: who (user and User-Agent), of what, which verb, with which query parameters."""

    user: str
    plural: str
    verb: str
    params: dict[str, str]
    agent: str = ""

USER = web.RequestKey("apisim.user", UserInfo)


def _copy(entry: Entry) -> JSONDict:
    obj: JSONDict = orjson.loads(entry.raw)
    return obj


class Simulator:
    """An in-process Kubernetes apiserver for nodes, services, endpoints, endpointslices, configmaps
    and leases (``apisim.resources.SERVED``).

    ``bookmark_interval``: seconds between BOOKMARKs (the apiserver uses ~60).
    ``too_large_wait``: how long a too-new resourceVersion waits before 504 (apiserver: 3 s).
    ``default_watch_timeout``: watch duration without ``timeoutSeconds`` (or with 0), jittered to [t, 2t)
        as the apiserver jitters --min-request-timeout (1800 s: 30-60 min).
    ``paginate_rv0``: honour ``limit`` for resourceVersion=0 lists (classic apiservers ignore it).
    ``tls``: serve HTTPS with this context (``apisim.authn.server_tls_context``); a client
    certificate it verifies authenticates the request.
    ``authenticate``: refuse bearer tokens missing from ``reviews.tokens`` with 401, as the
    apiserver refuses invalid tokens. Who every request ran as is kept in ``seen`` either way.
    ``watch_list``: what a streaming list (a watch with ``sendInitialEvents=true``) gets: "on"
        serves it (initial ADDED events, then the ``k8s.io/initial-events-end`` bookmark); "off"
        is a 422 Invalid, as from an apiserver whose WatchList feature gate is off; "error"
        accepts the watch (200) and ends it with an ERROR event (500 InternalError), as an
        apiserver whose etcd lacks progress notifications does. A plain attribute: tests may flip it.

    ``requests`` counts the reads of resources per (user name, plural, verb), the verb one of
    "list", "watch", "watchlist" (a streaming list) and "get", for tests and benchmarks that
    count what clients cost the apiserver; ``read_log`` keeps the latest of them (``Read``) with
    their query parameters and User-Agent; ``traffic`` (``apisim.traffic.Traffic``) counts the
    response bytes and objects of every read per user, User-Agent, resource and verb.
    """

    def __init__(self, seed: Seed | None = None, *, history_limit: int = 10_000, bookmark_interval: float = 60.0,
                 too_large_wait: float = 3.0, default_watch_timeout: float = 1800.0,
                 paginate_rv0: bool = False, tls: ssl.SSLContext | None = None, authenticate: bool = False,
                 watch_list: str = "on") -> None:
        self.store = Store(history_limit=history_limit)
        for r in SERVED:
            self.store.of(r)
        self.registry = Registry(self.store)
        self.faults = Faults()
        self.reviews = Reviews()
        self.tls = tls
        self.authn = Authenticator(self.reviews.tokens, check_tokens=authenticate)
        self.watch_ctl = WatchControl(bookmark_interval=bookmark_interval)
        self.too_large_wait = too_large_wait
        self.default_watch_timeout = default_watch_timeout
        self.paginate_rv0 = paginate_rv0
        self.watch_list = watch_list
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.read_log: deque[Read] = deque(maxlen=_READS_KEPT)
        self.traffic = Traffic()
        self.host = "127.0.0.1"
        self.port = 0
        self.started_at = now_rfc3339()
        self.events: list[JSONDict] = []  # JSON events clients posted (most recent last, bounded)
        self.events_received = 0
        self._runner: web.AppRunner | None = None
        if seed is not None:
            self.load(seed)

    # -- lifecycle -------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self._authenticate])
        app.router.add_route("*", "/{tail:.*}", Handlers(self).handle)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        user = self.authn.authenticate(request)
        self.authn.record(request, user)
        if user is None:
            return status_response(errors.unauthorized())
        request[USER] = user
        return await handler(request)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.watch_ctl.stopping = False
        # handler_cancellation: a client that disconnects cancels its watch handler (no leaked tasks).
        runner = web.AppRunner(self.make_app(), handler_cancellation=True, shutdown_timeout=1.0,
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self.tls)
        await site.start()
        self._runner = runner
        sockets = runner.addresses
        self.host, self.port = host, int(sockets[0][1]) if sockets else port
        return self.url

    async def stop(self) -> None:
        self.watch_ctl.stopping = True
        self.watch_ctl.poke()  # watch loops end their streams cleanly
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.sleep(0)
            await runner.cleanup()

    async def restart(self) -> None:
        """Stop and start again on the same address, as an apiserver restarts: every open watch
        is dropped, and its new watch cache holds no history, so a watch resuming from an older
        resourceVersion gets 410 Expired (the objects and the resourceVersion stay, as in etcd)."""
        host, port = self.host, self.port
        await self.stop()
        self.store.compact()
        await self.start(host, port)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def seen(self) -> list[Seen]:
        """Every request received (most recent last, bounded), with the identity it ran as."""
        return list(self.authn.seen)

    @property
    def rv(self) -> int:
        return self.store.rv

    # -- seeds -----------------------------------------------------------------------------

    def load(self, seed: Seed) -> int:
        """Create every (resource, object) of ``seed``; returns how many were created."""
        items = seed() if callable(seed) else seed
        n = 0
        for resource, obj in items:
            if resource is SERVICES:
                ip = (obj.get("spec") or {}).get("clusterIP")
                if isinstance(ip, str) and ip and ip != "None":
                    self.registry.reserve_ip(ip)
            self.registry.create(resource, obj)
            n += 1
        return n

    # -- direct API ------------------------------------------------------------------------

    def create(self, resource: Resource, obj: JSONDict, namespace: str | None = None) -> JSONDict:
        return _copy(self.registry.create(resource, obj, namespace))

    def update(self, resource: Resource, obj: JSONDict) -> JSONDict:
        return _copy(self.registry.update(resource, obj))

    def patch(self, resource: Resource, namespace: str | None, name: str, patch: Any,
              content_type: str = MERGE) -> JSONDict:
        return _copy(self.registry.patch(resource, namespace, name, patch, content_type))

    def patch_labels(self, resource: Resource, namespace: str | None, name: str,
                     labels: Mapping[str, str | None]) -> JSONDict:
        """Set labels (a None value removes the label)."""
        return self.patch(resource, namespace, name, {"metadata": {"labels": dict(labels)}})

    def delete(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        return _copy(self.registry.delete(resource, namespace, name))

    def get(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        """The object; raises kubeapi.status.StatusError (404) if it does not exist."""
        return _copy(self.registry.get(resource, namespace, name))

    def list(self, resource: Resource, namespace: str | None = None, label_selector: str = "",
             field_selector: str = "") -> list[JSONDict]:
        label = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, resource.supported_fields)
        flt = Filter(namespace, None if label.empty else label, None if fields.empty else fields)
        rs = self.store.of(resource)
        entries = (rs.objects[k] for k in rs.sorted_keys())
        return [_copy(e) for e in entries if not flt.narrows or flt.matches(e)]

    def count(self, resource: Resource) -> int:
        return len(self.store.of(resource).objects)

    # -- fault hooks -----------------------------------------------------------------------

    def compact(self, rv: int | None = None) -> int:
        """Drop history at and below ``rv`` (default: now); older resumes and tokens get 410."""
        return self.store.compact(rv)

    def save_state(self) -> SavedState:
        """Every object and the resourceVersion now, for ``restart_from`` (an etcd backup)."""
        return self.store.save()

    def restart_from(self, state: SavedState) -> None:
        """Restart on an older state, as an apiserver does after an etcd restore from a backup:
        resourceVersions go back to the saved one (later writes reuse the numbers in between),
        the watch history is gone and every open watch is dropped."""
        self.store.restore(state)
        self.close_watches()

    def close_watches(self) -> int:
        """Abruptly drop every open watch connection; returns how many were dropped."""
        return self.watch_ctl.close_all()

    def fail_next(self, n: int, status_code: int, message: str = "") -> None:
        """The next ``n`` requests to resource paths get a Status error with ``status_code``."""
        self.faults.fail_next(n, status_code, message)

    def pause_watches(self) -> None:
        """Open watches stop sending anything (events, bookmarks) but stay connected."""
        self.watch_ctl.paused = True
        self.watch_ctl.poke()

    def resume_watches(self) -> None:
        self.watch_ctl.paused = False
        self.watch_ctl.poke()

    @property
    def open_watches(self) -> int:
        return len(self.watch_ctl.requests)

    # -- internals used by the handlers ----------------------------------------------------

    async def wait_rv(self, rv: int) -> bool:
        """Wait (up to ``too_large_wait``) until the store reaches ``rv``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.too_large_wait
        while self.store.rv < rv:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await wait_for_change(self.store.changed, remaining)
        return True

    def record_request(self, request: web.Request, plural: str, verb: str) -> Cost:
        """Count one read; the handler adds the bytes and objects it answers to the returned cost."""
        user = request.get(USER)
        name = user.name if user is not None else ""
        agent = request.headers.get("User-Agent", "")
        self.requests[(name, plural, verb)] += 1
        self.read_log.append(Read(name, plural, verb, dict(request.query), agent))
        return self.traffic.request(name, agent, plural, verb)

    def reads(self, plural: str, verb: str, user: str | None = None) -> int:
        """How many ``verb`` reads of ``plural`` (by ``user``, or by anyone) were received."""
        return sum(n for (u, p, v), n in self.requests.items() if p == plural and v == verb and user in (None, u))

    def record_event(self, obj: JSONDict) -> None:
        self.events_received += 1
        if obj:
            self.events.append(obj)
            del self.events[:-_EVENTS_KEPT]
