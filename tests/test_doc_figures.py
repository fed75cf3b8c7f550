"""Memory figures have one source: the benchmark's, in the README's Benchmark section.

What the wrapper takes (its RSS, synced or at peak) is measured by ``python -m bench`` and
written in one place, the README's Benchmark section, which the benchmark owns. Every other
document (the rest of the README, docs/, the manifests' comments, the Dockerfile's) refers to
it and states no figure of its own: three documents with three different figures is how they
drifted apart. The sizes that are configuration, not measurement (a budget in the code, a
test's bound, the DaemonSet's limit), may be named anywhere, and each is checked against the
code or file that sets it.

A section another document gives the benchmark's figures in (a capacity table, say) is added to
``BENCHMARK_OWNED``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cache.view import DEFAULT_HISTORY_BYTES
from tests.test_watch_memory import GROWTH_BOUND_KB, HWM_BOUND_KB

ROOT = Path(__file__).resolve().parent.parent
# (file, heading): the sections whose figures are the benchmark's output.
BENCHMARK_OWNED = [("README.md", "## Benchmark"), ("docs/deploy.md", "## Capacity planning")]
# Megabyte-scale sizes, as prose writes them (173 MB, 1.3 GB, 32 MiB) and as Kubernetes does (512Mi).
FIGURE = re.compile(r"\b\d[\d,.]*\s?(?:[MG]B|[MG]iB|[MG]i)\b")
DAEMONSET = ROOT / "manifests" / "daemonset.yaml"


def daemonset_memory_limit() -> str:
    for doc in yaml.safe_load_all(DAEMONSET.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            [wrapper] = [c for c in doc["spec"]["template"]["spec"]["containers"]
                         if c["name"] == "application-grid-wrapper"]
            return str(wrapper["resources"]["limits"]["memory"])
    raise AssertionError("no DaemonSet in manifests/daemonset.yaml")


# Configured sizes a document may name, each with the value the code or a file gives it.
CONFIGURED = {
    "32 MiB": (DEFAULT_HISTORY_BYTES, 32 << 20, "cache.view.DEFAULT_HISTORY_BYTES, the histories' budget"),
    "64 MiB": (GROWTH_BOUND_KB, 64 * 1024, "tests/test_watch_memory.py GROWTH_BOUND_KB"),
    "256 MiB": (HWM_BOUND_KB, 256 * 1024, "tests/test_watch_memory.py HWM_BOUND_KB"),
    "512Mi": (daemonset_memory_limit(), "512Mi", "the DaemonSet's memory limit"),
}


def section_lines(text: str, heading: str) -> set[int]:
    """The line numbers (1-based) of the section under ``heading``, up to the next heading of its
    level or above (lines in fenced code blocks are never headings)."""
    level = len(heading.split(" ", 1)[0])
    inside, fenced, out = False, False, set()
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#+) ", line)):
            if inside and len(m.group(1)) <= level:
                break
            inside = inside or line == heading
        if inside:
            out.add(n)
    assert out, f"no section {heading!r}"
    return out


def documents() -> Iterator[tuple[Path, list[tuple[int, str]]]]:
    """Every document's prose lines: Markdown whole, YAML and the Dockerfile by their comments."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        yield path, list(enumerate(path.read_text().splitlines(), 1))
    for path in [*sorted((ROOT / "manifests").rglob("*.yaml")), ROOT / "Dockerfile"]:
        yield path, [(n, line.split("#", 1)[1]) for n, line in enumerate(path.read_text().splitlines(), 1)
                     if "#" in line]


def test_configured_sizes_named_in_the_documents_are_the_codes() -> None:
    for figure, (actual, documented, what) in CONFIGURED.items():
        assert actual == documented, f"{figure} in the documents, but {what} is {actual}"


def test_no_memory_figure_outside_the_benchmarks_own_section() -> None:
    owned: dict[Path, set[int]] = {}
    for name, heading in BENCHMARK_OWNED:
        path = ROOT / name
        owned.setdefault(path, set()).update(section_lines(path.read_text(), heading))
    stray = []
    for path, lines in documents():
        for n, line in lines:
            if n in owned.get(path, set()):
                continue
            stray += [f"{path.relative_to(ROOT)}:{n}: {m.group()}" for m in FIGURE.finditer(line)
                      if m.group() not in CONFIGURED]
    assert stray == [], ("memory figures outside the README's Benchmark section (refer to it instead, "
                         f"or, for a configured size, add it to CONFIGURED): {stray}")


def test_the_benchmark_section_exists_and_the_deploy_documents_refer_to_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\n## Benchmark\n" in readme
    assert "python -m bench" in "".join(readme.splitlines(keepends=True)[i - 1]
                                        for i in section_lines(readme, "## Benchmark"))
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    [oom] = [para for para in deploy.split("\n   - ") if para.startswith("`OOMKilled`")]
    assert "(../README.md#benchmark)" in oom
    comments = " ".join(line.split("#", 1)[1].strip() for line in DAEMONSET.read_text().splitlines() if "#" in line)
    assert "Sized from the benchmark (python -m bench)" in comments
    assert "are in the README's Benchmark section" in comments


@pytest.mark.parametrize("text", ["peaks at 173 MB", "about 1.3 GB", "124 MiB once synced", "limit 640Mi",
                                  "48 MB resident"])
def test_the_figure_pattern_finds_what_prose_and_manifests_write(text: str) -> None:
    assert FIGURE.search(text)


@pytest.mark.parametrize("text", ["a 256 KiB batch", "10 Minutes", "kubectl 1.33", "Migrate", "2 MiBs"])
def test_the_figure_pattern_leaves_other_numbers_alone(text: str) -> None:
    assert not FIGURE.search(text)
