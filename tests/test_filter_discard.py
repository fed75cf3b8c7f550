"""Cloud-only LoadBalancer Services hidden at the edge (filters/discard.py), without a cache."""

from __future__ import annotations

from typing import Any

import pytest

from filters.api import NO_READS, TopologyContext
from filters.discard import CLOUD_ONLY, DISCARD_ANNOTATION, DISCARD_CLOUD_SERVICES
from filters.pipeline import Pipeline, select
from kubeapi.types import Endpoints, EndpointSlice, JSONDict

CTX = TopologyContext("edge-1", {"edge-1": {}})


def service(type_: str | None, annotations: dict[str, Any] | None) -> JSONDict:
    meta: JSONDict = {"name": "cloud-lb", "namespace": "default"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": {"type": type_} if type_ is not None else {}}


@pytest.mark.parametrize(("type_", "annotations", "hidden"), [
    ("LoadBalancer", {DISCARD_ANNOTATION: "true"}, True),
    ("LoadBalancer", {DISCARD_ANNOTATION: "false"}, False),
    ("LoadBalancer", {DISCARD_ANNOTATION: "True"}, False),  # compared exactly, as OpenYurt does
    ("LoadBalancer", {DISCARD_ANNOTATION: ""}, False),
    ("LoadBalancer", {}, False),
    ("LoadBalancer", None, False),
    ("NodePort", {DISCARD_ANNOTATION: "true"}, False),  # only LoadBalancer Services are cloud-only
    ("ClusterIP", {DISCARD_ANNOTATION: "true"}, False),
    (None, {DISCARD_ANNOTATION: "true"}, False),
])
def test_only_a_load_balancer_marked_discard_true_is_cloud_only(
        type_: str | None, annotations: dict[str, Any] | None, hidden: bool) -> None:
    assert (DISCARD_CLOUD_SERVICES.parse(service(type_, annotations)) is CLOUD_ONLY) is hidden


def test_a_cloud_only_service_is_hidden_with_its_slices_and_endpoints_whatever_the_node() -> None:
    slices: list[EndpointSlice] = [
        {"metadata": {"name": "cloud-lb-1", "namespace": "default"}, "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.1.0.1"]}, {"addresses": ["10.1.0.2"]}]},
        {"metadata": {"name": "cloud-lb-2", "namespace": "default"}, "addressType": "IPv4", "endpoints": []},
    ]
    endpoints: Endpoints = {"metadata": {"name": "cloud-lb", "namespace": "default"}}
    assert DISCARD_CLOUD_SERVICES.serve_service(CLOUD_ONLY, service("LoadBalancer", {}), CTX) is None
    served = DISCARD_CLOUD_SERVICES.serve_slices(CLOUD_ONLY, slices, CTX)
    assert list(served.slices) == [None, None] and (served.kept, served.dropped) == (0, 2)
    assert DISCARD_CLOUD_SERVICES.serve_endpoints(CLOUD_ONLY, endpoints, CTX) is None
    assert DISCARD_CLOUD_SERVICES.reads(CLOUD_ONLY) == NO_READS  # no Node change can matter
    record = DISCARD_CLOUD_SERVICES.explain("default/cloud-lb", CLOUD_ONLY, service("LoadBalancer", {}), slices, CTX)
    assert record["filter"] == "discard-cloud-services" and "hidden with its 2 EndpointSlice(s)" in record["result"]


def test_discarding_is_a_policy_off_unless_the_operator_switches_it_on() -> None:
    cloud = service("LoadBalancer", {DISCARD_ANNOTATION: "true"})
    assert Pipeline().serve_service(Pipeline().policies_of(cloud), cloud, CTX) is cloud
    on = Pipeline(select("*,discard-cloud-services"))
    assert on.serve_service(on.policies_of(cloud), cloud, CTX) is None
    assert on.decisions == {("discard-cloud-services", "services", "hidden"): 1}
