"""kubernetes-asyncio's kubeconfig and in-cluster loaders, without its generated API client.

``import kubernetes_asyncio.config`` runs the package's ``__init__``, which imports the whole
generated client: about 1,300 modules and 35 MB of resident memory in a process whose memory
target is 250 MB, for model classes we never build (objects stay plain dicts). The loaders
themselves only need ``Configuration``; they name ``ApiClient`` only for the helpers that build
one (``new_client_from_config``), which we never call, so a placeholder stands in for it: the
real module imports dateutil and a thread pool, about 2% of the time to ready.

So the two package ``__init__`` modules are replaced by empty package modules pointing at the
real directories, and the few real submodules the loaders import are loaded from there. That
depends on the library's layout, so pyproject.toml pins the range it was checked on, and
tests/test_kubeconfig_loading.py fails when the light import falls back or pulls in the generated
API. If the layout ever stops allowing it anyway, the ordinary import is used (with a warning:
it costs the memory above). Called once, by ``cache.apiclient.ApiClient.from_kubeconfig``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
import types
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

_PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")


class Loaders(NamedTuple):
    config: Any  # the ``kubernetes_asyncio.config`` module
    configuration: Any  # the ``Configuration`` class
    light: bool  # loaded without the generated client


@functools.cache
def load() -> Loaders:
    """The loaders, imported the light way when the library's layout allows it (once per process)."""
    if "kubernetes_asyncio" not in sys.modules:
        try:
            config, configuration = _load_light()
            return Loaders(config, configuration, True)
        except Exception as exc:  # any layout change: fall back to the full import
            log.warning("kubernetes_asyncio's layout does not allow loading its config without its generated "
                        "client (%s); importing it whole (about 35 MB more memory)", exc)
            for name in [n for n in sys.modules if n == "kubernetes_asyncio" or n.startswith("kubernetes_asyncio.")]:
                del sys.modules[name]
    config = importlib.import_module("kubernetes_asyncio.config")
    client = importlib.import_module("kubernetes_asyncio.client")
    return Loaders(config, client.Configuration, False)


class GeneratedClientNotLoaded:
    """What ``kubernetes_asyncio.client.ApiClient`` is in the light import: the loaders' helpers
    that would build the generated client fail loudly instead."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise RuntimeError("kubernetes_asyncio's generated API client is not loaded in this process "
                           "(cache.kubeconfig_loaders); use cache.apiclient.ApiClient")


def _load_light() -> tuple[Any, Any]:
    spec = importlib.util.find_spec("kubernetes_asyncio")
    if spec is None or spec.origin is None:
        raise ImportError("kubernetes_asyncio is not installed")
    root = os.path.dirname(spec.origin)
    paths = {
        "kubernetes_asyncio": [root],
        "kubernetes_asyncio.client": [os.path.join(root, "client")],
        # The API client imports the models package but reads it only when deserializing.
        "kubernetes_asyncio.client.models": [],
    }
    for name in _PACKAGES:
        module = types.ModuleType(name)
        module.__path__ = paths[name]
        module.__package__ = name
        sys.modules[name] = module
    client = sys.modules["kubernetes_asyncio.client"]
    sys.modules["kubernetes_asyncio"].client = client  # type: ignore[attr-defined]
    client.models = sys.modules["kubernetes_asyncio.client.models"]  # type: ignore[attr-defined]
    configuration = importlib.import_module("kubernetes_asyncio.client.configuration")
    client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
    client.ApiClient = GeneratedClientNotLoaded  # type: ignore[attr-defined]
    config = importlib.import_module("kubernetes_asyncio.config")
    return config, configuration.Configuration
