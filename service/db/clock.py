"""The database's clock as a SQL expression, so every worker reads one time however its own clock drifts.

Lease expiries, heartbeats and re-enqueue marks are written and compared with ``db_now(offset)``
inside the statement itself; no Python ``datetime.now()`` takes part, so a worker whose clock is a
minute off neither releases a live lease early nor holds a dead one late.

Postgres: ``statement_timestamp()`` (the start of the statement, not of a transaction that may have
waited on a row lock) plus an interval. SQLite: ``strftime(... 'now', '+N seconds')`` in the text
format SQLAlchemy stores (``YYYY-MM-DD HH:MM:SS.ffffff``, naive UTC), so written values read back
and compare as text in the same order as the ones the ORM writes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from service.db.models.base import UTCDateTime


class db_now(FunctionElement[datetime]):  # noqa: N801 - reads like the SQL function it is
    """The database's current UTC time plus ``offset_seconds`` (may be negative), as a SQL expression."""

    type = UTCDateTime()
    name = "db_now"
    inherit_cache = True

    def __init__(self, offset_seconds: float = 0.0) -> None:
        super().__init__(literal(float(offset_seconds), Float()))


@compiles(db_now)
def _compile_default(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(statement_timestamp() + ({offset}) * interval '1 second')"


@compiles(db_now, "sqlite")
def _compile_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    # %f is seconds with milliseconds (SS.SSS); '000' pads it to SQLAlchemy's six-digit fraction.
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', ({offset}) || ' seconds') || '000')"
