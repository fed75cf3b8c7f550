"""List bodies are joined once per view version and never outlive it."""

from __future__ import annotations

import gzip

import orjson

from cache.view import View
from kubeapi.listoptions import ListOptions
from kubeapi.resources import SERVICES
from kubeapi.selectors import parse_label_selector
from wrapper.listing import GZIP_MIN_BYTES, ListBodies
from wrapper.serving import predicate


def svc(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv), "labels": labels}}


def names(body: bytes) -> list[str]:
    return [o["metadata"]["name"] for o in orjson.loads(body)["items"]]


def test_a_repeated_list_reuses_the_joined_body_until_the_view_changes() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 1), svc("b", 2)], 2)
    bodies = ListBodies()
    opts = ListOptions()
    first, _ = bodies.body(v, None, opts, None, gzip_ok=False)
    again, _ = bodies.body(v, None, opts, None, gzip_ok=False)
    assert again is first
    v.publish([("ADDED", svc("c", 3))], 3)
    after, _ = bodies.body(v, None, opts, None, gzip_ok=False)
    assert names(after) == ["a", "b", "c"]
    assert orjson.loads(after)["metadata"]["resourceVersion"] == "3"


def test_bodies_of_an_older_version_are_dropped_when_the_view_changes() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 1, app="x"), svc("b", 2)], 2)
    bodies = ListBodies()
    everything = ListOptions()
    app_x = ListOptions(label=parse_label_selector("app=x"))
    bodies.body(v, None, everything, None, gzip_ok=False)
    before, _ = bodies.body(v, None, app_x, predicate(app_x), gzip_ok=False)
    assert bodies.held(v) == 2, "one body per selection at the same version"
    v.publish([("MODIFIED", svc("b", 3))], 3)
    body, _ = bodies.body(v, None, app_x, predicate(app_x), gzip_ok=False)
    assert names(body) == ["a"] and body is not before
    assert orjson.loads(body)["metadata"]["resourceVersion"] == "3", "the body of the view's new version"
    assert bodies.held(v) == 1, "the previous version's bodies are gone"


def test_large_bodies_are_gzipped_once_and_decompress_to_the_plain_body() -> None:
    v = View(SERVICES)
    v.reset([svc(f"s{i:05d}", i, pad="x" * 60) for i in range(2000)], 2000)
    bodies = ListBodies()
    plain, zipped = bodies.body(v, None, ListOptions(), None, gzip_ok=False)
    assert len(plain) > GZIP_MIN_BYTES and not zipped
    body, zipped = bodies.body(v, None, ListOptions(), None, gzip_ok=True)
    assert zipped and gzip.decompress(body) == plain
    again, _ = bodies.body(v, None, ListOptions(), None, gzip_ok=True)
    assert again is body


def test_each_front_keeps_its_own_bodies() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 1)], 1)
    one, other = ListBodies(), ListBodies()
    one.body(v, None, ListOptions(), None, gzip_ok=False)
    assert one.held(v) == 1 and other.held(v) == 0
