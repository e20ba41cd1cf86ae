"""The label stage's statements: taggers, each tagger's queue of done jobs, label rows. Idempotent writes.

Each tagger has a queue (label_jobs): a row per done job, todo, leased or labelled. A label process
claims todo rows or rows whose lease expired, reading the partial index of the unlabelled rows, so
a claim costs O(batch) however many jobs are labelled already; when none is free it first adds rows
for the done jobs that have none (one INSERT ... SELECT), which is how jobs finished since reach the
queue. It tags the claimed jobs' completions and, in one transaction, writes the labels and marks
the jobs labelled. Labels are unique per (completion, tagger) and inserted with ON CONFLICT DO
NOTHING: a late write by a process whose lease was taken over adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, case, exists, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from .db import db_now, read, write
from .scan_store import canonical
from .schema import (
    LABEL_TODO_SQL,
    candidate_labels,
    candidates,
    completions,
    generation_params,
    jobs,
    label_jobs,
    labels,
    scans,
    taggers,
)

IDENTITY_FIELDS = ("name", "library", "files_sha256", "package_version")


@dataclass(frozen=True)
class LabelInput:
    completion_id: int
    job_id: int
    model: str
    prefix_token_ids: list[int]
    token_ids: list[int]


def _insert(conn: Connection, table):
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def register_tagger(engine: Engine, identity: dict) -> int:
    """The taggers row for this identity (created on first use). A name is one tagger: another
    tagger (other files, version or library) under a name already taken is refused, since every
    output (analyze, export, SQL) is keyed by the name."""
    from .errors import TaggerError

    key = canonical({k: identity.get(k) for k in IDENTITY_FIELDS})
    with write(engine) as conn:
        taken = conn.execute(
            select(taggers.c.id, taggers.c.identity_key, taggers.c.spec).where(taggers.c.name == identity["name"])
        ).first()
        if taken is not None and taken.identity_key != key:
            raise TaggerError(
                f"a different tagger is already named {identity['name']!r} in this database "
                f"(tagger {taken.id}, {taken.spec}): give this one another name with --tagger-name"
            )
        conn.execute(
            _insert(conn, taggers)
            .values(
                name=identity["name"],
                spec=identity["spec"],
                identity_key=key,
                library=identity["library"],
                library_version=identity["library_version"],
                files_sha256=identity.get("files_sha256"),
                package_version=identity.get("package_version"),
                accuracy=identity.get("accuracy"),
                confusion=identity.get("confusion"),
                created_at=db_now(),
            )
            .on_conflict_do_nothing()
        )
        tagger_id = conn.execute(select(taggers.c.id).where(taggers.c.identity_key == key)).scalar()
        if tagger_id is None:  # another process took the name between our check and our insert
            raise TaggerError(
                f"a different tagger is already named {identity['name']!r} in this database: "
                "give this one another name with --tagger-name"
            )
        if identity.get("confusion") is not None:  # measured since the row was made (evaluate-tagger)
            conn.execute(
                update(taggers)
                .where(taggers.c.id == tagger_id, taggers.c.confusion.is_(None))
                .values(confusion=identity["confusion"])
            )
        return tagger_id


def set_confusion(engine: Engine, tagger_id: int, confusion: dict, accuracy: dict | None = None) -> None:
    """Store a measured confusion (evaluate-tagger) with the tagger, replacing the one it had."""
    values = {"confusion": confusion} | ({"accuracy": accuracy} if accuracy is not None else {})
    with write(engine) as conn:
        conn.execute(update(taggers).where(taggers.c.id == tagger_id).values(**values))


def _has_labels(tagger_id: int):
    """A job is labelled once any of its completions has a label: a job's labels are one transaction."""
    return exists().where(
        labels.c.tagger_id == tagger_id, labels.c.completion_id == completions.c.id, completions.c.job_id == jobs.c.id
    )


def fill_label_queue(conn: Connection, tagger_id: int, scan_id: int | None) -> int:
    """Add a row to the tagger's queue for each done job that has none (labelled already, when its
    completions carry this tagger's labels). -> rows added"""
    queued = exists().where(label_jobs.c.job_id == jobs.c.id, label_jobs.c.tagger_id == tagger_id)
    source = (
        select(
            jobs.c.id, literal(tagger_id), candidates.c.scan_id, case((_has_labels(tagger_id), db_now()), else_=None)
        )
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(jobs.c.state == "done", ~queued)
    )
    if scan_id is not None:
        source = source.where(candidates.c.scan_id == scan_id)
    stmt = _insert(conn, label_jobs).from_select(["job_id", "tagger_id", "scan_id", "labelled_at"], source)
    return conn.execute(stmt.on_conflict_do_nothing()).rowcount


def queue_done_jobs(engine: Engine, tagger_id: int, scan_id: int | None) -> int:
    """fill_label_queue in its own transaction: label does it first, so its backlog is exact."""
    with write(engine) as conn:
        return fill_label_queue(conn, tagger_id, scan_id)


def _free_jobs(conn: Connection, tagger_id: int, limit: int, scan_id: int | None) -> list[int]:
    """Up to `limit` unlabelled jobs of the queue that no live lease holds, in (scan, job) order.
    The literal predicate matches ix_label_jobs_todo (SQLite matches no bound value to a partial index)."""
    free = or_(label_jobs.c.expires_at.is_(None), label_jobs.c.expires_at < db_now())
    query = select(label_jobs.c.job_id).where(label_jobs.c.tagger_id == tagger_id, text(LABEL_TODO_SQL), free)
    if scan_id is not None:
        query = query.where(label_jobs.c.scan_id == scan_id)
    query = query.order_by(label_jobs.c.scan_id, label_jobs.c.job_id).limit(limit)
    return conn.execute(query.with_for_update(skip_locked=True)).scalars().all()


def claim_label_jobs(
    engine: Engine, tagger_id: int, owner: str, limit: int, lease_seconds: float, scan_id: int | None = None
) -> list[int]:
    """Lease up to `limit` done, unlabelled jobs that no live lease holds. -> their ids.

    PostgreSQL: the queue rows are locked with SKIP LOCKED, so a row another transaction holds (a
    frozen process, a slow renewal) is passed over instead of stalling every label process. SQLite
    has one writer (BEGIN IMMEDIATE).
    """
    with write(engine) as conn:
        wanted = _free_jobs(conn, tagger_id, limit, scan_id)
        if not wanted and fill_label_queue(conn, tagger_id, scan_id):
            wanted = _free_jobs(conn, tagger_id, limit, scan_id)
        if wanted:
            conn.execute(
                update(label_jobs)
                .where(label_jobs.c.tagger_id == tagger_id, label_jobs.c.job_id.in_(wanted))
                .values(owner=owner, expires_at=db_now() + lease_seconds)
            )
        return sorted(wanted)


def renew_label_leases(engine: Engine, tagger_id: int, owner: str, lease_seconds: float) -> int:
    with write(engine) as conn:
        return conn.execute(
            update(label_jobs)
            .where(label_jobs.c.tagger_id == tagger_id, label_jobs.c.owner == owner, label_jobs.c.labelled_at.is_(None))
            .values(expires_at=db_now() + lease_seconds)
        ).rowcount


def label_inputs(engine: Engine, job_ids: list[int]) -> list[LabelInput]:
    with read(engine) as conn:
        rows = conn.execute(
            select(
                completions.c.id,
                completions.c.job_id,
                generation_params.c.model,
                candidates.c.prefix_token_ids,
                completions.c.token_ids,
            )
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .join(generation_params, generation_params.c.id == jobs.c.params_id)
            .where(completions.c.job_id.in_(job_ids))
            .order_by(completions.c.job_id, completions.c.sample_index)
        ).all()
    return [LabelInput(r[0], r[1], r[2], list(r[3]), list(r[4])) for r in rows]


def write_labels(engine: Engine, tagger_id: int, owner: str, job_ids: list[int], rows: list[dict]) -> int:
    """Insert the labels of these jobs and mark them labelled in the tagger's queue. -> rows added.

    A job is labelled once its labels are written, whoever holds its lease now: a process that took
    over an expired lease finds it labelled, and its own write adds nothing."""
    with write(engine) as conn:
        added = 0
        if rows:
            stmt = _insert(conn, labels).on_conflict_do_nothing().returning(labels.c.id)
            added = len(conn.execute(stmt, [dict(r, tagger_id=tagger_id) for r in rows]).all())
        conn.execute(
            update(label_jobs)
            .where(label_jobs.c.tagger_id == tagger_id, label_jobs.c.job_id.in_(job_ids))
            .values(labelled_at=func.coalesce(label_jobs.c.labelled_at, db_now()), owner=None, expires_at=None)
        )
    return added


def release_label_leases(engine: Engine, tagger_id: int, owner: str) -> None:
    with write(engine) as conn:
        conn.execute(
            update(label_jobs)
            .where(label_jobs.c.tagger_id == tagger_id, label_jobs.c.owner == owner)
            .values(owner=None, expires_at=None)
        )


def label_backlog(engine: Engine, tagger_id: int, scan_id: int | None) -> tuple[int, int]:
    """(completions of done jobs still to label, jobs that label processes hold live leases on).

    A done job is still to label unless the tagger's queue marks it labelled (rows are added by the
    claims, so a job with no row yet counts as to label)."""
    labelled = exists().where(
        label_jobs.c.job_id == jobs.c.id, label_jobs.c.tagger_id == tagger_id, label_jobs.c.labelled_at.is_not(None)
    )
    todo_jobs = select(jobs.c.id).where(jobs.c.state == "done", ~labelled)
    if scan_id is not None:
        todo_jobs = todo_jobs.where(
            jobs.c.candidate_id.in_(select(candidates.c.id).where(candidates.c.scan_id == scan_id))
        )
    live = and_(label_jobs.c.tagger_id == tagger_id, text(LABEL_TODO_SQL), label_jobs.c.expires_at >= db_now())
    with read(engine) as conn:
        todo = conn.execute(
            select(func.count()).select_from(completions).where(completions.c.job_id.in_(todo_jobs))
        ).scalar_one()
        leased = conn.execute(select(func.count()).select_from(label_jobs).where(live)).scalar_one()
    return todo, leased


def done_completion_count(engine: Engine, scan_id: int | None) -> int:
    query = (
        select(func.count())
        .select_from(completions)
        .join(jobs, jobs.c.id == completions.c.job_id)
        .where(jobs.c.state == "done")
    )
    if scan_id is not None:
        query = query.where(jobs.c.candidate_id.in_(select(candidates.c.id).where(candidates.c.scan_id == scan_id)))
    with read(engine) as conn:
        return conn.execute(query).scalar_one()


def unlabelled_candidates(engine: Engine, tagger_id: int, scan_id: int | None) -> list[dict]:
    done = exists().where(candidate_labels.c.candidate_id == candidates.c.id, candidate_labels.c.tagger_id == tagger_id)
    query = (
        select(candidates.c.id, candidates.c.sentence_text, candidates.c.target_position, scans.c.model)
        .join(scans, scans.c.id == candidates.c.scan_id)
        .where(~done)
    )
    if scan_id is not None:
        query = query.where(candidates.c.scan_id == scan_id)
    with read(engine) as conn:
        return [dict(r) for r in conn.execute(query.order_by(candidates.c.id)).mappings()]


def write_candidate_labels(engine: Engine, tagger_id: int, rows: list[dict]) -> int:
    if not rows:
        return 0
    with write(engine) as conn:
        stmt = _insert(conn, candidate_labels).on_conflict_do_nothing().returning(candidate_labels.c.id)
        return len(conn.execute(stmt, [dict(r, tagger_id=tagger_id) for r in rows]).all())


def label_summary(engine: Engine, tagger_id: int, scan_id: int | None) -> dict:
    """Counts by status and by UPOS of this tagger's labels (of one scan's completions, when given)."""
    query = select(labels.c.status, labels.c.upos_name, func.count()).where(labels.c.tagger_id == tagger_id)
    if scan_id is not None:
        query = (
            query.join(completions, completions.c.id == labels.c.completion_id)
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(candidates.c.scan_id == scan_id)
        )
    with read(engine) as conn:
        rows = conn.execute(query.group_by(labels.c.status, labels.c.upos_name)).all()
    statuses: dict[str, int] = {}
    upos: dict[str, int] = {}
    for status, name, n in rows:
        statuses[status] = statuses.get(status, 0) + n
        if status == "ok":
            upos[name] = n
    return {
        "labels": sum(statuses.values()),
        "statuses": statuses,
        "upos": dict(sorted(upos.items(), key=lambda kv: -kv[1])),
    }
