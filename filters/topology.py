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

Besides the filtered objects each decision carries records for a debug page:

* ``families``: one ``FamilyDecision`` per address family, in order of first appearance,
  with the winning key (a key, ``"*"`` or ``None``), the candidate tier and notes on why
  earlier keys lost.
* ``endpoints_detail``: one ``EndpointDecision`` per input endpoint (per slice endpoint, or
  per core Endpoints address) in input order, saying whether it was kept and why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from filters.keys import HOSTNAME_KEY, WILDCARD, TopologyKeys
from kubeapi.types import EndpointAddress, Endpoints, EndpointSlice, EndpointSubset

Tier = Literal["ready", "serving-terminating", "all"]

# Family label for core Endpoints addresses whose ip does not parse, and for slices without
# an addressType: they are still filtered, just grouped apart from real IP families.
UNKNOWN_FAMILY = "unknown"


@dataclass(frozen=True)
class TopologyContext:
    """What the filter knows about the cluster: the local node and every cached node's labels."""

    local_node: str
    nodes: Mapping[str, Mapping[str, str]]


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
    """``slices`` matches the input one to one, in order; unchanged slices are the input objects."""

    slices: list[EndpointSlice]
    families: tuple[FamilyDecision, ...]
    endpoints_detail: tuple[EndpointDecision, ...]


@dataclass(frozen=True)
class EndpointsDecision:
    """``endpoints`` is the input object itself when nothing was removed."""

    endpoints: Endpoints
    families: tuple[FamilyDecision, ...]
    endpoints_detail: tuple[EndpointDecision, ...]


@dataclass(frozen=True)
class _Item:
    """One endpoint, reduced to what the decision needs."""

    origin: str
    addresses: tuple[str, ...]
    node_name: str | None
    family: str
    ready: bool
    serving_terminating: bool


def filter_endpoint_slices(ctx: TopologyContext, keys: TopologyKeys, slices: Sequence[EndpointSlice]) -> SliceDecision:
    """Filter all EndpointSlices of one Service (see the module docstring for the rules)."""
    items: list[_Item] = []
    for s in slices:
        origin = str((s.get("metadata") or {}).get("name", ""))
        family = str(s.get("addressType") or UNKNOWN_FAMILY)
        for ep in s.get("endpoints") or ():
            cond = ep.get("conditions") or {}
            # API defaults: ready and serving nil mean true, terminating nil means false.
            serving = cond.get("serving") is not False
            items.append(
                _Item(
                    origin=origin,
                    addresses=tuple(ep.get("addresses") or ()),
                    node_name=ep.get("nodeName") or None,
                    family=family,
                    ready=cond.get("ready") is not False,
                    serving_terminating=serving and cond.get("terminating") is True,
                )
            )
    families, details = _decide(ctx, keys, items)

    out: list[EndpointSlice] = []
    position = 0
    for s in slices:
        endpoints = s.get("endpoints") or []
        verdicts = details[position : position + len(endpoints)]
        position += len(endpoints)
        if all(d.kept for d in verdicts):
            out.append(s)
            continue
        copy = s.copy()
        copy["endpoints"] = [ep for ep, d in zip(endpoints, verdicts, strict=True) if d.kept]
        out.append(copy)
    return SliceDecision(slices=out, families=families, endpoints_detail=tuple(details))


def filter_endpoints(ctx: TopologyContext, keys: TopologyKeys, ep: Endpoints) -> EndpointsDecision:
    """Filter a core/v1 Endpoints object (see the module docstring for the rules).

    ``addresses`` are ready and ``notReadyAddresses`` are not; core Endpoints carry no
    terminating state, so the fallback tier goes straight from ready to all. Subsets that
    filtering empties are dropped; subsets that were already empty are left alone.
    """
    subsets: list[EndpointSubset] = ep.get("subsets") or []
    items: list[_Item] = []
    for i, subset in enumerate(subsets):
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for addr in _addresses(subset, field):
                ip = str(addr.get("ip", ""))
                items.append(
                    _Item(
                        origin=f"subsets[{i}].{field}",
                        addresses=(ip,),
                        node_name=addr.get("nodeName") or None,
                        family=_ip_family(ip),
                        ready=ready,
                        serving_terminating=False,
                    )
                )
    families, details = _decide(ctx, keys, items)
    if all(d.kept for d in details):
        return EndpointsDecision(endpoints=ep, families=families, endpoints_detail=tuple(details))

    new_subsets: list[EndpointSubset] = []
    position = 0
    for subset in subsets:
        ready_in = _addresses(subset, "addresses")
        not_ready_in = _addresses(subset, "notReadyAddresses")
        ready_verdicts = details[position : position + len(ready_in)]
        position += len(ready_in)
        not_ready_verdicts = details[position : position + len(not_ready_in)]
        position += len(not_ready_in)
        ready_kept = [a for a, d in zip(ready_in, ready_verdicts, strict=True) if d.kept]
        not_ready_kept = [a for a, d in zip(not_ready_in, not_ready_verdicts, strict=True) if d.kept]
        if len(ready_kept) == len(ready_in) and len(not_ready_kept) == len(not_ready_in):
            new_subsets.append(subset)
            continue
        if not ready_kept and not not_ready_kept:
            continue
        copy = subset.copy()
        if "addresses" in subset:
            copy["addresses"] = ready_kept
        if "notReadyAddresses" in subset:
            copy["notReadyAddresses"] = not_ready_kept
        new_subsets.append(copy)
    out = ep.copy()
    out["subsets"] = new_subsets
    return EndpointsDecision(endpoints=out, families=families, endpoints_detail=tuple(details))


def _addresses(subset: EndpointSubset, field: str) -> list[EndpointAddress]:
    # Literal keys keep mypy's TypedDict checking; a JSON null reads as empty.
    if field == "addresses":
        return subset.get("addresses") or []
    return subset.get("notReadyAddresses") or []


def _ip_family(ip: str) -> str:
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError:
        return UNKNOWN_FAMILY
    return "IPv4" if version == 4 else "IPv6"


def _decide(
    ctx: TopologyContext, keys: TopologyKeys, items: Sequence[_Item]
) -> tuple[tuple[FamilyDecision, ...], list[EndpointDecision]]:
    """Decide every family; the endpoint records come back in input order."""
    by_family: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_family.setdefault(item.family, []).append(index)
    records: list[EndpointDecision | None] = [None] * len(items)
    families: list[FamilyDecision] = []
    for family, indexes in by_family.items():
        members = [items[i] for i in indexes]
        decision, verdicts = _decide_family(ctx, keys, family, members)
        families.append(decision)
        for i, record in zip(indexes, verdicts, strict=True):
            records[i] = record
    return tuple(families), [r for r in records if r is not None]


def _decide_family(
    ctx: TopologyContext, keys: TopologyKeys, family: str, items: Sequence[_Item]
) -> tuple[FamilyDecision, list[EndpointDecision]]:
    tier: Tier = "ready"
    candidates = [i for i in items if i.ready]
    if not candidates:
        tier = "serving-terminating"
        candidates = [i for i in items if i.serving_terminating]
    if not candidates:
        tier = "all"
        candidates = list(items)

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
        if any(_node_value(ctx, key, c.node_name) == local_value for c in candidates):
            winner = key
            break
        notes.append(f"{key}={local_value}: no {tier} endpoint in this domain")
    if winner is None and keys.wildcard:
        winner = WILDCARD

    records = [_verdict(ctx, winner, local_value, item) for item in items]
    decision = FamilyDecision(
        family=family,
        winner=winner,
        tier=tier,
        candidates=len(candidates),
        total=len(items),
        kept=sum(r.kept for r in records),
        notes=tuple(notes),
    )
    return decision, records


def _verdict(ctx: TopologyContext, winner: str | None, local_value: str | None, item: _Item) -> EndpointDecision:
    def record(kept: bool, reason: str) -> EndpointDecision:
        return EndpointDecision(
            origin=item.origin,
            addresses=item.addresses,
            node_name=item.node_name,
            family=item.family,
            ready=item.ready,
            kept=kept,
            reason=reason,
        )

    if winner == WILDCARD:
        return record(True, 'kept by "*"')
    if item.node_name is None:
        return record(False, "no nodeName")
    if item.node_name not in ctx.nodes:
        return record(False, f"node {item.node_name} not in cache")
    if winner is None:
        return record(False, 'no key matched and no "*"')
    value = _node_value(ctx, winner, item.node_name)
    if value is None:
        return record(False, f"node {item.node_name} has no label {winner}")
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
