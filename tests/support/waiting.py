"""Waiting in tests: on a condition with a bounded deadline, never on the clock.

``eventually(predicate, timeout, what)`` polls ``predicate`` (a plain or an async callable) until
it returns something truthy, and returns that value; past ``timeout`` seconds it fails with
``what`` and, when given, ``detail()`` (the state to debug from). The deadline only bounds a
failure: a passing test never waits for it, so a busy machine makes tests slower, not red.

Waits that have a signal of their own use it instead of polling: ``asyncio.Event``s,
``View.wait_for_rv`` (``tests.support.stack.wait_caught_up``), ``ReflectorModel.wait_until``,
``KubectlWatch.wait_for``.

``signal_when_called(obj, "method")`` turns "the server is now waiting inside ``method``" into
an ``asyncio.Event`` to await, for a test that must act only once a request is parked there.

``one_loop_step()`` lets every callback and task that is ready run once (``asyncio.sleep(0)``):
for "the task just created has started and is now blocked", not for "something has happened".

Never ``asyncio.sleep(seconds)`` to wait for something, and never assert on elapsed time (the
machines are shared). Where behaviour depends on time (intervals, TTLs, timeouts), production
code takes an injected clock: drive it with ``tests.support.fake_clock.FakeClock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, overload

T = TypeVar("T")

POLL_INTERVAL = 0.02  # seconds between two checks of a polled condition


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]], timeout: float = ..., what: str = ..., *, interval: float = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T | None], timeout: float = ..., what: str = ..., *, interval: float = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    interval: float = POLL_INTERVAL,
    detail: Callable[[], object] | None = None,
) -> Any:
    """Poll ``predicate`` until its value is truthy and return it (never None); fail after ``timeout``
    seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        await asyncio.sleep(interval)


async def one_loop_step() -> None:
    """Let every ready callback and task run once (a task just created reaches its first await)."""
    await asyncio.sleep(0)


@contextlib.contextmanager
def signal_when_called(obj: object, method: str) -> Iterator[asyncio.Event]:
    """Within the block, a call of the async method ``obj.method`` first sets the event yielded,
    then runs the method as before. Callers must look the method up on ``obj`` at each call."""
    original = getattr(obj, method)
    own = method in vars(obj)
    called = asyncio.Event()

    async def spy(*args: Any, **kwargs: Any) -> Any:
        called.set()
        return await original(*args, **kwargs)

    setattr(obj, method, spy)
    try:
        yield called
    finally:
        if own:
            setattr(obj, method, original)
        else:
            delattr(obj, method)
