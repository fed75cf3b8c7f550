"""kubernetes-asyncio's kubeconfig and in-cluster loaders, without its generated API client.

``import kubernetes_asyncio.config`` runs the package's ``__init__``, which imports the whole
generated client: about 1,300 modules and 35 MB of resident memory in a process whose memory
target is 250 MB, for model classes we never build (objects stay plain dicts). The loaders
themselves only need ``Configuration`` (and name ``ApiClient`` for a helper we do not call).

So the two package ``__init__`` modules are replaced by empty package modules pointing at the
real directories, and the few real submodules the loaders import are loaded from there. If the
library's layout ever stops allowing that, the ordinary import is used instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
from typing import Any

log = logging.getLogger(__name__)

_PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")


def load() -> tuple[Any, Any]:
    """The ``kubernetes_asyncio.config`` module and the ``Configuration`` class."""
    if "kubernetes_asyncio" not in sys.modules:
        try:
            return _load_light()
        except Exception as exc:  # any layout change: fall back to the full import
            log.debug("light import of kubernetes_asyncio failed (%s); importing it whole", exc)
            for name in [n for n in sys.modules if n == "kubernetes_asyncio" or n.startswith("kubernetes_asyncio.")]:
                del sys.modules[name]
    config = importlib.import_module("kubernetes_asyncio.config")
    client = importlib.import_module("kubernetes_asyncio.client")
    return config, client.Configuration


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
    api_client = importlib.import_module("kubernetes_asyncio.client.api_client")
    client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
    client.ApiClient = api_client.ApiClient  # type: ignore[attr-defined]
    config = importlib.import_module("kubernetes_asyncio.config")
    return config, configuration.Configuration
