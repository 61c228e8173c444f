"""Predictions: images assigned with a succeeded job's refined ensemble.

Revision ID: 0003_predictions
Revises: 0002_validation_attempts
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_predictions"
down_revision: str | None = "0002_validation_attempts"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("owner_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_predictions_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name="fk_predictions_owner_id_api_keys"),
    )
    op.create_index("ix_predictions_job_id_id", "predictions", ["job_id", "id"])
    op.create_index("ix_predictions_status_updated_at", "predictions", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_predictions_status_updated_at", table_name="predictions")
    op.drop_index("ix_predictions_job_id_id", table_name="predictions")
    op.drop_table("predictions")
