"""API keys: created by the CLI (``keys create``), looked up by hash on every request."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import ApiKey, new_id, utcnow

KEY_PREFIX = "ruc_"
DISPLAY_PREFIX_LEN = 12


def hash_key(plaintext: str) -> str:
    """sha256 hex; keys are 256-bit random, so a fast unsalted hash is enough (no dictionary to attack)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """Insert a new key; returns the row and the plaintext, which is never stored and shown only once."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        name=name,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:DISPLAY_PREFIX_LEN],
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, plaintext


def owner_for_hash(session: Session, key_hash: str) -> str | None:
    """The owner id of an active (not revoked) key with this hash, else None."""
    return session.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))


def list_keys(session: Session) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).order_by(ApiKey.id)).all()


def revoke_key(session: Session, key_id: str) -> bool:
    """Mark a key revoked; False when there is no such active key."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True
