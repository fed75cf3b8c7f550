"""What the views should serve for one Service's objects, as the filter pipeline makes it.

For a Service whose policies act on a resource, its objects of that resource are decoded from
the store and served through ``filters.pipeline``; for any other, as stored. Outputs map each
object's key to its served form, or to None where a filter hides it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orjson import loads

from cache.indexes import BY_SERVICE, Refs
from cache.store import Store
from filters.api import TopologyContext
from filters.pipeline import NO_POLICIES, Pipeline, Policies
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, SERVICES, Resource
from kubeapi.types import EndpointSlice, JSONDict

Forms = dict[str, JSONDict | None]
# An object just stored, still decoded: (key, object), so it need not be decoded again.
Fresh = tuple[str, JSONDict] | None


class Outputs:
    """Computes served forms for ``ClusterCache`` (an object's own, its siblings', the Services
    the planner names, every filtered Service at the end of a load). It keeps the per-Service
    endpoint counts the metrics read, and holds no rule: the pipeline decides."""

    def __init__(self, pipeline: Pipeline, context: TopologyContext, services: Store[Policies],
                 slices: Store[Refs], endpoints: Store[Refs]) -> None:
        self.pipeline = pipeline
        self.context = context
        self._services = services
        self._slices = slices
        self._endpoints = endpoints
        # Per Service whose policies act on its slices: (endpoints kept, endpoints dropped) now.
        self.endpoint_counts: dict[str, tuple[int, int]] = {}
        self._by_resource: dict[str, Callable[[str, Fresh], Forms]] = {
            SERVICES.plural: self.service, ENDPOINTSLICES.plural: self.slices, ENDPOINTS.plural: self.endpoints,
        }

    def policies(self, service: str) -> Policies:
        stored = self._services.get(service)
        return stored.facts if stored is not None else NO_POLICIES

    def of(self, resource: Resource, service: str, fresh: Fresh = None) -> Forms:
        return self._by_resource[resource.plural](service, fresh)

    def service(self, key: str, fresh: Fresh = None) -> Forms:
        return self._one(self._services, SERVICES, key, fresh, self.pipeline.serve_service)

    def slices(self, service: str, fresh: Fresh = None) -> Forms:
        keys, slices = self.slices_of(service, fresh)
        stored = self._services.objects.get(service)
        policies = stored.facts if stored is not None else NO_POLICIES
        if not policies.touches(ENDPOINTSLICES):
            self.endpoint_counts.pop(service, None)
            return dict(zip(keys, slices, strict=True))  # type: ignore[arg-type]
        served = self.pipeline.serve_slices(policies, slices, self.context)
        self.endpoint_counts[service] = (served.kept, served.dropped)
        return dict(zip(keys, served.slices, strict=True))  # type: ignore[arg-type]

    def endpoints(self, service: str, fresh: Fresh = None) -> Forms:
        return self._one(self._endpoints, ENDPOINTS, service, fresh, self.pipeline.serve_endpoints)  # type: ignore[arg-type]

    def slices_of(self, service: str, fresh: Fresh = None) -> tuple[list[str], list[EndpointSlice]]:
        """The keys and decoded upstream slices of one Service, in key order."""
        stored = self._slices.objects
        keys = sorted(self._slices.index.get(BY_SERVICE, service))
        fresh_key, fresh_obj = fresh if fresh is not None else (None, None)
        out: list[EndpointSlice] = [fresh_obj if k == fresh_key else loads(stored[k].raw) for k in keys]  # type: ignore[misc]
        return keys, out

    def explain(self, key: str) -> list[JSONDict]:
        stored = self._services.get(key)
        if stored is None or not (stored.facts.applied or stored.facts.malformed):
            return []
        slices = self.slices_of(key)[1] if stored.facts.applied else []
        return self.pipeline.explain(key, stored.facts, stored.obj(), slices, self.context)

    def _one(self, store: Store[Any], resource: Resource, key: str, fresh: Fresh,
             serve: Callable[[Policies, JSONDict, TopologyContext], JSONDict | None]) -> Forms:
        """The served form of a Service's one object of ``resource`` (its Service or Endpoints,
        both keyed as the Service), if it has one."""
        if fresh is not None and fresh[0] == key:
            obj = fresh[1]
        else:
            stored = store.objects.get(key)
            if stored is None:
                return {}
            obj = loads(stored.raw)
        service = self._services.objects.get(key)
        policies = service.facts if service is not None else NO_POLICIES
        return {key: serve(policies, obj, self.context) if policies.touches(resource) else obj}
