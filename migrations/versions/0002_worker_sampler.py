"""workers.sampler: how each worker draws its samples

Which decode path, compile mode, dtype, device and library versions a worker sampled with, per
model ({model: description}); NULL for workers that loaded no model (or ran before 0002).
In bf16 these decide the samples together with the seed (docs/design.md, Reproducibility).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 21:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "workers",
        sa.Column(
            "sampler", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("sampler")
