"""What this build is: the package version (from its installed metadata) and the interpreter.

Read once at import. The apiserver client sends it in its User-Agent, ``--version`` prints it and
the ``application_grid_wrapper_build_info`` metric carries it.
"""

from __future__ import annotations

import platform
from importlib import metadata

try:
    VERSION = metadata.version("application-grid-wrapper")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "0.0.0+unknown"

PYTHON = platform.python_version()
IMPLEMENTATION = platform.python_implementation()
USER_AGENT = f"application-grid-wrapper/{VERSION} ({IMPLEMENTATION} {PYTHON})"
