"""The latency the hop through the wrapper adds to an event, paired per event.

Two kube-proxy-style watchers (``bench.watchers``) run side by side in this process: one on the
simulator, one on the wrapper, both from the current resourceVersion with kube-proxy's selector.
The simulator then writes sparse EndpointSlice changes (one at a time, ``rate`` per second, on
slices of Services without a topology annotation), each tagged; every tag is received once by
each watcher. The hop of one event is its receive time through the wrapper minus its receive
time on the direct watcher: the same upstream event, observed both ways, so what the simulator
and this process add (its write, the bench's own loop) is on both sides and cancels out. The
result is the distribution of those per-event differences.

Sparse means one event at a time, far apart (at 100/s, 10 ms): what a node sees between storms,
and what the Go original's figure (0.20-0.55 ms at p50) was taken on.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp

from bench.processes import post_json
from bench.stats import percentile
from bench.watchers import Watcher, open_watchers


def distribution(values: list[float]) -> dict[str, float]:
    """p50, p90, p99, min and max of ``values`` (seconds), with their count."""
    if not values:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "min": math.nan, "max": math.nan}
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "min": min(values), "max": max(values)}


async def paired_hop(http: aiohttp.ClientSession, ctl: str, wrapper_url: str, sim_url: str, *, events: int,
                     rate: float, tag_start: int, seed: int) -> dict[str, Any]:
    """Drive ``events`` sparse changes and pair each one's receive times (see the module docstring)."""
    direct = (await open_watchers(http, sim_url, 1))[0]
    through = (await open_watchers(http, wrapper_url, 1))[0]
    watchers: list[Watcher] = [direct, through]
    try:
        await asyncio.sleep(0.3)  # both streams open and idle
        drive = await post_json(http, f"{ctl}/ctl/drive", {
            "rate": rate, "duration": events / rate + 5, "max_writes": events, "mode": "patch", "pool": "plain",
            "tag_start": tag_start, "record": True, "seed": seed})
        n = int(drive["writes"])
        last = tag_start + n - 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(last in w.tags for w in watchers):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        diffs: list[float] = []
        missing = 0
        for tag in range(tag_start, tag_start + n):
            a, b = direct.tags.get(tag), through.tags.get(tag)
            if a is None or b is None:
                missing += 1
            else:
                diffs.append(b - a)
        direct_latency = [direct.tags[t] - w for t, w in zip(range(tag_start, tag_start + n),
                                                               drive.get("times") or [], strict=False)
                          if t in direct.tags]
        return {"events": n, "rate": float(drive["rate"]), "missing": missing,
                "errors": [e for w in watchers for e in w.errors][:5],
                "hop": distribution(diffs), "direct_write_to_receive": distribution(direct_latency)}
    finally:
        for w in watchers:
            await w.stop()
