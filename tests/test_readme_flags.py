"""The README's flags tables document every flag each command accepts (hidden ones aside):
the wrapper's under "Flags", the topology publisher's under "`publish-topology` flags"."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from publisher.options import build_parser as build_publisher_parser
from wrapper.options import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
TABLES: dict[str, tuple[str, Callable[[], argparse.ArgumentParser]]] = {
    "wrapper": ("\n## Flags\n", build_parser),
    "publish-topology": ("\n### `publish-topology` flags\n", build_publisher_parser),
}


@pytest.mark.parametrize("command", sorted(TABLES))
def test_every_visible_flag_is_in_the_readme_flags_table(command: str) -> None:
    heading, parser = TABLES[command]
    text = README.read_text()
    assert heading in text, f"no {heading.strip()!r} section in the README"
    table = text.split(heading, 1)[1].split("\n#", 1)[0]
    missing = []
    for action in parser()._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        for flag in action.option_strings:
            if flag.startswith("--") and f"`{flag}" not in table:
                missing.append(flag)
    assert not missing, f"{command}: flags missing from the README flags table: {missing}"
