"""Scans, candidates and generation params: the statements scan and export run."""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterator

from sqlalchemy import and_, exists, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from .config import GenerationParams
from .db import db_now, read, write
from .errors import ConfigError, DatabaseError
from .models import candidates, completions, generation_params, jobs, scans, workers

SCAN_IDENTITY = ("dataset", "split", "model", "layer", "probe_sha256", "threshold", "excluded_labels")


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


def open_scan(engine: Engine, name: str, identity: dict, extra: dict, params: GenerationParams) -> tuple[dict, int]:
    """Create the scan or resume it; refuse the same name with another identity. -> (scan row, params id)."""
    key = canonical({k: identity[k] for k in SCAN_IDENTITY})
    with write(engine) as conn:
        row = conn.execute(select(scans).where(scans.c.name == name)).mappings().first()
        if row is None:
            conn.execute(insert(scans).values(
                name=name, config_key=key, **identity, **extra, sentences_done=0, tokens_seen=0,
                tokens_skipped_unknown_label=0, created_at=db_now(), updated_at=db_now()))
            row = conn.execute(select(scans).where(scans.c.name == name)).mappings().one()
        elif row["config_key"] != key:
            stored = json.loads(row["config_key"])
            diffs = ", ".join(f"{k}: {stored.get(k)!r} -> {identity[k]!r}" for k in SCAN_IDENTITY if stored.get(k) != identity[k])
            raise ConfigError(f"scan {name!r} exists with another configuration ({diffs}); use --name for a new scan")
        pid = params_id(conn, params)
        enqueue_missing_jobs(conn, row["id"], pid)
    return dict(row), pid


def enqueue_missing_jobs(conn: Connection, scan_id: int, pid: int) -> int:
    """One todo job per candidate of the scan that has none for these generation params."""
    has_job = exists().where(jobs.c.candidate_id == candidates.c.id, jobs.c.params_id == pid)
    missing = select(candidates.c.id, literal(pid), literal("todo"), literal(0), literal(0), db_now()).where(
        candidates.c.scan_id == scan_id, ~has_job)
    cols = ["candidate_id", "params_id", "state", "priority", "attempt", "created_at"]
    return conn.execute(insert(jobs).from_select(cols, missing)).rowcount


def count_candidates(engine: Engine, scan_id: int) -> int:
    with read(engine) as conn:
        return conn.execute(select(func.count()).select_from(candidates).where(candidates.c.scan_id == scan_id)).scalar_one()


def candidate_positions(engine: Engine, scan_id: int, dataset_idx: int) -> set[tuple[int, int]]:
    with read(engine) as conn:
        rows = conn.execute(select(candidates.c.dataset_idx, candidates.c.target_position).where(
            candidates.c.scan_id == scan_id, candidates.c.dataset_idx == dataset_idx)).all()
    return {tuple(r) for r in rows}


def save_scan_batch(engine: Engine, scan_id: int, pid: int, rows: list[dict], sentences_done: int,
                    tokens_seen: int, skipped: int) -> int:
    """Candidates of some sentences, their jobs and the scan's progress, in one transaction."""
    with write(engine) as conn:
        added = insert_ignoring_duplicates(conn, candidates, [dict(r, scan_id=scan_id) for r in rows])
        if added:
            enqueue_missing_jobs(conn, scan_id, pid)
        conn.execute(update(scans).where(scans.c.id == scan_id).values(
            sentences_done=sentences_done, tokens_seen=scans.c.tokens_seen + tokens_seen,
            tokens_skipped_unknown_label=scans.c.tokens_skipped_unknown_label + skipped, updated_at=db_now()))
    return added


def finish_scan(engine: Engine, scan_id: int) -> dict:
    with write(engine) as conn:
        conn.execute(update(scans).where(scans.c.id == scan_id).values(finished_at=db_now(), updated_at=db_now()))
        return dict(conn.execute(select(scans).where(scans.c.id == scan_id)).mappings().one())


# --- export reads ----------------------------------------------------------------------------


def pick_scan(conn: Connection, name: str | None) -> dict:
    rows = conn.execute(select(scans).order_by(scans.c.id)).mappings().all()
    if not rows:
        raise DatabaseError("the database holds no scan: run `cli.py scan` first")
    if name is None:
        if len(rows) > 1:
            raise ConfigError(f"the database holds {len(rows)} scans ({', '.join(r['name'] for r in rows)}): pick one with --scan")
        return dict(rows[0])
    for row in rows:
        if row["name"] == name:
            return dict(row)
    raise ConfigError(f"no scan named {name!r} (have: {', '.join(r['name'] for r in rows)})")


def pick_params(conn: Connection, scan_id: int, pid: int | None) -> dict:
    used = select(jobs.c.params_id).join(candidates, candidates.c.id == jobs.c.candidate_id).where(candidates.c.scan_id == scan_id).distinct()
    rows = conn.execute(select(generation_params).where(generation_params.c.id.in_(used)).order_by(generation_params.c.id)).mappings().all()
    if pid is not None:
        rows = [r for r in rows if r["id"] == pid]
        if not rows:
            raise ConfigError(f"generation params {pid} were never used by this scan")
    if not rows:
        raise DatabaseError("this scan has no jobs yet")
    if len(rows) > 1:
        raise ConfigError(f"this scan was sampled with {len(rows)} generation params (ids {', '.join(str(r['id']) for r in rows)}): pick one with --params")
    return dict(rows[0])


def job_counts(conn: Connection, scan_id: int, pid: int) -> dict:
    rows = conn.execute(
        select(jobs.c.state, func.count()).join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id, jobs.c.params_id == pid).group_by(jobs.c.state)).all()
    return {state: n for state, n in rows}


def samplers_used(conn: Connection, scan_id: int, params: dict) -> list[dict]:
    """How the done jobs were sampled: each distinct workers.sampler entry for the params' model,
    with its job count (most jobs first); None where a worker recorded nothing."""
    per_worker = conn.execute(
        select(jobs.c.last_worker, func.count()).join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(candidates.c.scan_id == scan_id, jobs.c.params_id == params["id"], jobs.c.state == "done")
        .group_by(jobs.c.last_worker)).all()
    described = dict(conn.execute(select(workers.c.id, workers.c.sampler)
                                  .where(workers.c.id.in_([w for w, _ in per_worker]))).all())
    jobs_by_description: Counter[str] = Counter()
    for worker, n in per_worker:
        jobs_by_description[json.dumps((described.get(worker) or {}).get(params["model"]), sort_keys=True)] += n
    return [{"jobs": n, "sampler": json.loads(d)} for d, n in jobs_by_description.most_common()]


def iter_done(conn: Connection, scan_id: int, params: dict, batch: int = 500) -> Iterator[tuple[dict, list[dict]]]:
    """Stream (candidate+job, completions) for done jobs, ordered by job id; memory stays flat.

    Two cursors walk the same snapshot side by side (merge join on job id), each fetched in batches.
    """
    done = and_(candidates.c.scan_id == scan_id, jobs.c.params_id == params["id"], jobs.c.state == "done")
    heads = conn.execution_options(stream_results=True, yield_per=batch).execute(
        select(candidates, jobs.c.id.label("job_id"), jobs.c.attempt)
        .join(jobs, jobs.c.candidate_id == candidates.c.id).where(done).order_by(jobs.c.id)).mappings()
    tails = conn.execution_options(stream_results=True, yield_per=batch * params["num_samples"]).execute(
        select(completions.c.job_id, completions.c.sample_index, completions.c.text, completions.c.token_ids,
               completions.c.num_tokens, completions.c.finish_reason)
        .join(jobs, jobs.c.id == completions.c.job_id).join(candidates, candidates.c.id == jobs.c.candidate_id)
        .where(done).order_by(completions.c.job_id, completions.c.sample_index)).mappings()
    pending = next(tails, None)
    for head in heads:
        rows = []
        while pending is not None and pending["job_id"] <= head["job_id"]:
            if pending["job_id"] == head["job_id"]:
                rows.append(dict(pending))
            pending = next(tails, None)
        yield dict(head), rows
