"""A clock the test moves: for code that takes an injected clock instead of reading the wall clock.

``FakeClock`` stands in for each kind of clock production code accepts:

- a ``Callable[[], float]`` of monotonic seconds (``clock()``: the reflector's ``ListWatch``,
  ``ClientAuthorizer``, ``TokenBucket``, ``manage_heap``);
- the event loop's timers (``time()``, ``call_at``, ``call_later``: ``View(timers=...)``);
- a sleep (``await clock.sleep(seconds)``: ``manage_heap(sleep=...)``).

Time moves only in ``advance(seconds)``, which runs every timer that falls due, in time order,
with ``now`` at the timer's own time (as a real loop runs it no earlier than that). A sleeper
woken there resumes when the test next yields to the event loop; wait for what it does with
``tests.support.waiting.eventually``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class FakeTimer:
    """One scheduled callback (what ``call_at`` returns): ``cancel()`` keeps it from running."""

    when: float
    callback: Callable[[], object]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeClock:
    now: float = 1000.0
    _timers: list[tuple[float, int, FakeTimer]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> FakeTimer:
        timer = FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], object], /) -> FakeTimer:
        return self.call_at(self.now + delay, callback)

    async def sleep(self, seconds: float) -> None:
        """Return once ``advance`` has moved the clock ``seconds`` on."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await woken
        finally:
            timer.cancel()

    @property
    def pending(self) -> list[float]:
        """When each timer not yet run nor cancelled is due, earliest first (sleepers included)."""
        return sorted(when for when, _, t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, running every timer due by then."""
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback()
        self.now = end
