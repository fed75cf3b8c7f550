"""What can go wrong talking to the apiserver, as two exception types (no I/O here).

``ApiError``: the apiserver answered, with a non-2xx status (or, inside a watch, an ERROR event):
it carries the decoded Kubernetes ``Status``. ``TransportError``: no usable answer at all (refused,
reset, timed out, TLS, a body that broke off or cannot be framed). ``cache.apiclient`` raises them;
the reflector's machine (``cache.listwatch``), ``wrapper.authz`` and ``wrapper.passthrough`` read
them. Kept apart from the client so that the machine stays free of aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from kubeapi.strconv import NumError, parse_uint
from kubeapi.types import JSONDict

# A hint longer than this is not believed: a broken or hostile server must not park us for days.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class Cause:
    """One ``details.causes`` entry of a Status."""

    type: str
    message: str
    field: str


class ApiError(Exception):
    """A non-2xx answer (or a watch ERROR event) with its decoded ``Status``.

    ``status`` is the Status object as sent ({} when the body was not one); the fields are read
    from it defensively, since an upstream may send anything. ``retry_after`` is in seconds (0: no
    hint): the ``Retry-After`` header when it is delay-seconds, else ``details.retryAfterSeconds``.
    """

    def __init__(self, code: int, status: JSONDict, *, retry_after: float = 0.0, body: bytes = b"") -> None:
        self.code = code
        self.status = status
        self.reason = _str(status.get("reason"))
        self.message = _str(status.get("message"))
        details = status.get("details")
        details = details if isinstance(details, dict) else {}
        causes = details.get("causes")
        self.causes = tuple(
            Cause(_str(c.get("type")), _str(c.get("message")), _str(c.get("field")))
            for c in (causes if isinstance(causes, list) else ()) if isinstance(c, dict)
        )
        self.retry_after = retry_after or _seconds(details.get("retryAfterSeconds"))
        super().__init__(f"HTTP {code}: {self.message or repr(body[:200])}")

    @classmethod
    def from_response(cls, code: int, body: bytes, retry_after_header: str | None = None) -> ApiError:
        """An HTTP error answer: its status code, body, and ``Retry-After`` header."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        return cls(code, doc if isinstance(doc, dict) else {},
                   retry_after=_header_seconds(retry_after_header), body=body)

    @classmethod
    def from_status(cls, status: JSONDict) -> ApiError:
        """A watch ERROR event's Status (the HTTP answer itself was a 200)."""
        code = status.get("code")
        return cls(code if type(code) is int else 0, status)

    def _says(self, code: int) -> bool:
        # The HTTP status, or the code in the Status body (an ERROR event has only the latter).
        return self.code == code or self.status.get("code") == code

    @property
    def expired(self) -> bool:
        """410, whatever the reason (Expired, Gone): the resourceVersion is too old here."""
        return self._says(410)

    @property
    def too_large_resource_version(self) -> bool:
        """The apiserver is behind the resourceVersion asked for (after an etcd restore, say).

        Recognised by its cause type, as current apiservers send it, or by the message that older
        ones send with a 504 Timeout.
        """
        if any(c.type == "ResourceVersionTooLarge" for c in self.causes):
            return True
        if not (self._says(504) or self.reason == "Timeout"):
            return False
        return any("Too large resource version" in m for m in (self.message, *(c.message for c in self.causes)))

    @property
    def rejects_resource_version(self) -> bool:
        """Whether the answer says "that resourceVersion is not valid here": list again without one."""
        return self.expired or self.too_large_resource_version

    @property
    def summary(self) -> str:
        """The message, else the reason, for log lines."""
        return self.message or self.reason


class TransportError(Exception):
    """No usable answer: the apiserver could not be reached, or its answer could not be read."""


class ReadTimeout(TransportError):
    """No byte arrived within the read timeout: a dead (half-open) connection, most likely."""


class UnreadableStream(TransportError):
    """The answer cannot be framed from here on (a watch line over the read buffer, bad chunking)."""


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _seconds(value: object) -> float:
    if type(value) is not int or value <= 0:
        return 0.0
    return min(float(value), MAX_RETRY_AFTER)


def _header_seconds(header: str | None) -> float:
    """Retry-After in delay-seconds (ASCII digits); anything else (an HTTP date, garbage) is no hint."""
    if not header:
        return 0.0
    try:
        return min(float(parse_uint(header.strip())), MAX_RETRY_AFTER)
    except NumError:
        return 0.0
