"""The debug listener: pprof-style pages, cache and topology explanations, Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

import aiohttp
import orjson
import pytest

from apisim.server import Simulator
from cache.buildinfo import IMPLEMENTATION, PYTHON, VERSION
from kubeapi.resources import ENDPOINTSLICES, NODES, SERVICES
from tests.support.waiting import eventually
from wrapper.compose import Running
from wrapper.logs import JSONFormatter


async def fetch(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


@pytest.mark.parametrize("index", ["/", "/debug", "/debug/", "/debug/pprof/"])
async def test_every_index_links_every_debug_page_and_every_link_is_served(wrapper: Running, index: str) -> None:
    code, ctype, body = await fetch(f"{wrapper.debug_url}{index}")
    assert code == 200 and ctype.startswith("text/html")
    links = set(re.findall(r'href="([^"?]+)', body))
    assert links == {"/debug/pprof/", "/debug/pprof/profile", "/debug/pprof/heap", "/debug/pprof/tasks",
                     "/debug/cache", "/debug/topology", "/metrics"}
    for link in links - {"/debug/pprof/profile", "/debug/pprof/heap"}:  # those two start work of their own
        assert (await fetch(f"{wrapper.debug_url}{link}"))[0] == 200, link


@pytest.mark.parametrize(("fmt", "ctype"), [("html", "text/html"), ("speedscope", "application/json"),
                                             ("collapsed", "text/plain")])
async def test_cpu_profile_of_one_second_in_each_format(wrapper: Running, fmt: str, ctype: str) -> None:
    code, got, body = await fetch(f"{wrapper.debug_url}/debug/pprof/profile?seconds=1&format={fmt}")
    assert code == 200 and got.startswith(ctype)
    if fmt == "speedscope":
        assert "speedscope" in json.loads(body)["$schema"]
    elif fmt == "html":
        assert "pyinstrument" in body.lower()


async def test_a_second_profile_while_one_runs_gets_409(wrapper: Running) -> None:
    # Two profiles asked at once: whichever starts first runs its two seconds, the other gets 409.
    answers = await asyncio.gather(*(fetch(f"{wrapper.debug_url}/debug/pprof/profile?seconds=2") for _ in range(2)))
    assert sorted(code for code, _, _ in answers) == [200, 409]
    [(_, _, refused)] = [answer for answer in answers if answer[0] == 409]
    assert json.loads(refused)["reason"] == "Conflict"


@pytest.mark.parametrize("query", ["seconds=0", "seconds=301", "seconds=abc", "format=svg"])
async def test_bad_profile_parameters_get_400_status(wrapper: Running, query: str) -> None:
    code, _, body = await fetch(f"{wrapper.debug_url}/debug/pprof/profile?{query}")
    assert code == 400 and json.loads(body)["kind"] == "Status"


async def test_heap_starts_tracing_reports_top_allocations_and_stops(wrapper: Running) -> None:
    code, _, body = await fetch(f"{wrapper.debug_url}/debug/pprof/heap")
    assert code == 200 and "started" in body
    try:
        code, _, body = await fetch(f"{wrapper.debug_url}/debug/pprof/heap")
        assert code == 200 and "top" in body and "KiB" in body
    finally:
        code, _, body = await fetch(f"{wrapper.debug_url}/debug/pprof/heap?stop=1")
    assert "stopped" in body


async def test_tasks_dump_shows_each_tasks_own_coroutine_stack(wrapper: Running) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{wrapper.url}/api/v1/services?watch=1") as watch:
        assert watch.status == 200
        code, _, body = await fetch(f"{wrapper.debug_url}/debug/pprof/tasks")
    assert code == 200
    for name in ("reflector:nodes", "reflector:services", "reflector:endpointslices", "reflector:endpoints"):
        assert f"task {name}" in body
    # Not only the outermost frame (aiohttp's request handler, asyncio's task step): the frames of
    # our own code that the task is suspended in.
    assert "cache/reflector.py" in body, body[:3000]
    assert "wrapper/watching.py" in body, body[:3000]


async def test_cache_page_shows_counts_versions_and_watch_backlog(wrapper: Running) -> None:
    async with aiohttp.ClientSession() as s, s.get(
        f"{wrapper.url}{ENDPOINTSLICES.collection_path()}", params={"watch": "1"}
    ) as watch:
        await watch.content.readline()
        code, _, body = await fetch(f"{wrapper.debug_url}/debug/cache")
    doc = json.loads(body)
    assert code == 200 and doc["ready"] is True and doc["localNode"] == "bj-1"
    nodes = doc["resources"]["nodes"]
    # The Nodes view holds the local Node alone; the others' labels come from the node topology feed.
    assert nodes["objects"] == 1 and nodes["synced"] is True and int(nodes["resourceVersion"]) > 0
    assert doc["nodeTopology"]["mode"] == "nodes" and doc["nodeTopology"]["requested"] == "auto"
    assert nodes["upstream"]["connected"] is True
    [w] = doc["resources"]["endpointslices"]["watches"]
    assert w["backlog"] == 0 and w["eventsSent"] >= 1


async def test_topology_page_explains_every_kept_and_dropped_endpoint(wrapper: Running) -> None:
    code, _, body = await fetch(f"{wrapper.debug_url}/debug/topology")
    doc = json.loads(body)
    assert code == 200
    assert doc["localNode"] == "bj-1" and doc["localLabels"]["location"] == "beijing"
    [svc] = [s for s in doc["services"] if s["service"] == "default/servicegrid-demo-svc"]
    assert svc["filter"] == "topology" and svc["keys"] == ["location"]
    assert svc["families"][0]["winner"] == "location"
    by_node = {e["nodeName"]: e for e in svc["endpoints"]}
    assert by_node["bj-3"]["kept"] and not by_node["gz-2"]["kept"]
    assert "guangzhou" in by_node["gz-2"]["reason"]


async def test_topology_page_narrows_to_one_service_and_rejects_bad_names(wrapper: Running) -> None:
    code, _, body = await fetch(f"{wrapper.debug_url}/debug/topology?service=default/servicegrid-demo-svc")
    assert code == 200 and len(json.loads(body)["services"]) == 1
    code, _, body = await fetch(f"{wrapper.debug_url}/debug/topology?service=default/plain-svc")
    assert code == 404 and "unfiltered" in json.loads(body)["message"]
    code, _, _ = await fetch(f"{wrapper.debug_url}/debug/topology?service=nonsense")
    assert code == 400


def metric(text: str, name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly ``labels`` (in any order) from Prometheus text format."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, rest = head.partition("{")
        got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if metric_name == name and got == labels:
            return float(value)
    raise AssertionError(f"metric {name}{labels} not found")


async def test_metrics_expose_requests_state_topology_and_process(wrapper: Running, sim: Simulator) -> None:
    await fetch(f"{wrapper.url}{SERVICES.collection_path()}")
    sim.patch(NODES, None, "gz-2", {"metadata": {"labels": {"location": "beijing"}}})
    sim.patch(NODES, None, "bj-1", {"metadata": {"labels": {"debug": "yes"}}})

    async def refiltered() -> tuple[str, str] | None:
        _, ctype, text = await fetch(f"{wrapper.debug_url}/metrics")
        done = (metric(text, "application_grid_wrapper_topology_endpoints", decision="kept") == 3
                and metric(text, "application_grid_wrapper_upstream_events_total", resource="nodes") >= 1)
        return (ctype, text) if done else None

    ctype, text = await eventually(refiltered, 10, "gz-2's endpoint kept after its move, bj-1's event counted",
                                   interval=0.05)
    assert ctype.startswith("text/plain")
    p = "application_grid_wrapper"
    assert metric(text, f"{p}_requests_total", verb="list", resource="services", code="200") >= 1
    assert metric(text, f"{p}_request_duration_seconds_count", verb="list", resource="services") >= 1
    assert metric(text, f"{p}_upstream_connected", resource="nodes") == 1
    assert metric(text, f"{p}_cache_objects", resource="nodes") == 1  # the local Node
    assert metric(text, f"{p}_upstream_connected", resource="node-labels") == 1  # the others' metadata
    assert metric(text, f"{p}_topology_endpoints", decision="dropped") == 1
    assert metric(text, f"{p}_refilter_runs_total") >= 1
    assert metric(text, f"{p}_upstream_events_total", resource="nodes") >= 1
    assert metric(text, f"{p}_open_watches", resource="services") == 0
    assert metric(text, f"{p}_upstream_relists_total", resource="nodes") == 0
    assert metric(text, "process_resident_memory_bytes") > 0
    # Which build runs on which Python; and no *_created series beside every counter and histogram.
    assert metric(text, f"{p}_build_info", version=VERSION, python_version=PYTHON,
                  python_implementation=IMPLEMENTATION) == 1
    assert "_created" not in text


def test_json_log_lines_carry_level_logger_message_and_extras() -> None:
    record = logging.LogRecord("cache.reflector", logging.INFO, "f.py", 1, "upstream %s", ("connected",), None)
    record.resource = "nodes"
    doc: dict[str, Any] = orjson.loads(JSONFormatter().format(record))
    assert doc["level"] == "info" and doc["logger"] == "cache.reflector"
    assert doc["msg"] == "upstream connected" and doc["resource"] == "nodes"
    with contextlib.suppress(KeyError):
        assert "T" in doc["ts"]
