"""Internal errors (bugs) logged without flooding the log.

A client can repeat a request that hits a bug as often as it likes; a traceback per request
would bury everything else and cost disk. So the first failure at each site (exception type
and the innermost frame that raised it) is logged with its traceback, later ones at the same
site get one line each, and those lines are rate-limited per site (a count of the suppressed
ones goes out with the next line). The client always gets a Status 500.

One FailureLog per HTTP front; the front's middleware and the watch streams report to it.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("wrapper.app")

# Distinct sites remembered; past this, new sites are logged as one line without traceback.
MAX_SITES = 256
# One-line reports per site per window; the rest are counted and summarised.
LINES_PER_WINDOW = 10
WINDOW_SECONDS = 60.0

Site = tuple[str, str, int]


@dataclass
class _SiteState:
    count: int = 0
    window_start: float = 0.0
    lines_in_window: int = 0
    suppressed: int = 0


class FailureLog:
    """Counts internal errors per site and decides what each one logs."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._sites: dict[Site, _SiteState] = {}
        self._clock = clock
        self.total = 0

    @staticmethod
    def site_of(exc: BaseException) -> Site:
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames:
            return type(exc).__qualname__, "", 0
        last = frames[-1]
        return type(exc).__qualname__, last.filename, last.lineno or 0

    def record(self, exc: BaseException, what: str) -> None:
        """Log ``exc``, raised while serving ``what`` (method and path, already cut short)."""
        self.total += 1
        site = self.site_of(exc)
        state = self._sites.get(site)
        if state is None and len(self._sites) < MAX_SITES:
            self._sites[site] = state = _SiteState(count=1, window_start=self._clock())
            log.error("internal error serving %s (first at %s:%d; later ones there are logged in one line)",
                      what, site[1].rsplit("/", 1)[-1], site[2], exc_info=exc)
            return
        if state is None:  # too many distinct sites: one line, nothing remembered
            log.error("internal error serving %s: %s: %s", what, site[0], str(exc)[:200])
            return
        state.count += 1
        now = self._clock()
        if now - state.window_start >= WINDOW_SECONDS:
            state.window_start, state.lines_in_window = now, 0
        if state.lines_in_window >= LINES_PER_WINDOW:
            state.suppressed += 1
            return
        state.lines_in_window += 1
        more = f" ({state.suppressed} more suppressed)" if state.suppressed else ""
        state.suppressed = 0
        log.error("internal error serving %s: %s: %s at %s:%d (occurrence %d there)%s", what, site[0],
                  str(exc)[:200], site[1].rsplit("/", 1)[-1], site[2], state.count, more)


FAILURES = web.AppKey("failures", FailureLog)


def failures_of(request: web.Request) -> FailureLog:
    """The front's FailureLog (a fresh one for an app built without it, e.g. in unit tests)."""
    found = request.app.get(FAILURES)
    return found if found is not None else FailureLog()
