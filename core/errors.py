"""The one error type core/ raises for bad input.

Every defect in a dataset, checkpoint or spec surfaces as a ``CoreInputError``
that names the offending field (or file member) and the problem, so the service
can turn it into an ``invalid`` status or a 4xx without guessing.
"""

from __future__ import annotations


class CoreInputError(ValueError):
    """Bad input: ``field`` names what is wrong (``images``, ``labels``, ``archive:cat/1.png``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class StopRequested(RuntimeError):
    """Raised inside a long run when the caller's ``should_stop`` check says so (cancel)."""
