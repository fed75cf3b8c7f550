"""List-then-watch against the apiserver for one resource, like client-go's reflector: the I/O loop.

Every decision (what to request, when to relist, how long to back off, what to tell the sink)
is taken by the sans-I/O machine in ``cache.listwatch``; this loop only performs its actions
with the apiserver client and feeds the answers back:

- ``ListPage``: ``client.request()``, the body to ``list_page``;
- ``Watch``: ``client.stream()``, each line decoded to ``event`` (with its bytes; ``undecodable``
  if it is not JSON), ``watch_ended`` at the end of the body. No read timeout: a quiet watch is
  healthy (the apiserver sends no bookmark for a resource nobody writes), so it runs until the
  server ends it, or until its ``deadline`` (its own ``timeoutSeconds`` plus a margin); TCP
  keepalive on the client's sockets finds a dead connection before that;
- ``Sleep``: a back-off;
- any error of a request or its stream: ``failed``.

What the machine has to tell the operator it hands to ``say``; the loop logs it (``log_say``, the
``cache.reflector`` logger, which every reflector's lines share).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from cache.apiclient import ApiClient
from cache.listwatch import (
    EVERYTHING,
    Clock,
    ListPage,
    ListWatch,
    ReflectorSettings,
    Selection,
    Sink,
    Sleep,
    UpstreamState,
    Watch,
)
from kubeapi.resources import Resource

__all__ = ["Reflector", "ReflectorSettings", "RegressionHandler", "Selection", "Sink", "UpstreamState", "log_say"]

# The reflectors' story is one logger, whichever resource tells it (operators filter on it).
log = logging.getLogger("cache.reflector")


def log_say(level: int, message: str, exc: BaseException | None = None) -> None:
    """What a ``ListWatch`` machine says, logged (its ``say``)."""
    log.log(level, "%s", message, exc_info=exc)


# Told (reflector, RV it had, lower RV a list returned) when the upstream's RVs went back.
RegressionHandler = Callable[["Reflector", int, int], None]


class Reflector:
    """Keeps one resource of the sink in step with the apiserver.

    Owns its ``ListWatch`` machine (the decisions) and runs the loop that performs them with the
    client it is given (and does not close). Created and run (``run()`` as a task) by
    ``cache.informers.Informers``; its ``state`` is read by /readyz, metrics and debug pages.
    """

    def __init__(
        self,
        client: ApiClient,
        resource: Resource,
        sink: Sink,
        settings: ReflectorSettings | None = None,
        on_regression: RegressionHandler | None = None,
        *,
        selection: Selection = EVERYTHING,
        namespace: str | None = None,
        name: str = "",
        on_failed: Callable[[BaseException], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self.resource = resource
        self.settings = settings or ReflectorSettings()
        self.selection = selection
        # What it is called in metrics, logs and debug pages (the resource's plural by default).
        self.name = name or resource.plural
        self._path = resource.collection_path(namespace)
        # Told of every failed request or stream (after the machine), e.g. to decide a mode on it.
        self._on_failed = on_failed
        self.machine = ListWatch(
            resource, sink, self.settings, selection=selection, name=self.name, clock=clock, say=log_say,
            on_regression=None if on_regression is None else (lambda had, got: on_regression(self, had, got)),
        )

    @property
    def state(self) -> UpstreamState:
        return self.machine.state

    @property
    def rv(self) -> int:
        """The highest RV seen (or, before the first list, the one a snapshot was taken at)."""
        return self.machine.rv

    @rv.setter
    def rv(self, value: int) -> None:
        self.machine.rv = value

    def forget_rv(self) -> None:
        """Relist next, and take whatever RV that list has: another resource saw the RVs go back."""
        self.machine.forget_rv()

    async def run(self) -> None:
        machine = self.machine
        path = self._path
        read_timeout = self.settings.read_timeout
        while True:
            action = machine.next_action()
            try:
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                elif isinstance(action, ListPage):
                    resp = await self.client.request("GET", path, params=action.params, accept=action.accept,
                                                     read_timeout=read_timeout)
                    machine.list_page(resp.body)
                else:
                    await self._watch(path, action)
            except Exception as exc:  # CancelledError is not an Exception: stopping stays stopping
                machine.failed(exc)
                if self._on_failed is not None:
                    self._on_failed(exc)

    async def _watch(self, path: str, action: Watch) -> None:
        machine = self.machine
        event = machine.event
        initial_line = machine.initial_line
        loads = orjson.loads
        async with self.client.stream("GET", path, params=action.params, headers={"Accept": action.accept},
                                      read_timeout=None, total_timeout=action.deadline) as resp:
            machine.watch_opened()
            readline = resp.content.readline
            while True:
                line = await readline()
                if not line:
                    break
                line = line.strip()
                if not line or initial_line(line):
                    continue  # blank, or a streaming list's initial event, kept undecoded for now
                try:
                    ev = loads(line)
                except orjson.JSONDecodeError as exc:
                    machine.undecodable(exc)
                    return
                if not event(ev, line):
                    return
        machine.watch_ended()
