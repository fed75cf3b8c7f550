"""The process's entry: ``python -m wrapper`` and the ``application-grid-wrapper`` console script."""

from __future__ import annotations

import gc
import sys

from wrapper.trust import deferred_system_trust, load_later


def main() -> int:
    # Importing the program creates tens of thousands of objects that live as long as the process
    # (modules, classes, functions), so the collections that run while it imports find nothing to
    # free: they cost about 4% of the time to ready (bench/). The collector is off while it
    # imports, and what the imports made is frozen, so no later collection scans it either.
    # The system CA bundle is loaded after start-up (wrapper.trust says why).
    gc.disable()
    try:
        with deferred_system_trust() as deferred:
            from wrapper.cli import main as run
    finally:
        gc.freeze()
        gc.enable()
    load_later(deferred)
    return run()


if __name__ == "__main__":
    sys.exit(main())
