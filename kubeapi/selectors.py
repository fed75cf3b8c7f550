"""Label and field selectors, parsed and matched as the apiserver does.

Parse errors raise a 400 ``StatusError`` with the apiserver's wording, so a bad
``labelSelector`` or ``fieldSelector`` never escapes as a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeapi import status
from kubeapi.strconv import NumError, parse_int

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEY_RE = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")
MAX_SELECTOR_LENGTH = 16 * 1024


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "exists", "!", "=", "!=", "in", "notin", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        present = self.key in labels
        value = labels.get(self.key, "")
        if op in ("=", "in"):
            return present and value in self.values
        if op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:  # strconv.ParseInt, as labels.Requirement.Matches: "1_0" or "١٢" is no number
            have, want = parse_int(value), parse_int(self.values[0])
        except NumError:
            return False
        return have > want if op == "gt" else have < want


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        have = labels or {}
        return all(r.matches(have) for r in self.requirements)


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, r.field) == r.value) == r.equal for r in self.requirements)

    def implies(self, other: FieldSelector) -> bool:
        """Whether every object this selector matches matches ``other`` too: here, when each of
        ``other``'s requirements is one of this selector's (sufficient, and all a scope needs)."""
        mine = set(self.requirements)
        return all(r in mine for r in other.requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string value of a dotted field; a missing field reads as "" (as the apiserver's field sets do)."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    return cur if isinstance(cur, str) else str(cur)


def _label_error(selector: str, why: str) -> status.StatusError:
    return status.bad_request(f'unable to parse requirement: {why}; for labelSelector "{selector[:256]}"')


def _check_key(selector: str, key: str) -> str:
    if not key:
        raise _label_error(selector, "key: Invalid value: \"\": name part must be non-empty")
    if len(key) > 317 or not _KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise _label_error(
            selector,
            f'key: Invalid value: "{key[:128]}": name part must consist of alphanumeric characters, \'-\', \'_\' '
            "or '.', and must start and end with an alphanumeric character",
        )
    return key


def _check_value(selector: str, value: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise _label_error(
            selector,
            f'values[0]: Invalid value: "{value[:128]}": a valid label must be an empty string or consist of '
            "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        )
    return value


def _split_top(selector: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise _label_error(selector, "unbalanced parentheses")
        elif ch == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    if depth != 0:
        raise _label_error(selector, "unbalanced parentheses")
    parts.append(selector[start:])
    return parts


_SET_RE = re.compile(r"^\s*(?P<key>\S+?)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_CMP_RE = re.compile(r"^\s*(?P<key>[^\s!=<>]+)\s*(?P<op>==|=|!=|<|>)\s*(?P<value>[^\s!=<>]*)\s*$")


def parse_label_selector(selector: str) -> LabelSelector:
    if len(selector) > MAX_SELECTOR_LENGTH:
        raise status.bad_request("labelSelector is too long")
    if not selector.strip():
        return LabelSelector()
    reqs: list[Requirement] = []
    for raw in _split_top(selector):
        part = raw.strip()
        if not part:
            raise _label_error(selector, "found '', expected: identifier")
        m = _SET_RE.match(part)
        if m:
            values = tuple(sorted({_check_value(selector, v.strip()) for v in m["values"].split(",")}))
            reqs.append(Requirement(_check_key(selector, m["key"]), m["op"], values))
            continue
        if part.startswith("!"):
            reqs.append(Requirement(_check_key(selector, part[1:].strip()), "!"))
            continue
        m = _CMP_RE.match(part)
        if m:
            op = {"==": "=", "<": "lt", ">": "gt"}.get(m["op"], m["op"])
            value = m["value"]
            if op in ("lt", "gt"):
                try:
                    parse_int(value)
                except NumError:
                    raise _label_error(selector, f"for 'Gt', 'Lt' operators, the value must be an integer: "
                                                 f"{value[:64]!r}") from None
            else:
                _check_value(selector, value)
            reqs.append(Requirement(_check_key(selector, m["key"]), op, (value,)))
            continue
        if re.match(r"^\S+$", part) and not any(c in part for c in "=!<>()"):
            reqs.append(Requirement(_check_key(selector, part), "exists"))
            continue
        raise _label_error(selector, f"found '{part[:64]}', expected: in, notin, =, ==, !=, gt, lt")
    return LabelSelector(tuple(reqs))


def _unescape_field(selector: str, value: str) -> str:
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            if nxt not in ("\\", ",", "="):
                raise status.bad_request(f'invalid field selector: invalid escape sequence in "{selector[:256]}"')
            out.append(nxt)
        else:
            out.append(ch)
    return "".join(out)


def _split_fields(selector: str) -> list[str]:
    """Split on unescaped commas."""
    parts: list[str] = []
    cur: list[str] = []
    escaped = False
    for ch in selector:
        if escaped:
            cur.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if escaped:
        cur.append("\\")
    parts.append("".join(cur))
    return parts


def parse_field_selector(selector: str, supported: tuple[str, ...]) -> FieldSelector:
    if len(selector) > MAX_SELECTOR_LENGTH:
        raise status.bad_request("fieldSelector is too long")
    if not selector.strip():
        return FieldSelector()
    reqs: list[FieldRequirement] = []
    for part in _split_fields(selector):
        if not part:
            continue
        m = re.match(r"^(?P<field>[^=!\\]+?)(?P<op>!=|==|=)(?P<value>.*)$", part)
        if m is None:
            raise status.bad_request(f'invalid selector: "{selector[:256]}"; can\'t understand \'{part[:64]}\'')
        name = m["field"].strip()
        if name not in supported:
            raise status.bad_request(f'field label not supported: {name[:128]}')
        value = _unescape_field(selector, m["value"])
        reqs.append(FieldRequirement(name, value, m["op"] != "!="))
    return FieldSelector(tuple(reqs))
