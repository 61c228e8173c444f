"""Programmatic Alembic: ``upgrade_head()`` is the start-up step (CLI, docker ``migrate`` service).

The script location is the installed ``migrations`` package, so this works from any working directory
and without alembic.ini.
"""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import migrations
from service.db.session import make_engine
from service.settings import get_settings


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).resolve().parent))
    # '%' is ConfigParser interpolation syntax; URL-encoded passwords contain it.
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def wait_for_db(url: str | None = None, *, timeout_s: float = 60.0) -> None:
    """Block until ``SELECT 1`` succeeds (compose starts the API before Postgres accepts connections)."""
    engine = make_engine(url or get_settings().database_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        engine.dispose()


def upgrade_head(url: str | None = None) -> None:
    """Bring the schema at ``url`` (default: settings) to the newest revision. Idempotent."""
    command.upgrade(alembic_config(url), "head")


def downgrade_base(url: str | None = None) -> None:
    command.downgrade(alembic_config(url), "base")


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url or get_settings().database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
