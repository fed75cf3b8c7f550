"""What this build is: the package version and the interpreter.

``VERSION`` is the one place the version is written: pyproject.toml reads it from here
(``[tool.setuptools.dynamic]``), so the installed metadata always says the same. Reading it back
from that metadata at run time instead would import ``importlib.metadata`` and scan every
installed distribution, about 2% of the time to ready. The apiserver client sends it in its
User-Agent, ``--version`` prints it and the ``application_grid_wrapper_build_info`` metric carries it.
"""

from __future__ import annotations

import platform

VERSION = "0.1.0"

PYTHON = platform.python_version()
IMPLEMENTATION = platform.python_implementation()
USER_AGENT = f"application-grid-wrapper/{VERSION} ({IMPLEMENTATION} {PYTHON})"
