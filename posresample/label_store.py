"""The label stage's statements: taggers, leases on done jobs, label rows. Idempotent writes.

A label process claims done jobs with a lease (INSERT ... ON CONFLICT DO UPDATE ... WHERE the old
lease expired, so two processes never hold one job), tags their completions, and writes the labels
and drops its leases in one transaction. Labels are unique per (completion, tagger) and inserted with
ON CONFLICT DO NOTHING: a late write by a process whose lease was taken over adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from .db import db_now, read, write
from .models import candidate_labels, candidates, completions, generation_params, jobs, label_leases, labels, scans, taggers
from .store import canonical

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
        taken = conn.execute(select(taggers.c.id, taggers.c.identity_key, taggers.c.spec)
                             .where(taggers.c.name == identity["name"])).first()
        if taken is not None and taken.identity_key != key:
            raise TaggerError(f"a different tagger is already named {identity['name']!r} in this database "
                              f"(tagger {taken.id}, {taken.spec}): give this one another name with --tagger-name")
        conn.execute(_insert(conn, taggers).values(
            name=identity["name"], spec=identity["spec"], identity_key=key, library=identity["library"],
            library_version=identity["library_version"], files_sha256=identity.get("files_sha256"),
            package_version=identity.get("package_version"), accuracy=identity.get("accuracy"),
            confusion=identity.get("confusion"), created_at=db_now()).on_conflict_do_nothing())
        tagger_id = conn.execute(select(taggers.c.id).where(taggers.c.identity_key == key)).scalar()
        if tagger_id is None:  # another process took the name between our check and our insert
            raise TaggerError(f"a different tagger is already named {identity['name']!r} in this database: "
                              "give this one another name with --tagger-name")
        if identity.get("confusion") is not None:  # measured since the row was made (evaluate-tagger)
            conn.execute(update(taggers).where(taggers.c.id == tagger_id, taggers.c.confusion.is_(None))
                         .values(confusion=identity["confusion"]))
        return tagger_id


def set_confusion(engine: Engine, tagger_id: int, confusion: dict, accuracy: dict | None = None) -> None:
    """Store a measured confusion (evaluate-tagger) with the tagger, replacing the one it had."""
    values = {"confusion": confusion} | ({"accuracy": accuracy} if accuracy is not None else {})
    with write(engine) as conn:
        conn.execute(update(taggers).where(taggers.c.id == tagger_id).values(**values))


def _labelled(tagger_id: int):
    """A job is labelled once any of its completions has a label: a job's labels are one transaction."""
    return exists().where(labels.c.tagger_id == tagger_id, labels.c.completion_id == completions.c.id,
                          completions.c.job_id == jobs.c.id)


def _unlabelled_jobs(tagger_id: int, scan_id: int | None):
    query = select(jobs.c.id).where(jobs.c.state == "done", ~_labelled(tagger_id))
    if scan_id is not None:
        query = query.where(jobs.c.candidate_id.in_(select(candidates.c.id).where(candidates.c.scan_id == scan_id)))
    return query


def claim_label_jobs(engine: Engine, tagger_id: int, owner: str, limit: int, lease_seconds: float,
                     scan_id: int | None = None) -> list[int]:
    """Lease up to `limit` done, unlabelled jobs that no live lease holds. -> their ids.

    PostgreSQL: the job rows and their existing lease rows are locked with SKIP LOCKED, so a row
    another transaction holds (a frozen process, a slow renewal) is passed over instead of stalling
    every label process; since the job row is locked first, no other process can be inserting a lease
    for it meanwhile. SQLite has one writer (BEGIN IMMEDIATE).
    """
    leased = exists().where(label_leases.c.job_id == jobs.c.id, label_leases.c.tagger_id == tagger_id,
                            label_leases.c.expires_at >= db_now())
    with write(engine) as conn:
        wanted = conn.execute(_unlabelled_jobs(tagger_id, scan_id).where(~leased).order_by(jobs.c.id).limit(limit)
                              .with_for_update(skip_locked=True, of=jobs)).scalars().all()
        if wanted and conn.dialect.name == "postgresql":
            existing = select(label_leases.c.job_id).where(label_leases.c.tagger_id == tagger_id,
                                                           label_leases.c.job_id.in_(wanted))
            free = set(conn.execute(existing.with_for_update(skip_locked=True)).scalars())
            held = set(conn.execute(existing).scalars()) - free
            wanted = [j for j in wanted if j not in held]
        if not wanted:
            return []
        stmt = _insert(conn, label_leases).values(
            [dict(job_id=j, tagger_id=tagger_id, owner=owner, expires_at=db_now() + lease_seconds) for j in wanted])
        stmt = stmt.on_conflict_do_update(
            index_elements=[label_leases.c.job_id, label_leases.c.tagger_id],
            set_={"owner": stmt.excluded.owner, "expires_at": stmt.excluded.expires_at},
            where=label_leases.c.expires_at < db_now())
        return sorted(conn.execute(stmt.returning(label_leases.c.job_id)).scalars().all())


def renew_label_leases(engine: Engine, tagger_id: int, owner: str, lease_seconds: float) -> int:
    with write(engine) as conn:
        return conn.execute(update(label_leases).where(label_leases.c.tagger_id == tagger_id, label_leases.c.owner == owner)
                            .values(expires_at=db_now() + lease_seconds)).rowcount


def label_inputs(engine: Engine, job_ids: list[int]) -> list[LabelInput]:
    with read(engine) as conn:
        rows = conn.execute(
            select(completions.c.id, completions.c.job_id, generation_params.c.model, candidates.c.prefix_token_ids,
                   completions.c.token_ids)
            .join(jobs, jobs.c.id == completions.c.job_id).join(candidates, candidates.c.id == jobs.c.candidate_id)
            .join(generation_params, generation_params.c.id == jobs.c.params_id)
            .where(completions.c.job_id.in_(job_ids)).order_by(completions.c.job_id, completions.c.sample_index)).all()
    return [LabelInput(r[0], r[1], r[2], list(r[3]), list(r[4])) for r in rows]


def write_labels(engine: Engine, tagger_id: int, owner: str, job_ids: list[int], rows: list[dict]) -> int:
    """Insert the labels of these jobs and drop this process's leases on them. -> rows added."""
    with write(engine) as conn:
        added = 0
        if rows:
            stmt = _insert(conn, labels).on_conflict_do_nothing().returning(labels.c.id)
            added = len(conn.execute(stmt, [dict(r, tagger_id=tagger_id) for r in rows]).all())
        conn.execute(delete(label_leases).where(label_leases.c.tagger_id == tagger_id, label_leases.c.owner == owner,
                                                label_leases.c.job_id.in_(job_ids)))
    return added


def release_label_leases(engine: Engine, tagger_id: int, owner: str) -> None:
    with write(engine) as conn:
        conn.execute(delete(label_leases).where(label_leases.c.tagger_id == tagger_id, label_leases.c.owner == owner))


def label_backlog(engine: Engine, tagger_id: int, scan_id: int | None) -> tuple[int, int]:
    """(completions of done jobs still to label, jobs that label processes hold live leases on)."""
    live = and_(label_leases.c.tagger_id == tagger_id, label_leases.c.expires_at >= db_now())
    with read(engine) as conn:
        todo = conn.execute(select(func.count()).select_from(completions).where(
            completions.c.job_id.in_(_unlabelled_jobs(tagger_id, scan_id)))).scalar_one()
        leased = conn.execute(select(func.count()).select_from(label_leases).where(live)).scalar_one()
    return todo, leased


def done_completion_count(engine: Engine, scan_id: int | None) -> int:
    query = select(func.count()).select_from(completions).join(jobs, jobs.c.id == completions.c.job_id).where(jobs.c.state == "done")
    if scan_id is not None:
        query = query.where(jobs.c.candidate_id.in_(select(candidates.c.id).where(candidates.c.scan_id == scan_id)))
    with read(engine) as conn:
        return conn.execute(query).scalar_one()


def unlabelled_candidates(engine: Engine, tagger_id: int, scan_id: int | None) -> list[dict]:
    done = exists().where(candidate_labels.c.candidate_id == candidates.c.id, candidate_labels.c.tagger_id == tagger_id)
    query = select(candidates.c.id, candidates.c.sentence_text, candidates.c.target_position, scans.c.model).join(
        scans, scans.c.id == candidates.c.scan_id).where(~done)
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
        query = query.join(completions, completions.c.id == labels.c.completion_id).join(
            jobs, jobs.c.id == completions.c.job_id).join(candidates, candidates.c.id == jobs.c.candidate_id).where(
            candidates.c.scan_id == scan_id)
    with read(engine) as conn:
        rows = conn.execute(query.group_by(labels.c.status, labels.c.upos_name)).all()
    statuses: dict[str, int] = {}
    upos: dict[str, int] = {}
    for status, name, n in rows:
        statuses[status] = statuses.get(status, 0) + n
        if status == "ok":
            upos[name] = n
    return {"labels": sum(statuses.values()), "statuses": statuses, "upos": dict(sorted(upos.items(), key=lambda kv: -kv[1]))}
