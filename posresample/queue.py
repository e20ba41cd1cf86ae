"""The job queue: every statement that claims, renews, finishes, fails or requeues a job.

At-least-once delivery, exactly-once results: a claim is one short transaction; the results of a
job and its `done` mark are one transaction guarded by (id, attempt, lease_owner), so a worker
that lost its lease changes 0 rows and its late write is discarded.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy import Text, and_, case, cast, func, insert, literal, or_, select, text, update
from sqlalchemy.engine import Engine

from .config import PARAM_FIELDS
from .db import db_now, read, write
from .errors import DatabaseError
from .schema import JOB_STATES, UNFINISHED_SQL, candidates, completions, generation_params, jobs, scans, workers


class LeaseLost(Exception):
    """The job was reclaimed (or requeued) since this worker claimed it; its results are discarded."""


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    attempt: int
    dataset_idx: int
    target_position: int
    prefix_token_ids: list[int]
    split: str  # with the sentence text, what the sample noise is keyed on (worker.noise_key)
    sentence_text: str
    params: dict  # a generation_params row: model, temperature, top_p, top_k, max_new_tokens, num_samples, seed


@dataclass(frozen=True)
class Pending:
    todo: int  # claimable now
    running_live: int  # held by a worker whose lease has not expired
    running_expired: int  # reclaimable


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def register_worker(engine: Engine, worker_id: str, device: str, lease_seconds: float) -> None:
    host, pid, _ = worker_id.rsplit(":", 2)
    with write(engine) as conn:
        conn.execute(
            insert(workers).values(
                id=worker_id,
                host=host,
                pid=int(pid),
                device=device,
                lease_seconds=lease_seconds,
                started_at=db_now(),
                heartbeat_at=db_now(),
                jobs_done=0,
            )
        )


def record_sampler(engine: Engine, worker_id: str, model: str, description: dict) -> None:
    """Add how this worker samples `model` to workers.sampler ({model: description})."""
    with write(engine) as conn:
        current = conn.execute(select(workers.c.sampler).where(workers.c.id == worker_id)).scalar()
        conn.execute(
            update(workers).where(workers.c.id == worker_id).values(sampler={**(current or {}), model: description})
        )


def stop_worker(engine: Engine, worker_id: str) -> None:
    with write(engine) as conn:
        conn.execute(
            update(workers).where(workers.c.id == worker_id).values(stopped_at=db_now(), heartbeat_at=db_now())
        )


def heartbeat(engine: Engine, worker_id: str, lease_seconds: float) -> int:
    """Extend the leases this worker still owns; returns how many it renewed."""
    with write(engine) as conn:
        renewed = conn.execute(
            update(jobs)
            .where(jobs.c.lease_owner == worker_id, jobs.c.state == "running")
            .values(lease_expires_at=db_now() + lease_seconds)
        ).rowcount
        conn.execute(update(workers).where(workers.c.id == worker_id).values(heartbeat_at=db_now()))
    return renewed


def _probes(max_attempts: int):
    """The two index-ordered ways a job becomes claimable: todo, or running with an expired lease.

    Each is an equality on `state` followed by ORDER BY priority, id, so both databases walk
    ix_jobs_state_priority_id in order and stop after LIMIT rows; one OR over both made them read
    and sort the whole backlog (SQLite: MULTI-INDEX OR and a temporary B-tree; PostgreSQL: a
    BitmapOr and a sort) on every claim.
    """
    todo = and_(jobs.c.state == "todo", jobs.c.attempt < max_attempts)
    expired = and_(jobs.c.state == "running", jobs.c.lease_expires_at < db_now(), jobs.c.attempt < max_attempts)
    return todo, expired


def claimable_models(engine: Engine, max_attempts: int) -> list[str]:
    """The models of the jobs a worker could claim now: it loads them before it claims.

    One EXISTS per generation params row (there are a handful), each answered by
    ix_jobs_params_id_state, so the cost does not grow with the backlog."""
    found = []
    with read(engine) as conn:
        for pid, model in conn.execute(
            select(generation_params.c.id, generation_params.c.model).order_by(generation_params.c.id)
        ):
            for probe in _probes(max_attempts):
                if conn.execute(select(jobs.c.id).where(jobs.c.params_id == pid, probe).limit(1)).first() is not None:
                    found.append(model)
                    break
    return list(dict.fromkeys(found))


def claim_jobs(
    engine: Engine, worker_id: str, limit: int, lease_seconds: float, max_attempts: int, models: list[str] | None = None
) -> list[ClaimedJob]:
    """Fail jobs whose attempts ran out on an expired lease, then claim up to `limit` jobs (of
    `models` only, when given: the ones this worker has loaded), lowest (priority, id) first."""
    with write(engine) as conn:
        _fail_exhausted(conn, max_attempts)
        picked = []
        for probe in _probes(max_attempts):
            if models is not None:
                probe = and_(
                    probe,
                    jobs.c.params_id.in_(select(generation_params.c.id).where(generation_params.c.model.in_(models))),
                )
            picked += [
                (priority, job_id)
                for priority, job_id in conn.execute(
                    select(jobs.c.priority, jobs.c.id)
                    .where(probe)
                    .order_by(jobs.c.priority, jobs.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer (BEGIN IMMEDIATE)
                )
            ]
        chosen = [job_id for _, job_id in sorted(picked)[:limit]]
        if not chosen:
            return []
        claimed = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(chosen))
            .values(
                state="running",
                attempt=jobs.c.attempt + 1,
                lease_owner=worker_id,
                last_worker=worker_id,
                lease_expires_at=db_now() + lease_seconds,
                claimed_at=db_now(),
            )
            .returning(jobs.c.id, jobs.c.attempt)
        ).all()
        attempts = dict(claimed)
        rows = (
            conn.execute(
                select(
                    jobs.c.id,
                    candidates.c.dataset_idx,
                    candidates.c.target_position,
                    candidates.c.prefix_token_ids,
                    candidates.c.sentence_text,
                    scans.c.split,
                    generation_params.c.id.label("params_id"),
                    *[generation_params.c[name] for name in PARAM_FIELDS],
                )
                .join(candidates, candidates.c.id == jobs.c.candidate_id)
                .join(scans, scans.c.id == candidates.c.scan_id)
                .join(generation_params, generation_params.c.id == jobs.c.params_id)
                .where(jobs.c.id.in_(list(attempts)))
                .order_by(jobs.c.id)
            )
            .mappings()
            .all()
        )
    return [_claimed(row, attempts[row["id"]]) for row in rows]


def _claimed(row, attempt: int) -> ClaimedJob:
    params = {name: row[name] for name in ("params_id", *PARAM_FIELDS)}
    return ClaimedJob(
        id=row["id"],
        attempt=attempt,
        dataset_idx=row["dataset_idx"],
        target_position=row["target_position"],
        prefix_token_ids=list(row["prefix_token_ids"]),
        split=row["split"],
        sentence_text=row["sentence_text"],
        params=params,
    )


def _fail_exhausted(conn, max_attempts: int) -> None:
    """A job whose worker died on its last attempt (lease expired) ends failed, with a reason.

    Rows another transaction has locked are skipped (PostgreSQL), so a frozen transaction holding
    one cannot stall every claimer; a later claim fails them.
    """
    exhausted = (
        select(jobs.c.id)
        .where(jobs.c.state == "running", jobs.c.lease_expires_at < db_now(), jobs.c.attempt >= max_attempts)
        .with_for_update(skip_locked=True)
    )
    conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(exhausted.scalar_subquery()))
        .values(
            state="failed",
            lease_owner=None,
            lease_expires_at=None,
            last_error=literal("lease expired on attempt ")
            + cast(jobs.c.attempt, Text)
            + literal(": worker ")
            + func.coalesce(jobs.c.lease_owner, "?")
            + literal(" stopped heartbeating"),
        )
    )


def _guard(job: ClaimedJob, worker_id: str):
    return and_(
        jobs.c.id == job.id, jobs.c.attempt == job.attempt, jobs.c.lease_owner == worker_id, jobs.c.state == "running"
    )


def complete_job(engine: Engine, job: ClaimedJob, worker_id: str, rows: list[dict]) -> None:
    """Write a job's completions and mark it done, atomically; raise LeaseLost if it is not ours any more."""
    with write(engine) as conn:
        done = conn.execute(
            update(jobs)
            .where(_guard(job, worker_id))
            .values(state="done", done_at=db_now(), lease_owner=None, lease_expires_at=None, last_error=None)
        ).rowcount
        if done != 1:
            raise LeaseLost(f"job {job.id} attempt {job.attempt}: lease lost, results discarded")
        conn.execute(insert(completions), [dict(row, job_id=job.id, attempt=job.attempt) for row in rows])
        conn.execute(update(workers).where(workers.c.id == worker_id).values(jobs_done=workers.c.jobs_done + 1))


def fail_job(engine: Engine, job: ClaimedJob, worker_id: str, error: str, max_attempts: int) -> str | None:
    """Record an error; the job goes back to todo until its attempts run out. Returns the new state."""
    state = case((jobs.c.attempt >= max_attempts, "failed"), else_="todo")
    with write(engine) as conn:
        row = conn.execute(
            update(jobs)
            .where(_guard(job, worker_id))
            .values(state=state, last_error=error[:4000], lease_owner=None, lease_expires_at=None)
            .returning(jobs.c.state)
        ).first()
    return row[0] if row else None


def release_jobs(engine: Engine, claimed: list[ClaimedJob], worker_id: str) -> int:
    """Give unfinished jobs back on a clean stop; a release does not count as an attempt."""
    released = 0
    with write(engine) as conn:
        for job in claimed:
            released += conn.execute(
                update(jobs)
                .where(_guard(job, worker_id))
                .values(state="todo", attempt=jobs.c.attempt - 1, lease_owner=None, lease_expires_at=None)
            ).rowcount
    return released


def pending(engine: Engine, max_attempts: int) -> Pending:
    """Counts of the unfinished jobs only, from the partial index ix_jobs_unfinished (it holds the
    todo and running rows alone, with the columns counted): done jobs cost nothing. (The full index
    on state was not enough for SQLite: once ANALYZE has seen that `state` has few values, its planner
    expects half the table per value and scans all of it: docs/benchmarks.md, "Costs that must not grow".)"""
    now = db_now()
    with read(engine) as conn:
        row = conn.execute(
            select(
                func.count().filter(and_(jobs.c.state == "todo", jobs.c.attempt < max_attempts)),
                func.count().filter(and_(jobs.c.state == "running", jobs.c.lease_expires_at >= now)),
                func.count().filter(and_(jobs.c.state == "running", jobs.c.lease_expires_at < now)),
            ).where(text(UNFINISHED_SQL))
        ).one()  # literal values: SQLite matches bound ones to no partial index
    return Pending(*row)


def requeue(
    engine: Engine, failed: bool = False, stale: bool = False, job_id: int | None = None, force: bool = False
) -> int:
    """Put failed jobs, jobs with expired leases, or one job back to todo with attempts reset.

    One job that a live worker holds (lease not expired) is refused without `force`: requeueing it
    discards that worker's work when it finishes."""
    conditions = []
    if failed:
        conditions.append(jobs.c.state == "failed")
    if stale:
        conditions.append(and_(jobs.c.state == "running", jobs.c.lease_expires_at < db_now()))
    if job_id is not None:
        conditions.append(and_(jobs.c.id == job_id, jobs.c.state != "done"))
    if not conditions:
        raise DatabaseError("say what to requeue: --failed, --stale or --job ID")
    with write(engine) as conn:
        if job_id is not None:
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
            if state is None:
                raise DatabaseError(f"no job with id {job_id}")
            if state == "done":
                raise DatabaseError(f"job {job_id} is done; its completions are kept")
            holder = conn.execute(
                select(jobs.c.lease_owner).where(
                    jobs.c.id == job_id, jobs.c.state == "running", jobs.c.lease_expires_at >= db_now()
                )
            ).scalar()
            if holder is not None and not force:
                raise DatabaseError(
                    f"job {job_id} is held by live worker {holder}; requeueing it discards that "
                    "worker's work: pass --force to do it anyway"
                )
        return conn.execute(
            update(jobs)
            .where(or_(*conditions))
            .values(state="todo", attempt=0, lease_owner=None, lease_expires_at=None)
        ).rowcount


THROUGHPUT_WINDOW = 600.0  # seconds of history behind the throughput and ETA


def status_report(engine) -> dict:
    """Everything `status` prints: scans, jobs by state, stale leases, live workers, throughput, ETA."""
    with read(engine) as conn:
        now = conn.execute(select(db_now())).scalar_one()
        states = {state: 0 for state in JOB_STATES} | dict(
            conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        )
        n_candidates = conn.execute(select(func.count()).select_from(candidates)).scalar_one()
        n_completions = conn.execute(select(func.count()).select_from(completions)).scalar_one()
        stale = conn.execute(
            select(func.count()).where(jobs.c.state == "running", jobs.c.lease_expires_at < now)
        ).scalar_one()
        oldest = conn.execute(select(func.min(jobs.c.created_at)).where(jobs.c.state == "todo")).scalar()
        recent = conn.execute(
            select(func.count(), func.min(jobs.c.done_at)).where(
                jobs.c.state == "done", jobs.c.done_at >= now - THROUGHPUT_WINDOW
            )
        ).one()
        worker_rows = conn.execute(select(workers).order_by(workers.c.started_at)).mappings().all()
        sampled = (
            select(func.count(func.distinct(jobs.c.candidate_id)))
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(candidates.c.scan_id == scans.c.id, jobs.c.state == "done")
            .scalar_subquery()
        )
        scan_rows = (
            conn.execute(
                select(
                    scans,
                    select(func.count()).where(candidates.c.scan_id == scans.c.id).scalar_subquery().label("n"),
                    sampled.label("sampled"),
                ).order_by(scans.c.id)
            )
            .mappings()
            .all()
        )
    per_second = _rate(recent[0], recent[1], now)
    remaining = states["todo"] + states["running"]
    views = [_worker_view(w, now) for w in worker_rows]
    live = [w for w in views if w["state"] == "live"]
    return {
        "scans": [_scan_view(row, now) for row in scan_rows],
        "candidates": n_candidates,
        "jobs": states,
        "completions": n_completions,
        "stale_leases": stale,
        "oldest_pending_seconds": None if oldest is None else round(now - oldest, 1),
        "throughput_jobs_per_minute": round(per_second * 60, 2),
        # no live worker, no ETA: the queue is not draining whatever the recent rate was
        "eta_seconds": round(remaining / per_second, 1) if per_second > 0 and remaining and live else None,
        "workers": live,  # the live ones; every worker that ever ran is counted below
        "workers_total": {state: sum(w["state"] == state for w in views) for state in ("live", "lost", "stopped")},
    }


def _scan_view(row, now: float) -> dict:
    """complete: every sentence scanned; running: a process holds its lease now; partial: stopped
    before the end (--max-prefixes, Ctrl-C or a crash): re-running the scan resumes it."""
    if row["sentences_done"] >= row["sentences_total"]:
        state = "complete"
    elif row["lease_owner"] is not None and row["lease_expires_at"] >= now:
        state = "running"
    else:
        state = "partial"
    return {
        "name": row["name"],
        "split": row["split"],
        "sentences_done": row["sentences_done"],
        "sentences_total": row["sentences_total"],
        "state": state,
        "candidates": row["n"],
        "sampled": row["sampled"],
        "order": row["job_order"] or "dataset",
        "order_seed": row["order_seed"],
    }


def _rate(count: int, first_done: float | None, now: float) -> float:
    """Jobs per second since the first of the window's done jobs (at least a second, at most the window)."""
    return count / max(now - first_done, 1.0) if count else 0.0


def _worker_view(w, now: float) -> dict:
    alive = w["stopped_at"] is None and now - w["heartbeat_at"] <= w["lease_seconds"]
    state = "stopped" if w["stopped_at"] is not None else ("live" if alive else "lost")
    return {
        "id": w["id"],
        "device": w["device"],
        "state": state,
        "jobs_done": w["jobs_done"],
        "sampler": w["sampler"],
        "last_heartbeat_seconds_ago": round(now - w["heartbeat_at"], 1),
    }
