"""Injected request failures for tests."""

from __future__ import annotations

from dataclasses import dataclass

from apisim import errors
from kubeapi.status import StatusError


@dataclass(slots=True)
class Faults:
    remaining: int = 0
    code: int = 500
    message: str = ""
    injected: int = 0  # how many requests have failed so far, for assertions

    def fail_next(self, n: int, code: int, message: str = "") -> None:
        self.remaining, self.code, self.message = max(0, n), code, message

    def take(self) -> StatusError | None:
        """The error for this request, if one is still pending."""
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        self.injected += 1
        return errors.from_code(self.code, self.message)
