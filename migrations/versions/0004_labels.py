"""taggers, labels, candidate_labels, label_leases: the POS of the target word in every completion

taggers: one row per tagger identity (name, spec, sha256 of its files or package version, library
version, the accuracy its sidecar records). labels: one row per (completion, tagger), with a
status so nothing is dropped silently (ok, no_span, empty, not_upos). candidate_labels: the same
tagger on the candidate's original sentence. label_leases: which `label` process is labelling which
done job, so parallel processes split the work; a lease that expires is taken over.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _label_columns():
    return [
        sa.Column("upos", sa.Integer(), nullable=True),
        sa.Column("upos_name", sa.String(length=10), nullable=True),
        sa.Column("tag", sa.String(length=50), nullable=True),
        sa.Column("word", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "taggers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("identity_key", sa.Text(), nullable=False),
        sa.Column("library", sa.String(length=50), nullable=False),
        sa.Column("library_version", sa.String(length=50), nullable=False),
        sa.Column("files_sha256", sa.String(length=64), nullable=True),
        sa.Column("package_version", sa.String(length=50), nullable=True),
        sa.Column("accuracy", JSONType, nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_taggers")),
        sa.UniqueConstraint("identity_key", name=op.f("uq_taggers_identity_key")),
    )
    op.create_table(
        "labels",
        sa.Column("id", BigId, nullable=False),
        sa.Column("completion_id", BigId, nullable=False),
        sa.Column("tagger_id", sa.Integer(), nullable=False),
        *_label_columns(),
        sa.ForeignKeyConstraint(
            ["completion_id"], ["completions.id"], name=op.f("fk_labels_completion_id_completions"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tagger_id"], ["taggers.id"], name=op.f("fk_labels_tagger_id_taggers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
        sa.UniqueConstraint("completion_id", "tagger_id", name=op.f("uq_labels_completion_id_tagger_id")),
    )
    op.create_table(
        "candidate_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("tagger_id", sa.Integer(), nullable=False),
        *_label_columns(),
        sa.ForeignKeyConstraint(
            ["candidate_id"],
            ["candidates.id"],
            name=op.f("fk_candidate_labels_candidate_id_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tagger_id"], ["taggers.id"], name=op.f("fk_candidate_labels_tagger_id_taggers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidate_labels")),
        sa.UniqueConstraint("candidate_id", "tagger_id", name=op.f("uq_candidate_labels_candidate_id_tagger_id")),
    )
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


def downgrade() -> None:
    for table in ("label_leases", "candidate_labels", "labels", "taggers"):
        op.drop_table(table)
