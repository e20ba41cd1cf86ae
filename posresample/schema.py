"""The schema, as SQLAlchemy tables. Alembic (migrations/) owns it; a test checks they agree.

Times are unix seconds (float) from the database's clock, so leases compare on one clock
whichever host wrote them. JSON columns are JSON on SQLite and JSONB on PostgreSQL, so
`json_each` / `jsonb_array_elements` work in plain SQL.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)
JSONType = JSON().with_variant(JSONB(), "postgresql")
# BIGINT ids on PostgreSQL; SQLite needs INTEGER PRIMARY KEY to alias the rowid
BigId = BigInteger().with_variant(Integer(), "sqlite")

JOB_STATES = ("todo", "running", "done", "failed")
UNFINISHED_SQL = "state IN ('todo', 'running')"  # ix_jobs_unfinished's predicate: the queries match it exactly

scans = Table(
    "scans",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("config_key", Text, nullable=False),  # canonical JSON of what makes two scans the same
    Column("dataset", Text, nullable=False),
    Column("split", String(50), nullable=False),
    Column("model", Text, nullable=False),
    Column("layer", Integer, nullable=False),
    Column("probe_path", Text, nullable=False),
    Column("probe_sha256", String(64), nullable=False),
    Column("probe_classes", JSONType, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("excluded_labels", JSONType, nullable=False),  # ids, in the order the user gave them
    Column("dtype", String(20)),  # the model's dtype for the scan (bfloat16 on GPU, float32 on CPU)
    Column("attn", String(50)),  # attention implementation (eager, sdpa, flex_attention)
    Column("sentences_total", Integer, nullable=False),
    Column("sentences_done", Integer, nullable=False, default=0),
    Column("tokens_seen", Integer, nullable=False, default=0),
    Column("tokens_skipped_unknown_label", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("lease_owner", String(200)),  # host:pid:uuid of the process running the scan
    Column("lease_expires_at", Float),  # renewed by its heartbeat; another process may take it after
    Column("job_order", String(20)),  # random (jobs drain in a seeded random order) or dataset; NULL: dataset
    Column("order_seed", BigInteger),  # the random order's seed
)

candidates = Table(
    "candidates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scan_id", Integer, ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
    Column("dataset_idx", Integer, nullable=False),
    Column("sent_id", Text),
    Column("sentence_text", Text, nullable=False),
    Column("target_position", Integer, nullable=False),  # index in prefix_token_ids (BOS is 0)
    Column("target_token_id", Integer, nullable=False),
    Column("target_token", Text, nullable=False),
    Column("prefix_text", Text, nullable=False),
    Column("prefix_token_ids", JSONType, nullable=False),  # BOS through the target, inclusive
    Column("true_label", Integer, nullable=False),
    Column("true_label_name", String(10), nullable=False),
    Column("probe_probs", JSONType, nullable=False),  # in the probe's classes_ order
    Column("probe_pred", Integer, nullable=False),
    Column("probe_pred_name", String(10), nullable=False),
    Column("probe_max_prob", Float, nullable=False),
    UniqueConstraint("scan_id", "dataset_idx", "target_position"),
)

generation_params = Table(
    "generation_params",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", Text, nullable=False, unique=True),  # canonical JSON of the fields below
    Column("model", Text, nullable=False),
    Column("temperature", Float, nullable=False),
    Column("top_p", Float, nullable=False),
    Column("top_k", Integer),  # NULL: no top-k
    Column("max_new_tokens", Integer, nullable=False),
    Column("num_samples", Integer, nullable=False),
    Column("seed", BigInteger, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("candidate_id", Integer, ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False),
    Column("params_id", Integer, ForeignKey("generation_params.id"), nullable=False),
    Column("state", String(10), nullable=False, default="todo"),
    Column("priority", Integer, nullable=False, default=0),  # lower runs first
    Column("attempt", Integer, nullable=False, default=0),  # claims so far; raised at claim
    Column("lease_owner", String(200)),
    Column("lease_expires_at", Float),
    Column("last_error", Text),
    Column("last_worker", String(200)),
    Column("created_at", Float, nullable=False),
    Column("claimed_at", Float),
    Column("done_at", Float),
    UniqueConstraint("candidate_id", "params_id"),
    Index("ix_jobs_state_priority_id", "state", "priority", "id"),
    Index("ix_jobs_params_id_state", "params_id", "state"),  # claimable_models: one probe per params
    # pending(): a covering index of the unfinished jobs alone, so its count never reads done jobs
    Index(
        "ix_jobs_unfinished",
        "state",
        "attempt",
        "lease_expires_at",
        sqlite_where=text(UNFINISHED_SQL),
        postgresql_where=text(UNFINISHED_SQL),
    ),
)

completions = Table(
    "completions",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("sample_index", Integer, nullable=False),
    Column("text", Text, nullable=False),  # the decoded continuation only (the prefix is on the candidate)
    Column("token_ids", JSONType, nullable=False),
    Column("num_tokens", Integer, nullable=False),
    Column("finish_reason", String(10), nullable=False),  # eos | length
    Column("attempt", Integer, nullable=False),  # the job attempt that wrote this row
    UniqueConstraint("job_id", "sample_index"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True),  # host:pid:uuid
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("device", String(50), nullable=False),
    Column("lease_seconds", Float, nullable=False),  # heartbeats come every lease_seconds / 3
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float),
    Column("jobs_done", Integer, nullable=False, default=0),
    # {model: how its samples were drawn}: decode path, compile mode, dtype, device, library versions.
    # Set when the worker loads a model (jobs.last_worker joins here).
    Column("sampler", JSONType),
)

LABEL_STATUSES = ("ok", "no_span", "empty", "not_upos", "unsure")  # unsure: a person could not tell


def _label_columns():
    return [
        Column("upos", Integer),  # HF ClassLabel id; NULL unless status is ok
        Column("upos_name", String(10)),
        Column("tag", String(50)),  # the fine tag, when the tagger gives one
        Column("word", Text),  # the tagger's token that covers the target span
        Column("status", String(10), nullable=False),  # see LABEL_STATUSES
    ]


taggers = Table(
    "taggers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("spec", Text, nullable=False),  # spacy:PATH_OR_PACKAGE as given
    Column("identity_key", Text, nullable=False, unique=True),  # canonical JSON: name, library, files/package
    Column("library", String(50), nullable=False),
    Column("library_version", String(50), nullable=False),
    Column("files_sha256", String(64)),  # a trained folder: sha256 over its files
    Column("package_version", String(50)),  # an installed pipeline package
    Column("accuracy", JSONType),  # what the tagger's sidecar records (dev/test UPOS accuracy)
    # {"source": what it was measured on, "counts": {true UPOS: {tagger's UPOS: n}}}: train-tagger, evaluate-tagger
    Column("confusion", JSONType),
    Column("created_at", Float, nullable=False),
    Index("ix_taggers_name", "name", unique=True),  # one name, one tagger: outputs are keyed by it
)

labels = Table(
    "labels",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("completion_id", BigId, ForeignKey("completions.id", ondelete="CASCADE"), nullable=False),
    Column("tagger_id", Integer, ForeignKey("taggers.id", ondelete="CASCADE"), nullable=False),
    *_label_columns(),
    UniqueConstraint("completion_id", "tagger_id"),
)

candidate_labels = Table(
    "candidate_labels",
    metadata,  # the tagger on the candidate's original sentence
    Column("id", Integer, primary_key=True),
    Column("candidate_id", Integer, ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False),
    Column("tagger_id", Integer, ForeignKey("taggers.id", ondelete="CASCADE"), nullable=False),
    *_label_columns(),
    UniqueConstraint("candidate_id", "tagger_id"),
)

LABEL_TODO_SQL = "labelled_at IS NULL"  # ix_label_jobs_todo's predicate: the claim matches it exactly

label_jobs = Table(
    "label_jobs",
    metadata,  # a tagger's queue of done jobs: todo, leased to a label process, or labelled
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("tagger_id", Integer, ForeignKey("taggers.id", ondelete="CASCADE"), primary_key=True),
    Column("scan_id", Integer, nullable=False),  # the job's candidate's scan: `label --scan` reads the index alone
    Column("owner", String(200)),  # the label process holding it; expired leases are taken over
    Column("expires_at", Float),
    Column("labelled_at", Float),  # set in the transaction that writes the job's labels
    # the claim: a tagger's unlabelled jobs in (scan, job) order, never the labelled ones
    Index(
        "ix_label_jobs_todo",
        "tagger_id",
        "scan_id",
        "job_id",
        sqlite_where=text(LABEL_TODO_SQL),
        postgresql_where=text(LABEL_TODO_SQL),
    ),
)

annotation_items = Table(
    "annotation_items",
    metadata,  # completions sampled for people to label (annotate), in showing order
    Column("id", Integer, primary_key=True),
    Column("scan_id", Integer, ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
    Column("params_id", Integer, ForeignKey("generation_params.id"), nullable=False),
    Column("completion_id", BigId, ForeignKey("completions.id", ondelete="CASCADE"), nullable=False),
    Column("rank", Integer, nullable=False),  # shown in this order
    Column("overlap", Boolean, nullable=False),  # also for a second annotator (agreement)
    Column("reason", String(20), nullable=False),  # why it was picked: disagrees, odd_span, sample
    Column("created_at", Float, nullable=False),
    UniqueConstraint("scan_id", "params_id", "completion_id"),
    Index("ix_annotation_items_scan_id_params_id_rank", "scan_id", "params_id", "rank"),
)

annotation_leases = Table(
    "annotation_leases",
    metadata,  # which annotator holds which item now
    Column("item_id", Integer, ForeignKey("annotation_items.id", ondelete="CASCADE"), primary_key=True),
    Column("tagger_id", Integer, ForeignKey("taggers.id", ondelete="CASCADE"), primary_key=True),
    Column("owner", String(200), nullable=False),  # the server process holding it
    Column("expires_at", Float, nullable=False),
)
