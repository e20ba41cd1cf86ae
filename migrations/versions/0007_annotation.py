"""annotation_items, annotation_leases: the queue of completions people label by hand (annotate)

annotation_items: per (scan, generation params), the completions sampled for people to label, in
the order they are shown (`rank`), and whether a second annotator should see it too (`overlap`,
for agreement). annotation_leases: which annotator holds which item now, so two annotators never
get one item at once; an expired lease is taken over. The answers themselves are `labels` rows
of a tagger named human:NAME, with status ok, unsure or no_span.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "annotation_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("params_id", sa.Integer(), nullable=False),
        sa.Column("completion_id", BigId, nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("overlap", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_annotation_items_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["params_id"], ["generation_params.id"], name=op.f("fk_annotation_items_params_id_generation_params")
        ),
        sa.ForeignKeyConstraint(
            ["completion_id"],
            ["completions.id"],
            name=op.f("fk_annotation_items_completion_id_completions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_items")),
        sa.UniqueConstraint(
            "scan_id", "params_id", "completion_id", name=op.f("uq_annotation_items_scan_id_params_id_completion_id")
        ),
    )
    op.create_index("ix_annotation_items_scan_id_params_id_rank", "annotation_items", ["scan_id", "params_id", "rank"])
    op.create_table(
        "annotation_leases",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("tagger_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["annotation_items.id"],
            name=op.f("fk_annotation_leases_item_id_annotation_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tagger_id"], ["taggers.id"], name=op.f("fk_annotation_leases_tagger_id_taggers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("item_id", "tagger_id", name=op.f("pk_annotation_leases")),
    )


def downgrade() -> None:
    op.drop_table("annotation_leases")
    op.drop_index("ix_annotation_items_scan_id_params_id_rank", table_name="annotation_items")
    op.drop_table("annotation_items")
