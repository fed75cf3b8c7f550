"""The publisher: every write into the views, one change batch at a time.

A batch is what one upstream change does to one view: the objects it made the cache serve
again (``derived``: re-filtered siblings, Services a relabel re-filtered), and the upstream
object's own event. Derived objects reach watchers only where they differ from what the view
serves: changed ones as MODIFIED, newly hidden ones as DELETED, shown-again ones as ADDED.
The own event always goes out, last, so that it carries the batch's resourceVersion and
advances the view (``cache.view`` explains the stamping).

While the cache loads (its first sync, a new upstream timeline) the publisher stages what each
view will serve, with no events, and loads the views at once when the load ends. One view can
load by itself the same way (``start_alone``/``finish_alone``: a lazy informer's first list)
while the others publish, and be unloaded (``unload``: its informer stopped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from cache.view import Entry, View, exact_json, selectable, stamp
from kubeapi.resources import Resource
from kubeapi.rv import rv_of
from kubeapi.types import JSONDict


class Own(NamedTuple):
    """The upstream object's own event in a batch: ``upstream`` as received, ``obj`` its served
    form (None when a filter hides it); when it is served as stored, ``raw`` and ``rv`` are the
    stored JSON (shared with the store, not encoded again) and resourceVersion."""

    type: str
    key: str
    obj: JSONDict | None
    upstream: JSONDict
    raw: bytes | None = None
    rv: int = 0


@dataclass(slots=True)
class Batch:
    """One change batch for the view of ``resource``, brought to ``rv``."""

    resource: Resource
    rv: int
    derived: Mapping[str, JSONDict | None] = field(default_factory=dict)  # None: hidden
    own: Own | None = None


class Publisher:
    """Writes the views: ``publish`` a batch, or, while loading, stage it for ``finish_load``.
    Owned and called by ``ClusterCache``; wrapper/ only ever reads the views."""

    def __init__(self, views: Mapping[str, View]) -> None:
        self.views = views  # by plural
        self.loading = True
        self._staged: dict[str, dict[str, Entry]] = {plural: {} for plural in views}
        # Views loading by themselves while the others publish (by plural).
        self._alone: set[str] = set()
        # Re-filtered events published (not the upstream's own), for metrics and the debug page.
        self.synthetic_events = 0

    def publish(self, batch: Batch) -> None:
        if self.loading or (self._alone and batch.resource.plural in self._alone):
            self._stage(batch)
            return
        view = self.views[batch.resource.plural]
        own = batch.own
        changes = _differences(view, batch.derived, skip=own.key if own is not None else None)
        self.synthetic_events += len(changes)
        encoded: dict[str, bytes] = {}
        if own is not None:
            if own.obj is None:  # hidden: gone for watchers that had it, nothing for others
                changes.append(("DELETED", own.upstream))
            else:
                changes.append((own.type, own.obj))
                if own.raw is not None:
                    encoded[own.key] = own.raw
        elif not changes:
            return  # nothing to say: the view's resourceVersion stays
        view.publish(changes, batch.rv, encoded=encoded)

    def rv(self, resource: Resource) -> int:
        """The resourceVersion the view of ``resource`` serves."""
        return self.views[resource.plural].rv

    def advance(self, resource: Resource, rv: int) -> None:
        if not self.loading:
            self.views[resource.plural].advance(rv)

    # ---- loads -----------------------------------------------------------------------------

    def start_load(self) -> None:
        """Stage from now on; the views keep serving what they have until ``finish_load``."""
        self.loading = True
        for staged in self._staged.values():
            staged.clear()

    def finish_load(self, rvs: Mapping[str, int], *, new_timeline: bool) -> None:
        """Load the views of ``rvs`` (by plural) with what was staged, at their RVs (``View.load``
        says what ``new_timeline`` does); the others keep what they serve, and their stage is dropped."""
        for plural, staged in self._staged.items():
            if plural in rvs:
                self.views[plural].load(staged, rvs[plural], new_timeline=new_timeline)
            self._staged[plural] = {}  # a loaded view owns the staged dict now
        self._alone.clear()
        self.loading = False

    def start_alone(self, resource: Resource) -> None:
        """Stage the batches of ``resource`` from now on, while the other views publish."""
        self._alone.add(resource.plural)
        self._staged[resource.plural] = {}

    def finish_alone(self, resource: Resource, rv: int) -> None:
        """Load the view of ``resource`` with what was staged since ``start_alone``, at ``rv``."""
        plural = resource.plural
        self.views[plural].load(self._staged[plural], rv)
        self._staged[plural] = {}
        self._alone.discard(plural)

    def unload(self, resource: Resource) -> None:
        """Empty and unsync the view of ``resource``: readers wait for its next load."""
        self._alone.discard(resource.plural)
        self._staged[resource.plural] = {}
        self.views[resource.plural].clear()

    def clear(self) -> None:
        """Back to a new publisher's state: views empty and unsynced, loading."""
        self.start_load()
        for view in self.views.values():
            view.clear()
        self.synthetic_events = 0

    def _stage(self, batch: Batch) -> None:
        staged = self._staged[batch.resource.plural]
        resource = batch.resource
        for key, out in batch.derived.items():
            if out is None:
                staged.pop(key, None)
            else:
                staged[key] = Entry(exact_json(out), rv_of(out), selectable(resource, out))
        own = batch.own
        if own is None:
            return
        if own.obj is None or own.type == "DELETED":
            staged.pop(own.key, None)
        else:
            fields = selectable(resource, own.obj)
            staged[own.key] = (Entry(own.raw, own.rv, fields) if own.raw is not None
                               else Entry(exact_json(own.obj), rv_of(own.obj), fields))


def _differences(view: View, derived: Mapping[str, JSONDict | None], skip: str | None) -> list[tuple[str, JSONDict]]:
    """The events that bring ``view`` to serve ``derived`` (``skip``: the batch's own object)."""
    changes: list[tuple[str, JSONDict]] = []
    objects = view.objects
    for key in sorted(derived):
        if key == skip:
            continue
        out, served = derived[key], objects.get(key)
        if out is None:
            if served is not None:
                changes.append(("DELETED", served.obj))
        elif served is None:
            changes.append(("ADDED", out))
        # Unchanged apart from the RV (served objects carry their event's) means no event.
        elif served.raw != exact_json(stamp(out, served.rv)):
            changes.append(("MODIFIED", out))
    return changes
