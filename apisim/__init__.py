"""An in-process apiserver simulator for nodes, services, endpoints and endpointslices."""
