"""The event-loop timers a component schedules its wake-ups with, injectable so tests move time.

Production passes nothing and gets ``asyncio.get_running_loop`` (the loop is one ``Timers``);
a test passes ``lambda: clock`` for a fake clock it advances itself (tests/support/fake_clock.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Timers(Protocol):
    """The loop's clock and its timed callbacks (``asyncio.AbstractEventLoop`` has both)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> object: ...
