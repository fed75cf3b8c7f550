"""Upstream credentials load through kubernetes-asyncio without importing its generated client."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, tmp_path: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def exec_plugin_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig whose user gets a token from an exec credential plugin, as EKS/GKE users do."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': {'token': 'from-the-plugin'}}))\n"
    )
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable, "args": [str(plugin)],
            "interactiveMode": "Never"}}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    return cfg


PROBE = """
    import asyncio, json, sys
    from cache import kubeconfig_loaders
    from cache.apiclient import ApiClient

    async def main():
        light = kubeconfig_loaders.load().light
        client = await ApiClient.from_kubeconfig({path!r})
        headers = await client.auth_headers()
        await client.close()
        mods = [m for m in sys.modules if m.startswith("kubernetes_asyncio")]
        print(json.dumps({{
            "url": client.base_url, "auth": headers.get("Authorization"), "light": light,
            "modules": len(mods), "models": sum(m.startswith("kubernetes_asyncio.client.models.") for m in mods),
            "api": any(m == "kubernetes_asyncio.client.api" or m.startswith("kubernetes_asyncio.client.api.")
                       for m in mods),
            "api_client": "kubernetes_asyncio.client.api_client" in sys.modules,
            "dateutil": "dateutil" in sys.modules,
        }}))

    {prelude}
    asyncio.run(main())
"""


def test_an_exec_plugin_kubeconfig_loads_without_the_generated_api_models(tmp_path: Path) -> None:
    cfg = exec_plugin_kubeconfig(tmp_path)
    got = run_python(PROBE.format(path=str(cfg), prelude=""), tmp_path)
    assert got["url"] == "https://127.0.0.1:6443"
    assert got["auth"] == "Bearer from-the-plugin"
    # If kubernetes-asyncio's layout changes, these fail (and the pin in pyproject.toml says why).
    assert got["light"] is True, "the light import fell back to the whole package"
    assert got["models"] == 0 and got["api"] is False
    assert isinstance(got["modules"], int) and got["modules"] < 40  # the whole package is about 1,300
    # Nor the generated API client's own module, and what only it imports (time to ready).
    assert got["api_client"] is False and got["dateutil"] is False


def test_the_loaders_helpers_that_would_build_the_generated_client_fail_loudly(tmp_path: Path) -> None:
    cfg = exec_plugin_kubeconfig(tmp_path)
    code = f"""
        import asyncio, json
        from cache import kubeconfig_loaders

        async def main():
            loaders = kubeconfig_loaders.load()
            try:
                await loaders.config.new_client_from_config(config_file={str(cfg)!r})
            except RuntimeError as exc:
                print(json.dumps({{"light": loaders.light, "error": str(exc)}}))

        asyncio.run(main())
    """
    got = run_python(code, tmp_path)
    assert got["light"] is True
    assert "generated API client is not loaded" in str(got["error"])


def test_the_installed_kubernetes_asyncio_is_within_the_range_the_light_import_was_checked_on() -> None:
    pinned = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("kubernetes-asyncio"))
    spec = SpecifierSet(pinned.removeprefix("kubernetes-asyncio"))
    assert spec.contains("36.1.0") and not spec.contains("37.0.0"), f"{pinned}: an upper bound is part of the pin"
    assert importlib.metadata.version("kubernetes_asyncio") in spec


def test_the_ordinary_import_is_used_when_the_light_one_is_not_possible(tmp_path: Path) -> None:
    cfg = exec_plugin_kubeconfig(tmp_path)
    # As if the library had moved a module the light import loads by path: that import fails.
    prelude = "sys.modules['kubernetes_asyncio.client.configuration'] = None"
    got = run_python(PROBE.format(path=str(cfg), prelude=prelude), tmp_path)
    assert got["auth"] == "Bearer from-the-plugin"
    assert got["light"] is False
    assert isinstance(got["models"], int) and got["models"] > 100
