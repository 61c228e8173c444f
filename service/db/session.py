"""Engine and session factory, shared by the API (per-request sessions) and the worker.

SQLite gets WAL (readers never block the one writer), a busy timeout (writers queue instead of failing
with "database is locked") and foreign keys (off by default in SQLite). Postgres uses psycopg 3.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings, get_settings

# Long enough to ride out a worker's write burst (metrics + events + artifacts in one transaction).
SQLITE_BUSY_TIMEOUT_MS = 15_000

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    # NORMAL is durable across application crashes in WAL mode; only an OS crash can lose the last commit.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """A new pooled engine for ``url`` (SQLite file or Postgres)."""
    settings = settings or get_settings()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
    )


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: ``Settings.database_url``), created once."""
    url = url or get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().database_url
    with _lock:
        maker = _makers.get(url)
    if maker is None:
        maker = sessionmaker(bind=get_engine(url), expire_on_commit=False)
        with _lock:
            maker = _makers.setdefault(url, maker)
    return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception (commit at the edge)."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_after_fork() -> None:
    """In a forked child: forget the parent's pooled connections without closing them.

    A connection inherited through fork shares its socket with the parent; using it here would
    interleave two processes' traffic, and closing it would end the parent's session on the server.
    ``dispose(close=False)`` (SQLAlchemy's recipe for child processes) just forgets them.
    """
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()
        _makers.clear()


def dispose_engines() -> None:
    """Close every pooled connection (tests, and a process that is done with the database)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _makers.clear()
