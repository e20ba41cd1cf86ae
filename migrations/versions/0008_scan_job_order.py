"""scans.job_order and scans.order_seed: the order in which a scan's jobs are claimed

A new scan gives each job a priority from a keyed hash of (order_seed, sentence index, target
position), so the queue drains in a uniform random order and the done jobs are at any moment a
simple random sample of the scan's candidates. Scans made before keep NULL, read as 'dataset':
their jobs have priority 0 and drain in id (dataset) order, as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 03:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ADD COLUMN is native on SQLite: no table copy (a copy of scans would cascade-delete its candidates)
    op.add_column("scans", sa.Column("job_order", sa.String(20), nullable=True))
    op.add_column("scans", sa.Column("order_seed", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch_op:
        batch_op.drop_column("order_seed")
        batch_op.drop_column("job_order")
