"""Predictions of an uploaded dataset: ``predictions.dataset_id``.

Revision ID: 0004_prediction_dataset
Revises: 0003_predictions
Create Date: 2026-12-03

No foreign key: the caller may delete the dataset while a prediction of it is queued, and the worker
must still see which dataset it was to end the prediction ``failed`` in those words.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_prediction_dataset"
down_revision: str | None = "0003_predictions"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("dataset_id", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("dataset_id")
