"""Status errors for writes, shaped like the apiserver's (kubeapi.status covers reads)."""

from __future__ import annotations

from kubeapi.resources import Resource
from kubeapi.status import StatusError, failure
from kubeapi.types import StatusCause, StatusDetails


def _what(resource: Resource) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def already_exists(resource: Resource, name: str) -> StatusError:
    details: StatusDetails = {"name": name, "group": resource.group, "kind": resource.plural}
    return StatusError(failure(409, f'{_what(resource)} "{name}" already exists', "AlreadyExists", details))


def conflict(resource: Resource, name: str, why: str = "") -> StatusError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    details: StatusDetails = {"name": name, "group": resource.group, "kind": resource.plural}
    return StatusError(failure(409, f'Operation cannot be fulfilled on {_what(resource)} "{name}": {why}',
                               "Conflict", details))


def invalid_object(resource: Resource, name: str, field: str, message: str,
                   cause_type: str = "FieldValueInvalid") -> StatusError:
    cause: StatusCause = {"type": cause_type, "message": message, "field": field}
    details: StatusDetails = {"name": name, "group": resource.group, "kind": resource.kind, "causes": [cause]}
    return StatusError(failure(422, f'{resource.kind} "{name}" is invalid: {field}: {message}', "Invalid", details))


def unsupported_media_type(content_type: str) -> StatusError:
    return StatusError(failure(415, f"the body of the request was in an unknown format - accepted media types "
                                    f"include: application/json-patch+json, application/merge-patch+json, "
                                    f"application/strategic-merge-patch+json (got {content_type!r})",
                               "UnsupportedMediaType"))


def from_code(code: int, message: str = "") -> StatusError:
    """A generic Status for fault injection."""
    return StatusError(failure(code, message or f"injected failure ({code})"))


def unauthorized() -> StatusError:
    """What the apiserver answers for a credential none of its authenticators accepts."""
    return StatusError(failure(401, "Unauthorized", "Unauthorized"))
