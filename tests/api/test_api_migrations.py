from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.db.migrate import current_revision, downgrade_base, upgrade_head
from service.db.models import Base

TABLES = {
    "api_keys",
    "datasets",
    "checkpoints",
    "jobs",
    "job_events",
    "job_metrics",
    "artifacts",
    "predictions",
}


def _check_roundtrip(url: str) -> None:
    upgrade_head(url)
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert current_revision(url) == "0004_prediction_dataset"
        with engine.connect() as conn:
            # The hand-written migration and the models describe the same schema.
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        upgrade_head(url)  # idempotent
        downgrade_base(url)
        assert set(inspect(engine).get_table_names()) & TABLES == set()
        assert current_revision(url) is None
    finally:
        engine.dispose()


def test_sqlite_upgrade_and_downgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # the migration scripts are found from any working directory
    _check_roundtrip(f"sqlite:///{tmp_path / 'm.sqlite3'}")


def test_postgres_upgrade_and_downgrade(postgres_url: str) -> None:
    # postgres_url is already at head (session fixture); run the round trip and restore head.
    downgrade_base(postgres_url)
    try:
        _check_roundtrip(postgres_url)
    finally:
        upgrade_head(postgres_url)
