"""A long-running ``kubectl get -w`` whose output is read while the test changes the cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.kubectl import Kubectl, kubectl_env


class KubectlWatch:
    """Runs ``kubectl --server URL ARGS`` and collects its stdout as JSON documents or as lines."""

    def __init__(self, kubectl: Kubectl, server: str, *args: str, home: Path, json_output: bool) -> None:
        self.kubectl = kubectl
        self.server = server
        self.args = args
        self.home = home
        self.json_output = json_output
        self.docs: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._buf = ""
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> KubectlWatch:
        self._proc = await asyncio.create_subprocess_exec(
            self.kubectl.path, "--server", self.server, *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=kubectl_env(self.home))
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    def _feed(self, text: str) -> None:
        if not self.json_output:
            self._buf += text
            *complete, self._buf = self._buf.split("\n")
            self.lines.extend(line for line in complete if line.strip())
            return
        self._buf += text
        decoder = json.JSONDecoder()
        while True:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return
            try:
                doc, end = decoder.raw_decode(self._buf)
            except json.JSONDecodeError:
                return
            self._buf = self._buf[end:]
            self.docs.append(doc)

    async def wait_for(self, predicate: Callable[[KubectlWatch], bool], what: str, timeout: float = 20) -> None:
        """Read output until ``predicate(self)`` holds (checked after every chunk)."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            left = deadline - loop.time()
            if left <= 0:
                seen = [(d.get("type"), (d.get("object") or {}).get("metadata", {}).get("name")) for d in self.docs]
                raise AssertionError(f"{self.kubectl} {' '.join(self.args)}: never saw {what}; "
                                     f"docs={seen} lines={self.lines}")
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(65536), left)
            except TimeoutError:
                continue
            if not chunk:
                err = (await proc.stderr.read()).decode()[-2000:]
                raise AssertionError(f"{self.kubectl} {' '.join(self.args)} ended early waiting for {what}: {err}")
            self._feed(chunk.decode())

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.docs if type_ is None or d.get("type") == type_]
