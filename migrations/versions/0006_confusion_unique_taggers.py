"""taggers: the tagger's confusion matrix, unique names; jobs: an index for the per-model claim check

taggers.confusion: counts of (treebank UPOS -> the tagger's UPOS) on held-out words, written by
train-tagger and evaluate-tagger; analyze corrects the empirical distributions with it.
taggers.name is unique (ix_taggers_name): two taggers of one name used to merge in analyze and
export. Names already repeated are suffixed with the row id (the oldest keeps its name).
ix_jobs_params_id_state: `claimable_models` asks, per generation params, whether a claimable job
exists; the index answers it without reading the backlog. ix_jobs_unfinished: a partial, covering
index of the todo and running jobs, which `pending()` counts on every worker-loop iteration.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # ADD COLUMN and CREATE INDEX are native on SQLite: no table copy (a copy of taggers would
    # cascade-delete its labels under foreign_keys=ON)
    op.add_column("taggers", sa.Column("confusion", JSONType, nullable=True))
    op.execute(
        "UPDATE taggers SET name = name || '-' || CAST(id AS VARCHAR(20)) "
        "WHERE id NOT IN (SELECT MIN(id) FROM taggers GROUP BY name)"
    )
    op.create_index("ix_taggers_name", "taggers", ["name"], unique=True)
    op.create_index("ix_jobs_params_id_state", "jobs", ["params_id", "state"])
    unfinished = sa.text("state IN ('todo', 'running')")
    op.create_index(
        "ix_jobs_unfinished",
        "jobs",
        ["state", "attempt", "lease_expires_at"],
        sqlite_where=unfinished,
        postgresql_where=unfinished,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unfinished", table_name="jobs")
    op.drop_index("ix_jobs_params_id_state", table_name="jobs")
    op.drop_index("ix_taggers_name", table_name="taggers")
    op.drop_column("taggers", "confusion")
