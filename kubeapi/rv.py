"""resourceVersion: one type and one parser for every place that reads one.

The apiserver's resourceVersions are opaque strings to clients, but ours and every apiserver's
are etcd revisions: decimal ASCII digits that fit a uint64 (the storage layer parses them with
``strconv.ParseUint``). Requests (400 on a bad one), upstream lists and events (an untrusted event
makes the reflector relist), persisted snapshots and the views all parse them here, so they agree
on what a resourceVersion is.
"""

from __future__ import annotations

from typing import NewType

from kubeapi.strconv import NumError, parse_uint

# A parsed resourceVersion; 0 means "none" (never a real etcd revision).
RV = NewType("RV", int)


class InvalidResourceVersion(ValueError):
    """Not a resourceVersion; ``str()`` says why, in Go's ``strconv`` wording when it was a string."""


def parse_rv(value: object) -> RV:
    """The resourceVersion in ``value`` (a string of ASCII digits within uint64), or InvalidResourceVersion."""
    # Every upstream object's RV passes here: 1 to 19 ASCII digits are always within uint64.
    if type(value) is str and 0 < len(value) < 20 and value.isascii() and value.isdigit():
        return RV(int(value))
    if not isinstance(value, str):
        raise InvalidResourceVersion(f"resourceVersion is not a string: {value!r:.64}")
    try:
        return RV(parse_uint(value))
    except NumError as err:
        raise InvalidResourceVersion(str(err)) from None


def rv_of(obj: object) -> RV:
    """``metadata.resourceVersion`` of a decoded object, or 0 when it is missing or not a resourceVersion."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    try:
        return parse_rv(meta.get("resourceVersion") if isinstance(meta, dict) else None)
    except InvalidResourceVersion:
        return RV(0)
