"""Per-API-key quotas (``RUC_QUOTA_*``), checked before a job is queued or an upload is read.

Over a quota is a 429 problem whose detail names the limit, with ``Retry-After``. Usage comes from the
tables (``service/db/crud/quotas.py``), so requests in flight at the same moment can overshoot a quota by
at most their own number; the quotas bound a tenant's share, they are not billing.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy.orm import Session

from api.problems import ProblemError
from service.db.crud import quotas as crud
from service.db.models import utcnow
from service.settings import Settings

UPLOAD_WINDOW = timedelta(hours=1)
# A slot frees when one of the key's jobs ends; a poll interval later is a fair first retry.
ACTIVE_JOBS_RETRY_AFTER_S = 30
# Storage frees only when the client deletes something; retrying sooner changes nothing.
STORED_BYTES_RETRY_AFTER_S = 3600


def quota_exceeded(detail: str, *, limit_name: str, retry_after: int) -> ProblemError:
    retry_after = max(1, int(retry_after))
    return ProblemError(
        429,
        detail,
        slug="quota-exceeded",
        title="Quota exceeded",
        headers={"Retry-After": str(retry_after)},
        extra={"limit": limit_name, "retry_after_seconds": retry_after},
    )


def check_active_jobs(session: Session, settings: Settings, owner_id: str) -> None:
    limit = settings.quota_active_jobs
    if limit <= 0:
        return
    active = crud.count_active_jobs(session, owner_id)
    if active >= limit:
        raise quota_exceeded(
            f"this API key has {active} queued or running jobs; the limit is {limit} "
            "(RUC_QUOTA_ACTIVE_JOBS). Wait for one to finish or cancel one",
            limit_name="RUC_QUOTA_ACTIVE_JOBS",
            retry_after=ACTIVE_JOBS_RETRY_AFTER_S,
        )


def check_upload_rate(session: Session, settings: Settings, owner_id: str) -> None:
    limit = settings.quota_uploads_per_hour
    if limit <= 0:
        return
    now = utcnow()
    recent = crud.uploads_since(session, owner_id, now - UPLOAD_WINDOW)
    if len(recent) >= limit:
        # The window frees a slot when the oldest upload that counts against it ages out.
        frees_at = recent[len(recent) - limit] + UPLOAD_WINDOW
        raise quota_exceeded(
            f"this API key made {len(recent)} uploads in the last hour; the limit is {limit} "
            "(RUC_QUOTA_UPLOADS_PER_HOUR)",
            limit_name="RUC_QUOTA_UPLOADS_PER_HOUR",
            retry_after=math.ceil((frees_at - now).total_seconds()),
        )


def storage_left(session: Session, settings: Settings, owner_id: str) -> int | None:
    """Bytes this key may still store; None without a storage quota. A 429 when nothing is left."""
    limit = settings.quota_stored_bytes
    if limit <= 0:
        return None
    used = crud.stored_bytes(session, owner_id)
    if used >= limit:
        raise storage_exceeded(limit, used)
    return limit - used


def storage_exceeded(limit: int, used: int) -> ProblemError:
    return quota_exceeded(
        f"this API key stores {used} bytes; the limit is {limit} (RUC_QUOTA_STORED_BYTES). "
        "Delete datasets, checkpoints or jobs to make room",
        limit_name="RUC_QUOTA_STORED_BYTES",
        retry_after=STORED_BYTES_RETRY_AFTER_S,
    )
