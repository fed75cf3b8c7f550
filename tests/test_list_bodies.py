"""List bodies are joined once per view version and never outlive it."""

from __future__ import annotations

import gzip

import orjson

from cache.view import View
from kubeapi.listoptions import ListOptions
from kubeapi.negotiation import AS_IS
from kubeapi.resources import SERVICES
from kubeapi.selectors import parse_label_selector
from wrapper.serving import _LIST_CACHE, GZIP_MIN_BYTES, _list_body, predicate


def svc(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv), "labels": labels}}


def names(body: bytes) -> list[str]:
    return [o["metadata"]["name"] for o in orjson.loads(body)["items"]]


def test_a_repeated_list_reuses_the_joined_body_until_the_view_changes() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 1), svc("b", 2)], 2)
    opts = ListOptions()
    first, _ = _list_body(v, None, opts, None, gzip_ok=False)
    again, _ = _list_body(v, None, opts, None, gzip_ok=False)
    assert again is first
    v.publish([("ADDED", svc("c", 3))], 3)
    after, _ = _list_body(v, None, opts, None, gzip_ok=False)
    assert names(after) == ["a", "b", "c"]
    assert orjson.loads(after)["metadata"]["resourceVersion"] == "3"


def test_bodies_of_an_older_version_are_dropped_when_the_view_changes() -> None:
    v = View(SERVICES)
    v.reset([svc("a", 1, app="x"), svc("b", 2)], 2)
    everything = ListOptions()
    app_x = ListOptions(label=parse_label_selector("app=x"))
    _list_body(v, None, everything, None, gzip_ok=False)
    _list_body(v, None, app_x, predicate(app_x), gzip_ok=False)
    assert len(_LIST_CACHE[v][1]) == 2, "one body per selection at the same version"
    v.publish([("MODIFIED", svc("b", 3))], 3)
    body, _ = _list_body(v, None, app_x, predicate(app_x), gzip_ok=False)
    assert names(body) == ["a"]
    version, bodies = _LIST_CACHE[v]
    assert version == (v.resets, v.head(), v.rv)
    assert list(bodies) == [(None, app_x.label, None, AS_IS)], "the previous version's bodies are gone"


def test_large_bodies_are_gzipped_once_and_decompress_to_the_plain_body() -> None:
    v = View(SERVICES)
    v.reset([svc(f"s{i:05d}", i, pad="x" * 60) for i in range(2000)], 2000)
    plain, zipped = _list_body(v, None, ListOptions(), None, gzip_ok=False)
    assert len(plain) > GZIP_MIN_BYTES and not zipped
    body, zipped = _list_body(v, None, ListOptions(), None, gzip_ok=True)
    assert zipped and gzip.decompress(body) == plain
    again, _ = _list_body(v, None, ListOptions(), None, gzip_ok=True)
    assert again is body
