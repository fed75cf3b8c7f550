"""The cache on disk, so a wrapper that restarts while the cloud link is down serves at once.

File format (one file, ``snapshot.agw``):

    line 1: a JSON header {"magic", "version", "node", "upstream", "created", "sha256", "size"}
    rest:   the payload, orjson of {"resources": {plural: {"rv": N, "items": [...]}}}

Only raw upstream objects are stored; the filtered views are rebuilt on load, so a snapshot
taken before a filter change still serves the current rules. Writes are atomic (write to a
temporary file, fsync, rename, fsync the directory) and throttled by ``Persister``. A
snapshot that fails any check (magic, version, checksum, another node or apiserver) is
logged and ignored, never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cache.cluster import ClusterCache
from kubeapi.resources import ALL

log = logging.getLogger(__name__)

MAGIC = "application-grid-wrapper/snapshot"
VERSION = 1
FILENAME = "snapshot.agw"


class SnapshotError(Exception):
    """The snapshot cannot be used; the message says why."""


@dataclass(frozen=True)
class Identity:
    """Whose snapshot this is: restoring another node's or cluster's state would be wrong."""

    node: str
    upstream: str


def _header(parts: list[bytes], identity: Identity, now: float | None) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    header = {
        "magic": MAGIC, "version": VERSION, "node": identity.node, "upstream": identity.upstream,
        "created": now if now is not None else time.time(), "size": sum(len(p) for p in parts),
        "sha256": digest.hexdigest(),
    }
    return orjson.dumps(header) + b"\n"


def encode(cache: ClusterCache, identity: Identity, now: float | None = None) -> bytes:
    payload = orjson.dumps({
        "resources": {
            r.plural: {"rv": cache.upstream_rv(r), "items": list(cache.raw_objects(r).values())} for r in ALL
        }
    })
    return _header([payload], identity, now) + payload


ENCODE_BATCH = 500


async def encode_cooperatively(cache: ClusterCache, identity: Identity) -> list[bytes]:
    """``encode`` as a list of chunks, yielding to the event loop between batches so serving
    never stalls on it. The chunks are never joined: at scale the snapshot is tens of MB, and
    each joined copy would stay in the process's peak memory.

    The object lists are taken at one instant, so the snapshot is consistent: the cache
    replaces objects on change and never mutates a stored one.
    """
    state = [(r.plural, cache.upstream_rv(r), list(cache.raw_objects(r).values())) for r in ALL]
    parts: list[bytes] = [b'{"resources":{']
    for i, (plural, rv, items) in enumerate(state):
        parts.append(orjson.dumps(plural) + b':{"rv":' + str(rv).encode() + b',"items":[')
        for start in range(0, len(items), ENCODE_BATCH):
            chunk = orjson.dumps(items[start:start + ENCODE_BATCH])
            if len(chunk) > 2:
                parts.append((b"," if start else b"") + chunk[1:-1])
            await asyncio.sleep(0)
        parts.append(b"]}" + (b"," if i < len(state) - 1 else b""))
    parts.append(b"}}")
    # hashlib releases the GIL on large buffers, so the checksum runs beside the loop.
    header = await asyncio.to_thread(_header, parts, identity, None)
    return [header, *parts]


def decode(data: bytes, identity: Identity) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) if ``data`` is a sound snapshot of ``identity``; else SnapshotError."""
    head, sep, payload = data.partition(b"\n")
    if not sep:
        raise SnapshotError("no header line")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise SnapshotError("header is not JSON") from None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise SnapshotError("not an application-grid-wrapper snapshot")
    if header.get("version") != VERSION:
        raise SnapshotError(f"snapshot format version {header.get('version')!r}, this build reads {VERSION}")
    if header.get("size") != len(payload) or header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise SnapshotError("checksum mismatch: the file is truncated or corrupt")
    if header.get("node") != identity.node:
        raise SnapshotError(f"snapshot is of node {header.get('node')!r}, not {identity.node!r}")
    if header.get("upstream") != identity.upstream:
        raise SnapshotError(f"snapshot is of apiserver {header.get('upstream')!r}, not {identity.upstream!r}")
    try:
        body = orjson.loads(payload)
        resources = body["resources"]
        for r in ALL:
            entry = resources[r.plural]
            if not isinstance(entry["rv"], int) or not isinstance(entry["items"], list):
                raise TypeError(r.plural)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"payload is malformed ({exc})") from None
    return header, body


def write_atomic(path: Path, data: bytes | list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in [data] if isinstance(data, bytes) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # The rename itself must reach the disk, or a power cut can lose the new file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def restore(cache: ClusterCache, directory: Path, identity: Identity) -> bool:
    """Load a snapshot into a cache that has not synced yet. False (and one log line) if unusable."""
    path = directory / FILENAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cache snapshot %s unreadable, ignored: %s", path, exc)
        return False
    try:
        header, body = decode(data, identity)
    except SnapshotError as exc:
        log.warning("cache snapshot %s ignored: %s", path, exc)
        return False
    for r in ALL:
        entry = body["resources"][r.plural]
        cache.replace(r, entry["items"], entry["rv"])
    log.info("serving from cache snapshot %s taken %.0fs ago (%d objects) until the apiserver answers",
             path, max(time.time() - float(header.get("created", 0)), 0.0),
             sum(len(body["resources"][r.plural]["items"]) for r in ALL))
    return cache.ready


class Persister:
    """Writes the cache to disk after changes, at most once per ``interval`` seconds."""

    def __init__(self, cache: ClusterCache, directory: Path, identity: Identity, interval: float = 10.0) -> None:
        self.cache = cache
        self.directory = directory
        self.identity = identity
        self.interval = interval
        self.writes = 0
        self.last_error = ""
        self._saved_generation = -1
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="snapshot-persister")

    async def stop(self, *, flush: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if flush:
            await self.save_if_changed()

    async def save_if_changed(self) -> bool:
        gen = self.cache.generation
        if not self.cache.ready or gen == self._saved_generation:
            return False
        data = await encode_cooperatively(self.cache, self.identity)
        try:
            await asyncio.to_thread(self._write, data)
        except OSError as exc:
            if str(exc) != self.last_error:
                log.warning("cannot write cache snapshot to %s: %s", self.directory, exc)
            self.last_error = str(exc)
            return False
        self.last_error = ""
        self._saved_generation = gen
        self.writes += 1
        return True

    def _write(self, data: list[bytes]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / FILENAME, data)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.save_if_changed()
