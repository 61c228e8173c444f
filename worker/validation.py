"""Upload checks: read a stored dataset or checkpoint in a limited child and record ready/invalid.

Each delivery first counts an attempt (``service.db.crud.upload_validation``); the check itself runs in
``worker.validation_sandbox`` under memory and CPU limits sized from the upload, so a hostile file
ends ``invalid`` with a reason instead of taking the worker down. A defect core names
(``CoreInputError``) becomes the row's ``reason`` as is; any other reader failure reads "could not
read file: ...". Reasons and facts are made storable first (file names from archives can hold bytes
that are not UTF-8, or NULs, which Postgres refuses). A failed write of the outcome raises
``OutcomeNotRecorded`` carrying it, so the task retries the write alone and is never done with the
row still ``validating``.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from typing import Any

from service.db.crud import upload_validation
from service.db.models import Checkpoint, Dataset
from service.db.session import session_scope
from service.settings import GiB, Settings, get_settings
from service.storage import InvalidKey, ObjectNotFound, get_storage
from worker.validation_sandbox import Kind, SandboxLimits, run_check

log = logging.getLogger(__name__)

REASON_MAX_CHARS = 2000
# C0 controls but tab and newline, DEL and C1 controls: shown escaped (\x00 is refused by Postgres).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def storable_text(text: str, *, max_chars: int | None = None) -> str:
    """``text`` as valid UTF-8 without control characters: undecodable bytes that Python kept as
    surrogates show as ``\\xff``, other unencodable characters and controls as escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return text


def _storable(value: Any) -> Any:
    """A JSON value with every string (keys too) made storable."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def sandbox_limits(settings: Settings, upload_bytes: int) -> SandboxLimits:
    """Limits of one check: a base plus a share proportional to the upload's size."""
    memory = settings.validation_memory_bytes + int(settings.validation_memory_upload_factor * upload_bytes)
    cpu = settings.validation_cpu_seconds + math.ceil(
        settings.validation_cpu_seconds_per_gib * upload_bytes / GiB
    )
    # Wall time: a child blocked in I/O burns no CPU; twice its CPU allowance plus a margin is plenty.
    return SandboxLimits(memory_bytes=memory, cpu_seconds=cpu, wall_seconds=2.0 * cpu + 60.0)


def _validate(kind: Kind, model: type[Dataset] | type[Checkpoint], upload_id: str, settings: Settings) -> str:
    with session_scope(settings.database_url) as s:
        start = upload_validation.start_validation(s, model, upload_id, max_attempts=settings.max_attempts)
    if start.outcome == "missing":
        log.warning("%s %s: no such row; message dropped", kind, upload_id)
        return "missing"
    if start.outcome == "exhausted":
        log.warning("%s %s invalid: validation crashed %d times", kind, upload_id, start.attempt)
    if start.outcome != "started":  # decided before (a duplicate delivery), or ended just now
        return str(start.status)
    stated = dict((start.info or {}).get("stated") or {})
    storage = get_storage(settings)
    # A remote store's upload is read from a copy of this delivery's own; one left by a crashed
    # delivery goes first. With the local backend the check reads the stored file itself.
    cache = settings.scratch_dir / "validation" / kind / upload_id
    shutil.rmtree(cache, ignore_errors=True)
    facts: dict[str, Any] | None = None
    try:
        path = storage.local_copy(start.path, cache)
    except InvalidKey:
        reason: str | None = "path: stored path is outside the storage folder"
    except ObjectNotFound:
        reason = "could not read file: it is missing from storage"
    else:

        def renew() -> None:
            with session_scope(settings.database_url) as s:
                upload_validation.renew_validation(s, model, upload_id)

        try:
            outcome = run_check(
                kind,
                path,
                stated,
                limits=sandbox_limits(settings, path.stat().st_size if path.is_file() else 0),
                heartbeat=renew,
                heartbeat_seconds=max(1.0, settings.requeue_seconds / 3),
            )
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        facts, reason = outcome.facts, outcome.reason
        log.info(
            "%s %s checked (attempt %d, child peak RSS %.0f MiB): %s",
            kind,
            upload_id,
            start.attempt,
            outcome.peak_rss_bytes / 2**20,
            reason or "ready",
        )
    # Storable already: a retry carries it through the broker's JSON.
    outcome = {
        "facts": _storable(facts),
        "reason": None if reason is None else storable_text(reason, max_chars=REASON_MAX_CHARS),
        "stated": _storable(stated),
    }
    try:
        _record(kind, model, upload_id, settings, facts=facts, reason=reason, stated=stated)
    except Exception as exc:
        raise OutcomeNotRecorded(outcome) from exc
    return "ready" if reason is None else "invalid"


class OutcomeNotRecorded(RuntimeError):
    """The check finished but its outcome could not be written; ``outcome`` is what to write on retry
    (a JSON object: facts, reason, stated), so the retry neither validates again nor counts an attempt."""

    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__("the validation outcome could not be recorded")
        self.outcome = outcome


def record_outcome(
    kind: Kind, upload_id: str, outcome: dict[str, Any], *, settings: Settings | None = None
) -> str:
    """Write an outcome that an earlier delivery computed but could not record (``OutcomeNotRecorded``)."""
    model = Dataset if kind == "dataset" else Checkpoint
    reason = outcome.get("reason")
    _record(
        kind,
        model,
        upload_id,
        settings or get_settings(),
        facts=outcome.get("facts"),
        reason=reason,
        stated=dict(outcome.get("stated") or {}),
    )
    return "ready" if reason is None else "invalid"


def _record(
    kind: Kind,
    model: type[Dataset] | type[Checkpoint],
    upload_id: str,
    settings: Settings,
    *,
    facts: dict[str, Any] | None,
    reason: str | None,
    stated: dict[str, Any],
) -> None:
    """Write the outcome; raises on a failed write (the task then retries, the row stays validating)."""
    ready = reason is None
    text = None if ready else storable_text(str(reason), max_chars=REASON_MAX_CHARS)
    values: dict[str, Any]
    if kind == "dataset":
        values = {"facts": _storable(facts)}
    elif ready and facts is not None:
        values = {"kind": str(facts["kind"]), "info": _storable({**facts, "stated": stated or None})}
    else:
        values = {"kind": None, "info": _storable({"stated": stated}) if stated else None}
    with session_scope(settings.database_url) as s:
        upload_validation.finish_validation(s, model, upload_id, ready=ready, reason=text, **values)


def validate_dataset(dataset_id: str, *, settings: Settings | None = None) -> str:
    """Load the dataset with ``core.datasets.load_dataset``; returns the status written (or ``missing``)."""
    return _validate("dataset", Dataset, dataset_id, settings or get_settings())


def validate_checkpoint(checkpoint_id: str, *, settings: Settings | None = None) -> str:
    """Inspect the checkpoint with ``core.models.inspect_checkpoint`` (safe loaders only), checked
    against the upload's stated fields; a valid statement is written beside the file for jobs."""
    return _validate("checkpoint", Checkpoint, checkpoint_id, settings or get_settings())
