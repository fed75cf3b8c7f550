"""A paginated upstream list reaches the cache complete, but decoded one page at a time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from apisim.seeds import servicegrid_demo
from apisim.server import Simulator
from cache.apiclient import ApiClient
from cache.listwatch import list_items
from cache.reflector import Reflector, ReflectorSettings
from kubeapi.resources import NODES, Resource
from kubeapi.types import JSONDict
from tests.support.faultkit import run_until_synced


def node(name: str, rv: int) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "resourceVersion": str(rv)}}


def test_list_items_decodes_each_page_only_when_the_previous_one_is_consumed() -> None:
    pages = [orjson.dumps({"items": [node("a", 1), {"metadata": {"name": ""}}, node("b", 2)]}),
             orjson.dumps({"items": [node("c", 3)]})]
    items = list_items(pages, NODES)
    first = next(items)
    assert first == {"metadata": {"name": "a", "resourceVersion": "1"}}, "kind and apiVersion are dropped"
    assert len(pages) == 1 and isinstance(pages[0], bytes), "the second page is still undecoded bytes"
    assert [o["metadata"]["name"] for o in items] == ["b", "c"], "the malformed item is skipped"
    assert pages == [], "every page was released"


class PageCountingSink:
    """A sink that records how many list pages were still undecoded as each item arrived."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.pending_pages: list[int] = []
        self.rv = 0

    def replace(self, resource: Resource, items: Iterable[JSONDict], rv: int) -> None:
        frame = getattr(items, "gi_frame", None)
        for obj in items:
            self.names.append(obj["metadata"]["name"])
            pages = frame.f_locals["pages"] if frame is not None else []
            self.pending_pages.append(len(pages))
        self.rv = rv

    def apply(self, resource: Resource, type_: str, obj: JSONDict) -> None:
        pass

    def bookmark(self, resource: Resource, rv: int) -> None:
        pass


async def test_a_paginated_list_arrives_whole_and_in_order_while_later_pages_stay_encoded() -> None:
    # Lists only, from an apiserver without a watch cache: even the first list (resourceVersion=0) is paged.
    sim = Simulator(servicegrid_demo(), paginate_rv0=True)
    for i in range(7):
        sim.create(NODES, {"metadata": {"name": f"extra-{i}", "labels": {"location": "beijing"}}})
    await sim.start("127.0.0.1", 0)
    client = ApiClient(sim.url)
    sink = PageCountingSink()
    reflector = Reflector(client, NODES, sink, ReflectorSettings(page_size=3, streaming=False))
    try:
        await run_until_synced(reflector)
    finally:
        await client.close()
        await sim.stop()
    expected = sorted(o["metadata"]["name"] for o in sim.list(NODES))
    assert sorted(sink.names) == expected and len(expected) > 6
    assert sink.rv == reflector.rv
    # With three items a page, the first items came while the last pages were still bytes.
    assert sink.pending_pages[0] >= 2 and sink.pending_pages[-1] == 0
