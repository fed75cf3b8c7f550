"""Every command's --help explains every flag in plain text.

The commands are the wrapper, its demo, the topology publisher (``publish-topology``), the simulator
(``python -m apisim``) and the benchmark (``python -m bench`` and its runs ``upstream-cost``, ``fleet`` and
``tenfold``). Their help is what a new operator
reads first: each visible flag has a sentence, and no reStructuredText markup (double backquotes,
roles) leaks from docstrings.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from apisim.__main__ import build_parser as apisim_parser
from bench.fleet import build_parser as bench_fleet_parser
from bench.run import build_parser as bench_parser
from bench.tenfold import build_parser as bench_tenfold_parser
from bench.upstream_cost import build_parser as bench_cost_parser
from publisher.options import build_parser as publisher_parser
from wrapper.options import build_demo_parser, build_parser

PARSERS = {"wrapper": build_parser, "demo": build_demo_parser, "apisim": apisim_parser, "bench": bench_parser,
           "bench upstream-cost": bench_cost_parser, "bench fleet": bench_fleet_parser,
           "bench tenfold": bench_tenfold_parser, "publish-topology": publisher_parser}
COMMANDS = {
    "wrapper": [sys.executable, "-m", "wrapper", "--help"],
    "demo": [sys.executable, "-m", "wrapper", "demo", "--help"],
    "publish-topology": [sys.executable, "-m", "wrapper", "publish-topology", "--help"],
    "apisim": [sys.executable, "-m", "apisim", "--help"],
    "bench": [sys.executable, "-m", "bench", "--help"],
    "bench upstream-cost": [sys.executable, "-m", "bench", "upstream-cost", "--help"],
    "bench fleet": [sys.executable, "-m", "bench", "fleet", "--help"],
    "bench tenfold": [sys.executable, "-m", "bench", "tenfold", "--help"],
}
RST = re.compile(r"``|:(?:class|func|meth|mod|attr):`")


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_visible_flag_has_a_help_sentence(name: str) -> None:
    parser = PARSERS[name]()
    assert parser.description, f"{name}: no description"
    for action in parser._actions:  # argparse has no public list of a parser's arguments
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        assert action.help and len(action.help.split()) >= 2, f"{name}: {action.option_strings} has no help"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_runs_and_is_plain_text(name: str) -> None:
    out = subprocess.run(COMMANDS[name], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    assert not RST.search(out.stdout), f"{name} --help shows markup: {RST.search(out.stdout)}"
