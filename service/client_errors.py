"""What a client may read about a job that failed: a stable code and a message, never exception text.

Shared by the worker, which stores ``stored_error(exc)`` in ``jobs.error`` when a job fails, and the
API, which shows ``public_error(jobs.error)`` as the job's ``error_code`` and ``error``. Operators get
the exception itself from the worker's log. Imports neither torch nor FastAPI.

Stored form: ``"<code>: <message>"`` with ``code`` one of ``ERROR_CODES``; anything else in the column
(rows written before this format) reads as ``internal_error`` unless it is a known safe text.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from core.errors import CoreInputError, InsufficientMemory, TrainingDiverged
from service.storage.base import StorageError

INVALID_INPUT = "invalid_input"
INVALID_SPEC = "invalid_spec"
OUT_OF_MEMORY = "out_of_memory"
INSUFFICIENT_MEMORY = "insufficient_memory"
TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
TRAINING_DIVERGED = "training_diverged"
WORKER_LOST = "worker_lost"
BROKER_UNAVAILABLE = "broker_unavailable"
STORAGE_UNAVAILABLE = "storage_unavailable"
INTERNAL_ERROR = "internal_error"
# A prediction of a dataset the caller deleted before the worker read it.
DATASET_DELETED = "dataset_deleted"
ERROR_CODES: frozenset[str] = frozenset(
    {
        INVALID_INPUT,
        INVALID_SPEC,
        OUT_OF_MEMORY,
        INSUFFICIENT_MEMORY,
        TIME_LIMIT_EXCEEDED,
        TRAINING_DIVERGED,
        WORKER_LOST,
        BROKER_UNAVAILABLE,
        STORAGE_UNAVAILABLE,
        INTERNAL_ERROR,
        DATASET_DELETED,
    }
)
INTERNAL_MESSAGE = "the job failed on an internal error; the operator's logs have the detail"
OUT_OF_MEMORY_MESSAGE = (
    "the job ran out of memory on the worker; use a smaller refine.batch_size or a smaller dataset"
)
BROKER_UNAVAILABLE_MESSAGE = (
    "the task broker was unavailable at submit; send the same request with the same Idempotency-Key "
    "to queue this job again"
)
STORAGE_UNAVAILABLE_MESSAGE = "the file store was unavailable during the job; submit it again"
MAX_STORED_CHARS = 2000
# Written by the lease sweep (service/db/crud/job_runs.py) in its own words, which carry nothing internal.
_WORKER_LOST_TEXT = re.compile(r"worker lost \d+ times \(max_attempts=\d+\)")
# The validation task's prefix for an upload no reader could open; what follows is the reader's error.
_UNREADABLE_PREFIX = "could not read file:"
UNREADABLE_MESSAGE = "could not read file: not a readable file of this kind, or corrupt"
# Exception class names of out-of-memory errors raised by torch (CPU and CUDA), matched without torch.
_OOM_TYPES = frozenset({"OutOfMemoryError", "MemoryError"})


class TimeLimitExceeded(RuntimeError):
    """Raised by the worker when a job runs past ``Settings.job_time_limit_seconds``."""

    def __init__(self, limit_seconds: int) -> None:
        self.limit_seconds = limit_seconds
        super().__init__(f"time limit of {limit_seconds} s exceeded")


def _spec_problems(exc: ValidationError) -> str:
    # Locations and pydantic's messages only: ``str(exc)`` would echo the input values.
    parts = [
        f"{'.'.join(str(p) for p in err.get('loc', ())) or 'spec'}: {err.get('msg', 'invalid')}"
        for err in exc.errors()[:5]
    ]
    return "the job spec is not valid: " + "; ".join(parts)


def client_error(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` a client may see for the exception that ended a job."""
    if isinstance(exc, TimeLimitExceeded):
        return TIME_LIMIT_EXCEEDED, str(exc)
    if isinstance(exc, TrainingDiverged):
        return TRAINING_DIVERGED, str(exc)  # epoch, step, the loss and the setting to lower
    if isinstance(exc, InsufficientMemory):
        return INSUFFICIENT_MEMORY, str(exc)  # the preflight's figures and the field to change
    if isinstance(exc, CoreInputError):
        return INVALID_INPUT, str(exc)  # core's messages name the field and the problem, for clients
    if isinstance(exc, ValidationError):
        return INVALID_SPEC, _spec_problems(exc)
    if isinstance(exc, StorageError):
        return STORAGE_UNAVAILABLE, STORAGE_UNAVAILABLE_MESSAGE
    if any(cls.__name__ in _OOM_TYPES for cls in type(exc).__mro__):
        return OUT_OF_MEMORY, OUT_OF_MEMORY_MESSAGE
    return INTERNAL_ERROR, INTERNAL_MESSAGE


def format_error(code: str, message: str) -> str:
    """The ``jobs.error`` text for ``(code, message)``, cut to the column's working size."""
    text = f"{code}: {message}"
    return text if len(text) <= MAX_STORED_CHARS else text[: MAX_STORED_CHARS - 3] + "..."


def stored_error(exc: BaseException) -> str:
    """What the worker writes in ``jobs.error`` for ``exc``."""
    return format_error(*client_error(exc))


def public_error(stored: str | None) -> tuple[str | None, str | None]:
    """``(error_code, error)`` the API shows for a ``jobs.error`` value; ``(None, None)`` for none."""
    if stored is None:
        return None, None
    code, sep, message = stored.partition(": ")
    if sep and code in ERROR_CODES:
        return code, message
    if _WORKER_LOST_TEXT.fullmatch(stored):
        return WORKER_LOST, stored
    return INTERNAL_ERROR, INTERNAL_MESSAGE


def public_reason(reason: str | None) -> str | None:
    """An upload's ``reason`` as a client sees it: a reader's own error text (which can hold internal
    paths) becomes one stable sentence; core's named defects pass as they are."""
    if reason is not None and reason.startswith(_UNREADABLE_PREFIX):
        return UNREADABLE_MESSAGE
    return reason
