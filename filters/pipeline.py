"""The registered filters, and the only functions of filters/ the cache calls.

Adding a filter: a module under filters/ with a ``Filter`` subclass (see ``filters.api``), its
tests, and one line in ``FILTERS``. Filters apply in that order; each sees what the previous
ones served.

Which filters run is the operator's choice, as data: ``select`` reads kube-controller-manager's
``--controllers`` grammar (``*`` for every filter on by default, ``NAME`` to add one, ``-NAME`` to
remove one) into the filters a ``Pipeline`` is built with; the command line's ``--filters`` is
handed to it as it is, so nothing outside filters/ knows a filter's name.

A Service no filter parses a policy for gets ``NO_POLICIES``, and the cache then serves its
objects as it stored them, without decoding them (its fast path).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from filters.api import NO_READS, Filter, Malformed, NodeChange, NodeIndex, Reads, ServedSlices, TopologyContext
from filters.discard import DISCARD_CLOUD_SERVICES
from filters.nodeport import NODEPORT_ISOLATION
from filters.topology import TOPOLOGY
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, SERVICES, Resource
from kubeapi.types import Endpoints, EndpointSlice, JSONDict

FILTERS: tuple[Filter[Any], ...] = (
    DISCARD_CLOUD_SERVICES,  # first: what it hides, no later filter needs to serve
    NODEPORT_ISOLATION,
    TOPOLOGY,
)

ALL_ON_BY_DEFAULT = "*"
T = TypeVar("T")

# What a filter made of one object it served, for the decision counts (``Pipeline.decisions``).
UNCHANGED, REWRITTEN, HIDDEN = "unchanged", "rewritten", "hidden"


def select(spec: str, registry: Sequence[Filter[Any]] = FILTERS) -> tuple[Filter[Any], ...]:
    """The filters ``spec`` asks for, in registration order; ValueError says what is wrong with it.

    ``spec`` is a comma list in kube-controller-manager's ``--controllers`` grammar: ``*`` stands
    for every filter on by default, ``NAME`` adds a filter, ``-NAME`` removes one. Without ``*``
    only the named filters run; an empty spec runs none (every object is served as stored).
    """
    by_name = {f.name: f for f in registry}
    wanted: dict[str, bool] = {}
    star = False
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == ALL_ON_BY_DEFAULT:
            star = True
            continue
        on = not entry.startswith("-")
        name = entry if on else entry[1:]
        if name not in by_name:
            raise ValueError(f"unknown filter {name[:60]!r} (known: {', '.join(by_name)})")
        if wanted.get(name, on) != on:
            raise ValueError(f"filter {name!r} is both added and removed")
        wanted[name] = on
    return tuple(f for f in registry if wanted.get(f.name, star and f.on_by_default))


def describe(registry: Sequence[Filter[Any]] = FILTERS) -> str:
    """The registered filters and their defaults, for the command line's help."""
    on = ", ".join(f.name for f in registry if f.on_by_default)
    off = ", ".join(f.name for f in registry if not f.on_by_default)
    return f"on by default: {on or 'none'}; off by default: {off or 'none'}"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Policies:
    """What the filters make of one Service version; parsed once per version, kept by the cache.

    ``applied``: (filter, policy) for each filter involved; ``malformed``: (filter, what was
    wrong) for each filter whose annotation is unusable (that filter then leaves the Service
    alone); ``reads`` and ``acts_on``: the union over ``applied``; ``reads_by_filter``: (filter
    name, its reads) for each applied filter that reads something about Nodes.
    """

    applied: tuple[tuple[Filter[Any], Any], ...] = ()
    malformed: tuple[tuple[Filter[Any], Malformed], ...] = ()
    reads: Reads = NO_READS
    acts_on: frozenset[Resource] = frozenset()
    reads_by_filter: tuple[tuple[str, Reads], ...] = ()

    def touches(self, resource: Resource) -> bool:
        """Whether some filter may serve this Service's objects of ``resource`` otherwise than stored."""
        return bool(self.acts_on) and resource in self.acts_on


NO_POLICIES = Policies()


class Pipeline:
    """The filters in order, behind the few calls the cache makes (``cache.cluster`` and its parts).

    Built once per wrapper with the filters the operator selected (None: those on by default).
    It also counts, per (filter, resource, outcome), each object a filter served unchanged,
    rewrote or hid (``decisions``), which the metrics read through the cache.
    """

    def __init__(self, filters: Sequence[Filter[Any]] | None = None) -> None:
        self.filters = tuple(filters) if filters is not None else select(ALL_ON_BY_DEFAULT)
        # Equal policies are one object, however many Services carry them (most share a few).
        self._interned: weakref.WeakValueDictionary[Any, Policies] = weakref.WeakValueDictionary()
        self.decisions: dict[tuple[str, str, str], int] = {}

    def policies_of(self, service: JSONDict) -> Policies:
        """What the filters make of ``service``: parsed once per Service version by the cache."""
        applied: list[tuple[Filter[Any], Any]] = []
        malformed: list[tuple[Filter[Any], Malformed]] = []
        for f in self.filters:
            policy = f.parse(service)
            if policy is None:
                continue
            if isinstance(policy, Malformed):
                malformed.append((f, policy))
            else:
                applied.append((f, policy))
        if not applied and not malformed:
            return NO_POLICIES
        key = (tuple(applied), tuple(malformed))
        interned = self._interned.get(key)
        if interned is None:
            reads, acts_on = NO_READS, frozenset[Resource]()
            by_filter: list[tuple[str, Reads]] = []
            for f, policy in applied:
                own = f.reads(policy)
                if own != NO_READS:
                    by_filter.append((f.name, own))
                reads |= own
                acts_on |= f.acts_on
            interned = self._interned[key] = Policies(key[0], key[1], reads, acts_on, tuple(by_filter))
        return interned

    def affected_by_node_change(self, change: NodeChange, index: NodeIndex) -> set[str]:
        """The Services whose served objects ``change`` can alter, by every filter's account."""
        out: set[str] = set()
        for f in self.filters:
            out |= f.affected(change, index)
        return out

    def serve_service(self, policies: Policies, service: JSONDict, ctx: TopologyContext) -> JSONDict | None:
        return self._chain(policies, SERVICES, service, lambda f, policy, obj: f.serve_service(policy, obj, ctx))

    def serve_slices(self, policies: Policies, slices: Sequence[EndpointSlice], ctx: TopologyContext) -> ServedSlices:
        """Kept counts what the last filter kept; dropped, what every filter dropped."""
        served: Sequence[EndpointSlice | None] = slices
        kept, dropped = -1, 0
        for f, policy in policies.applied:
            if ENDPOINTSLICES not in f.acts_on:
                continue
            visible = [s for s in served if s is not None]
            result = f.serve_slices(policy, visible, ctx)
            self._count_slices(f, visible, result.slices)
            if len(visible) == len(served):
                served = result.slices
            else:  # earlier filters hid some: put this one's answers back in their places
                answers = iter(result.slices)
                served = [None if s is None else next(answers) for s in served]
            kept, dropped = result.kept, dropped + result.dropped
        if kept < 0:  # no filter acts on slices
            kept = sum(len(s.get("endpoints") or ()) for s in slices)
        return ServedSlices(served, kept, dropped)

    def serve_endpoints(self, policies: Policies, endpoints: Endpoints, ctx: TopologyContext) -> Endpoints | None:
        return self._chain(policies, ENDPOINTS, endpoints,
                           lambda f, policy, obj: f.serve_endpoints(policy, obj, ctx))

    def explain(self, key: str, policies: Policies, service: JSONDict, slices: Sequence[EndpointSlice],
                ctx: TopologyContext) -> list[JSONDict]:
        """The /debug/topology records of one Service: one per filter involved, malformed ones included."""
        out = [f.explain_malformed(key, problem) for f, problem in policies.malformed]
        out += [f.explain(key, policy, service, slices, ctx) for f, policy in policies.applied]
        return out


    def _chain(self, policies: Policies, resource: Resource, obj: T,
               serve: Callable[[Filter[Any], Any, T], T | None]) -> T | None:
        """``obj`` served by each filter acting on ``resource`` in turn; None once one hides it."""
        for f, policy in policies.applied:
            if resource in f.acts_on:
                served = serve(f, policy, obj)
                self._count(f, resource, HIDDEN if served is None else UNCHANGED if served is obj else REWRITTEN)
                if served is None:
                    return None
                obj = served
        return obj

    def _count(self, f: Filter[Any], resource: Resource, outcome: str, n: int = 1) -> None:
        key = (f.name, resource.plural, outcome)
        self.decisions[key] = self.decisions.get(key, 0) + n

    def _count_slices(self, f: Filter[Any], given: Sequence[EndpointSlice],
                      served: Sequence[EndpointSlice | None]) -> None:
        hidden = rewritten = 0
        for before, after in zip(given, served, strict=True):
            if after is None:
                hidden += 1
            elif after is not before:
                rewritten += 1
        for outcome, n in ((HIDDEN, hidden), (REWRITTEN, rewritten), (UNCHANGED, len(given) - hidden - rewritten)):
            if n:
                self._count(f, ENDPOINTSLICES, outcome, n)


PIPELINE = Pipeline()
