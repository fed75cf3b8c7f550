"""The reflector's decisions for one resource, with no I/O: list, then watch, and what to do when.

``ListWatch`` is a state machine in httpcore's sans-I/O style, with client-go's reflector.go as the
behavioural model. It never touches a socket, a task or the wall clock: ``cache.reflector.Reflector``
asks it for the next action, performs it with the apiserver client, and feeds back what happened.
Owned by one ``Reflector``; the informers reach it only through that reflector.

Inputs (methods the loop calls):

- ``list_page(body)``: one page of a list answer (bytes);
- ``watch_opened()``, ``event(ev)`` for each decoded watch event, ``watch_ended()`` at the stream's
  normal end; ``undecodable(exc)`` for a line that is not JSON;
- ``failed(exc)``: an ``ApiError`` (410 or too-large resourceVersion: relist; others, 429 with its
  Retry-After included: back off and retry), a ``TransportError`` (unreachable, or ``ReadTimeout``:
  back off and retry), an ``UnreadableStream`` (relist), anything else (relist);
- ``forget_rv()``: another resource saw the resourceVersions go back.

Outputs:

- calls on the ``Sink`` (``replace``, ``apply``, ``bookmark``) and ``on_regression(had, got)`` when a
  list comes back below an RV already seen (the timeline went back);
- ``next_action()``: ``Sleep(seconds)`` (a back-off), ``ListPage(params)`` or ``Watch(params)``;
- ``state`` (``UpstreamState``) for readiness, metrics and debug pages, and ``rv``.

Time and chance are injected (``clock``: monotonic seconds; ``rng``: ``uniform``/``randint``), so
the decisions are table-tested without a server (tests/test_listwatch.py).

Room to grow: an upstream streaming list (a watch with ``sendInitialEvents=true`` that ends its
initial burst with the ``k8s.io/initial-events-end`` bookmark, falling back to a list as client-go
does) is one more ``Phase`` whose ``next_action`` is a ``Watch`` and whose events fill a fresh
store until that bookmark, then ``replace``; a metadata-only watch is an option that sets the
actions' ``accept`` and the kind events must carry. Neither is implemented yet.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from cache.apierrors import ApiError, TransportError, UnreadableStream
from kubeapi.resources import Resource
from kubeapi.rv import InvalidResourceVersion, parse_rv
from kubeapi.types import JSONDict
from kubeapi.validation import object_problem, valid_object

# The reflector's story is one logger, whichever module tells it (operators filter on it).
log = logging.getLogger("cache.reflector")

JSON = "application/json"
# A watch that ends this soon with no event is not a healthy one (client-go's VeryShortWatchError).
VERY_SHORT_WATCH = 1.0


class Sink(Protocol):
    """Where a resource's upstream state goes (``cache.cluster.ClusterCache``)."""

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None: ...
    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None: ...
    def bookmark(self, resource: Resource, rv: int) -> None: ...


class Random(Protocol):
    """The random source: the ``random`` module, or a ``random.Random``."""

    def uniform(self, a: float, b: float) -> float: ...
    def randint(self, a: int, b: int) -> int: ...


Clock = Callable[[], float]
# Told (RV it had, lower RV a list returned) when the upstream's RVs went back.
RegressionHandler = Callable[[int, int], None]


@dataclass
class ReflectorSettings:
    page_size: int = 500
    # No byte for this long means the connection is dead; the apiserver bookmarks every ~60 s.
    read_timeout: float = 90.0
    # A watch asks the apiserver to end it after a random time in this range (seconds, inclusive).
    watch_timeout_min: int = 300
    watch_timeout_max: int = 600
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


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
    last_event_at: float = 0.0  # monotonic time of the last applied event


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this long before the next action (a back-off)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class ListPage:
    """GET one page of the collection with these query parameters; feed its body to ``list_page``."""

    params: dict[str, str]
    accept: str = JSON


@dataclass(frozen=True, slots=True)
class Watch:
    """Open a watch of the collection with these query parameters; feed it to ``watch_opened``/``event``."""

    params: dict[str, str]
    accept: str = JSON


Action = Sleep | ListPage | Watch


class Phase(enum.Enum):
    LIST = "list"  # a consistent list, page by page
    WATCH = "watch"  # watching from ``rv``


class ListWatch:
    """The list-then-watch decisions for one resource; see the module docstring for its inputs and outputs."""

    def __init__(
        self,
        resource: Resource,
        sink: Sink,
        settings: ReflectorSettings | None = None,
        *,
        on_regression: RegressionHandler | None = None,
        clock: Clock = time.monotonic,
        rng: Random = random,
    ) -> None:
        self.resource = resource
        self.sink = sink
        self.settings = settings or ReflectorSettings()
        self.on_regression = on_regression
        self._clock = clock
        self._rng = rng
        self._name = resource.plural
        self._kind = resource.kind
        self.state = UpstreamState(disconnected_since=clock())
        # The highest RV seen (or, before the first list, the one a snapshot was taken at).
        self.rv = 0
        self.phase = Phase.LIST
        self._pause: float | None = None
        self._backoff = self.settings.backoff_initial
        # The list in progress: its pages as bytes, the token for the next one, its RV, its item count.
        self._pages: list[bytes] = []
        self._continue = ""
        self._list_rv = 0
        self._listed = 0
        # The watch in progress: when it opened, and how many events it delivered.
        self._watch_opened_at = 0.0
        self._seen = 0

    # ---- outputs -----------------------------------------------------------------------------

    def next_action(self) -> Action:
        """What the loop does next: a back-off if one is due, else the next request."""
        if self._pause is not None:
            seconds, self._pause = self._pause, None
            return Sleep(seconds)
        s = self.settings
        if self.phase is Phase.LIST:
            if not self._continue:
                self._start_list()
                return ListPage({"limit": str(s.page_size)})
            return ListPage({"limit": str(s.page_size), "continue": self._continue})
        return Watch({
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": str(self.rv),
            "timeoutSeconds": str(self._rng.randint(s.watch_timeout_min, s.watch_timeout_max)),
        })

    # ---- inputs: listing ---------------------------------------------------------------------

    def list_page(self, body: bytes) -> None:
        """One page of the list asked for by the last ``ListPage``."""
        # Pages are kept as bytes and decoded again, one at a time, while the sink consumes them:
        # holding every page decoded at once was the largest allocation of the process's life
        # (bench/ measures it).
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self._lost(f"list: response is not JSON: {exc}")
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
            self._lost("list: response is not a list object")
            return
        meta = doc.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        try:
            page_rv = parse_rv(meta.get("resourceVersion"))
        except InvalidResourceVersion as exc:
            self._lost(f"list: bad resourceVersion: {exc}")
            return
        self._list_rv = self._list_rv or page_rv
        for item in doc.get("items") or []:
            if valid_object(self.resource, item):
                self._listed += 1
            else:
                log.warning("upstream %s: skipping malformed list item", self._name)
        self._pages.append(body)
        del doc
        token = meta.get("continue")
        if token:
            self._continue = str(token)
        else:
            self._continue = ""
            self._listed_all()

    def _start_list(self) -> None:
        self._pages = []
        self._continue = ""
        self._list_rv = 0
        self._listed = 0

    def _listed_all(self) -> None:
        list_rv = self._list_rv
        if list_rv < self.rv:
            # A consistent list is never older than an RV the apiserver has already served: its
            # RVs went back. Every resource has to start over (RVs are one counter).
            log.warning("upstream %s: listed at resourceVersion %d, below the %d already seen: the "
                        "apiserver's state went back (etcd restore or rebuilt cluster?)", self._name, list_rv, self.rv)
            if self.on_regression is not None:
                self.on_regression(self.rv, list_rv)
        pages, self._pages = self._pages, []
        self.sink.replace(self.resource, list_items(pages, self.resource), list_rv)
        self.rv = list_rv
        st = self.state
        st.lists += 1
        if st.synced_once:
            st.relists += 1
            log.info("upstream %s: relisted %d objects at resourceVersion %d", self._name, self._listed, list_rv)
        else:
            log.info("upstream %s: listed %d objects at resourceVersion %d", self._name, self._listed, list_rv)
        st.synced_once = True
        st.connected = True
        st.last_error = ""
        self.phase = Phase.WATCH

    # ---- inputs: watching --------------------------------------------------------------------

    def watch_opened(self) -> None:
        """The watch asked for by the last ``Watch`` was answered 200; events follow."""
        st = self.state
        if not st.connected:
            log.info("upstream %s: connected, watching from resourceVersion %d", self._name, self.rv)
        st.connected = True
        st.last_error = ""
        self._watch_opened_at = self._clock()
        self._seen = 0

    def event(self, ev: object) -> bool:
        """One decoded watch event. False: stop reading this watch (``next_action`` says what next)."""
        # The hot path: one call per event, no allocation of its own.
        if not isinstance(ev, dict):
            return self._untrusted("watch event is not an object")
        obj = ev.get("object")
        if not isinstance(obj, dict):
            return self._untrusted("watch event is not an object")
        type_ = ev.get("type")
        if type_ == "ERROR":
            return self._watch_error(ApiError.from_status(obj))
        kind = obj.get("kind")
        if kind is not None and kind != self._kind:
            return self._untrusted(f"watch event of kind {kind!r}, expected {self._kind}")
        meta = obj.get("metadata")
        try:
            rv = parse_rv(meta.get("resourceVersion") if type(meta) is dict else None)
        except InvalidResourceVersion as exc:
            return self._untrusted(f"bad resourceVersion: {exc}")
        if type_ == "BOOKMARK":
            self.sink.bookmark(self.resource, rv)
        elif type_ in ("ADDED", "MODIFIED", "DELETED"):
            problem = object_problem(self.resource, obj)
            if problem is not None:
                return self._untrusted(f"malformed watch event object: {problem}")
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
            self.sink.apply(self.resource, type_, obj)
            st = self.state
            st.events += 1
            st.last_event_at = self._clock()
        else:
            return self._untrusted(f"unknown watch event type {type_!r:.64}")
        if rv > self.rv:
            self.rv = rv
        self._seen += 1
        return True

    def undecodable(self, exc: Exception) -> None:
        """A watch line that is not JSON: a torn stream, so resume from the last applied RV."""
        self._lost(f"watch: undecodable event ({exc})")

    def watch_ended(self) -> None:
        """The watch's body ended normally (the server's timeoutSeconds, or it closed the stream)."""
        if self._seen or self._clock() - self._watch_opened_at > VERY_SHORT_WATCH:
            self._backoff = self.settings.backoff_initial
        else:
            # An empty, very short watch: don't spin.
            self._pause_for(0)

    def _watch_error(self, err: ApiError) -> bool:
        if err.rejects_resource_version:
            self._expired(f"watch ERROR {err.status.get('code')}: {err.summary}")
        else:
            self._lost(f"watch error: {err.message or repr(err.status)[:200]}", err.retry_after)
        return False

    # ---- inputs: failures and coordination ------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """The last request failed, or its stream broke off."""
        if isinstance(exc, ApiError):
            if exc.rejects_resource_version:
                self._expired(f"HTTP {exc.code}: {exc.summary}")
            else:
                self._lost(str(exc), exc.retry_after)
        elif isinstance(exc, UnreadableStream):
            # e.g. a watch line over the read buffer: the stream can't be trusted from here.
            log.warning("upstream %s: unreadable watch stream (%s); relisting", self._name, exc)
            self.state.connected = False
            self.state.disconnected_since = self._clock()
            self._relist()
        elif isinstance(exc, TransportError):
            self._lost(str(exc) or type(exc).__name__)
        else:
            # Never let one bad response end this resource's updates for good.
            log.error("upstream %s: unexpected error; relisting", self._name, exc_info=exc)
            self.state.connected = False
            self._relist()

    def forget_rv(self) -> None:
        """Relist next, and take whatever RV that list has: another resource saw the RVs go back."""
        self.rv = 0
        self.phase = Phase.LIST
        self._start_list()

    # ---- decisions -----------------------------------------------------------------------------

    def _expired(self, why: str) -> None:
        """Our RV is not valid upstream (too old, or newer than the apiserver's): relist with none."""
        log.info("upstream %s: resourceVersion %d not valid upstream (%s); relisting", self._name, self.rv, why)
        self._relist()

    def _untrusted(self, why: str) -> bool:
        """An event we could not apply: the cache may have missed a change, so relist."""
        log.warning("upstream %s: %s; relisting", self._name, why)
        self._relist()
        return False

    def _relist(self) -> None:
        self.phase = Phase.LIST
        self._start_list()
        self._pause_for(0)

    def _lost(self, msg: str, retry_after: float = 0.0) -> None:
        """No usable answer: back off (at least ``retry_after``) and retry where we were."""
        st = self.state
        if st.connected or msg != st.last_error:
            log.warning("upstream %s: connection lost or failed: %s", self._name, msg)
        if st.connected:
            st.disconnected_since = self._clock()
        st.connected = False
        st.last_error = msg
        st.reconnects += 1
        if self.phase is Phase.LIST:
            self._start_list()  # a list starts over from its first page
        self._pause_for(retry_after)

    def _pause_for(self, at_least: float) -> None:
        # Full jitter keeps a fleet of edge nodes from reconnecting in lockstep.
        b = self._backoff
        self._pause = max(at_least, self._rng.uniform(b / 2, b))
        self._backoff = min(b * 2, self.settings.backoff_max)


def list_items(pages: list[bytes], resource: Resource) -> Iterator[JSONDict]:
    """The valid items of list pages already checked by ``list_page``, decoded a page at a time.

    ``pages`` is consumed as it goes, so every page not yet reached stays undecoded bytes.
    """
    while pages:
        doc = orjson.loads(pages.pop(0))
        for item in doc.get("items") or []:
            if valid_object(resource, item):
                item.pop("kind", None)
                item.pop("apiVersion", None)
                yield item
        del doc
