"""Label and field selectors: what kube-proxy sends works, bad input is a 400 Status."""

from __future__ import annotations

import pytest

from kubeapi.resources import NODES, SERVICES
from kubeapi.selectors import parse_field_selector, parse_label_selector
from kubeapi.status import StatusError

HEADLESS = "service.kubernetes.io/headless"
PROXY_NAME = "service.kubernetes.io/service-proxy-name"


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {"a": "b"}, True),
        (f"!{HEADLESS}", {}, True),
        (f"!{HEADLESS}", {HEADLESS: ""}, False),
        (f"!{PROXY_NAME},!{HEADLESS}", {"app": "x"}, True),
        (f"!{PROXY_NAME},!{HEADLESS}", {PROXY_NAME: "other"}, False),
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app!=web", {"app": "web"}, False),
        ("app", {"app": ""}, True),
        ("app", {}, False),
        ("tier in (a, b)", {"tier": "b"}, True),
        ("tier in (a,b)", {}, False),
        ("tier notin (a,b)", {}, True),
        ("tier notin (a,b)", {"tier": "a"}, False),
        ("env in (prod),app=web", {"env": "prod", "app": "web"}, True),
        ("n>3", {"n": "4"}, True),
        ("n<3", {"n": "4"}, False),
        ("kubernetes.io/service-name=svc", {"kubernetes.io/service-name": "svc"}, True),
    ],
)
def test_label_selector_matches_like_the_apiserver(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize(
    "selector", ["app=", "=x", "a b", "tier in (a", "a==b==c", "-bad", "!", "a in (b c)", "n>x", ",", "a,,b", "x" * 70]
)
def test_malformed_label_selector_is_a_400_status(selector: str) -> None:
    if selector == "app=":
        # An empty value is valid: it selects objects whose label is empty.
        assert parse_label_selector(selector).matches({"app": ""})
        return
    with pytest.raises(StatusError) as err:
        parse_label_selector(selector)
    assert err.value.code == 400
    assert err.value.status["reason"] == "BadRequest"


def test_field_selectors_kube_proxy_sends() -> None:
    sel = parse_field_selector("spec.clusterIP!=None", SERVICES.supported_fields)
    assert sel.matches({"spec": {"clusterIP": "10.0.0.1"}})
    assert not sel.matches({"spec": {"clusterIP": "None"}})
    node = parse_field_selector("metadata.name=bj-1", NODES.supported_fields)
    assert node.matches({"metadata": {"name": "bj-1"}})
    assert not node.matches({"metadata": {"name": "bj-3"}})


def test_field_selector_combines_and_unescapes() -> None:
    sel = parse_field_selector(r"metadata.namespace==default,metadata.name=a\,b", SERVICES.supported_fields)
    assert sel.matches({"metadata": {"namespace": "default", "name": "a,b"}})
    assert not sel.matches({"metadata": {"namespace": "kube-system", "name": "a,b"}})


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("spec.nodeName=x", "field label not supported: spec.nodeName"),
        ("metadata.namespace=x", "field label not supported: metadata.namespace"),
        ("metadata.name", "can't understand"),
        (r"metadata.name=a\x", "invalid escape"),
    ],
)
def test_unsupported_or_malformed_field_selector_is_a_400_status(selector: str, message: str) -> None:
    with pytest.raises(StatusError) as err:
        parse_field_selector(selector, NODES.supported_fields)
    assert err.value.code == 400
    assert message in err.value.status["message"]


def test_empty_selectors_are_empty() -> None:
    assert parse_label_selector("  ").empty
    assert parse_field_selector("", NODES.supported_fields).empty
