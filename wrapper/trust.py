"""The system CA bundle, loaded after start-up instead of during it.

aiohttp builds two default TLS contexts when it is imported, and each loads the system's CA bundle
(about 140 certificates here): together about 35 ms, 7% of the wrapper's time to ready (bench/).
The wrapper never uses them: every session it opens passes its own context, built from the
kubeconfig's or the service account's CA (``cache.apiclient``), or none for plain HTTP.

So the process entry (``wrapper.__main__``) imports the program inside ``deferred_system_trust``:
a TLS context created meanwhile gets no system CAs, so it fails closed (it can verify no server at
all), and ``load_later`` gives each one its CAs from a background thread once the wrapper has long
been ready. Contexts created after the import (the wrapper's own) load the bundle as usual. Only
the entry point does this; code that imports the package (the tests) is left alone.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator

# Seconds after start-up at which the deferred contexts get their CAs: well after the first sync.
LOAD_AFTER = 30.0

# What a deferred context was asked to load: replayed as asked, in order.
Deferred = list[Callable[[], None]]


@contextlib.contextmanager
def deferred_system_trust() -> Iterator[Deferred]:
    """While inside, a context's request for the system's default CAs is recorded, not carried
    out; the list of recorded loads is what the block yields (see ``load_later``)."""
    deferred: Deferred = []
    cls = ssl.SSLContext
    own_default_certs = cls.__dict__["load_default_certs"]

    def load_default_certs(self: ssl.SSLContext, purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH) -> None:
        deferred.append(lambda: own_default_certs(self, purpose))

    def set_default_verify_paths(self: ssl.SSLContext) -> None:
        deferred.append(lambda: super(cls, self).set_default_verify_paths())

    cls.load_default_certs = load_default_certs  # type: ignore[method-assign]
    cls.set_default_verify_paths = set_default_verify_paths  # type: ignore[method-assign]
    try:
        yield deferred
    finally:
        cls.load_default_certs = own_default_certs  # type: ignore[method-assign]
        del cls.set_default_verify_paths  # the C base class's again


def load_now(deferred: Deferred) -> None:
    """Carry out the recorded loads (each once)."""
    while deferred:
        deferred.pop(0)()


def load_later(deferred: Deferred, delay: float = LOAD_AFTER) -> threading.Timer | None:
    """Carry out the recorded loads ``delay`` seconds from now, on a daemon thread (None if there
    are none)."""
    if not deferred:
        return None
    timer = threading.Timer(delay, load_now, args=(deferred,))
    timer.name = "system-trust"
    timer.daemon = True
    timer.start()
    return timer
