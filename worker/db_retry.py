"""Riding out a database blip: telemetry writes retry briefly then drop; the outcome write retries longer.

A progress row, an epoch's metrics or an event is worth less than the hours of training behind it, so a
write that keeps failing is logged and dropped, never raised into the run. The outcome must not be lost:
it retries for longer, and if the database stays away the error propagates, the job stays ``running``
without a heartbeat, its lease lapses and the recovery sweep re-runs it from its epoch checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Pauses (seconds) between tries: telemetry gives up after ~2 s, the outcome after ~15 s.
TELEMETRY_RETRY_DELAYS: tuple[float, ...] = (0.2, 0.5, 1.0)
OUTCOME_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def with_db_retry(write: Callable[[], T], *, delays: Sequence[float], what: str) -> T:
    """Call ``write`` (one whole transaction) until it returns; database errors retry after ``delays``.

    Raises the last database error when every try failed; other exceptions propagate at once.
    """
    for delay in delays:
        try:
            return write()
        except SQLAlchemyError as exc:
            log.warning(
                "%s: database error (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay
            )
            time.sleep(delay)
    return write()


def write_telemetry(write: Callable[[], T], *, what: str) -> T | None:
    """``with_db_retry`` with the short telemetry delays; None (and a log line) when it gave up."""
    try:
        return with_db_retry(write, delays=TELEMETRY_RETRY_DELAYS, what=what)
    except SQLAlchemyError:
        log.exception("%s: dropped after %d tries", what, len(TELEMETRY_RETRY_DELAYS) + 1)
        return None
