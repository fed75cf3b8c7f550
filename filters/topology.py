"""Cut a Service's endpoints down to the local node's topology domain.

The decision is made per Service over all of its EndpointSlices at once (kube-proxy merges
them, so deciding per slice could pick different keys for the same Service) and separately
per address family (a dual-stack Service may have IPv4 endpoints in the local domain but
IPv6 ones only elsewhere).

Per family:

1. Candidates: the ready endpoints (``conditions.ready`` true or unset). If none is
   ready, those that are serving and terminating (kube-proxy's own fallback); if none of
   those either, every endpoint. Candidates only choose the key.
2. Keys are tried in order. A key wins when at least one candidate's node has the same
   value for it as the local node (``kubernetes.io/hostname`` compares node names). An
   endpoint without ``nodeName`` or on a node absent from the cache matches no key, and a
   key the local node lacks matches nothing.
3. The winner keeps every endpoint of the family, whatever its readiness, whose node
   matches under that key; kube-proxy then applies its own readiness rules. With no
   winner a trailing ``"*"`` keeps everything; without ``"*"`` the family gets no
   endpoints at all (SuperEdge semantics: strict isolation).

Inputs are never mutated. Objects whose endpoint lists are unchanged are returned by
identity, so callers can cheaply tell "nothing changed".

Every decision carries ``kept`` and ``dropped`` endpoint counts. With ``detail=True`` (the
debug page) it also carries a ``FamilyDecision`` per family and an ``EndpointDecision`` per
endpoint; the cache's hot path passes ``detail=False`` and skips building those records,
which cost more than the decision itself.

The records:

* ``families``: one ``FamilyDecision`` per address family, in order of first appearance,
  with the winning key (a key, ``"*"`` or ``None``), the candidate tier and notes on why
  earlier keys lost.
* ``endpoints_detail``: one ``EndpointDecision`` per input endpoint (per slice endpoint, or
  per core Endpoints address) in input order, saying whether it was kept and why.

``TOPOLOGY`` plugs these rules into the filter pipeline (``filters.api``): what a decision reads
about Nodes, and which Services a Node change can affect, are stated there, next to the rules.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from filters.api import Filter, Malformed, NodeChange, NodeIndex, Reads, ServedSlices, readers
from filters.api import TopologyContext as TopologyContext  # re-exported: callers build the context here
from filters.keys import HOSTNAME_KEY, WILDCARD, TopologyKeys, parse_topology_keys
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES
from kubeapi.types import EndpointAddress, Endpoints, EndpointSlice, EndpointSubset, JSONDict

Tier = Literal["ready", "serving-terminating", "all"]

# Family label for core Endpoints addresses whose ip does not parse, and for slices without
# an addressType: they are still filtered, just grouped apart from real IP families.
UNKNOWN_FAMILY = "unknown"


@dataclass(frozen=True)
class FamilyDecision:
    """How one address family of one Service was decided.

    ``winner`` is the key that won, ``"*"`` if the wildcard kept everything, or ``None``
    if nothing matched and there was no wildcard (no endpoints kept). ``tier`` names the
    candidate set used to choose the key; ``notes`` explain why each earlier key lost.
    """

    family: str
    winner: str | None
    tier: Tier
    candidates: int
    total: int
    kept: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class EndpointDecision:
    """The fate of one endpoint.

    ``origin`` locates it: the slice name for EndpointSlices, ``subsets[i].addresses`` or
    ``subsets[i].notReadyAddresses`` for core Endpoints.
    """

    origin: str
    addresses: tuple[str, ...]
    node_name: str | None
    family: str
    ready: bool
    kept: bool
    reason: str


@dataclass(frozen=True)
class SliceDecision:
    """``slices`` matches the input one to one, in order; unchanged slices are the input objects.

    ``families`` and ``endpoints_detail`` are empty unless the filter was asked for detail.
    """

    slices: list[EndpointSlice]
    families: tuple[FamilyDecision, ...]
    endpoints_detail: tuple[EndpointDecision, ...]
    kept: int
    dropped: int


@dataclass(frozen=True)
class EndpointsDecision:
    """``endpoints`` is the input object itself when nothing was removed."""

    endpoints: Endpoints
    families: tuple[FamilyDecision, ...]
    endpoints_detail: tuple[EndpointDecision, ...]
    kept: int
    dropped: int


# One endpoint as the key choice sees it: (nodeName, ready, serving-and-terminating).
_Member = tuple[str | None, bool, bool]


@dataclass(frozen=True)
class _Choice:
    """The outcome of choosing a key for one family, before any endpoint is judged."""

    family: str
    winner: str | None
    local_value: str | None
    tier: Tier
    candidates: int
    total: int
    notes: tuple[str, ...]


def filter_endpoint_slices(
    ctx: TopologyContext, keys: TopologyKeys, slices: Sequence[EndpointSlice], *, detail: bool = True
) -> SliceDecision:
    """Filter all EndpointSlices of one Service (see the module docstring for the rules)."""
    groups: dict[str, list[_Member]] = {}
    for s in slices:
        endpoints = s.get("endpoints")
        if not endpoints:
            continue
        members = groups.setdefault(str(s.get("addressType") or UNKNOWN_FAMILY), [])
        for ep in endpoints:
            cond = ep.get("conditions") or {}
            # API defaults: ready and serving nil mean true, terminating nil means false.
            members.append((
                ep.get("nodeName") or None,
                cond.get("ready") is not False,
                cond.get("serving") is not False and cond.get("terminating") is True,
            ))
    choices = {family: _choose(ctx, keys, family, members) for family, members in groups.items()}
    kept_by_family = dict.fromkeys(choices, 0)
    records: list[EndpointDecision] = []
    out: list[EndpointSlice] = []
    for s in slices:
        endpoints = s.get("endpoints") or []
        if not endpoints:
            out.append(s)
            continue
        choice = choices[str(s.get("addressType") or UNKNOWN_FAMILY)]
        flags = _keep_flags(ctx, choice, [ep.get("nodeName") for ep in endpoints])
        kept_here = sum(flags)
        kept_by_family[choice.family] += kept_here
        if detail:
            origin = str((s.get("metadata") or {}).get("name", ""))
            for ep in endpoints:
                cond = ep.get("conditions") or {}
                records.append(_verdict(
                    ctx, choice, origin, tuple(ep.get("addresses") or ()), ep.get("nodeName") or None,
                    cond.get("ready") is not False,
                ))
        if kept_here == len(endpoints):
            out.append(s)
            continue
        copy = s.copy()
        copy["endpoints"] = [ep for ep, keep in zip(endpoints, flags, strict=True) if keep]
        out.append(copy)
    kept = sum(kept_by_family.values())
    total = sum(len(m) for m in groups.values())
    return SliceDecision(
        slices=out,
        families=_families(choices, kept_by_family) if detail else (),
        endpoints_detail=tuple(records),
        kept=kept,
        dropped=total - kept,
    )


def filter_endpoints(
    ctx: TopologyContext, keys: TopologyKeys, ep: Endpoints, *, detail: bool = True
) -> EndpointsDecision:
    """Filter a core/v1 Endpoints object (see the module docstring for the rules).

    ``addresses`` are ready and ``notReadyAddresses`` are not; core Endpoints carry no
    terminating state, so the fallback tier goes straight from ready to all. Subsets that
    filtering empties are dropped; subsets that were already empty are left alone.
    """
    subsets: list[EndpointSubset] = ep.get("subsets") or []
    groups: dict[str, list[_Member]] = {}
    for subset in subsets:
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for addr in _addresses(subset, field):
                family = _ip_family(str(addr.get("ip", "")))
                groups.setdefault(family, []).append((addr.get("nodeName") or None, ready, False))
    choices = {family: _choose(ctx, keys, family, members) for family, members in groups.items()}
    kept_by_family = dict.fromkeys(choices, 0)
    records: list[EndpointDecision] = []

    def judge(addrs: list[EndpointAddress], origin: str, ready: bool) -> list[EndpointAddress]:
        if not addrs:
            return addrs
        kept_addrs = []
        for addr in addrs:
            ip = str(addr.get("ip", ""))
            choice = choices[_ip_family(ip)]
            node = addr.get("nodeName") or None
            if _keep_flags(ctx, choice, [node])[0]:
                kept_by_family[choice.family] += 1
                kept_addrs.append(addr)
            if detail:
                records.append(_verdict(ctx, choice, origin, (ip,), node, ready))
        return kept_addrs

    new_subsets: list[EndpointSubset] = []
    changed = False
    for i, subset in enumerate(subsets):
        ready_in = _addresses(subset, "addresses")
        not_ready_in = _addresses(subset, "notReadyAddresses")
        ready_kept = judge(ready_in, f"subsets[{i}].addresses", True)
        not_ready_kept = judge(not_ready_in, f"subsets[{i}].notReadyAddresses", False)
        if len(ready_kept) == len(ready_in) and len(not_ready_kept) == len(not_ready_in):
            new_subsets.append(subset)
            continue
        changed = True
        if not ready_kept and not not_ready_kept:
            continue
        copy = subset.copy()
        if "addresses" in subset:
            copy["addresses"] = ready_kept
        if "notReadyAddresses" in subset:
            copy["notReadyAddresses"] = not_ready_kept
        new_subsets.append(copy)
    kept = sum(kept_by_family.values())
    total = sum(len(m) for m in groups.values())
    result = ep
    if changed:
        result = ep.copy()
        result["subsets"] = new_subsets
    return EndpointsDecision(
        endpoints=result,
        families=_families(choices, kept_by_family) if detail else (),
        endpoints_detail=tuple(records),
        kept=kept,
        dropped=total - kept,
    )


def _addresses(subset: EndpointSubset, field: str) -> list[EndpointAddress]:
    # Literal keys keep mypy's TypedDict checking; a JSON null reads as empty.
    if field == "addresses":
        return subset.get("addresses") or []
    return subset.get("notReadyAddresses") or []


@functools.lru_cache(maxsize=1 << 16)
def _ip_family(ip: str) -> str:
    # Cached: parsing is the costliest step per address and pod IPs recur on every refilter.
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError:
        return UNKNOWN_FAMILY
    return "IPv4" if version == 4 else "IPv6"


def _families(choices: Mapping[str, _Choice], kept: Mapping[str, int]) -> tuple[FamilyDecision, ...]:
    return tuple(
        FamilyDecision(
            family=c.family, winner=c.winner, tier=c.tier, candidates=c.candidates, total=c.total,
            kept=kept[c.family], notes=c.notes,
        )
        for c in choices.values()
    )


def _choose(ctx: TopologyContext, keys: TopologyKeys, family: str, members: Sequence[_Member]) -> _Choice:
    tier: Tier = "ready"
    candidates = [m[0] for m in members if m[1]]
    if not candidates:
        tier = "serving-terminating"
        candidates = [m[0] for m in members if m[2]]
    if not candidates:
        tier = "all"
        candidates = [m[0] for m in members]
    candidate_nodes = {n for n in candidates if n is not None}
    nodes_get = ctx.nodes.get

    winner: str | None = None
    local_value: str | None = None
    notes: list[str] = []
    for key in keys.keys:
        local_value = _node_value(ctx, key, ctx.local_node)
        if local_value is None:
            if ctx.local_node not in ctx.nodes:
                notes.append(f"{key}: local node {ctx.local_node} not in cache")
            else:
                notes.append(f"{key}: local node {ctx.local_node} has no such label")
            continue
        if key == HOSTNAME_KEY:
            hit = local_value in candidate_nodes
        else:
            hit = any((labels := nodes_get(n)) is not None and labels.get(key) == local_value
                      for n in candidate_nodes)
        if hit:
            winner = key
            break
        notes.append(f"{key}={local_value}: no {tier} endpoint in this domain")
    if winner is None and keys.wildcard:
        winner = WILDCARD
    return _Choice(
        family=family, winner=winner, local_value=local_value, tier=tier,
        candidates=len(candidates), total=len(members), notes=tuple(notes),
    )


def _keep_flags(ctx: TopologyContext, choice: _Choice, node_names: list[str | None]) -> list[bool]:
    """Whether each endpoint stays, given its nodeName: ``_verdict(...).kept`` without the words."""
    winner = choice.winner
    if winner == WILDCARD:
        return [True] * len(node_names)
    if winner is None:
        return [False] * len(node_names)
    local_value = choice.local_value
    if winner == HOSTNAME_KEY:
        # The winner was chosen, so the local node is in the cache: equal names suffice.
        return [n == local_value for n in node_names]
    # An unknown node (or a missing/empty nodeName) reads as None, never the local value.
    nodes_get = ctx.nodes.get
    return [(labels := nodes_get(n)) is not None and labels.get(winner) == local_value  # type: ignore[arg-type]
            for n in node_names]


def _verdict(
    ctx: TopologyContext, choice: _Choice, origin: str, addresses: tuple[str, ...], node_name: str | None,
    ready: bool,
) -> EndpointDecision:
    def record(kept: bool, reason: str) -> EndpointDecision:
        return EndpointDecision(
            origin=origin, addresses=addresses, node_name=node_name, family=choice.family, ready=ready,
            kept=kept, reason=reason,
        )

    winner, local_value = choice.winner, choice.local_value
    if winner == WILDCARD:
        return record(True, 'kept by "*"')
    if node_name is None:
        return record(False, "no nodeName")
    if node_name not in ctx.nodes:
        return record(False, f"node {node_name} not in cache")
    if winner is None:
        return record(False, 'no key matched and no "*"')
    value = _node_value(ctx, winner, node_name)
    if value is None:
        return record(False, f"node {node_name} has no label {winner}")
    if value == local_value:
        return record(True, f"matched key {winner}={value}")
    return record(False, f"different {winner}: {value} != {local_value}")


def _node_value(ctx: TopologyContext, key: str, node_name: str | None) -> str | None:
    """The node's value for ``key``; None when the node is unknown or lacks the label."""
    if node_name is None:
        return None
    labels = ctx.nodes.get(node_name)
    if labels is None:
        return None
    if key == HOSTNAME_KEY:
        # kube-proxy identifies "local" by nodeName, not by the hostname label.
        return node_name
    return labels.get(key)


class TopologyFilter(Filter[TopologyKeys]):
    """The topology filter as the pipeline sees it: the rules above, what they read, what they explain."""

    name = "topology"
    acts_on = frozenset({ENDPOINTSLICES, ENDPOINTS})
    if_malformed = "its endpoints pass unfiltered"

    def parse(self, service: JSONDict) -> TopologyKeys | Malformed | None:
        return parse_topology_keys((service.get("metadata") or {}).get("annotations"))

    def reads(self, policy: TopologyKeys) -> Reads:
        # Every key compares the local node's value with endpoint nodes' (the hostname key
        # compares names, not a label), and a node that appears or goes changes what any key
        # matches. A lone "*" reads nothing.
        return Reads(label_keys=policy.label_keys, node_presence=bool(policy.keys))

    def affected(self, change: NodeChange, index: NodeIndex) -> set[str]:
        services = readers(change, index, self.name)
        if not services:
            return services
        if not change.local:
            # A remote node is only ever read as an endpoint's node: only Services with an
            # endpoint on it can see a change.
            services.intersection_update(index.services_on_node(change.name))
        elif not change.presence:
            services.intersection_update(self._near_local(change, index))
        return services

    @staticmethod
    def _near_local(change: NodeChange, index: NodeIndex) -> set[str]:
        """Services that may see a change when the local node's labels move from A to B.

        A key whose local value goes from A to B can only change the outcome of a Service with
        an endpoint in domain A or B: for any other its win status stays "no match" under both
        values, and nothing it keeps depends on A or B. The local node itself is in both domains.
        """
        old, new = change.old or {}, change.new or {}
        nodes = {index.local_node}
        for key in change.changed_labels:
            values = {v for v in (old.get(key), new.get(key)) if v is not None}
            nodes.update(index.nodes_with_label(key, values))
        services: set[str] = set()
        for node in nodes:
            services.update(index.services_on_node(node))
        return services

    def serve_slices(self, policy: TopologyKeys, slices: Sequence[EndpointSlice],
                     ctx: TopologyContext) -> ServedSlices:
        decision = filter_endpoint_slices(ctx, policy, slices, detail=False)
        return ServedSlices(decision.slices, decision.kept, decision.dropped)

    def serve_endpoints(self, policy: TopologyKeys, endpoints: Endpoints, ctx: TopologyContext) -> Endpoints:
        return filter_endpoints(ctx, policy, endpoints, detail=False).endpoints

    def explain(self, service: str, policy: TopologyKeys, obj: JSONDict, slices: Sequence[EndpointSlice],
                ctx: TopologyContext) -> JSONDict:
        decision = filter_endpoint_slices(ctx, policy, slices)
        return {
            "service": service,
            "filter": self.name,
            "annotation": policy.source,
            "keys": list(policy.keys) + (["*"] if policy.wildcard else []),
            "families": [
                {"family": f.family, "winner": f.winner, "tier": f.tier, "candidates": f.candidates,
                 "total": f.total, "kept": f.kept, "notes": list(f.notes)}
                for f in decision.families
            ],
            "endpoints": [
                {"slice": d.origin, "addresses": list(d.addresses), "nodeName": d.node_name,
                 "family": d.family, "ready": d.ready, "kept": d.kept, "reason": d.reason}
                for d in decision.endpoints_detail
            ],
        }


TOPOLOGY = TopologyFilter()
