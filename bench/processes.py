"""The benchmark's processes: the upstream simulator, wrappers, the node topology publisher, each a real
process started as an operator would (``python -m ...``), with the helpers that start, wait for and
stop them.

Every process runs the project from compiled bytecode, as the image does (its Dockerfile installs a
wheel, which compiles it): ``compile_bytecode`` writes the ``__pycache__`` files once, so a process
start is not measured compiling the project's sources (this machine sets PYTHONDONTWRITEBYTECODE,
so nothing else would write them, and each start would compile about 0.3 s worth).
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import aiohttp
import orjson

from bench.procstat import cpu_seconds
from kubeapi.node_topology import ANNOTATION_BUCKETS, LABEL_SELECTOR

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wrapper", "cache", "filters", "kubeapi", "publisher", "apisim", "bench")
TOPOLOGY_NAMESPACE = "edge-system"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def compile_bytecode() -> None:
    """Compile the project's packages to bytecode (``__pycache__``, ignored by git), as the image's
    install does; quiet, and a no-op for what is up to date."""
    for package in PACKAGES:
        compileall.compile_dir(str(ROOT / package), quiet=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        read_bufsize=2**21,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        trust_env=False,
    )


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    name: str
    logfile: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.logfile is not None:
            self.logfile.close()


async def spawn(name: str, args: Sequence[str], logpath: Path, *, stdout_pipe: bool = False) -> Proc:
    logfile = logpath.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE if stdout_pipe else logfile,
        stderr=logfile, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Proc(proc, name, logfile)


async def first_line(p: Proc, timeout: float) -> bytes:
    assert p.proc.stdout is not None
    line = await asyncio.wait_for(p.proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"{p.name} exited before it was ready (see its log)")
    return line


def write_kubeconfig(path: Path, server: str, token: str = "bench-token") -> None:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: sim
  cluster:
    server: {server}
contexts:
- name: sim
  context:
    cluster: sim
    user: bench
current-context: sim
users:
- name: bench
  user:
    token: {token}
""")


# ---- the upstream process (bench.upstream) ---------------------------------------------------------


@dataclass
class UpstreamProc:
    proc: Proc
    url: str
    empty_url: str
    ctl: str
    info: dict[str, Any]


async def start_upstream(results: Path, args: Sequence[str], timeout: float = 300, name: str = "upstream",
                         ) -> UpstreamProc:
    """``python -m bench.upstream ARGS``, once it serves (its first stdout line)."""
    proc = await spawn(name, ["-m", "bench.upstream", *args], results / f"{name}.log", stdout_pipe=True)
    try:
        info = orjson.loads(await first_line(proc, timeout))
    except BaseException:
        await proc.stop()
        raise
    return UpstreamProc(proc, str(info["url"]), str(info["empty_url"]), str(info["ctl"]), info)


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Any:
    async with http.get(url, headers=headers or {"Accept": "application/json", "Accept-Encoding": "identity"}) as r:
        return orjson.loads(await r.read())


async def post_json(http: aiohttp.ClientSession, url: str, doc: Any) -> Any:
    async with http.post(url, data=orjson.dumps(doc), headers={"Content-Type": "application/json"}) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST {url}: HTTP {resp.status}: {body[:300]!r}")
        return orjson.loads(body)


# ---- wrappers ---------------------------------------------------------------------------------------


@dataclass
class WrapperProc:
    proc: Proc
    url: str
    debug_url: str
    ready_s: float
    cpu_at_ready: float


_HELP: list[str] = []


async def supports(flag: str) -> bool:
    """Whether ``python -m wrapper`` has ``flag`` (the CLI is still growing)."""
    if not _HELP:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "wrapper", "--help", cwd=ROOT,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        _HELP.append(out.decode(errors="replace"))
    return flag in _HELP[0]


@dataclass(frozen=True)
class WrapperSpec:
    """One wrapper to start: its name, its local node, the upstream, its token, extra flags."""

    tag: str
    hostname: str
    upstream_url: str
    token: str = "bench-token"
    extra: tuple[str, ...] = ()
    log_level: str = "warning"


async def launch_wrapper(spec: WrapperSpec, tmp: Path, results: Path) -> tuple[Proc, str, str, float]:
    """Spawn one wrapper (not waiting for it): (process, URL, debug URL, monotonic start time)."""
    kubeconfig = tmp / f"kubeconfig-{spec.tag}"
    write_kubeconfig(kubeconfig, spec.upstream_url, spec.token)
    port, debug_port = free_port(), free_port()
    args = ["-m", "wrapper", "--kubeconfig", str(kubeconfig), "--hostname", spec.hostname,
            "--bind-address", f"127.0.0.1:{port}", "--debug-bind-address", f"127.0.0.1:{debug_port}",
            "--log-level", spec.log_level]
    if await supports("--cache-dir"):
        # A fresh, empty snapshot directory: no restored state, nothing written outside the temp dir.
        cache_dir = tmp / f"cache-{spec.tag}"
        cache_dir.mkdir(exist_ok=True)
        args += ["--cache-dir", str(cache_dir)]
    if await supports("--node-topology-namespace"):
        args += ["--node-topology-namespace", TOPOLOGY_NAMESPACE]
    args += list(spec.extra)
    t0 = time.monotonic()
    proc = await spawn(f"wrapper-{spec.tag}", args, results / f"wrapper-{spec.tag}.log")
    return proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{debug_port}", t0


async def wait_ready(http: aiohttp.ClientSession, proc: Proc, url: str, t0: float, *, timeout: float = 120,
                     interval: float = 0.005) -> float:
    """Poll ``url``/readyz until 200; seconds since ``t0``. Fails if the process exits or ``timeout`` passes."""
    deadline = t0 + timeout
    while True:
        if proc.proc.returncode is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode} (see its log)")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"{url}/readyz") as resp:
                await resp.read()
                if resp.status == 200:
                    return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready after {timeout:g} s")
        await asyncio.sleep(interval)


async def start_wrapper(http: aiohttp.ClientSession, spec: WrapperSpec, tmp: Path, results: Path) -> WrapperProc:
    """Spawn one wrapper and wait until it is ready."""
    proc, url, debug_url, t0 = await launch_wrapper(spec, tmp, results)
    try:
        ready = await wait_ready(http, proc, url, t0)
    except BaseException:
        await proc.stop()
        raise
    return WrapperProc(proc, url, debug_url, ready, cpu_seconds(proc.pid))


# ---- the node topology publisher ---------------------------------------------------------------------


async def start_publisher(http: aiohttp.ClientSession, upstream_url: str, tmp: Path, results: Path, *,
                          token: str = "publisher-token", timeout: float = 120) -> Proc:
    """``application-grid-wrapper publish-topology`` against the upstream, once it has written a
    complete set of node topology buckets."""
    kubeconfig = tmp / "kubeconfig-publisher"
    write_kubeconfig(kubeconfig, upstream_url, token)
    proc = await spawn("publisher", ["-m", "wrapper", "publish-topology", "--kubeconfig", str(kubeconfig),
                                     "--namespace", TOPOLOGY_NAMESPACE, "--debounce", "0.2", "--log-level", "info"],
                       results / "publisher.log")
    q = urlencode({"labelSelector": LABEL_SELECTOR})
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.proc.returncode is not None:
                raise RuntimeError(f"the publisher exited with {proc.proc.returncode} (see {results}/publisher.log)")
            doc = await get_json(http, f"{upstream_url}/api/v1/namespaces/{TOPOLOGY_NAMESPACE}/configmaps?{q}")
            items = doc.get("items") or []
            counts = {(i.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_BUCKETS) for i in items}
            if items and len(counts) == 1 and str(len(items)) in counts:
                return proc
            if time.monotonic() > deadline:
                raise RuntimeError(f"no complete set of node topology buckets after {timeout:g} s")
            await asyncio.sleep(0.1)
    except BaseException:
        await proc.stop()
        raise
