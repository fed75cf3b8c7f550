"""Figures over several runs of the suite: each row's range, median and how often it met its target.

``figures(res)`` takes one run's results (``bench.run.run``) down to numbers with their targets;
``range_rows(runs)`` puts several runs side by side. A row whose verdict differs between runs is
marked ``FLIPS``: a figure the README can quote as met must be met in every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import Row, go_typical


@dataclass(frozen=True)
class Figure:
    """One number of one run: its value, how to print it, and whether it met its target (None: no target)."""

    name: str
    value: float
    fmt: Callable[[float], str]
    target: str = ""
    met: bool | None = None


def _s(v: float) -> str:
    return f"{v:.3f} s"


def _ms(v: float) -> str:
    return f"{v:.3f} ms" if v < 1 else f"{v:.1f} ms"


def _mb(v: float) -> str:
    return f"{v:.0f} MB"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _b(v: float) -> str:
    return f"{v:,.0f} B"


def _rate(v: float) -> str:
    return f"{v:,.0f}/s"


def figures(res: dict[str, Any]) -> list[Figure]:
    """The suite's figures of one run, as numbers, with their targets (``bench.run.TARGETS`` and the
    middle of the Go original's range for the three rows the Go original is compared on)."""
    targets, go = res["targets"], res["go_original"]
    out: list[Figure] = []
    if "ready" in res:
        ready = res["ready"]["ready_s"]
        out.append(Figure("time to ready", ready, _s, f"< {go_typical(*go['ready_s']):g} s (Go's typical)",
                          ready < go_typical(*go["ready_s"])))
        out.append(Figure("time to ready / plain list of all resources", ready / res["baseline_list_all_s"], _x))
        out.append(Figure("empty-cluster time to ready", res["empty_wrapper"]["ready_s"], _s))
        if "restart" in res:
            out.append(Figure("time to ready, restart from its snapshot", res["restart"]["ready_s"], _s))
        rss = res["memory_at_ready"]["rss_mb"]
        out.append(Figure("RSS at ready", rss, _mb, f"< {go_typical(*go['rss_at_ready_mb']):g} MB (Go's typical)",
                          rss < go_typical(*go["rss_at_ready_mb"])))
        out.append(Figure("empty-cluster RSS", res["empty_wrapper"]["rss_mb"], _mb))
    hop = (res.get("hop") or {}).get("hop")
    if hop:
        typical = go_typical(*go["hop_p50_ms"])
        out.append(Figure("hop latency p50 (paired)", hop["p50"] * 1000, _ms, f"< {typical:g} ms (Go's typical)",
                          hop["p50"] * 1000 < typical and not res["hop"]["missing"]))
        out.append(Figure("hop latency p99 (paired)", hop["p99"] * 1000, _ms))
    fl = res.get("full_list")
    if fl:
        ratio = fl["wrapper"]["p50"] / fl["static"]["p50"]
        out.append(Figure("full list p50 / static", ratio, _x, f"<= {targets['list_ratio']:g}x",
                          ratio <= targets["list_ratio"]))
        out.append(Figure("full list p50", fl["wrapper"]["p50"] * 1000, _ms))
    for key, r in sorted((res.get("latency") or {}).items()):
        name, rate, n = key.split("/")
        if name != "wrapper":
            continue
        limit = targets["latency_p99_200"] if rate == "200" else targets["latency_p99_2000"]
        out.append(Figure(f"event latency p99, {rate}/s, {n} watcher(s)", r["p99"] * 1000, _ms,
                          f"<= {limit * 1000:g} ms", r["p99"] <= limit and not r["missing"]))
    storm = res.get("storm")
    if storm:
        worst = max(run["last_event_s"] for run in storm["runs"])
        delivered = all(run["delivered"] >= run["expected"] for run in storm["runs"])
        out.append(Figure("re-filter storm (the slower of the two)", worst * 1000, _ms,
                          f"<= {targets['storm_s'] * 1000:g} ms", worst <= targets["storm_s"] and delivered))
    if "memory_end" in res:
        peak = max(res["memory_end"]["hwm_mb"], res["memory_at_ready"]["hwm_mb"])
        out.append(Figure("peak RSS", peak, _mb, f"<= {targets['rss_mb']:g} MB", peak <= targets["rss_mb"]))
        eps = res["cluster"]["endpoints_in_slices"]
        per = (res["memory_at_ready"]["rss_mb"] - res["empty_wrapper"]["rss_mb"]) * 1e6 / eps
        out.append(Figure("bytes per endpoint at ready", per, _b))
    ing = res.get("ingest")
    if ing:
        out.append(Figure("sustained ingest", float(ing["sustained_rate"]), _rate,
                          f">= {targets['ingest_rate']:,.0f}/s", ing["sustained_rate"] >= targets["ingest_rate"]))
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def range_rows(runs: Sequence[dict[str, Any]]) -> list[Row]:
    """One row per figure: min-max over the runs, the median, the target, and met / NOT MET / FLIPS."""
    per_run = [figures(r) for r in runs]
    names: list[str] = []
    for figs in per_run:
        names += [f.name for f in figs if f.name not in names]
    rows: list[Row] = []
    for name in names:
        figs = [f for run in per_run for f in run if f.name == name]
        values = [f.value for f in figs]
        fmt = figs[0].fmt
        verdicts = {f.met for f in figs}
        verdict = "" if verdicts == {None} else "met" if verdicts == {True} else \
            "NOT MET" if verdicts == {False} else f"FLIPS ({sum(1 for f in figs if f.met)}/{len(figs)} met)"
        rows.append(Row(name, f"{fmt(min(values))} - {fmt(max(values))}", f"median {fmt(median(values))}",
                        f"{len(figs)} runs", figs[0].target, verdict))
    return rows
