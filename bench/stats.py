"""Percentiles and the result table."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two points)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    if den == 0:
        return 0.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den


@dataclass
class Row:
    metric: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def render(rows: Sequence[Row]) -> str:
    head = Row("metric", "wrapper", "baseline", "ratio", "target", "met?")
    cols = [
        [r.metric for r in (head, *rows)],
        [r.value for r in (head, *rows)],
        [r.baseline for r in (head, *rows)],
        [r.ratio for r in (head, *rows)],
        [r.target for r in (head, *rows)],
        [r.verdict for r in (head, *rows)],
    ]
    widths = [max(len(c) for c in col) for col in cols]
    lines = []
    for i in range(len(rows) + 1):
        cells = [col[i].ljust(w) for col, w in zip(cols, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def go_typical(lo: float, hi: float) -> float:
    """The middle of one of the Go original's ranges (``bench.run.GO_ORIGINAL``): its typical run."""
    return round((lo + hi) / 2, 3)


def publish(res: dict[str, Any], rows: Sequence[Row], json_path: Path | None, results_dir: Path, name: str) -> None:
    """Print a run's table, and write its figures (with the table) as JSON: to ``json_path``, or
    to ``results_dir/<name>-<time>.json``."""
    res["table"] = [r.__dict__ for r in rows]
    print(render(rows))
    path = json_path or results_dir / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    print(f"figures written to {path}")
