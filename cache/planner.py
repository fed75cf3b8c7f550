"""The re-filter planner: which Services' objects to serve again after a change.

It holds no filter rule. For a Node change it asks the filters (``filters.pipeline``), and
answers their questions about the cache (the ``filters.api.NodeIndex`` lookups) from the
declared indexes; a Service's own change re-filters that Service when its policies changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from cache.indexes import (
    BY_FILTER_LABEL_READ,
    BY_FILTER_LOCAL_LABEL_READ,
    BY_FILTER_PRESENCE_READ,
    BY_NODE,
    Refs,
    filed_under,
)
from cache.store import Store
from filters.api import NodeChange
from filters.pipeline import Pipeline, Policies
from kubeapi.resources import SERVICES, Resource

# Which Services to re-filter, and which of their resources to serve again.
Plan = dict[str, frozenset[Resource]]


class Planner:
    """Decides which Services to re-filter; implements ``filters.api.NodeIndex``. Created and
    called by ``ClusterCache``, which owns the node labels and stores it reads."""

    def __init__(self, pipeline: Pipeline, local_node: str, node_labels: Mapping[str, Mapping[str, str]],
                 services: Store[Policies], slices: Store[Refs]) -> None:
        self._pipeline = pipeline
        self._local_node = local_node
        self._node_labels = node_labels
        self._services = services
        self._slices = slices

    # ---- plans ---------------------------------------------------------------------------

    def after_node_change(self, change: NodeChange) -> Plan:
        services = self._services.objects
        plan: Plan = {}
        for key in self._pipeline.affected_by_node_change(change, self):
            stored = services.get(key)
            if stored is not None and stored.facts.acts_on:
                plan[key] = stored.facts.acts_on
        return plan

    @staticmethod
    def after_service_change(key: str, before: Policies, after: Policies) -> Plan:
        if before is after or before == after:  # equal policies are mostly one object
            # Other changes to a Service change nothing in how its objects are served.
            return {}
        # Whatever either version's policies act on; its own event carries the Service itself.
        return {key: (before.acts_on | after.acts_on) - {SERVICES}}

    def after_load(self) -> Plan:
        """Every Service some filter acts on: a load stages everything as stored."""
        return {key: stored.facts.acts_on for key, stored in self._services.objects.items() if stored.facts.acts_on}

    # ---- filters.api.NodeIndex ---------------------------------------------------------------

    @property
    def local_node(self) -> str:
        return self._local_node

    def services_reading_label(self, reader: str, key: str) -> Set[str]:
        return self._services.index.get(BY_FILTER_LABEL_READ, filed_under(reader, key))

    def services_reading_presence(self, reader: str) -> Set[str]:
        return self._services.index.get(BY_FILTER_PRESENCE_READ, reader)

    def services_reading_local_label(self, reader: str, key: str) -> Set[str]:
        return self._services.index.get(BY_FILTER_LOCAL_LABEL_READ, filed_under(reader, key))

    def services_on_node(self, node: str) -> Set[str]:
        # One index, shared by the slices' and the Endpoints' stores.
        return self._slices.index.get(BY_NODE, node)

    def nodes_with_label(self, key: str, values: Set[str]) -> Set[str]:
        # A scan: only the local node's relabels ask, and they are rare.
        return {node for node, labels in self._node_labels.items() if labels.get(key) in values}
