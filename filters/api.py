"""The contract between a filter and the cache, and the plain data they trade.

A filter decides, for one Service at a time, what the local node's clients are served. It:

* parses the Service once per version into a policy (``parse``: a policy, ``None`` when the
  Service is not involved, or a ``Malformed`` the cache logs once);
* declares, as plain data, what its decision reads about Nodes (``reads``); the cache indexes
  Services by these declarations;
* says which Services a Node change can affect (``affected``), asking the cache through the
  ``NodeIndex`` lookups. This is where the filter's invalidation knowledge lives, next to the
  rule it depends on, so whoever changes the rule sees it;
* serves: what it makes of the Service, its EndpointSlices and its Endpoints (``serve_*``, for
  the resources in ``acts_on`` only). Returning an unchanged object returns the input itself;
  returning ``None`` hides the object: the cache serves it to watchers as DELETED, and as ADDED
  when it comes back;
* explains itself for /debug/topology (``explain``).

Filters are pure: no I/O, no logging (they return data; the cache logs). The registered filters
and the functions the cache calls are in ``filters.pipeline``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from kubeapi.resources import Resource
from kubeapi.types import Endpoints, EndpointSlice, JSONDict


@dataclass(frozen=True)
class TopologyContext:
    """What filters know about the cluster: the local node and every known node's labels.

    The cache keeps one for its life; ``nodes`` is its live node-label map, read, never copied.
    """

    local_node: str
    nodes: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Malformed:
    """A Service's annotation that is present but unusable; ``reason`` says why, for a log line."""

    source: str
    value: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reads:
    """What a filter's decision for one Service reads about Nodes.

    ``label_keys``: labels of any node (the local node's and its endpoints' nodes');
    ``node_presence``: which nodes exist; ``local_labels``: labels of the local node only.
    """

    label_keys: frozenset[str] = frozenset()
    node_presence: bool = False
    local_labels: frozenset[str] = frozenset()

    def __or__(self, other: Reads) -> Reads:
        return Reads(self.label_keys | other.label_keys, self.node_presence or other.node_presence,
                     self.local_labels | other.local_labels)


NO_READS = Reads()


@dataclass(frozen=True, slots=True)
class NodeChange:
    """One Node's labels moved: ``old``/``new`` are None when the node did not / no longer exists."""

    name: str
    old: Mapping[str, str] | None
    new: Mapping[str, str] | None
    local: bool  # the node is the wrapper's own

    @property
    def presence(self) -> bool:
        """The node appeared or disappeared."""
        return self.old is None or self.new is None

    @property
    def changed_labels(self) -> frozenset[str]:
        """Label keys whose value moved (every label of a node that appeared or disappeared)."""
        old, new = self.old, self.new
        if old is None or new is None:
            return frozenset(old or new or ())
        return frozenset(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


class NodeIndex(Protocol):
    """The lookups the cache answers for ``Filter.affected`` (its planner implements them).

    "Reading" means that the Service's policy of the filter named ``reader`` declared it in its
    ``Reads``: each filter asks about its own policies only, so one filter's reads never widen
    another's re-filters (a NodePort policy reading the pool label must not make every Service
    whose topology policy reads some label a reader of it).
    """

    @property
    def local_node(self) -> str: ...

    def services_reading_label(self, reader: str, key: str) -> Set[str]: ...

    def services_reading_presence(self, reader: str) -> Set[str]: ...

    def services_reading_local_label(self, reader: str, key: str) -> Set[str]: ...

    def services_on_node(self, node: str) -> Set[str]:
        """Services with an endpoint (in an EndpointSlice or Endpoints) on ``node``."""
        ...

    def nodes_with_label(self, key: str, values: Set[str]) -> Set[str]:
        """Nodes whose label ``key`` has one of ``values``."""
        ...


def readers(change: NodeChange, index: NodeIndex, reader: str) -> set[str]:
    """Every Service whose policy of the filter ``reader`` declares reads that ``change`` touches:
    ``Filter.affected``'s safe default."""
    out: set[str] = set()
    for key in change.changed_labels:
        out.update(index.services_reading_label(reader, key))
        if change.local:
            out.update(index.services_reading_local_label(reader, key))
    if change.presence:
        out.update(index.services_reading_presence(reader))
    return out


@dataclass(frozen=True, slots=True)
class ServedSlices:
    """A Service's EndpointSlices as served: one per input, in order (the input itself when
    unchanged, None when hidden), and how many endpoints were kept and dropped."""

    slices: Sequence[EndpointSlice | None]
    kept: int
    dropped: int


P = TypeVar("P")


class Filter(abc.ABC, Generic[P]):
    """One filter. Subclass it in a module of its own under filters/ and register the instance
    in ``filters.pipeline.FILTERS``; the pipeline calls it, and nothing in cache/ or wrapper/
    names it. The defaults read nothing and serve everything as it is."""

    name = ""
    # Whether the filter runs unless the operator switches it off (``filters.pipeline.select``).
    on_by_default = True
    # The resources whose served form this filter changes; the pipeline asks it of no others.
    acts_on: frozenset[Resource] = frozenset()
    # What a malformed policy means for the Service, for the cache's log line.
    if_malformed = "it passes unfiltered"

    @abc.abstractmethod
    def parse(self, service: JSONDict) -> P | Malformed | None:
        """The filter's policy for one Service version: None when it does not act on this Service."""

    def reads(self, policy: P) -> Reads:
        return NO_READS

    def affected(self, change: NodeChange, index: NodeIndex) -> set[str]:
        """Services whose served objects ``change`` can alter; a superset is safe (unchanged
        objects make no event), a subset is a bug."""
        return readers(change, index, self.name)

    def serve_service(self, policy: P, service: JSONDict, ctx: TopologyContext) -> JSONDict | None:
        return service

    def serve_slices(self, policy: P, slices: Sequence[EndpointSlice], ctx: TopologyContext) -> ServedSlices:
        return ServedSlices(slices, sum(len(s.get("endpoints") or ()) for s in slices), 0)

    def serve_endpoints(self, policy: P, endpoints: Endpoints, ctx: TopologyContext) -> Endpoints | None:
        return endpoints

    def explain(self, service: str, policy: P, obj: JSONDict, slices: Sequence[EndpointSlice],
                ctx: TopologyContext) -> JSONDict:
        """One /debug/topology record for ``service`` (key), whose object is ``obj``."""
        return {"service": service, "filter": self.name}

    def explain_malformed(self, service: str, malformed: Malformed) -> JSONDict:
        return {"service": service, "filter": self.name, "annotation": malformed.source, "value": malformed.value,
                "malformed": malformed.reason, "result": self.if_malformed}

