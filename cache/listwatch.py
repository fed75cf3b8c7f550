"""The reflector's decisions for one resource, with no I/O: sync, then watch, and what to do when.

``ListWatch`` is a state machine in httpcore's sans-I/O style, with client-go's reflector.go as the
behavioural model. It never touches a socket, a task or the wall clock: ``cache.reflector.Reflector``
asks it for the next action, performs it with the apiserver client, and feeds back what happened.
Owned by one ``Reflector``; the informers reach it only through that reflector.

Phases (``Phase``): a sync round is a streaming list (``STREAM``) or a list (``LIST``); then the
machine watches (``WATCH``) until something only a new sync can repair.

- ``STREAM``: a watch with ``sendInitialEvents=true&resourceVersionMatch=NotOlderThan&
  allowWatchBookmarks=true`` (KEP-3157, client-go's ``watchList``). Its ADDED events fill a
  temporary store (kept as bytes) until the bookmark annotated ``k8s.io/initial-events-end``;
  then the sink gets the whole state at the bookmark's RV and the same stream goes on as the
  watch. It asks for the last RV seen ("not older than": served from the watch cache), none
  on the first sync or once that RV was rejected (a consistent stream).
- Fallback, as client-go's ``ListAndWatch``: the streaming list is refused by an HTTP error
  (422 from an apiserver with the WatchList gate off, any 4xx but 410/429), or accepted and
  then ended by an ERROR event that is not 410/429/too-large (an apiserver whose etcd lacks
  progress notifications sends a 500); the round then goes on as a ``LIST``. Two deviations,
  both bounded: a stream that ends before its bookmark falls back too (client-go would retry
  it forever, k/k #140890), and a refusal is remembered for ``stream_retry_after`` seconds,
  so the relists in between cost one request each (client-go tries the stream again first).
- ``LIST``: ``resourceVersion=0`` on the first sync (the watch cache, which ignores ``limit``;
  a server that pages anyway is followed page by page), the last RV seen on a relist ("not
  older than", no limit: the watch cache again), and a consistent list (no resourceVersion,
  ``limit``, paged) once that RV was rejected (410, too large) or the RVs went back.
- ``WATCH``: from the last RV, with a jittered server-side ``timeoutSeconds``. A normal end, a
  lost connection, a 429 or an apiserver error resume the watch from the last RV after a
  back-off: only a rejected RV (410, too large), an untrusted event or an unreadable stream
  start a new sync round. So an apiserver restart costs each resource one sync, at most.

Every new round after the first waits a random part of ``relist_jitter`` first (so a fleet
does not relist in lockstep), and so does the first one after ``spread()`` (a wrapper restored
from a snapshot already serves; one without must sync at once). ``resume(rv)`` starts in
``WATCH`` instead, for a resource whose state at ``rv`` the sink already holds (a snapshot).

Inputs (methods the loop calls): ``list_page(body)``; ``watch_opened()``; ``initial_line(line)``
first for each line (a streaming list's initial ADDED events are taken undecoded), then, for a
line it did not take, ``event(ev, line)`` with the decoded event (``line``: its bytes),
``watch_ended()`` at the stream's normal end, ``undecodable(exc)`` for a line that is not JSON;
``failed(exc)`` for an ``ApiError``, a ``TransportError`` (``ReadTimeout``, ``UnreadableStream``)
or anything else; ``forget_rv()``: another resource saw the resourceVersions go back.

Outputs: calls on the ``Sink`` (``replace``, ``apply``, ``bookmark``) and ``on_regression(had,
got)`` when a sync comes back below an RV already seen (the timeline went back);
``next_action()``: ``Sleep(seconds)``, ``ListPage(params)`` or ``Watch(params, deadline)``;
``state`` (``UpstreamState``) for readiness, metrics and debug pages, and ``rv``; and what to tell
the operator, handed to ``say(level, message)`` (the I/O loop logs it): every change of state
(syncing and how, synced, connected, lost with its error, relisting and why, a fallback), and
while the apiserver keeps failing, "still retrying" with the last error and the next attempt at
most once per ``retry_report_interval`` (the first failure at once; a recovery once).

What one reflector asks for is its ``Selection``: label and field selectors, and whether it
wants metadata only (``PartialObjectMetadata``, whose events are taken for the resource's own).

Time and chance are injected (``clock``: monotonic seconds; ``rng``: ``uniform``/``randint``), so
the decisions are table-tested without a server (tests/test_listwatch.py).
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from cache.apierrors import ApiError, TransportError, UnreadableStream
from kubeapi.negotiation import PARTIAL
from kubeapi.resources import Resource, object_key
from kubeapi.rv import InvalidResourceVersion, parse_rv
from kubeapi.types import JSONDict
from kubeapi.validation import object_problem

JSON = "application/json"
# Metadata only, as client-go's metadata informers ask: the object form for watches, the list
# form for lists, each with plain JSON after it for a server that cannot (its objects are taken too).
PARTIAL_WATCH = f"{JSON};as=PartialObjectMetadata;g=meta.k8s.io;v=v1, {JSON}"
PARTIAL_LIST = f"{JSON};as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, {JSON}"
PARTIAL_API_VERSIONS = ("meta.k8s.io/v1", "meta.k8s.io/v1beta1")
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# A watch that ends this soon with no event is not a healthy one (client-go's VeryShortWatchError).
VERY_SHORT_WATCH = 1.0


class Sink(Protocol):
    """Where a resource's upstream state goes (``cache.cluster.ClusterCache``, or a feed of it)."""

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None: ...
    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None: ...
    def bookmark(self, resource: Resource, rv: int) -> None: ...


class Random(Protocol):
    """The random source: the ``random`` module, or a ``random.Random``."""

    def uniform(self, a: float, b: float) -> float: ...
    def randint(self, a: int, b: int) -> int: ...


Clock = Callable[[], float]


class Say(Protocol):
    """Where the machine's news for the operator goes: a ``logging`` level and a line (``exc``: an
    exception whose traceback goes with it). The I/O loop logs it (``cache.reflector.log_say``)."""

    def __call__(self, level: int, message: str, exc: BaseException | None = None) -> None: ...
# Told (RV it had, lower RV a list returned) when the upstream's RVs went back.
RegressionHandler = Callable[[int, int], None]


@dataclass
class ReflectorSettings:
    page_size: int = 500
    # No byte for this long while reading a list means the connection is dead.
    read_timeout: float = 90.0
    # A watch asks the apiserver to end it after a random time in this range (seconds, inclusive);
    # it is given that long plus the margin before the client gives up on it. Quiet watches are
    # not dropped in between: dead connections are found by TCP keepalive (cache.apiclient).
    watch_timeout_min: int = 300
    watch_timeout_max: int = 600
    watch_deadline_margin: float = 30.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Sync with streaming lists where the apiserver serves them (False: lists only).
    streaming: bool = True
    # After the apiserver refused a streaming list, sync with lists for this long.
    stream_retry_after: float = 600.0
    # Every sync round after the first waits a random time below this (seconds) first.
    relist_jitter: float = 1.0
    # While the apiserver keeps failing: "still retrying" at most this often (seconds).
    retry_report_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class Selection:
    """What one reflector asks for: selectors (query strings, as sent) and whether it wants
    metadata only (``PartialObjectMetadata``)."""

    label_selector: str = ""
    field_selector: str = ""
    metadata_only: bool = False

    def params(self) -> dict[str, str]:
        out = {}
        if self.label_selector:
            out["labelSelector"] = self.label_selector
        if self.field_selector:
            out["fieldSelector"] = self.field_selector
        return out


EVERYTHING = Selection()


@dataclass
class UpstreamState:
    """What the reflector last saw; read by /readyz, metrics and the debug pages."""

    connected: bool = False
    # monotonic time the connection was last lost (or the reflector started)
    disconnected_since: float = field(default_factory=time.monotonic)
    synced_once: bool = False
    last_error: str = ""
    lists: int = 0  # completed syncs: lists and streaming lists
    relists: int = 0
    streamed: int = 0  # of the syncs, those done with a streaming list
    reconnects: int = 0
    events: int = 0
    last_event_at: float = 0.0  # monotonic time of the last applied event
    # How the last sync was done ("stream" or "list"), and why streaming was last refused.
    sync_mode: str = ""
    stream_refused: str = ""
    # While requests keep failing: since when (monotonic), how many in a row, and when the
    # next attempt is due (monotonic); None and 0 once an answer came.
    failing_since: float | None = None
    failures: int = 0
    retry_at: float | None = None


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
    """Open a watch of the collection with these query parameters; feed it to ``watch_opened``/``event``.

    ``deadline``: seconds after which the client abandons the stream (the server should have
    ended it at its ``timeoutSeconds`` long before); None: no limit.
    """

    params: dict[str, str]
    accept: str = JSON
    deadline: float | None = None


Action = Sleep | ListPage | Watch


class Phase(enum.Enum):
    STREAM = "stream"  # a streaming list: initial events up to the initial-events-end bookmark
    LIST = "list"  # a list, page by page when the server pages
    WATCH = "watch"  # watching from ``rv``


class ListWatch:
    """The sync-then-watch decisions for one resource; see the module docstring for its inputs and outputs."""

    def __init__(
        self,
        resource: Resource,
        sink: Sink,
        settings: ReflectorSettings | None = None,
        *,
        selection: Selection = EVERYTHING,
        name: str = "",
        on_regression: RegressionHandler | None = None,
        clock: Clock = time.monotonic,
        rng: Random = random,
        say: Say,
    ) -> None:
        self.resource = resource
        self.sink = sink
        self.settings = settings or ReflectorSettings()
        self.selection = selection
        self.on_regression = on_regression
        self._clock = clock
        self._rng = rng
        self._say = say
        # What the log lines call it: its reflector's name, and its field selector.
        self._name = (name or resource.plural) + (f" ({selection.field_selector})" if selection.field_selector else "")
        self._kinds = (resource.kind, PARTIAL) if selection.metadata_only else (resource.kind,)
        self._selectors = selection.params()
        self.state = UpstreamState(disconnected_since=clock())
        # The highest RV seen (or, before the first sync, the one a snapshot was taken at).
        self.rv = 0
        # The apiserver rejected ``rv`` (410, too large) or the RVs went back: sync consistently.
        self._rv_unavailable = False
        # When the apiserver last refused a streaming list (clock seconds).
        self._stream_refused_at: float | None = None
        self._pause: float | None = None
        self._backoff = self.settings.backoff_initial
        # The list in progress: its pages as bytes, the token for the next one, its RV, its item count.
        self._pages: list[bytes] = []
        self._continue = ""
        self._list_rv = 0
        self._listed = 0
        # The streaming list in progress: its initial events' bytes in arrival order, and whether
        # it asked for an RV.
        self._initial = InitialEvents()
        self._stream_asked_rv = False
        # The watch in progress: when it opened, and how many events it delivered.
        self._watch_opened_at = 0.0
        self._seen = 0
        # Whether the sync round in progress has been announced; items of it skipped as malformed.
        self._announced = False
        self._skipped = 0
        # The retry report: when a failure was last reported, failures since then not reported,
        # and whether a report is waiting for its recovery line.
        self._reported_at: float | None = None
        self._unreported = 0
        self._owe_recovery = False
        self.phase = Phase.LIST
        self._begin_sync()

    # ---- outputs -----------------------------------------------------------------------------

    def next_action(self) -> Action:
        """What the loop does next: a back-off if one is due, else the next request."""
        if self._pause is not None:
            seconds, self._pause = self._pause, None
            return Sleep(seconds)
        s = self.settings
        if self.phase is Phase.LIST:
            accept = PARTIAL_LIST if self.selection.metadata_only else JSON
            if self._continue:
                return ListPage({**self._selectors, "limit": str(s.page_size), "continue": self._continue}, accept)
            self._start_list()
            if self._rv_unavailable:
                params = {"limit": str(s.page_size)}  # consistent: from etcd, so paged
                self._announce("a consistent list (from etcd, paged)")
            elif not self.rv:
                params = {"resourceVersion": "0", "limit": str(s.page_size)}  # the watch cache ignores limit
                self._announce("a list at resourceVersion 0 (from the watch cache)")
            else:
                params = {"resourceVersion": str(self.rv)}  # not older than: the watch cache, whole
                self._announce(f"a list not older than resourceVersion {self.rv}")
            return ListPage({**self._selectors, **params}, accept)
        accept = PARTIAL_WATCH if self.selection.metadata_only else JSON
        timeout = self._rng.randint(s.watch_timeout_min, s.watch_timeout_max)
        params = {**self._selectors, "watch": "1", "allowWatchBookmarks": "true"}
        if self.phase is Phase.STREAM:
            self._stream_asked_rv = bool(self.rv) and not self._rv_unavailable
            params["sendInitialEvents"] = "true"
            params["resourceVersionMatch"] = "NotOlderThan"
            if self._stream_asked_rv:
                params["resourceVersion"] = str(self.rv)
            self._announce(f"a streaming list not older than resourceVersion {self.rv}" if self._stream_asked_rv
                           else "a streaming list (consistent: from the latest)")
        else:
            params["resourceVersion"] = str(self.rv)
        params["timeoutSeconds"] = str(timeout)
        return Watch(params, accept, timeout + s.watch_deadline_margin)

    def _announce(self, how: str) -> None:
        """Say once per sync round how it syncs (a retry of the same round says nothing)."""
        if not self._announced:
            self._announced = True
            self._say(logging.INFO, f"upstream {self._name}: syncing with {how}")

    def next_attempt_in(self) -> float | None:
        """Seconds until the next attempt while requests keep failing; None once an answer came."""
        at = self.state.retry_at
        return None if at is None else max(at - self._clock(), 0.0)

    def spread(self) -> None:
        """Wait a random part of ``relist_jitter`` before the next request (a wrapper restored
        from a snapshot spreads its first sync: it already serves)."""
        self._jitter()

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
        # "items": null is an empty list (a PartialObjectMetadataList's, for one).
        if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list | None):
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
            if self._problem(item) is None:
                self._listed += 1
            else:
                self._skipped += 1  # said once, when the list is whole
        self._pages.append(body)
        del doc
        token = meta.get("continue")
        if token:
            self._continue = str(token)
        else:
            self._continue = ""
            pages, self._pages = self._pages, []
            self._synced(list_items(pages, self.resource, self.selection.metadata_only), self._listed,
                         self._list_rv, "list")

    def _start_list(self) -> None:
        self._pages = []
        self._continue = ""
        self._list_rv = 0
        self._listed = 0
        self._skipped = 0

    def _synced(self, items: Iterable[JSONDict], count: int, rv: int, how: str) -> None:
        """A whole state at ``rv`` (a list, or a streaming list at its bookmark): to the sink, then
        watch. A streaming list's items (``StreamItems``) count themselves as the sink takes them."""
        if rv < self.rv:
            # A sync is never older than an RV the apiserver has already served: its RVs went back.
            # Every resource has to start over (RVs are one counter).
            self._say(logging.WARNING, f"upstream {self._name}: synced at resourceVersion {rv}, below the "
                      f"{self.rv} already seen: the apiserver's state went back (etcd restore or rebuilt cluster?)")
            if self.on_regression is not None:
                self.on_regression(self.rv, rv)
        self.sink.replace(self.resource, items, rv)
        if isinstance(items, StreamItems):
            count = items.taken
            self._skipped += items.skipped
        if self._skipped:
            what = "initial event" if how == "stream" else "list item"
            self._say(logging.WARNING, f"upstream {self._name}: skipped {self._skipped} malformed {what}"
                      f"{'' if self._skipped == 1 else 's'}; took the rest")
            self._skipped = 0
        self.rv = rv
        self._rv_unavailable = False
        st = self.state
        st.lists += 1
        st.streamed += how == "stream"
        st.sync_mode = how
        how_said = "a streaming list" if how == "stream" else "a list"
        self._answered()
        objects = f"{count} object{'' if count == 1 else 's'}"
        if st.synced_once:
            st.relists += 1
            self._say(logging.INFO, f"upstream {self._name}: relisted {objects} at resourceVersion {rv} "
                      f"({how_said}); watching from there")
        else:
            self._say(logging.INFO, f"upstream {self._name}: listed {objects} at resourceVersion {rv} "
                      f"({how_said}); watching from there")
        st.synced_once = True
        self.phase = Phase.WATCH

    # ---- inputs: watching --------------------------------------------------------------------

    def watch_opened(self) -> None:
        """The watch asked for by the last ``Watch`` was answered 200; events follow."""
        doing = ("receiving the streaming list" if self.phase is Phase.STREAM
                 else f"watching from resourceVersion {self.rv}")
        if not self._answered(doing):
            self._say(logging.DEBUG, f"upstream {self._name}: {doing}")
        self._watch_opened_at = self._clock()
        self._seen = 0
        self._initial = InitialEvents()

    def event(self, ev: object, line: bytes = b"") -> bool:
        """One decoded watch event (``line``: its bytes, if at hand). False: stop reading this
        watch (``next_action`` says what next)."""
        if self.phase is Phase.STREAM:
            return self._initial_event(ev, line)
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
        if kind is not None and kind not in self._kinds:
            return self._untrusted(f"watch event of kind {kind!r}, expected {self.resource.kind}")
        meta = obj.get("metadata")
        try:
            rv = parse_rv(meta.get("resourceVersion") if type(meta) is dict else None)
        except InvalidResourceVersion as exc:
            return self._untrusted(f"bad resourceVersion: {exc}")
        if type_ == "BOOKMARK":
            self.sink.bookmark(self.resource, rv)
        elif type_ in ("ADDED", "MODIFIED", "DELETED"):
            problem = self._problem(obj)
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

    def _initial_event(self, ev: object, line: bytes) -> bool:
        """An event of a streaming list before its initial-events-end bookmark."""
        obj = ev.get("object") if isinstance(ev, dict) else None
        if not isinstance(obj, dict):
            return self._stream_broken("a watch event that is not an object")
        assert isinstance(ev, dict)
        type_ = ev.get("type")
        self._seen += 1
        if type_ == "ERROR":
            self._stream_failed(ApiError.from_status(obj), "an ERROR event")
            return False
        if type_ == "BOOKMARK":
            meta = obj.get("metadata")
            try:
                rv = parse_rv(meta.get("resourceVersion") if isinstance(meta, dict) else None)
            except InvalidResourceVersion as exc:
                return self._stream_broken(f"a bookmark with a bad resourceVersion: {exc}")
            annotations = meta.get("annotations") if isinstance(meta, dict) else None
            if isinstance(annotations, dict) and annotations.get(INITIAL_EVENTS_END) == "true":
                initial, self._initial = self._initial, InitialEvents()
                self._synced(initial.items(self._problem), 0, rv, "stream")
            return True
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            return self._stream_broken(f"a watch event of unknown type {type_!r:.64}")
        problem = self._problem(obj)
        if problem is not None:
            # As a malformed list item: skipped, the rest is taken (said once, at the bookmark).
            self._skipped += 1
            return True
        self._initial.decoded(type_, object_key(obj), line or orjson.dumps({"object": obj}))
        return True

    def initial_line(self, line: bytes) -> bool:
        """The hot path of a streaming list: True when ``line`` was taken undecoded, as an initial
        ADDED event, to be decoded, checked and keyed once, when the list is whole; False when
        the loop must decode it and call ``event``."""
        if self.phase is not Phase.STREAM or not line.startswith(ADDED_PREFIX):
            return False
        self._seen += 1
        self._initial.added(line)
        return True

    def undecodable(self, exc: Exception) -> None:
        """A watch line that is not JSON: a torn stream, so resume from the last applied RV (a
        streaming list lists instead, this round)."""
        if self.phase is Phase.STREAM:
            self._stream_broken(f"an undecodable line ({exc})")
            return
        self._lost(f"watch: undecodable event ({exc})")

    def watch_ended(self) -> None:
        """The watch's body ended normally (the server's timeoutSeconds, or it closed the stream)."""
        if self.phase is Phase.STREAM:
            self._refuse_streaming("the stream ended before its initial-events-end bookmark",
                                   remember=True)
            return
        if self._seen or self._clock() - self._watch_opened_at > VERY_SHORT_WATCH:
            self._backoff = self.settings.backoff_initial
            self._say(logging.DEBUG, f"upstream {self._name}: the watch ended after {self._seen} events; "
                      f"resuming from resourceVersion {self.rv}")
        else:
            # An empty, very short watch: don't spin.
            self._pause_for(0)
            self._say(logging.DEBUG, f"upstream {self._name}: an empty watch ended at once; resuming from "
                      f"resourceVersion {self.rv} in {duration(self._pause or 0.0)}")

    def _watch_error(self, err: ApiError) -> bool:
        if err.rejects_resource_version:
            self._expired(f"watch ERROR {err.status.get('code')}: {err.summary}", err)
        else:
            self._lost(f"watch error: {err.message or repr(err.status)[:200]}", err.retry_after)
        return False

    # ---- inputs: failures and coordination ------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """The last request failed, or its stream broke off."""
        if self.phase is Phase.STREAM and isinstance(exc, ApiError):
            self._stream_failed(exc, f"HTTP {exc.code}")
        elif isinstance(exc, ApiError):
            if exc.rejects_resource_version:
                self._expired(f"HTTP {exc.code}: {exc.summary}", exc)
            else:
                self._lost(str(exc), exc.retry_after)
        elif isinstance(exc, UnreadableStream):
            if self.phase is Phase.STREAM:
                # Perhaps an object over the read buffer: a list has no lines to outgrow.
                self._refuse_streaming(f"unreadable stream ({exc})", remember=False)
                return
            # e.g. a watch line over the read buffer: the stream can't be trusted from here.
            self._say(logging.WARNING, f"upstream {self._name}: unreadable watch stream ({exc}); relisting")
            self._disconnected()
            self._relist()
        elif isinstance(exc, TransportError):
            self._lost(str(exc) or type(exc).__name__)
        else:
            # Never let one bad response end this resource's updates for good.
            self._say(logging.ERROR, f"upstream {self._name}: unexpected error; relisting", exc)
            self._disconnected()
            self._relist()

    def resume(self, rv: int) -> None:
        """Watch from ``rv`` instead of syncing: the sink already holds this resource's state at
        ``rv`` (a restored snapshot). The apiserver then sends only what changed since, not the
        whole state again; an RV it no longer has (410, too large) starts a sync round as usual."""
        if rv <= 0:
            return
        self.rv = rv
        self.phase = Phase.WATCH
        self._say(logging.INFO, f"upstream {self._name}: resuming from resourceVersion {rv} (the restored "
                  "snapshot's) instead of listing")

    def forget_rv(self) -> None:
        """Sync next, consistently, and take whatever RV that has: another resource saw the RVs go back."""
        self.rv = 0
        self._rv_unavailable = True
        self._say(logging.INFO, f"upstream {self._name}: relisting: the apiserver's resourceVersions went back")
        self._begin_sync()

    # ---- decisions -----------------------------------------------------------------------------

    def _begin_sync(self) -> None:
        """A new sync round: a streaming list, unless off or refused not long ago; else a list."""
        refused = self._stream_refused_at
        stream = self.settings.streaming and (
            refused is None or self._clock() - refused >= self.settings.stream_retry_after)
        self.phase = Phase.STREAM if stream else Phase.LIST
        self._announced = False
        self._start_list()
        self._initial = InitialEvents()

    def _stream_failed(self, err: ApiError, how: str) -> None:
        """A streaming list answered ``err`` (as an HTTP answer or an ERROR event)."""
        if err.rejects_resource_version and self._stream_asked_rv:
            # Like client-go: the RV asked for is unavailable; stream again without one.
            self._say(logging.INFO, f"upstream {self._name}: resourceVersion {self.rv} not valid upstream "
                      f"({err.summary}); streaming from the latest")
            self._rv_unavailable = True
            return
        if err.code == 429 or err.status.get("code") == 429:
            self._lost(f"streaming list: {err}", err.retry_after)
            return
        # Anything else: not served here. client-go falls back to a list at once. An HTTP 5xx
        # may be passing (an apiserver starting), so only it is not remembered.
        transient = how.startswith("HTTP 5")
        said = how if how.startswith("HTTP") else f"{how} {err.status.get('code') or err.code}"
        detail = err.summary or str(err)
        self._refuse_streaming(detail if detail.startswith(said) else f"{said}: {detail}", remember=not transient)

    def _stream_broken(self, why: str) -> bool:
        """A streaming list answered with something that is not a watch stream (a server that
        does not know watches answers a list, say): list instead, this round."""
        self._refuse_streaming(f"the stream sent {why}", remember=False)
        return False

    def _refuse_streaming(self, why: str, *, remember: bool) -> None:
        """The apiserver does not serve this streaming list: list instead, now."""
        st = self.state
        if why != st.stream_refused:
            self._say(logging.WARNING, f"upstream {self._name}: no streaming list ({why}); falling back to a list"
                      + (f" for {self.settings.stream_retry_after:g}s" if remember else ""))
        else:
            self._say(logging.INFO, f"upstream {self._name}: no streaming list ({why}); listing instead")
        self._announced = True  # the line above says how this round syncs now
        st.stream_refused = why
        if remember:
            self._stream_refused_at = self._clock()
        self.phase = Phase.LIST
        self._start_list()
        self._initial = InitialEvents()

    def _expired(self, why: str, err: ApiError) -> None:
        """Our RV is not valid upstream: sync again. After a 410 the next sync still asks "not
        older than" it (client-go); an RV the apiserver has not reached is dropped."""
        self._say(logging.INFO, f"upstream {self._name}: resourceVersion {self.rv} not valid upstream ({why}); "
                  "relisting")
        if self.phase is not Phase.WATCH or err.too_large_resource_version:
            self._rv_unavailable = True
        self._relist()

    def _untrusted(self, why: str) -> bool:
        """An event we could not apply: the cache may have missed a change, so relist."""
        self._say(logging.WARNING, f"upstream {self._name}: {why}; relisting")
        self._relist()
        return False

    def _relist(self) -> None:
        self._begin_sync()
        self._pause_for(0)
        self._jitter()

    def _jitter(self) -> None:
        """Spread a sync round over ``relist_jitter``: a fleet must not relist in lockstep."""
        window = self.settings.relist_jitter
        if window > 0:
            self._pause = max(self._pause or 0.0, self._rng.uniform(0.0, window))

    def _disconnected(self) -> None:
        st = self.state
        if st.connected:
            st.disconnected_since = self._clock()
        st.connected = False

    def _lost(self, msg: str, retry_after: float = 0.0) -> None:
        """No usable answer: back off (at least ``retry_after``) and retry where we were."""
        st = self.state
        was_connected = st.connected
        self._disconnected()
        st.last_error = msg
        st.reconnects += 1
        if self.phase is not Phase.WATCH:
            self._start_list()  # a list starts over from its first page, a stream from its start
            self._initial = InitialEvents()
        self._pause_for(retry_after)
        now = self._clock()
        wait = self._pause or 0.0
        st.retry_at = now + wait
        if st.failing_since is None:
            st.failing_since, st.failures = now, 0
        st.failures += 1
        self._report_failure(now, wait, msg, was_connected)

    def _report_failure(self, now: float, wait: float, msg: str, was_connected: bool) -> None:
        """The retry report: the first failure at once, then "still retrying" at most once per
        ``retry_report_interval``; the failures in between are counted, not said."""
        last = self._reported_at
        if last is not None and now - last < self.settings.retry_report_interval:
            self._unreported += 1
            return
        st = self.state
        unsaid = f"; {attempts(self._unreported)} more since the last report" if self._unreported else ""
        if st.failures == 1:
            what = "connection lost" if was_connected else "cannot sync" if not st.synced_once else "connection failed"
            line = f"upstream {self._name}: {what}: {msg}; next attempt in {duration(wait)}{unsaid}"
        else:
            line = (f"upstream {self._name}: still retrying, last error: {msg}; next attempt in {duration(wait)} "
                    f"({attempts(st.failures)} in {duration(now - (st.failing_since or now))}{unsaid})")
        self._say(logging.WARNING, line)
        self._reported_at = now
        self._unreported = 0
        self._owe_recovery = True

    def _answered(self, doing: str = "") -> bool:
        """The apiserver answered (a watch opened, or a sync completed): connected, the failures
        over. Says so if it is news (the first connection, or the end of a reported failure);
        True if it said something."""
        st = self.state
        was_connected, failures, since, last_error = st.connected, st.failures, st.failing_since, st.last_error
        st.connected = True
        st.last_error = ""
        st.failing_since, st.failures, st.retry_at = None, 0, None
        then = f", {doing}" if doing else ""
        if self._owe_recovery:
            self._owe_recovery = False
            now = self._clock()
            self._say(logging.INFO, f"upstream {self._name}: connected after {attempts(failures)} in "
                      f"{duration(now - (since or now))} (last error: {last_error}){then}")
            return True
        if doing and not was_connected and not st.synced_once and not failures:
            self._say(logging.INFO, f"upstream {self._name}: connected{then}")
            return True
        return False

    def _pause_for(self, at_least: float) -> None:
        # Full jitter keeps a fleet of edge nodes from reconnecting in lockstep.
        b = self._backoff
        self._pause = max(at_least, self._rng.uniform(b / 2, b))
        self._backoff = min(b * 2, self.settings.backoff_max)

    def _problem(self, obj: object) -> str | None:
        """Why ``obj`` (a list item or an event's object) is not one of ours; metadata-only
        objects lose their PartialObjectMetadata kind here."""
        if self.selection.metadata_only and isinstance(obj, dict) and obj.get("kind") == PARTIAL:
            if obj.get("apiVersion") not in PARTIAL_API_VERSIONS:
                return f"a PartialObjectMetadata of apiVersion {str(obj.get('apiVersion'))[:40]!r}"
            del obj["kind"]
            obj.pop("apiVersion", None)
        return object_problem(self.resource, obj)


def attempts(count: int) -> str:
    return f"{count} failed attempt{'' if count == 1 else 's'}"


def duration(value: float) -> str:
    """A duration for the log: hundredths below 1 s, tenths below 10 s, whole seconds up to 10 min,
    then minutes and seconds."""
    if value < 1:
        return f"{max(value, 0.0):.2f}s"
    if value < 10:
        return f"{value:.1f}s"
    if value < 600:
        return f"{math.ceil(value)}s"
    minutes, rest = divmod(math.ceil(value), 60)
    return f"{minutes}m{rest:02d}s"


def list_items(pages: list[bytes], resource: Resource, metadata_only: bool = False) -> Iterator[JSONDict]:
    """The valid items of list pages already checked by ``list_page``, decoded a page at a time.

    ``pages`` is consumed as it goes, so every page not yet reached stays undecoded bytes.
    """
    while pages:
        doc = orjson.loads(pages.pop(0))
        for item in doc.get("items") or []:
            if metadata_only and isinstance(item, dict) and item.get("kind") == PARTIAL:
                item.pop("kind", None)
                item.pop("apiVersion", None)
            if object_problem(resource, item) is None:
                item.pop("kind", None)
                item.pop("apiVersion", None)
                yield item
        del doc


# How the apiserver writes an initial event of a streaming list (a metav1.WatchEvent: its type,
# then its object). Lines that start otherwise are decoded on arrival, as any watch event.
ADDED_PREFIX = b'{"type":"ADDED","object":'


class InitialEvents:
    """A streaming list's initial events until its initial-events-end bookmark, as their bytes
    in arrival order. The apiserver sends each object once, as ADDED: those lines are kept
    undecoded (``added``). An event decoded on arrival (``decoded``: another form or type, e.g.
    a MODIFIED or DELETED from a server that sends them) is keyed, and supersedes whatever came
    before it for that key. Owned by one ``ListWatch``."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        # key -> the position of the last decoded event for it (a DELETED's line is b"").
        self.last_decoded: dict[str, int] = {}

    def added(self, line: bytes) -> None:
        self.lines.append(line)

    def decoded(self, type_: str, key: str, line: bytes) -> None:
        self.last_decoded[key] = len(self.lines)
        self.lines.append(b"" if type_ == "DELETED" else line)

    def items(self, problem: Callable[[object], str | None]) -> StreamItems:
        return StreamItems(self, problem)


class StreamItems:
    """The objects of a streaming list's initial events, decoded, checked (``problem``: the
    reflector's checks) and keyed one at a time as the sink takes them, so the whole list never
    exists decoded; the lines are dropped as they go. Counts what it yields and what it skips as
    malformed. An object is yielded once: the first time its key comes, unless a decoded event
    for that key comes later (that one wins)."""

    def __init__(self, initial: InitialEvents, problem: Callable[[object], str | None]) -> None:
        self._initial = initial
        self._problem = problem
        self.taken = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[JSONDict]:
        lines, last = self._initial.lines, self._initial.last_decoded
        seen: set[str] = set()
        problem = self._problem
        for i in range(len(lines)):
            line, lines[i] = lines[i], b""
            if not line:
                continue  # a DELETED
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.skipped += 1
                continue
            obj = ev.get("object") if isinstance(ev, dict) else None
            if not isinstance(obj, dict) or problem(obj) is not None:
                self.skipped += 1
                continue
            key = object_key(obj)
            if key in seen or last.get(key, i) > i:
                continue  # sent twice, or superseded by a later decoded event
            seen.add(key)
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
            self.taken += 1
            yield obj
        lines.clear()
