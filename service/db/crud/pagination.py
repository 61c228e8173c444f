"""Keyset (cursor) pagination over time-sortable string ids: stable under inserts, O(limit) per page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


def page_desc(
    session: Session, stmt: Select[Any], id_col: InstrumentedAttribute[Any], *, after: Any, limit: int
) -> tuple[Sequence[Any], bool]:
    """Rows of ``stmt`` newest first (by id), strictly after the cursor ``after``; (rows, has_more)."""
    if after is not None:
        stmt = stmt.where(id_col < after)
    rows = session.scalars(stmt.order_by(id_col.desc()).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


def page_asc(
    session: Session, stmt: Select[Any], id_col: InstrumentedAttribute[Any], *, after: Any, limit: int
) -> tuple[Sequence[Any], bool]:
    """Rows oldest first (event logs read forward: ``after`` = the last id seen)."""
    if after is not None:
        stmt = stmt.where(id_col > after)
    rows = session.scalars(stmt.order_by(id_col.asc()).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit
