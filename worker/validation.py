"""Upload checks: read a stored dataset or checkpoint with core and record ready/invalid on its row.

A defect core names (``CoreInputError``) becomes the row's ``reason`` as is; any other exception
while reading means the file is unreadable ("could not read file: ..."), never a crashed task and
never a row stuck in ``validating``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from api.db.crud import job_runs
from api.db.session import session_scope
from api.settings import Settings, get_settings
from core.errors import CoreInputError

log = logging.getLogger(__name__)

REASON_MAX_CHARS = 2000


def _reason(exc: BaseException) -> str:
    text = (
        str(exc) if isinstance(exc, CoreInputError) else f"could not read file: {type(exc).__name__}: {exc}"
    )
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 3] + "..."


def _stored_path(settings: Settings, relative: str) -> Path:
    """The upload's file, refusing any row path that would leave the storage folder."""
    root = settings.storage_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise CoreInputError("path", "stored path is outside the storage folder")
    return path


def validate_dataset(dataset_id: str, *, settings: Settings | None = None) -> str:
    """Load the dataset with ``core.datasets.load_dataset``; returns the status written (or ``missing``)."""
    settings = settings or get_settings()
    with session_scope() as s:
        ds = job_runs.get_dataset(s, dataset_id)
        if ds is None:
            log.warning("dataset %s: no such row; message dropped", dataset_id)
            return "missing"
        if ds.status != "validating":  # a duplicate delivery (recovery sweep): already decided
            return ds.status
        relative = ds.path
    facts: dict[str, Any] | None = None
    reason: str | None = None
    try:
        from core.datasets import load_dataset

        facts = load_dataset(_stored_path(settings, relative)).facts()
    except Exception as exc:
        reason = _reason(exc)
        log.info("dataset %s invalid: %s", dataset_id, reason)
    with session_scope() as s:
        job_runs.set_dataset_validation(s, dataset_id, ready=reason is None, facts=facts, reason=reason)
    return "ready" if reason is None else "invalid"


def validate_checkpoint(checkpoint_id: str, *, settings: Settings | None = None) -> str:
    """Inspect the checkpoint with ``core.models.inspect_checkpoint`` (safe loaders only), checked
    against the upload's stated fields; a valid statement is written beside the file for jobs."""
    settings = settings or get_settings()
    with session_scope(settings.database_url) as s:
        ck = job_runs.get_checkpoint(s, checkpoint_id)
        if ck is None:
            log.warning("checkpoint %s: no such row; message dropped", checkpoint_id)
            return "missing"
        if ck.status != "validating":  # a duplicate delivery (recovery sweep): already decided
            return ck.status
        relative = ck.path
        stated = dict((ck.info or {}).get("stated") or {})
    kind: str | None = None
    info: dict[str, Any] | None = {"stated": stated} if stated else None
    reason: str | None = None
    try:
        from core.models import inspect_checkpoint, parse_statement, write_statement

        path = _stored_path(settings, relative)
        statement = parse_statement(stated)
        facts = inspect_checkpoint(path, statement=statement).to_dict()
        write_statement(path, statement)
        info = {**facts, "stated": stated or None}
        kind = str(facts["kind"])
    except Exception as exc:
        reason = _reason(exc)
        log.info("checkpoint %s invalid: %s", checkpoint_id, reason)
    with session_scope(settings.database_url) as s:
        job_runs.set_checkpoint_validation(
            s, checkpoint_id, ready=reason is None, kind=kind, info=info, reason=reason
        )
    return "ready" if reason is None else "invalid"
