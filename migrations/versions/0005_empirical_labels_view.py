"""empirical_labels: a view of each candidate's empirical UPOS distribution per tagger

One row per (candidate, generation params, tagger, UPOS) with the number of completions whose target
the tagger read as that UPOS (status ok) and its share of them. Plain SQL on SQLite and PostgreSQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 16:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEW = """
CREATE VIEW empirical_labels AS
SELECT candidate_id, params_id, tagger_id, upos, upos_name, n AS count,
       CAST(n AS DOUBLE PRECISION) / SUM(n) OVER (PARTITION BY candidate_id, params_id, tagger_id) AS share
FROM (SELECT j.candidate_id, j.params_id, l.tagger_id, l.upos, l.upos_name, COUNT(*) AS n
      FROM labels l JOIN completions co ON co.id = l.completion_id JOIN jobs j ON j.id = co.job_id
      WHERE l.status = 'ok'
      GROUP BY j.candidate_id, j.params_id, l.tagger_id, l.upos, l.upos_name) AS per_label
"""


def upgrade() -> None:
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW empirical_labels")
