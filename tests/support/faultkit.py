"""Helpers for the fault, autonomy and client tests: wrappers with custom settings, raw watches, polling."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from cache.apiclient import ApiClient
from cache.reflector import Reflector, ReflectorSettings
from kubeapi.resources import NODES, Resource
from tests.support.stack import wait_ready
from tests.support.waiting import eventually
from wrapper.compose import Running, start_wrapper, stop_wrapper
from wrapper.serving import ServeSettings

LOCAL_NODE = "bj-1"
DEMO = "servicegrid-demo-svc"


def free_port() -> int:
    """A port that was free a moment ago (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_until_synced(reflector: Reflector, timeout: float = 10.0) -> None:
    """Run ``reflector`` until its first list has reached its sink, then stop it."""
    task = asyncio.create_task(reflector.run())
    try:
        await eventually(lambda: reflector.state.synced_once, timeout, "the first list")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def running_wrapper(
    upstream_url: str,
    *,
    serve: ServeSettings | None = None,
    reflect: ReflectorSettings | None = None,
    wait: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Running]:
    """A wrapper as node bj-1 in front of ``upstream_url`` with fast defaults, stopped on exit."""
    serve = serve or ServeSettings(bookmark_interval=1.0)
    reflect = reflect or ReflectorSettings(read_timeout=5.0, backoff_initial=0.05, backoff_max=0.5, relist_jitter=0.05)
    async with ApiClient(upstream_url) as client:
        running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), serve=serve,
                                      reflect=reflect, debug=("127.0.0.1", 0), **kwargs)
        try:
            if wait:
                await wait_ready(running)
            yield running
        finally:
            await stop_wrapper(running)


async def get_json(url: str, params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params or {}) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else {}


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, await resp.text()


def served_selection(resource: Resource) -> dict[str, str]:
    """What a wrapper serves of ``resource``: all of it, but of Nodes the local one alone (a
    list of every Node passes through to the apiserver)."""
    return {"fieldSelector": f"metadata.name={LOCAL_NODE}"} if resource is NODES else {}


async def list_items(base: str, resource: Resource) -> dict[str, dict[str, Any]]:
    code, doc = await get_json(base + resource.collection_path(), served_selection(resource))
    assert code == 200, doc
    return {key_of(o): o for o in doc["items"]}


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out.pop("kind", None)
    out.pop("apiVersion", None)
    meta = dict(out.get("metadata") or {})
    meta.pop("resourceVersion", None)
    out["metadata"] = meta
    return out


def node_names(slice_: dict[str, Any]) -> set[str | None]:
    return {e.get("nodeName") for e in slice_.get("endpoints") or []}


def demo_slice(items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [found] = [s for s in items.values() if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
               == DEMO]
    return found


def metric_value(text: str, name: str, labels: str) -> float | None:
    """The value of ``name{labels}`` in a Prometheus text exposition, or None."""
    prefix = f"{name}{{{labels}}} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


@dataclass
class RawWatch:
    """One client watch read line by line in the background: events, whether it ended, and how."""

    url: str
    params: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    status: int = 0
    ended: bool = False
    error: str = ""
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _owns_session: bool = False
    _session: aiohttp.ClientSession | None = None
    _task: asyncio.Task[None] | None = None

    def start(self, session: aiohttp.ClientSession | None = None) -> None:
        self._owns_session = session is None
        self._session = session or aiohttp.ClientSession(read_bufsize=2**21)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            async with self._session.get(self.url, params=self.params, timeout=timeout) as resp:
                self.status = resp.status
                self.opened.set()
                async for line in resp.content:
                    line = line.strip()
                    if line:
                        self.events.append(orjson.loads(line))
                        self.changed.set()
        except (aiohttp.ClientError, OSError) as exc:
            self.error = repr(exc)
        finally:
            self.ended = True
            self.opened.set()
            self.changed.set()

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") in types]

    def state(self) -> dict[str, dict[str, Any]]:
        """The object store the events build (ADDED/MODIFIED upsert, DELETED removes)."""
        store: dict[str, dict[str, Any]] = {}
        for ev in self.events:
            if ev["type"] in ("ADDED", "MODIFIED"):
                store[key_of(ev["object"])] = ev["object"]
            elif ev["type"] == "DELETED":
                store.pop(key_of(ev["object"]), None)
        return store

    def rvs(self) -> list[int]:
        return [int(e["object"]["metadata"]["resourceVersion"]) for e in self.of_type("ADDED", "MODIFIED", "DELETED")]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None and self._owns_session:
            await self._session.close()


async def open_watch(base: str, resource: Resource, session: aiohttp.ClientSession | None = None,
                     **params: str) -> RawWatch:
    w = RawWatch(base + resource.collection_path(), {**served_selection(resource), "watch": "true", **params})
    w.start(session)
    await asyncio.wait_for(w.opened.wait(), 10)
    return w


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: sim\n  cluster:\n    server: {server}\n"
        "users:\n- name: sim\n  user: {}\n"
        "contexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n"
        "current-context: sim\n"
    )
    return path
