"""scans: dtype and attention implementation in the scan's identity; a lease so one process runs a scan

dtype and attn: a scan run in bf16 on a GPU and resumed in float32 on a CPU would mix candidate
decisions made two ways; they are part of what makes two scans the same now (NULL for scans made
before 0003, which take the first dtype they are resumed with).
lease_owner and lease_expires_at: the process running the scan holds this lease, renewed by a
heartbeat; a second process of the same scan is refused while it is live.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("dtype", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("attn", sa.String(length=50), nullable=True))
        batch.add_column(sa.Column("lease_owner", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        for column in ("lease_expires_at", "lease_owner", "attn", "dtype"):
            batch.drop_column(column)
