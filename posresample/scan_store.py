"""Scans, candidates and generation params: the statements scan runs, and export's reads (done jobs, samplers, the "
"labels streamed by completion id)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator

from sqlalchemy import and_, case, exists, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from .config import DEFAULT_ORDER_SEED, GenerationParams
from .db import db_now, read, write
from .errors import ConfigError, DatabaseError
from .schema import candidates, completions, generation_params, jobs, scans, workers

SCAN_IDENTITY = ("dataset", "split", "model", "layer", "probe_sha256", "threshold", "excluded_labels", "dtype", "attn")
ADOPTED_IF_MISSING = (
    "dtype",
    "attn",
)  # added in revision 0003: a scan made before takes the first values it resumes with


def canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def insert_ignoring_duplicates(conn: Connection, table, rows: list[dict]) -> int:
    if not rows:
        return 0
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # rowcount is unreliable for executemany (psycopg reports -1); count the returned keys instead.
    stmt = dialect_insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return len(conn.execute(stmt, rows).all())


def params_id(conn: Connection, params: GenerationParams) -> int:
    key = canonical(params.as_dict())
    insert_ignoring_duplicates(conn, generation_params, [dict(params.as_dict(), key=key)])
    return conn.execute(select(generation_params.c.id).where(generation_params.c.key == key)).scalar_one()


def scan_key(identity: dict) -> dict:
    """What makes two scans the same; the excluded labels as a set (their order is the user's)."""
    return {k: sorted(identity[k]) if k == "excluded_labels" else identity[k] for k in SCAN_IDENTITY}


JOB_ORDERS = ("random", "dataset")  # how a scan's jobs drain: a seeded random permutation, or dataset order
PRIORITY_BITS = 31  # jobs.priority is a signed 32-bit integer


def job_priority(order: str | None, order_seed: int | None, dataset_idx: int, target_position: int) -> int:
    """A job's place in the queue. random: a keyed hash of (seed, sentence, position), uniform over
    [0, 2**31) and independent of the row ids, so the jobs claimed first are a simple random sample
    of the scan's candidates (ties, about one pair in 10**5 at 10k jobs, go by id); the same seed
    gives the same order in any database. dataset (and scans made before the order existed): 0, so
    jobs drain in id order, which is dataset order."""
    if order != "random":
        return 0
    key = json.dumps([order_seed, dataset_idx, target_position]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> (64 - PRIORITY_BITS)


def open_scan(
    engine: Engine,
    name: str,
    identity: dict,
    extra: dict,
    params: GenerationParams,
    owner: str,
    lease_seconds: float,
    order: str | None = None,
    order_seed: int = DEFAULT_ORDER_SEED,
) -> tuple[dict, int]:
    """Create the scan or resume it, and take its lease. -> (scan row, params id).

    `order`: how its jobs drain (JOB_ORDERS); None is random for a new scan and the stored order
    when resuming. Refused: the same name with another identity or another order, and a scan whose
    lease another live process holds (two processes of one scan would overshoot --max-prefixes and
    double-count progress).
    """
    key = scan_key(identity)
    with write(engine) as conn:
        # ON CONFLICT DO NOTHING: two processes creating one scan at once do not fail on its name
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            dialect_insert(scans)
            .values(
                name=name,
                config_key=canonical(key),
                **identity,
                **extra,
                sentences_done=0,
                tokens_seen=0,
                tokens_skipped_unknown_label=0,
                created_at=db_now(),
                updated_at=db_now(),
                job_order=order or "random",
                order_seed=order_seed,
            )
            .on_conflict_do_nothing()
        )
        row = conn.execute(select(scans).where(scans.c.name == name)).mappings().one()
        stored_order = (row["job_order"] or "dataset", row["order_seed"] if row["job_order"] == "random" else None)
        wanted = (order, order_seed if order == "random" else None)
        if order is not None and stored_order != wanted:
            raise ConfigError(
                f"scan {name!r} drains in {_order_text(*stored_order)}, not {_order_text(*wanted)}; "
                "leave --order out to resume it, or use --name for a new scan"
            )
        stored = json.loads(row["config_key"])
        differs = [
            k for k in SCAN_IDENTITY if stored.get(k) != key[k] and not (k in ADOPTED_IF_MISSING and k not in stored)
        ]
        if differs:
            diffs = ", ".join(f"{k}: {stored.get(k)!r} -> {key[k]!r}" for k in differs)
            raise ConfigError(f"scan {name!r} exists with another configuration ({diffs}); use --name for a new scan")
        if stored != key:  # a scan from before 0003 adopts this run's dtype and attention
            conn.execute(
                update(scans)
                .where(scans.c.id == row["id"])
                .values(config_key=canonical(key), **{k: identity[k] for k in ADOPTED_IF_MISSING})
            )
        take_scan_lease(conn, row, owner, lease_seconds)
        pid = params_id(conn, params)
        enqueue_missing_jobs(conn, row["id"], pid)
    return dict(row), pid


def _order_text(order: str, seed: int | None) -> str:
    return f"random order (seed {seed})" if order == "random" else "dataset order"


def take_scan_lease(conn: Connection, row, owner: str, lease_seconds: float) -> None:
    free = or_(scans.c.lease_owner.is_(None), scans.c.lease_owner == owner, scans.c.lease_expires_at < db_now())
    taken = conn.execute(
        update(scans)
        .where(scans.c.id == row["id"], free)
        .values(lease_owner=owner, lease_expires_at=db_now() + lease_seconds)
    ).rowcount
    if taken != 1:
        holder = conn.execute(
            select(scans.c.lease_owner, scans.c.lease_expires_at - db_now()).where(scans.c.id == row["id"])
        ).one()
        raise ConfigError(
            f"scan {row['name']!r} is being run by {holder[0]} (lease valid {max(holder[1], 0):.0f}s more); "
            "wait for it to finish, or use --name for another scan"
        )


def renew_scan_lease(engine: Engine, scan_id: int, owner: str, lease_seconds: float) -> int:
    with write(engine) as conn:
        return conn.execute(
            update(scans)
            .where(scans.c.id == scan_id, scans.c.lease_owner == owner)
            .values(lease_expires_at=db_now() + lease_seconds)
        ).rowcount


def release_scan_lease(engine: Engine, scan_id: int, owner: str) -> None:
    with write(engine) as conn:
        conn.execute(
            update(scans)
            .where(scans.c.id == scan_id, scans.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )


def enqueue_missing_jobs(conn: Connection, scan_id: int, pid: int) -> int:
    """One todo job per candidate of the scan that has none for these generation params, placed in
    the queue by the scan's order (job_priority): the same candidates under other generation params
    drain in the same order."""
    order, seed = conn.execute(select(scans.c.job_order, scans.c.order_seed).where(scans.c.id == scan_id)).one()
    has_job = exists().where(jobs.c.candidate_id == candidates.c.id, jobs.c.params_id == pid)
    missing = conn.execute(
        select(candidates.c.id, candidates.c.dataset_idx, candidates.c.target_position).where(
            candidates.c.scan_id == scan_id, ~has_job
        )
    ).all()
    rows = [dict(candidate_id=cid, priority=job_priority(order, seed, idx, pos)) for cid, idx, pos in missing]
    if rows:
        conn.execute(insert(jobs).values(params_id=pid, state="todo", attempt=0, created_at=db_now()), rows)
    return len(rows)


def count_candidates(engine: Engine, scan_id: int) -> int:
    with read(engine) as conn:
        return conn.execute(
            select(func.count()).select_from(candidates).where(candidates.c.scan_id == scan_id)
        ).scalar_one()


def candidate_positions(engine: Engine, scan_id: int, first_idx: int, last_idx: int) -> set[tuple[int, int]]:
    """(dataset_idx, target_position) of the candidates stored for sentences first_idx..last_idx."""
    with read(engine) as conn:
        rows = conn.execute(
            select(candidates.c.dataset_idx, candidates.c.target_position).where(
                candidates.c.scan_id == scan_id, candidates.c.dataset_idx.between(first_idx, last_idx)
            )
        ).all()
    return {tuple(r) for r in rows}


def save_scan_batch(
    engine: Engine,
    scan_id: int,
    pid: int,
    rows: list[dict],
    sentences_done: int,
    tokens_seen: int,
    skipped: int,
    owner: str | None = None,
) -> int:
    """Candidates of some sentences, their jobs and the scan's progress, in one transaction;
    with `owner`, only while that process still holds the scan's lease."""
    with write(engine) as conn:
        if (
            owner is not None
            and conn.execute(select(scans.c.lease_owner).where(scans.c.id == scan_id)).scalar() != owner
        ):
            raise ConfigError("this process lost the scan's lease (another took it over): stopping without saving")
        added = insert_ignoring_duplicates(conn, candidates, [dict(r, scan_id=scan_id) for r in rows])
        if added:
            enqueue_missing_jobs(conn, scan_id, pid)
        conn.execute(
            update(scans)
            .where(scans.c.id == scan_id)
            .values(
                sentences_done=sentences_done,
                tokens_seen=scans.c.tokens_seen + tokens_seen,
                tokens_skipped_unknown_label=scans.c.tokens_skipped_unknown_label + skipped,
                updated_at=db_now(),
            )
        )
    return added


def finish_scan(engine: Engine, scan_id: int) -> dict:
    """End a run of the scan; finished_at is set only once every sentence is scanned."""
    with write(engine) as conn:
        complete = scans.c.sentences_done >= scans.c.sentences_total
        conn.execute(
            update(scans)
            .where(scans.c.id == scan_id)
            .values(
                finished_at=case((complete, func.coalesce(scans.c.finished_at, db_now())), else_=None),
                updated_at=db_now(),
            )
        )
        return dict(conn.execute(select(scans).where(scans.c.id == scan_id)).mappings().one())


# --- export reads ----------------------------------------------------------------------------


def pick_scan(conn: Connection, name: str | None) -> dict:
    rows = conn.execute(select(scans).order_by(scans.c.id)).mappings().all()
    if not rows:
        raise DatabaseError("the database holds no scan: run `cli.py scan` first")
    if name is None:
        if len(rows) > 1:
            raise ConfigError(
                f"the database holds {len(rows)} scans ({', '.join(r['name'] for r in rows)}): pick one with --scan"
            )
        return dict(rows[0])
    for row in rows:
        if row["name"] == name:
            return dict(row)
    raise ConfigError(f"no scan named {name!r} (have: {', '.join(r['name'] for r in rows)})")


def pick_params(conn: Connection, scan_id: int, pid: int | None) -> dict:
    used = (
        select(jobs.c.params_id)
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id)
        .distinct()
    )
    rows = (
        conn.execute(select(generation_params).where(generation_params.c.id.in_(used)).order_by(generation_params.c.id))
        .mappings()
        .all()
    )
    if not rows and not conn.execute(select(candidates.c.id).where(candidates.c.scan_id == scan_id).limit(1)).first():
        raise DatabaseError("this scan has no candidates (no token under its threshold): nothing was sampled")
    if pid is not None:
        rows = [r for r in rows if r["id"] == pid]
        if not rows:
            raise ConfigError(f"generation params {pid} were never used by this scan")
    if not rows:
        raise DatabaseError("this scan has no jobs yet")
    if len(rows) > 1:
        raise ConfigError(
            f"this scan was sampled with {len(rows)} generation params (ids {', '.join(str(r['id']) for r in rows)}): "
            "pick one with --params"
        )
    return dict(rows[0])


def job_counts(conn: Connection, scan_id: int, pid: int) -> dict:
    rows = conn.execute(
        select(jobs.c.state, func.count())
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id, jobs.c.params_id == pid)
        .group_by(jobs.c.state)
    ).all()
    return {state: n for state, n in rows}


def samplers_used(conn: Connection, scan_id: int, params: dict) -> list[dict]:
    """How the done jobs were sampled: each distinct workers.sampler entry for the params' model,
    with its job count (most jobs first); None where a worker recorded nothing."""
    per_worker = conn.execute(
        select(jobs.c.last_worker, func.count())
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id, jobs.c.params_id == params["id"], jobs.c.state == "done")
        .group_by(jobs.c.last_worker)
    ).all()
    described = dict(
        conn.execute(select(workers.c.id, workers.c.sampler).where(workers.c.id.in_([w for w, _ in per_worker]))).all()
    )
    jobs_by_description: Counter[str] = Counter()
    for worker, n in per_worker:
        jobs_by_description[json.dumps((described.get(worker) or {}).get(params["model"]), sort_keys=True)] += n
    return [{"jobs": n, "sampler": json.loads(d)} for d, n in jobs_by_description.most_common()]


def iter_done(conn: Connection, scan_id: int, params: dict, batch: int = 500) -> Iterator[tuple[dict, list[dict]]]:
    """Stream (candidate+job, completions) for done jobs, ordered by job id; memory stays flat.

    Two cursors walk the same snapshot side by side (merge join on job id), each fetched in batches.
    """
    done = and_(candidates.c.scan_id == scan_id, jobs.c.params_id == params["id"], jobs.c.state == "done")
    heads = (
        conn.execution_options(stream_results=True, yield_per=batch)
        .execute(
            select(candidates, jobs.c.id.label("job_id"), jobs.c.attempt)
            .join(jobs, jobs.c.candidate_id == candidates.c.id)
            .where(done)
            .order_by(jobs.c.id)
        )
        .mappings()
    )
    tails = (
        conn.execution_options(stream_results=True, yield_per=batch * params["num_samples"])
        .execute(
            select(
                completions.c.id,
                completions.c.job_id,
                completions.c.sample_index,
                completions.c.text,
                completions.c.token_ids,
                completions.c.num_tokens,
                completions.c.finish_reason,
            )
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(done)
            .order_by(completions.c.job_id, completions.c.sample_index)
        )
        .mappings()
    )
    pending = next(tails, None)
    for head in heads:
        rows = []
        while pending is not None and pending["job_id"] <= head["job_id"]:
            if pending["job_id"] == head["job_id"]:
                rows.append(dict(pending))
            pending = next(tails, None)
        yield dict(head), rows


# --- labels, for export ----------------------------------------------------------------------


def taggers_used(conn: Connection, scan_id: int, params: dict) -> list[dict]:
    """The taggers that labelled this scan's completions under these params, with their identity."""
    from .schema import labels, taggers

    used = (
        select(labels.c.tagger_id)
        .join(completions, completions.c.id == labels.c.completion_id)
        .join(jobs, jobs.c.id == completions.c.job_id)
        .join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id, jobs.c.params_id == params["id"])
        .distinct()
    )
    rows = conn.execute(select(taggers).where(taggers.c.id.in_(used)).order_by(taggers.c.id)).mappings().all()
    return [
        {
            k: r[k]
            for k in ("id", "name", "spec", "library", "library_version", "files_sha256", "package_version", "accuracy")
        }
        for r in rows
    ]


class LabelStream:
    """The labels of a scan's done completions, read in one streamed query ordered by job id, so an
    export walks them beside its records: one pass over the labels however many there are (a lookup
    per chunk of records was planned as a scan of the whole labels table each time on PostgreSQL:
    server CPU grew with the square of the candidates)."""

    def __init__(self, conn: Connection, scan_id: int, params: dict, batch: int = 20_000):
        from .schema import candidate_labels, labels, taggers

        self.names = dict(conn.execute(select(taggers.c.id, taggers.c.name)).all())
        done = and_(candidates.c.scan_id == scan_id, jobs.c.params_id == params["id"], jobs.c.state == "done")
        self._rows = conn.execution_options(stream_results=True, yield_per=batch).execute(
            select(completions.c.job_id, labels.c.completion_id, labels.c.tagger_id, labels.c.upos_name)
            .join(completions, completions.c.id == labels.c.completion_id)
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(done)
            .order_by(completions.c.job_id)
        )
        self._next = next(self._rows, None)
        self.per_candidate = _by_tagger(
            conn.execute(
                select(candidate_labels.c.candidate_id, candidate_labels.c.tagger_id, candidate_labels.c.upos_name)
                .join(candidates, candidates.c.id == candidate_labels.c.candidate_id)
                .where(candidates.c.scan_id == scan_id)
            ),
            self.names,
            {},
        )

    def upto(self, last_job_id: int) -> dict[int, dict]:
        """{completion_id: {tagger name: UPOS name or None}} for the jobs up to `last_job_id`."""
        out: dict[int, dict] = {}
        while self._next is not None and self._next[0] <= last_job_id:
            _job, completion_id, tagger_id, upos = self._next
            out.setdefault(completion_id, {})[self.names[tagger_id]] = upos
            self._next = next(self._rows, None)
        return out


def _by_tagger(rows, names: dict[int, str], out: dict[int, dict]) -> dict[int, dict]:
    for key, tagger_id, upos in rows:
        out.setdefault(key, {})[names[tagger_id]] = upos
    return out
