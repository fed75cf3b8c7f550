"""An in-process Kubernetes apiserver simulator for nodes, services, endpoints and endpointslices."""

from apisim.server import Simulator

__all__ = ["Simulator"]
