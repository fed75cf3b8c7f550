"""The README's flags table documents every flag the command accepts (hidden ones aside)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wrapper.options import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_visible_flag_is_in_the_readme_flags_table() -> None:
    text = README.read_text()
    table = text.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    missing = []
    for action in build_parser()._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        for flag in action.option_strings:
            if flag.startswith("--") and f"`{flag}" not in table:
                missing.append(flag)
    assert not missing, f"flags missing from the README flags table: {missing}"
