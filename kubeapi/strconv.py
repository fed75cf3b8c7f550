"""Integers parsed the way Go's ``strconv`` parses them, with Go's error wording.

Python's ``int()`` accepts what no apiserver does: Unicode digits (``"١٢"`` is 12),
underscores (``"1_0"`` is 10) and surrounding whitespace, and ``str.isdigit()`` is true
for ``"²"``, which ``int()`` then rejects with a ValueError. Request parsing uses these
helpers instead: ASCII digits only, an optional sign where Go's ``ParseInt`` takes one, and
the 64-bit range checks of ``ParseInt``/``ParseUint``.
"""

from __future__ import annotations

import re

_SIGNED = re.compile(r"[+-]?[0-9]+", re.ASCII)
_UNSIGNED = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
# More significant digits than any 64-bit value has: out of range without converting them
# (int() refuses over 4,300 digits, leading zeros included, with a ValueError of its own).
_MAX_DIGITS = len(str(UINT64_MAX))
# Longer inputs are cut in messages and logs: the apiserver echoes them whole, but a
# client should not be able to make one error line arbitrarily long.
QUOTE_LIMIT = 64


class NumError(ValueError):
    """A malformed or out-of-range number; ``str()`` is Go's ``*strconv.NumError`` text."""

    def __init__(self, func: str, text: str, reason: str) -> None:
        super().__init__(f"strconv.{func}: parsing {go_quote(text)}: {reason}")
        self.func = func
        self.text = text
        self.reason = reason


def go_quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``strconv.Quote``: printable characters kept, the rest escaped (cut to ``limit``)."""
    out = ['"']
    for ch in text[:limit]:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t",
                        "\v": r"\v"}[ch])
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def parse_int(text: str) -> int:
    """``strconv.ParseInt(text, 10, 64)``: an optional sign, then ASCII digits."""
    if _SIGNED.fullmatch(text) is None:
        raise NumError("ParseInt", text, "invalid syntax")
    digits = text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        raise NumError("ParseInt", text, "value out of range")
    # safe: the pattern admits ASCII digits and one sign only
    value = -int(digits, 10) if text.startswith("-") else int(digits, 10)
    if not INT64_MIN <= value <= INT64_MAX:
        raise NumError("ParseInt", text, "value out of range")
    return value


def parse_uint(text: str) -> int:
    """``strconv.ParseUint(text, 10, 64)``: ASCII digits only, no sign."""
    if _UNSIGNED.fullmatch(text) is None:
        raise NumError("ParseUint", text, "invalid syntax")
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        raise NumError("ParseUint", text, "value out of range")
    value = int(digits, 10)
    if value > UINT64_MAX:
        raise NumError("ParseUint", text, "value out of range")
    return value


def parse_decimal(text: str) -> float | None:
    """A plain ASCII decimal (``1``, ``0.5``, ``.5``), or None for anything else.

    For header parameters such as q-values; ``float()`` would take Arabic-Indic digits, ``"1_0"``,
    ``"nan"`` and ``"inf"``.
    """
    text = text.strip(" \t")
    if _DECIMAL.fullmatch(text) is None:
        return None
    return float(text)
