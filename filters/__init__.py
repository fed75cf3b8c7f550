"""Pure topology logic: which endpoints a node should see. No I/O, no asyncio."""

from filters.keys import MalformedKeys, TopologyKeys, parse_topology_keys
from filters.topology import (
    EndpointDecision,
    EndpointsDecision,
    FamilyDecision,
    SliceDecision,
    TopologyContext,
    filter_endpoint_slices,
    filter_endpoints,
)

__all__ = [
    "EndpointDecision",
    "EndpointsDecision",
    "FamilyDecision",
    "MalformedKeys",
    "SliceDecision",
    "TopologyContext",
    "TopologyKeys",
    "filter_endpoint_slices",
    "filter_endpoints",
    "parse_topology_keys",
]
