"""Merge patch (RFC 7386) and JSON patch (RFC 6902) on plain dicts.

Strategic merge patch is applied as a merge patch: good enough for the label, annotation
and field edits tests and kubectl make, without schema-driven list merging.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from kubeapi import status
from kubeapi.status import StatusError

_INDEX = re.compile(r"0|[1-9][0-9]*")  # RFC 6901 array index

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (MERGE, STRATEGIC, JSON_PATCH)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            continue  # strategic-merge directives ($patch, $retainKeys...) have no merge-patch meaning
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise status.bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    # ASCII digits only: str.isdigit() is true for "²" (which int() then rejects) and int() reads "١٢".
    if _INDEX.fullmatch(token) is None:
        raise _failed(f"invalid array index {token[:64]!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise _failed(f"array index {i} out of bounds")
    return i


def _failed(message: str) -> StatusError:
    # The apiserver answers an inapplicable JSON patch with 422 Invalid.
    return StatusError(status.failure(422, f"the server rejected our request due to an error in our request: "
                                           f"{message}", "Invalid"))


def _parent(doc: Any, tokens: list[str]) -> Any:
    cur = doc
    for t in tokens[:-1]:
        if isinstance(cur, dict):
            if t not in cur:
                raise _failed(f"path component {t!r} not found")
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_index(cur, t, allow_end=False)]
        else:
            raise _failed(f"cannot descend into {t!r}")
    return cur


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _failed(f"path {last!r} not found")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, allow_end=False)]
    raise _failed(f"cannot read {last!r}")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise _failed(f"cannot add at {last!r}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _failed("cannot remove the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _failed(f"path {last!r} not found")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, allow_end=False)]
    else:
        raise _failed(f"cannot remove {last!r}")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 add/remove/replace/test (plus move/copy) on a deep copy of ``target``."""
    if not isinstance(ops, list):
        raise status.bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or not isinstance(op.get("path"), str):
            raise status.bad_request(f"invalid json patch operation: {op!r}")
        name, tokens = op["op"], _pointer(op["path"])
        if name in ("add", "replace", "test") and "value" not in op:
            raise status.bad_request(f"json patch {name} operation needs a value")
        if name == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]))
        elif name == "remove":
            doc = _remove(doc, tokens)
        elif name == "replace":
            _get(doc, tokens)  # must exist
            doc = _add(_remove(doc, tokens), tokens, copy.deepcopy(op["value"])) if tokens else op["value"]
        elif name == "test":
            if _get(doc, tokens) != op["value"]:
                raise _failed(f"testing value {op['path']} failed")
        elif name in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise status.bad_request(f"json patch {name} operation needs 'from'")
            value = copy.deepcopy(_get(doc, _pointer(src)))
            if name == "move":
                doc = _remove(doc, _pointer(src))
            doc = _add(doc, tokens, value)
        else:
            raise status.bad_request(f"unsupported json patch operation {name!r}")
    return doc


def apply_patch(content_type: str, target: Any, patch: Any) -> Any:
    if content_type == JSON_PATCH:
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise status.bad_request("merge patch must be a JSON object")
    return merge_patch(target, patch)
