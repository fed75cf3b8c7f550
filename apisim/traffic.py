"""What each client's reads cost the simulator: response bytes and objects, per client, resource and verb.

A client is who the request ran as (the authenticated user name) and the User-Agent it sent, so
several processes that share one identity (or one identity seen through several programs) stay
apart. A verb is "list", "watch", "watchlist" (a streaming list) or "get", as in
``Simulator.requests``. Bytes are the response bodies as written (JSON; the simulator never
compresses), without HTTP headers or chunked framing. Objects are list items, single gets and
watch events other than bookmarks (an ERROR event counts as one); bookmarks are counted apart.

Counted as the bytes leave: a watch's cost grows for as long as it runs. ``Traffic`` is owned by
``apisim.server.Simulator`` (``sim.traffic``) and written by its handlers; benchmarks and tests read
it (``rows``, ``total``) and may ``reset`` it between phases.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOOKMARK = b'{"type":"BOOKMARK"'


@dataclass(slots=True)
class Cost:
    """The reads of one client, resource and verb so far."""

    requests: int = 0
    nbytes: int = 0
    objects: int = 0
    bookmarks: int = 0

    def add_body(self, body: bytes, objects: int) -> None:
        """A whole response body holding ``objects`` objects."""
        self.nbytes += len(body)
        self.objects += objects

    def add_watch_chunk(self, data: bytes) -> None:
        """Some complete watch lines (newline-terminated JSON events)."""
        self.nbytes += len(data)
        bookmarks = data.count(_BOOKMARK)
        self.bookmarks += bookmarks
        self.objects += data.count(b"\n") - bookmarks

    def merge(self, other: Cost) -> None:
        self.requests += other.requests
        self.nbytes += other.nbytes
        self.objects += other.objects
        self.bookmarks += other.bookmarks


@dataclass(frozen=True, slots=True)
class Key:
    user: str
    agent: str
    plural: str
    verb: str


class Traffic:
    """Response bytes and objects by (user, User-Agent, resource plural, verb)."""

    def __init__(self) -> None:
        self._costs: dict[Key, Cost] = {}

    def request(self, user: str, agent: str, plural: str, verb: str) -> Cost:
        """One more request; the handler adds what it answers to the returned ``Cost``."""
        key = Key(user, agent, plural, verb)
        cost = self._costs.get(key)
        if cost is None:
            cost = self._costs[key] = Cost()
        cost.requests += 1
        return cost

    def total(self, *, user: str | None = None, agent: str | None = None, plural: str | None = None,
              verb: str | None = None) -> Cost:
        """The sum over every key that matches the given parts (None: any)."""
        out = Cost()
        for key, cost in self._costs.items():
            if ((user is None or key.user == user) and (agent is None or key.agent == agent)
                    and (plural is None or key.plural == plural) and (verb is None or key.verb == verb)):
                out.merge(cost)
        return out

    def rows(self) -> list[dict[str, object]]:
        """Every key with its cost, as plain data (JSON)."""
        return [{"user": k.user, "agent": k.agent, "resource": k.plural, "verb": k.verb, "requests": c.requests,
                 "bytes": c.nbytes, "objects": c.objects, "bookmarks": c.bookmarks}
                for k, c in sorted(self._costs.items(), key=lambda kc: (kc[0].user, kc[0].agent, kc[0].plural,
                                                                        kc[0].verb))]

    def reset(self) -> None:
        """Start counting afresh: every cost back to zero, in place, so a watch that is open goes
        on counting into it (its bytes from now on; its request is not counted again)."""
        for cost in self._costs.values():
            cost.requests = cost.nbytes = cost.objects = cost.bookmarks = 0
