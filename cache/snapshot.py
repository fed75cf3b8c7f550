"""The cache on disk, so a wrapper that restarts while the cloud link is down serves at once.

File format (one file, ``snapshot.agw``):

    line 1: a JSON header {"magic", "version", "node", "upstream", "created", "sha256", "size"},
            padded with spaces to a fixed slot
    rest:   the payload, orjson of {"resources": {plural: {"rv": N, "items": [...]}},
            "nodeLabels": {node: {label: value}}}

Every resource the cache keeps is stored: Nodes, Services and EndpointSlices always, Endpoints
when they were synced (the lazy Endpoints informer's last state stays in, even after it
stopped), and ``nodeLabels``, the labels of the nodes the Nodes store does not hold (the node
topology feed's: the Nodes store holds the local Node alone). Version 1 files (every Node in
full, Endpoints always there, no ``nodeLabels``) are read too: their Nodes other than the local
one become the feed's labels.

Only raw upstream objects are stored; the filtered views are rebuilt on load, so a snapshot
taken before a filter change still serves the current rules. Writes are atomic (write to a
temporary file, fsync, rename, fsync the directory) and throttled by ``Persister``. A
snapshot that fails any check (magic, version, checksum, another node or apiserver, or any
item that the reflector would not take from the apiserver: see ``kubeapi.validation``) is
logged once and ignored as a whole, never served in part; the wrapper then syncs from the
apiserver as if there were no snapshot. A checksum only proves the file is what was
written, not that what was written is sound, hence the per-item checks.
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
from kubeapi.resources import ALL, ENDPOINTS, NODES, Resource, object_key
from kubeapi.validation import MAX_RESOURCE_VERSION, node_labels_problem, object_problem

log = logging.getLogger(__name__)

MAGIC = "application-grid-wrapper/snapshot"
VERSION = 2
READABLE_VERSIONS = (1, 2)
FILENAME = "snapshot.agw"


class SnapshotError(Exception):
    """The snapshot cannot be used; the message says why."""


@dataclass(frozen=True)
class Identity:
    """Whose snapshot this is: restoring another node's or cluster's state would be wrong."""

    node: str
    upstream: str


# The header goes first but is known last (it holds the payload's checksum), so the writer
# reserves this many bytes for it and fills them in when the payload is on disk. JSON allows
# the trailing spaces that pad it.
HEADER_SLOT = 4096


def _header(identity: Identity, digest: str, size: int, now: float | None) -> bytes:
    header = {
        "magic": MAGIC, "version": VERSION, "node": identity.node, "upstream": identity.upstream,
        "created": now if now is not None else time.time(), "size": size, "sha256": digest,
    }
    return orjson.dumps(header)


# Resources a snapshot may lack (an Endpoints informer that never synced, or is off).
OPTIONAL = (ENDPOINTS.plural,)


def _kept(cache: ClusterCache) -> list[Resource]:
    return [r for r in ALL if cache.keeps(r)]


def _labels_part(cache: ClusterCache) -> bytes:
    labels = cache.fed_node_labels()
    return b',"nodeLabels":' + orjson.dumps(labels) if labels is not None else b""


def encode(cache: ClusterCache, identity: Identity, now: float | None = None) -> bytes:
    """The whole snapshot in memory (tests and tools; the persister streams it to disk)."""
    parts = [b'{"resources":{']
    for i, r in enumerate(_kept(cache)):
        parts.append(b"," if i else b"")
        parts.append(orjson.dumps(r.plural) + b':{"rv":' + str(cache.upstream_rv(r)).encode() + b',"items":[')
        parts.append(b",".join(cache.raw_items(r)) + b"]}")
    payload = b"".join(parts) + b"}" + _labels_part(cache) + b"}"
    return _header(identity, hashlib.sha256(payload).hexdigest(), len(payload), now) + b"\n" + payload


# Objects per write and per turn of the event loop.
WRITE_BATCH = 500


class _SnapshotFile:
    """A snapshot being written to a temporary file, made the real one by ``commit``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._digest = hashlib.sha256()
        self._size = 0
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.lseek(self._fd, HEADER_SLOT, os.SEEK_SET)

    def write(self, chunk: bytes | memoryview) -> None:
        self._digest.update(chunk)
        self._size += len(chunk)
        _write_all(self._fd, chunk)

    def commit(self, identity: Identity) -> None:
        """Fill in the header, then fsync, rename and fsync the directory (a blocking call)."""
        header = _header(identity, self._digest.hexdigest(), self._size, None)
        if len(header) >= HEADER_SLOT:
            raise OSError(f"snapshot header is {len(header)} bytes, over its {HEADER_SLOT}-byte slot")
        os.lseek(self._fd, 0, os.SEEK_SET)
        _write_all(self._fd, header.ljust(HEADER_SLOT - 1) + b"\n")
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.replace(self.tmp, self.path)
        # The rename itself must reach the disk, or a power cut can lose the new file.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def write_cooperatively(cache: ClusterCache, identity: Identity, path: Path) -> None:
    """Write the snapshot to ``path`` atomically, yielding to the event loop between batches.

    The cache keeps every upstream object as JSON bytes, so this only joins them; each batch
    goes to the file at once, since holding the whole snapshot (tens of MB at edge scale)
    would add it to the process's peak memory every interval. The object lists are taken at
    one instant, so the snapshot is consistent: the cache replaces stored bytes on change and
    never mutates them.
    """
    state = [(r.plural, cache.upstream_rv(r), cache.raw_items(r)) for r in _kept(cache)]
    labels = _labels_part(cache)
    out = _SnapshotFile(path)
    try:
        out.write(b'{"resources":{')
        for i, (plural, rv, items) in enumerate(state):
            out.write(orjson.dumps(plural) + b':{"rv":' + str(rv).encode() + b',"items":[')
            for start in range(0, len(items), WRITE_BATCH):
                if start:
                    out.write(b",")
                out.write(b",".join(items[start:start + WRITE_BATCH]))
                await asyncio.sleep(0)
            out.write(b"]}" + (b"," if i < len(state) - 1 else b""))
        out.write(b"}" + labels + b"}")
        await asyncio.to_thread(out.commit, identity)
    except BaseException:
        out.discard()
        raise


def decode(data: bytes, identity: Identity) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) if ``data`` is a sound snapshot of ``identity``; else SnapshotError."""
    cut = data.find(b"\n")
    if cut < 0:
        raise SnapshotError("no header line")
    # A view, not a copy: the payload is tens of MB at edge scale.
    head, payload = data[:cut], memoryview(data)[cut + 1:]
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise SnapshotError("header is not JSON") from None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise SnapshotError("not an application-grid-wrapper snapshot")
    version = header.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise SnapshotError(f"snapshot format version {version!r}, this build reads {READABLE_VERSIONS}")
    if header.get("size") != len(payload) or header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise SnapshotError("checksum mismatch: the file is truncated or corrupt")
    if header.get("node") != identity.node:
        raise SnapshotError(f"snapshot is of node {header.get('node')!r}, not {identity.node!r}")
    if header.get("upstream") != identity.upstream:
        raise SnapshotError(f"snapshot is of apiserver {header.get('upstream')!r}, not {identity.upstream!r}")
    # The header is outside the checksum, so each field it has is checked before use.
    created = header.get("created")
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise SnapshotError(f"header is malformed (created {str(created)[:60]!r})")
    try:
        body = orjson.loads(payload)
        resources = body["resources"]
        for r in ALL:
            if r.plural in OPTIONAL and r.plural not in resources and version != 1:
                continue
            entry = resources[r.plural]
            if not isinstance(entry["rv"], int) or not isinstance(entry["items"], list):
                raise TypeError(r.plural)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"payload is malformed ({exc})") from None
    if "nodeLabels" in body and (problem := node_labels_problem(body["nodeLabels"])) is not None:
        raise SnapshotError(f"payload is malformed (nodeLabels: {problem[:200]})")
    for r in ALL:
        if r.plural not in resources:
            continue
        entry = resources[r.plural]
        if isinstance(entry["rv"], bool) or not 0 <= entry["rv"] <= MAX_RESOURCE_VERSION:
            raise SnapshotError(f"payload is malformed ({r.plural}: resourceVersion {entry['rv']!r})")
        seen: set[str] = set()
        for i, item in enumerate(entry["items"]):
            problem = object_problem(r, item)
            if problem is None:
                key = object_key(item)
                if key in seen:
                    problem = f"a second object {key}"
                seen.add(key)
            if problem is not None:
                raise SnapshotError(f"{r.plural} item {i} is malformed: {problem}")
    return header, body


def restore(cache: ClusterCache, directory: Path, identity: Identity) -> bool:
    """Load a snapshot into a cache that has not synced yet and nothing has read yet.

    Never raises: False (and one log line) if there is no usable snapshot, and the cache is
    then as empty as it was (``ClusterCache.clear``: sound because nothing has read it yet).
    """
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
    resources = body["resources"]
    labels = body.get("nodeLabels")
    nodes = resources[NODES.plural]
    if labels is None and cache.label_feed:
        # Every Node in full (a version 1 file): the local one for the Nodes store, the others' labels.
        labels = {o["metadata"]["name"]: o["metadata"].get("labels") or {} for o in nodes["items"]
                  if o["metadata"]["name"] != identity.node}
        nodes["items"] = [o for o in nodes["items"] if o["metadata"]["name"] == identity.node]
    try:
        for r in ALL:
            if r.plural in resources:
                entry = resources[r.plural]
                cache.replace(r, entry["items"], entry["rv"])
        if labels is not None:
            cache.replace_node_labels(labels, 0)
    except Exception:
        # Every item passed the checks the cache relies on, so this is a bug; still, a bug in
        # reading a file must not stop a wrapper that can sync from the apiserver.
        log.exception("cache snapshot %s ignored: loading it failed", path)
        cache.clear()
        return False
    if not cache.ready:
        missing = [r.plural for r in ALL if r.plural not in resources] + (["nodeLabels"] if labels is None else [])
        log.warning("cache snapshot %s ignored: it lacks what this wrapper needs (%s)", path, ", ".join(missing))
        cache.clear()
        return False
    log.info("serving from cache snapshot %s taken %.0fs ago (%d objects) until the apiserver answers",
             path, max(time.time() - float(header.get("created", 0)), 0.0),
             sum(len(entry["items"]) for entry in resources.values()))
    return True


class Persister:
    """Writes the cache to disk after changes, at most once per ``interval`` seconds.

    Owns its writing task; started and stopped (with a last flush) by ``wrapper.compose``."""

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
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            await write_cooperatively(self.cache, self.identity, self.directory / FILENAME)
        except OSError as exc:
            if str(exc) != self.last_error:
                log.warning("cannot write cache snapshot to %s: %s", self.directory, exc)
            self.last_error = str(exc)
            return False
        self.last_error = ""
        self._saved_generation = gen
        self.writes += 1
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.save_if_changed()
