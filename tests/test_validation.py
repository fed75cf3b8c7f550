"""The shape checks every upstream object passes (kubeapi.validation), as a table: what each
rejects, and the one phrase that says where."""

from __future__ import annotations

from typing import Any

import pytest

from kubeapi.resources import ENDPOINTSLICES
from kubeapi.validation import object_problem


def eps(**fields: Any) -> dict[str, Any]:
    """A well-formed EndpointSlice with ``fields`` replaced."""
    obj: dict[str, Any] = {
        "metadata": {"name": "web-abc", "namespace": "default", "resourceVersion": "7",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"], "nodeName": "n2", "zone": "z", "conditions": {"ready": False, "serving": True}},
        ],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }
    obj.update(fields)
    return obj


def second(**fields: Any) -> list[dict[str, Any]]:
    """The endpoints of ``eps()`` with the second one's ``fields`` replaced."""
    first, other = eps()["endpoints"]
    return [first, {**other, **fields}]


@pytest.mark.parametrize(("obj", "problem"), [
    (eps(), None),
    (eps(endpoints=None, ports=None), None),
    (eps(endpoints={"a": 1}), "endpoints is an object, not a list"),
    (eps(endpoints=[{"addresses": []}, "x"]), "endpoints[1] is a string, not an object"),
    (eps(endpoints=second(addresses="10.0.0.2")), "endpoints[1].addresses is a string, not a list"),
    (eps(endpoints=second(addresses=["10.0.0.2", 3])), "endpoints[1].addresses has a number, not only strings"),
    (eps(endpoints=second(nodeName=5)), "endpoints[1].nodeName is a number, not a string"),
    (eps(endpoints=second(conditions=[])), "endpoints[1].conditions is a list, not an object"),
    (eps(endpoints=second(conditions={"ready": "yes"})), "endpoints[1].conditions.ready is a string, not a boolean"),
    (eps(ports=[{"port": 80}, {"port": True}]), "ports[1].port is a boolean, not an integer"),
    (eps(ports=[{"port": 80}, {"port": 8.5}]), "ports[1].port is a number, not an integer"),
    (eps(ports=[{"port": 80, "protocol": 6}]), "ports[0].protocol is a number, not a string"),
    (eps(ports=[{"port": 80, "appProtocol": ["h2"]}]), "ports[0].appProtocol is a list, not a string"),
    (eps(ports=["http"]), "ports[0] is a string, not an object"),
    (eps(addressType=None), "addressType is null, not a string"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_an_endpoint_slice_is_taken_or_refused_with_where_it_is_wrong(obj: dict[str, Any], problem: str | None) -> None:
    assert object_problem(ENDPOINTSLICES, obj) == problem
