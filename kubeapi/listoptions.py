"""ListOptions from a query string, validated as the apiserver validates them.

Every malformed value becomes a Status error (400 for parse errors, 422 for invalid
combinations), never an exception that escapes as a traceback. Integers follow Go's strconv
(``kubeapi.strconv``): ASCII digits only, 64-bit range; never Python's ``int()`` on raw input.
Shared by the wrapper's HTTP front and the apiserver simulator.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from kubeapi import status
from kubeapi.resources import Resource
from kubeapi.rv import InvalidResourceVersion, parse_rv
from kubeapi.selectors import FieldSelector, LabelSelector, parse_field_selector, parse_label_selector
from kubeapi.strconv import NumError, go_quote, parse_int

MAX_TIMEOUT_SECONDS = 6 * 3600


@dataclass(frozen=True, slots=True)
class ListOptions:
    watch: bool = False
    resource_version: int | None = None  # None: unset ("most recent")
    resource_version_match: str = ""
    allow_bookmarks: bool = False
    send_initial_events: bool | None = None
    timeout_seconds: int | None = None
    limit: int = 0
    continue_token: str = ""
    label: LabelSelector | None = None
    field: FieldSelector | None = None

    @property
    def has_selector(self) -> bool:
        return bool(self.label and not self.label.empty) or bool(self.field and not self.field.empty)


def _bool(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    low = raw.lower()
    if low in ("true", "1", "t"):
        return True
    if low in ("false", "0", "f"):
        return False
    raise status.bad_request(f'invalid value for {name}: strconv.ParseBool: parsing "{raw}": invalid syntax')


def _int(query: Mapping[str, str], name: str) -> int | None:
    """``limit`` and ``timeoutSeconds``: the apiserver's parameter codec uses ``strconv.ParseInt``."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_int(raw)
    except NumError as err:
        raise status.bad_request(f"invalid value for {name}: {err}") from None


def parse_resource_version(raw: str | None) -> int | None:
    """The storage layer's ``strconv.ParseUint``; "" is unset and "0" is "any"."""
    if raw is None or raw == "":
        return None
    try:
        return parse_rv(raw)
    except InvalidResourceVersion as err:
        raise status.bad_request(f"resourceVersion: Invalid value: {go_quote(raw)}: {err}") from None


def parse_list_options(query: Mapping[str, str], resource: Resource) -> ListOptions:
    kind = "ListOptions"
    watch = bool(_bool(query, "watch"))
    rv = parse_resource_version(query.get("resourceVersion"))
    match = query.get("resourceVersionMatch", "")
    send_initial = _bool(query, "sendInitialEvents")
    bookmarks = bool(_bool(query, "allowWatchBookmarks"))
    timeout = _int(query, "timeoutSeconds")
    if timeout is not None and timeout < 0:
        raise status.invalid(kind, f"timeoutSeconds: Invalid value: {timeout}: must be non-negative", "timeoutSeconds")
    if timeout is not None:
        timeout = min(timeout, MAX_TIMEOUT_SECONDS)
    limit = _int(query, "limit") or 0
    if limit < 0:
        raise status.invalid(kind, f"limit: Invalid value: {limit}: must be non-negative", "limit")
    token = query.get("continue", "")

    # The apiserver's ListOptions validation (apimachinery internalversion/validation).
    if match and match not in ("NotOlderThan", "Exact"):
        raise status.invalid(kind, f'resourceVersionMatch: Unsupported value: "{match}": supported values: '
                             '"Exact", "NotOlderThan", ""', "resourceVersionMatch")
    if send_initial is not None:
        if not watch:
            raise status.invalid(kind, "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
                                 "sendInitialEvents")
        if match != "NotOlderThan":
            raise status.invalid(kind, "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                                 "resourceVersionMatch to NotOlderThan", "resourceVersionMatch")
        if not bookmarks:
            raise status.invalid(kind, "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting "
                                 "allowWatchBookmarks to true", "allowWatchBookmarks")
    elif match:
        if watch:
            raise status.invalid(kind, "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for "
                                 "watch unless sendInitialEvents is provided", "resourceVersionMatch")
        if rv is None:
            raise status.invalid(kind, "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden "
                                 "unless resourceVersion is provided", "resourceVersionMatch")
        if match == "Exact" and rv == 0:
            raise status.invalid(kind, 'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is '
                                 'forbidden for resourceVersion "0"', "resourceVersionMatch")
    if token:
        if watch:
            raise status.bad_request("continue: Forbidden: continue is forbidden for watch")
        check_continue_token(token)

    label = parse_label_selector(query.get("labelSelector", ""))
    field = parse_field_selector(query.get("fieldSelector", ""), resource.supported_fields)
    return ListOptions(
        watch=watch, resource_version=rv, resource_version_match=match, allow_bookmarks=bookmarks,
        send_initial_events=send_initial, timeout_seconds=timeout, limit=limit, continue_token=token,
        label=None if label.empty else label, field=None if field.empty else field,
    )


def check_continue_token(token: str) -> None:
    """We never hand out continue tokens (our lists are whole), so any token is unknown.

    A well-formed apiserver token (perhaps from before a restart) is answered like an expired
    one, so the client restarts its list; anything else is a bad request, as upstream does.
    """
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        well_formed = isinstance(doc, dict) and "rv" in doc and "start" in doc
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        well_formed = False
    if not well_formed:
        raise status.bad_request("continue key is not valid: illegal base64 data or unsupported token")
    raise status.expired(
        "The provided continue parameter is too old to display a consistent list result. "
        "You can start a new list without the continue parameter."
    )
