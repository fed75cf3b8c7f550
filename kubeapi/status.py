"""Kubernetes ``Status`` objects, as the apiserver builds them for errors.

Every Status the wrapper answers is built here, by a builder named for its reason; the wrapper
turns a ``StatusError`` into a response in one place (``wrapper/responses.py``).
"""

from __future__ import annotations

import math

from kubeapi.resources import Resource
from kubeapi.types import Status, StatusDetails

_REASON_BY_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "AlreadyExists",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class StatusError(Exception):
    """An error that is answered to the client as a Kubernetes Status."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.get("message", ""))
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status.get("code", 500))


def failure(code: int, message: str, reason: str | None = None, details: StatusDetails | None = None) -> Status:
    st: Status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASON_BY_CODE.get(code, ""),
        "code": code,
    }
    if details:
        st["details"] = details
    return st


def bad_request(message: str) -> StatusError:
    return StatusError(failure(400, message, "BadRequest"))


def not_found(group: str, plural: str, name: str) -> StatusError:
    what = f"{plural}.{group}" if group else plural
    return StatusError(
        failure(404, f'{what} "{name}" not found', "NotFound", {"name": name, "group": group, "kind": plural})
    )


def invalid(kind: str, message: str, field: str = "") -> StatusError:
    """422 Invalid, as ListOptions validation answers."""
    cause: dict[str, str] = {"type": "FieldValueForbidden", "message": message}
    if field:
        cause["field"] = field
    details: StatusDetails = {"kind": kind, "causes": [cause]}  # type: ignore[list-item]
    return StatusError(failure(422, f"{kind}.meta.k8s.io is invalid: {message}", "Invalid", details))


def expired(message: str) -> StatusError:
    """410 Expired: a resourceVersion or continue token older than the history."""
    return StatusError(failure(410, message, "Expired"))


def too_large_rv(requested: int, current: int, retry_after: int = 1) -> StatusError:
    """504 with cause ResourceVersionTooLarge (``storage.NewTooLargeResourceVersionError``).

    The watch cache answers it after waiting 3 s, with ``retryAfterSeconds: 1``; etcd answers
    an exact read at a future revision at once, with no retry hint (``retry_after=0``).
    """
    details: StatusDetails = {
        "causes": [{"type": "ResourceVersionTooLarge", "message": "Too large resource version"}],
    }
    if retry_after:
        details["retryAfterSeconds"] = retry_after
    # errors.NewTimeoutError prefixes its message with "Timeout: ".
    return StatusError(
        failure(504, f"Timeout: Too large resource version: {requested}, current: {current}", "Timeout", details)
    )


def method_not_allowed(method: str, what: str) -> StatusError:
    message = f"the server does not allow this method on the requested resource: {method} {what}"
    return StatusError(failure(405, message, "MethodNotAllowed"))


def service_unavailable(message: str) -> StatusError:
    return StatusError(failure(503, message, "ServiceUnavailable"))


def unauthorized(message: str) -> StatusError:
    return StatusError(failure(401, message, "Unauthorized"))


def forbidden(message: str, details: StatusDetails | None = None) -> StatusError:
    return StatusError(failure(403, message, "Forbidden", details))


def forbidden_verb(user: str, verb: str, resource: Resource, namespace: str | None, reason: str) -> StatusError:
    """403 as the apiserver's authorizer words it: who may not do what, where, and why."""
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    what = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    msg = f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource.plural}" in API group ' \
          f'"{resource.group}"{where}'
    if reason:
        msg += f": {reason}"
    return forbidden(msg, {"group": resource.group, "kind": resource.plural})


def conflict(message: str) -> StatusError:
    return StatusError(failure(409, message, "Conflict"))


def request_entity_too_large(limit: int) -> StatusError:
    return StatusError(failure(413, f"request entity too large: limit is {limit} bytes", "RequestEntityTooLarge"))


def too_many_requests(retry_after: float, message: str = "Too many requests, please try again later.") -> StatusError:
    """429 with ``retryAfterSeconds`` (whole seconds, at least 1); the default message is the
    apiserver's max-in-flight filter's."""
    seconds = max(1, math.ceil(retry_after))
    return StatusError(failure(429, message, "TooManyRequests", {"retryAfterSeconds": seconds}))


def internal_error(message: str) -> StatusError:
    return StatusError(failure(500, f"Internal error occurred: {message}", "InternalError"))
