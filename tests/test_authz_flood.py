"""``--authorize-clients`` stays available offline under a flood of junk tokens.

Decisions live in bounded LRUs (refusals apart from allowed decisions), reviews are capped by
a token bucket, tokens without a usable decision get 429 while the cap is reached, and a
known client keeps being served from its cached decision when no review can be had.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from apisim.server import Simulator
from cache.apiclient import ApiClient
from kubeapi.resources import ENDPOINTSLICES
from kubeapi.status import StatusError
from tests.conftest import LOCAL_NODE, fast_settings
from tests.support.fake_clock import FakeClock
from tests.support.stack import wait_ready
from wrapper.authz import ClientAuthorizer, Decision, DecisionCache, DecisionKey, TokenBucket
from wrapper.compose import Running, client_authorizer, start_wrapper, stop_wrapper
from wrapper.options import build_parser

# ---- the limiter and the LRU, with an injected clock ----------------------------------------

# (seconds to advance first, what take() answers, wait() after it)
BUCKET_STEPS: list[tuple[float, bool, float]] = [
    (0.0, True, 0.0),    # burst of 3 at rate 2/s: three at once...
    (0.0, True, 0.0),
    (0.0, True, 0.5),
    (0.0, False, 0.5),   # ...then none
    (0.25, False, 0.25),  # half a token after 0.25 s
    (0.25, True, 0.5),   # one token after 0.5 s
    (10.0, True, 0.0),   # a long pause refills only up to the burst
    (0.0, True, 0.0),
    (0.0, True, 0.5),
    (0.0, False, 0.5),
    (-5.0, False, 0.5),  # a clock that steps back adds nothing
]


def test_the_review_limiter_allows_the_burst_then_the_rate_and_never_more() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, 3, clock)
    for i, (advance, took, wait) in enumerate(BUCKET_STEPS):
        clock.advance(advance)
        assert bucket.take() is took, i
        assert bucket.wait() == pytest.approx(wait), i


def _key(token: str, name: str = "") -> DecisionKey:
    return (token.encode(), "list", "discovery.k8s.io", "endpointslices", "", name)


ALLOW = Decision(True, "system:kube-proxy", "", 0.0)
DENY = Decision(False, "", "invalid bearer token", 0.0)

# (operation, token, decision to put, then allowed and refused tokens kept, least recent first)
LRU_STEPS: list[tuple[str, str, Decision | None, list[str], list[str]]] = [
    ("put", "proxy", ALLOW, ["proxy"], []),
    ("put", "dns", ALLOW, ["proxy", "dns"], []),
    ("put", "junk-1", DENY, ["proxy", "dns"], ["junk-1"]),
    ("put", "junk-2", DENY, ["proxy", "dns"], ["junk-1", "junk-2"]),
    ("get", "junk-1", None, ["proxy", "dns"], ["junk-2", "junk-1"]),  # a read is a use
    # More refusals evict the least recently used refusal, never an allowed decision.
    ("put", "junk-3", DENY, ["proxy", "dns"], ["junk-1", "junk-3"]),
    ("put", "junk-4", DENY, ["proxy", "dns"], ["junk-3", "junk-4"]),
    ("get", "proxy", None, ["dns", "proxy"], ["junk-3", "junk-4"]),
    # An allowed decision evicts the least recently used allowed one.
    ("put", "other", ALLOW, ["proxy", "other"], ["junk-3", "junk-4"]),
    # A decision that flips moves between the LRUs.
    ("put", "junk-3", ALLOW, ["other", "junk-3"], ["junk-4"]),
    ("put", "junk-3", DENY, ["other"], ["junk-4", "junk-3"]),
    ("get", "never-seen", None, ["other"], ["junk-4", "junk-3"]),
]


def test_the_decision_lru_keeps_recently_used_allowed_decisions_whatever_the_refusals() -> None:
    cache = DecisionCache(allowed_size=2, refused_size=2)
    for i, (op, token, decision, allowed, refused) in enumerate(LRU_STEPS):
        if op == "put":
            assert decision is not None
            cache.put(_key(token), decision)
        else:
            got = cache.get(_key(token))
            assert (got is None) == (token == "never-seen"), i
        kept = [key[0].decode() for key in cache]
        assert (kept[:cache.sizes[0]], kept[cache.sizes[0]:]) == (allowed, refused), i


# ---- the authorizer's policy against the simulator's reviews, with an injected clock --------------


@pytest.fixture
def reviewing_sim(sim: Simulator) -> Simulator:
    sim.reviews.add_user("proxy-token", "system:kube-proxy")
    for verb in ("list", "watch"):
        sim.reviews.allow("system:kube-proxy", verb, "endpointslices")
    return sim


async def _outcome(authorizer: ClientAuthorizer, token: str) -> str:
    try:
        await authorizer.check(f"Bearer {token}", "list", ENDPOINTSLICES, None, None)
    except StatusError as err:
        if err.code == 429:
            assert err.status["reason"] == "TooManyRequests"
            assert err.status.get("details", {}).get("retryAfterSeconds", 0) >= 1
        return str(err.code)
    return "allowed"


# (seconds to advance, token, outcome, reviews the simulator gets for it)
POLICY_STEPS: list[tuple[float, str, str, int]] = [
    (0, "proxy-token", "allowed", 1),  # bucket 2 -> 1
    (0, "proxy-token", "allowed", 0),  # fresh: no review
    (0, "junk-1", "401", 1),  # bucket 1 -> 0
    (0, "junk-2", "429", 0),  # unknown and the cap reached
    (0, "proxy-token", "allowed", 0),  # fresh decisions need no cap
    (61, "junk-3", "401", 1),  # the bucket refilled to its burst of 2...
    (0, "junk-4", "401", 1),  # ...and is empty again
    (0, "proxy-token", "allowed", 0),  # stale, cap reached: served from its cached decision
    (0, "junk-1", "401", 0),  # a stale refusal likewise
    (0, "junk-2", "429", 0),
    (3600, "junk-5", "401", 1),
    (0, "junk-6", "401", 1),
    (0, "proxy-token", "429", 0),  # past the offline max age a decision is no longer used
    (1, "proxy-token", "allowed", 1),  # reviewed again once the cap allows
]


async def test_the_authorizer_reviews_within_the_cap_and_answers_from_its_cache_when_limited(
    reviewing_sim: Simulator,
) -> None:
    clock = FakeClock()
    client = ApiClient(reviewing_sim.url)
    authorizer = ClientAuthorizer(client, allowed_ttl=60, denied_ttl=10, offline_max_age=3600, cache_size=8,
                                  refused_cache_size=3, review_qps=1, review_burst=2, clock=clock)
    try:
        for i, (advance, token, outcome, reviews) in enumerate(POLICY_STEPS):
            clock.advance(advance)
            before = reviewing_sim.reviews.token_reviews
            assert await _outcome(authorizer, token) == outcome, (i, token)
            assert reviewing_sim.reviews.token_reviews - before == reviews, (i, token)
    finally:
        await client.close()
    # Refusals stayed within their own bound and never pushed the allowed decision out.
    assert authorizer.decisions.sizes == (1, 3)


def test_the_authorizer_flags_reach_the_authorizer_and_reject_nonsense() -> None:
    args = build_parser().parse_args(["--authorize-clients", "--authorize-clients-cache-size", "100",
                                      "--authorize-clients-review-qps", "0.5",
                                      "--authorize-clients-review-burst", "7"])
    authorizer = client_authorizer(ApiClient("http://127.0.0.1:1"), args)
    assert authorizer is not None
    assert (authorizer.decisions.allowed_size, authorizer.decisions.refused_size) == (100, 25)
    assert (authorizer.limiter.rate, authorizer.limiter.burst) == (0.5, 7)
    assert client_authorizer(ApiClient("http://127.0.0.1:1"), build_parser().parse_args([])) is None
    for flag, value in [("--authorize-clients-review-qps", "0"), ("--authorize-clients-review-qps", "nan"),
                        ("--authorize-clients-review-burst", "0"), ("--authorize-clients-cache-size", "²")]:
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, value])


# ---- 20,000 junk tokens on real sockets, then the apiserver goes away ---------------------------

JUNK = 20_000
CONNECTIONS = 4
PIPELINE = 50
ROUNDS = 10  # kube-proxy's token is checked between rounds
SECONDS_PER_ROUND = 1.0  # on the authorizer's clock, which the test advances
QPS, BURST = 2.0, 50
REFUSED_KEPT = 16


@pytest.fixture
def flood_clock() -> FakeClock:
    """The flood's authorizer clock: the review cap refills only as the test advances it."""
    return FakeClock()


@pytest.fixture
async def flood_wrapper(
    reviewing_sim: Simulator, flood_clock: FakeClock,
) -> AsyncIterator[tuple[Running, ClientAuthorizer]]:
    client = ApiClient(reviewing_sim.url)
    # allowed_ttl=0: kube-proxy's decision is always stale, so every one of its requests needs
    # a review and is served only thanks to stale-while-limited and the offline fallback.
    authorizer = ClientAuthorizer(client, allowed_ttl=0.0, denied_ttl=10.0, cache_size=64,
                                  refused_cache_size=REFUSED_KEPT, review_qps=QPS, review_burst=BURST,
                                  clock=flood_clock)
    serve, reflect = fast_settings()
    running = await start_wrapper(client, LOCAL_NODE, ("127.0.0.1", 0), serve=serve, reflect=reflect,
                                  authorizer=authorizer)
    try:
        await wait_ready(running)
        yield running, authorizer
    finally:
        await stop_wrapper(running)
        await client.close()


_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")
_RETRY_AFTER = re.compile(rb"(?im)^retry-after:\s*(\d+)\s*$")


async def _junk_requests(url: str, path: str, tokens: list[str], seen: Counter[int], samples: list[bytes]) -> None:
    """Send one GET per token on one keep-alive connection, pipelined, and count the answers."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for start in range(0, len(tokens), PIPELINE):
            batch = tokens[start:start + PIPELINE]
            writer.write(b"".join(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\n\r\n".encode()
                                  for t in batch))
            await writer.drain()
            for _ in batch:
                head = await reader.readuntil(b"\r\n\r\n")
                code = int(head.split(b" ", 2)[1])
                length = _LENGTH.search(head)
                assert length is not None, head
                body = await reader.readexactly(int(length.group(1)))
                if seen[code] == 0:
                    samples.append(head + body)
                seen[code] += 1
    finally:
        writer.close()
        await writer.wait_closed()


async def _proxy_status(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": "Bearer proxy-token"}) as resp:
        await resp.read()
        return resp.status


async def test_kube_proxy_is_served_through_a_junk_token_flood_and_offline_after_it(
    flood_wrapper: tuple[Running, ClientAuthorizer], flood_clock: FakeClock, reviewing_sim: Simulator
) -> None:
    running, authorizer = flood_wrapper
    path = ENDPOINTSLICES.collection_path()
    url = running.url + path
    assert await _proxy_status(url) == 200
    reviews_before = reviewing_sim.reviews.token_reviews
    seen: Counter[int] = Counter()
    samples: list[bytes] = []
    per_round = JUNK // ROUNDS // CONNECTIONS
    for r in range(ROUNDS):
        await asyncio.wait_for(asyncio.gather(*(
            _junk_requests(running.url, path, [f"junk-{r}-{c}-{i}" for i in range(per_round)], seen, samples)
            for c in range(CONNECTIONS))), timeout=60)
        assert await _proxy_status(url) == 200, f"kube-proxy refused after round {r}"
        flood_clock.advance(SECONDS_PER_ROUND)
    assert sum(seen.values()) == JUNK
    assert set(seen) <= {401, 429}, seen
    # Every review the flood caused fits the cap: the burst plus the rate over the flood's time
    # (and kube-proxy's own reviews are in that count too).
    reviews = reviewing_sim.reviews.token_reviews - reviews_before
    assert reviews <= BURST + QPS * SECONDS_PER_ROUND * ROUNDS, reviews
    assert seen[401] <= reviews and seen[429] >= JUNK - reviews
    assert reviewing_sim.reviews.access_reviews <= reviewing_sim.reviews.token_reviews
    # Refused junk answers like the apiserver shedding load: a Status with Retry-After.
    [limited] = [s for s in samples if s.startswith(b"HTTP/1.1 429")]
    head, _, body = limited.partition(b"\r\n\r\n")
    retry = _RETRY_AFTER.search(head)
    assert retry is not None and int(retry.group(1)) >= 1
    st = orjson.loads(body)
    assert (st["kind"], st["code"], st["reason"]) == ("Status", 429, "TooManyRequests")
    # Bounded memory: at most REFUSED_KEPT refusals, and kube-proxy's decision still there.
    allowed_kept, refused_kept = authorizer.decisions.sizes
    assert allowed_kept == 1 and refused_kept <= REFUSED_KEPT
    # The apiserver goes away: kube-proxy keeps being served from its cached decision.
    await reviewing_sim.stop()
    for _ in range(5):
        assert await _proxy_status(url) == 200
    # A token never seen cannot be decided now.
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": "Bearer new-token"}) as resp:
        assert resp.status in (429, 503)


async def test_while_the_apiserver_is_unreachable_a_stale_decision_answers_without_waiting_for_a_review(
    reviewing_sim: Simulator,
) -> None:
    clock = FakeClock()
    client = ApiClient(reviewing_sim.url)
    authorizer = ClientAuthorizer(client, allowed_ttl=60, offline_max_age=3600, unreachable_pause=10, clock=clock)
    try:
        assert await _outcome(authorizer, "proxy-token") == "allowed"
        await reviewing_sim.stop()
        steps = [  # (seconds to advance, review attempts expected for it)
            (61, 1),  # stale: a review is tried, fails, and the cached decision answers
            (1, 0),  # within the pause: answered at once, no review tried
            (8, 0),
            (2, 1),  # past the pause: tried again
            (0, 0),
        ]
        for i, (advance, attempts) in enumerate(steps):
            clock.advance(advance)
            before = authorizer.reviews
            assert await _outcome(authorizer, "proxy-token") == "allowed", i
            assert authorizer.reviews - before == attempts, i
        # A token never seen still has no decision to fall back on.
        assert await _outcome(authorizer, "new-token") == "503"
    finally:
        await client.close()
