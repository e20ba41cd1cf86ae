"""label_jobs replaces label_leases: each tagger's queue of done jobs, so a label claim is O(batch)

label_leases held only the jobs being labelled, so every claim looked for done jobs without labels
by walking the labelled ones first: a claim's cost grew with the study. label_jobs keeps a row per
(done job, tagger): todo, leased (owner, expires_at) or labelled (labelled_at). A claim reads the
partial index of the unlabelled rows; the rows are added, for the done jobs that lack one, when a
claim finds none free. The rows are made on first use (a job already labelled gets labelled_at
then), so nothing is copied here; label_leases held only live leases, and no label process runs
across an upgrade.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TODO = sa.text("labelled_at IS NULL")


def upgrade() -> None:
    op.drop_table("label_leases")
    op.create_table(
        "label_jobs",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("tagger_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("labelled_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_label_jobs_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tagger_id"], ["taggers.id"], name=op.f("fk_label_jobs_tagger_id_taggers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "tagger_id", name=op.f("pk_label_jobs")),
    )
    op.create_index(
        "ix_label_jobs_todo", "label_jobs", ["tagger_id", "scan_id", "job_id"], sqlite_where=TODO, postgresql_where=TODO
    )


def downgrade() -> None:
    op.drop_index("ix_label_jobs_todo", table_name="label_jobs")
    op.drop_table("label_jobs")
    op.create_table(
        "label_leases",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("tagger_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_label_leases_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tagger_id"], ["taggers.id"], name=op.f("fk_label_leases_tagger_id_taggers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "tagger_id", name=op.f("pk_label_leases")),
    )
