"""Exceptions of the client: an HTTP error answer is an ``ApiError`` carrying its problem+json fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx


class RucClientError(Exception):
    """Base of every error this package raises (transport errors are wrapped after the last retry)."""


@dataclass(frozen=True)
class FieldError:
    field: str  # dotted path into the request, e.g. ``refine.lr``
    problem: str


@dataclass
class ApiError(RucClientError):
    """The server answered with an error status; fields are those of its RFC 7807 problem document."""

    status: int
    type: str = ""
    title: str = ""
    detail: str = ""
    code: str = ""
    errors: list[FieldError] = field(default_factory=list)
    retry_after_seconds: float | None = None
    body: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code or self.title}: {self.detail or self.title}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text[:300]
            return cls(status=response.status_code, title=response.reason_phrase, detail=text, body={})
        errors = [
            FieldError(str(e.get("field", "")), str(e.get("problem", "")))
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        return cls(
            status=int(body.get("status") or response.status_code),
            type=str(body.get("type", "")),
            title=str(body.get("title", response.reason_phrase)),
            detail=str(body.get("detail", "")),
            code=str(body.get("code", "")),
            errors=errors,
            retry_after_seconds=retry_after(response),
            body=body,
        )


class ChecksumError(RucClientError):
    """The sha256 of the bytes sent or received differs from the server's."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: sha256 {actual} differs from the server's {expected}")
        self.what, self.expected, self.actual = what, expected, actual


class ConnectionFailed(RucClientError):
    """No answer from the server after every retry."""


class WaitTimeout(RucClientError):
    """``wait`` gave up before the resource reached a final state."""


class PredictionFailed(RucClientError):
    """A prediction ended ``invalid`` (its images do not fit the job) or ``failed``; ``prediction``
    has the ``error_code`` and ``error``."""

    def __init__(self, prediction: Any) -> None:
        super().__init__(
            f"prediction {prediction.id} {prediction.status}: {prediction.error_code}: {prediction.error}"
        )
        self.prediction = prediction


def retry_after(response: httpx.Response) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds form; an HTTP date is ignored)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
