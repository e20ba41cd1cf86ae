"""Queue semantics on a real SQLite file and a real PostgreSQL: claim, lease, guard, fail, requeue."""

import pytest
from sqlalchemy import select, update

from posresample import db, queue
from posresample.errors import DatabaseError
from posresample.queue import LeaseLost
from posresample.schema import completions, jobs
from tests.helpers import job_states, seed_jobs

MAX = 3


def rows(n=4):
    return [dict(sample_index=i, text=f"s{i}", token_ids=[i], num_tokens=1, finish_reason="length") for i in range(n)]


def register(engine, name="w"):
    wid = f"host:{abs(hash(name)) % 10000}:{name}"
    queue.register_worker(engine, wid, "cpu", 60)
    return wid


def expire_leases(engine):
    """Move every lease into the past, as if its worker had stopped heartbeating long ago."""
    with db.write(engine) as conn:
        conn.execute(update(jobs).where(jobs.c.state == "running").values(lease_expires_at=0.0))


def test_claims_are_disjoint_and_ordered(engine):
    ids = seed_jobs(engine, 10)
    a, b = register(engine, "a"), register(engine, "b")
    first = queue.claim_jobs(engine, a, 4, 60, MAX)
    second = queue.claim_jobs(engine, b, 4, 60, MAX)
    # each claim takes the lowest (priority, id) jobs left: the first eight of the scan's random order
    assert sorted(j.id for j in first) == sorted(ids[:4]) and sorted(j.id for j in second) == sorted(ids[4:8])
    assert all(j.attempt == 1 for j in first + second)
    assert first[0].prefix_token_ids == [2, 7] and first[0].params["num_samples"] == 96
    assert job_states(engine) == {"running": 8, "todo": 2}


def test_complete_writes_rows_and_done_atomically(engine):
    seed_jobs(engine, 1)
    w = register(engine)
    [job] = queue.claim_jobs(engine, w, 1, 60, MAX)
    queue.complete_job(engine, job, w, rows())
    assert job_states(engine) == {"done": 1}
    with db.read(engine) as conn:
        got = conn.execute(
            select(completions.c.sample_index, completions.c.attempt).order_by(completions.c.sample_index)
        ).all()
    assert got == [(i, 1) for i in range(4)]
    assert queue.claim_jobs(engine, w, 1, 60, MAX) == []


def test_zombie_write_after_reclaim_changes_nothing(engine):
    seed_jobs(engine, 1)
    zombie, other = register(engine, "zombie"), register(engine, "other")
    [old] = queue.claim_jobs(engine, zombie, 1, 60, MAX)
    expire_leases(engine)
    [new] = queue.claim_jobs(engine, other, 1, 60, MAX)
    assert (new.id, new.attempt) == (old.id, 2)
    queue.complete_job(engine, new, other, rows(2))
    with pytest.raises(queue.LeaseLost):
        queue.complete_job(engine, old, zombie, rows(4))
    with db.read(engine) as conn:
        assert conn.execute(select(completions.c.sample_index, completions.c.attempt)).all() == [(0, 2), (1, 2)]


def test_heartbeat_extends_only_own_live_leases(engine):
    seed_jobs(engine, 2)
    a, b = register(engine, "a"), register(engine, "b")
    queue.claim_jobs(engine, a, 1, 5, MAX)
    queue.claim_jobs(engine, b, 1, 5, MAX)
    assert queue.heartbeat(engine, a, 600) == 1
    with db.read(engine) as conn:
        leases = dict(conn.execute(select(jobs.c.lease_owner, jobs.c.lease_expires_at)).all())
    assert leases[a] - leases[b] > 500


def test_expired_lease_on_last_attempt_ends_failed_with_reason(engine):
    first = seed_jobs(engine, 2)[0]
    w = register(engine)
    for attempt in range(1, MAX + 1):
        claimed = queue.claim_jobs(engine, w, 1, 60, MAX)
        assert [j.attempt for j in claimed] == [attempt]
        expire_leases(engine)
    others = queue.claim_jobs(engine, w, 5, 60, MAX)
    assert [j.attempt for j in others] == [1]  # the other job; the first is out of attempts
    with db.read(engine) as conn:
        state, error = conn.execute(select(jobs.c.state, jobs.c.last_error).where(jobs.c.id == first)).one()
    assert state == "failed" and f"attempt {MAX}" in error and "stopped heartbeating" in error


def test_fail_job_retries_then_fails_and_requeue_resets(engine):
    seed_jobs(engine, 1)
    w = register(engine)
    states = []
    for _ in range(MAX):
        [job] = queue.claim_jobs(engine, w, 1, 60, MAX)
        states.append(queue.fail_job(engine, job, w, "RuntimeError: boom", MAX))
    assert states == ["todo", "todo", "failed"]
    assert queue.claim_jobs(engine, w, 1, 60, MAX) == []
    assert queue.requeue(engine, failed=True) == 1
    [job] = queue.claim_jobs(engine, w, 1, 60, MAX)
    assert job.attempt == 1


def test_release_gives_jobs_back_without_spending_an_attempt(engine):
    seed_jobs(engine, 3)
    w = register(engine)
    claimed = queue.claim_jobs(engine, w, 3, 60, MAX)
    assert queue.release_jobs(engine, claimed, w) == 3
    again = queue.claim_jobs(engine, w, 3, 60, MAX)
    assert [j.attempt for j in again] == [1, 1, 1]


def test_pending_counts_and_requeue_stale(engine):
    seed_jobs(engine, 3)
    w = register(engine)
    queue.claim_jobs(engine, w, 2, 60, MAX)
    assert queue.pending(engine, MAX) == queue.Pending(todo=1, running_live=2, running_expired=0)
    expire_leases(engine)
    assert queue.pending(engine, MAX) == queue.Pending(todo=1, running_live=0, running_expired=2)
    assert queue.requeue(engine, stale=True) == 2
    assert job_states(engine) == {"todo": 3}


def test_requeue_one_job_and_refusals(engine):
    from posresample.errors import DatabaseError

    seed_jobs(engine, 2)
    w = register(engine)
    [job] = queue.claim_jobs(engine, w, 1, 60, MAX)
    queue.complete_job(engine, job, w, rows())
    with pytest.raises(DatabaseError, match="is done"):
        queue.requeue(engine, job_id=job.id)
    with pytest.raises(DatabaseError, match="no job"):
        queue.requeue(engine, job_id=999)
    with pytest.raises(DatabaseError, match="say what"):
        queue.requeue(engine)


def test_requeue_of_a_job_a_live_worker_holds_needs_force(engine):
    seed_jobs(engine, 1)
    w = register(engine)
    [job] = queue.claim_jobs(engine, w, 1, 60, MAX)
    with pytest.raises(DatabaseError, match="held by live worker .*--force"):
        queue.requeue(engine, job_id=job.id)
    with pytest.raises(LeaseLost):  # untouched: the worker still finishes it
        queue.complete_job(engine, job, "someone else", rows())
    assert queue.requeue(engine, job_id=job.id, force=True) == 1
    with pytest.raises(LeaseLost):  # forced: the holder's late write is discarded
        queue.complete_job(engine, job, w, rows())


@pytest.mark.postgres
def test_a_locked_exhausted_job_does_not_stall_claims(pg_url):
    """A frozen transaction holding a row lock on a job the claim would fail must not block claimers."""
    from sqlalchemy import text

    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    seed_jobs(engine, 3)
    w = register(engine)
    [stuck] = queue.claim_jobs(engine, w, 1, 60, 1)
    with db.write(engine) as conn:  # its lease has expired on its last attempt: the claim fails it
        conn.execute(update(jobs).where(jobs.c.id == stuck.id).values(lease_expires_at=0.0))
    frozen = engine.connect()
    frozen.begin()
    frozen.execute(text("select id from jobs where id = :i for update"), {"i": stuck.id})
    from tests.helpers import lock_timeout_engine

    strict = lock_timeout_engine(pg_url)  # a blocked claim errors instead of waiting

    claimed = queue.claim_jobs(strict, register(strict, "other"), 2, 60, 1)
    assert len(claimed) == 2 and stuck.id not in {j.id for j in claimed}
    frozen.rollback()
    frozen.close()
    queue.claim_jobs(strict, "nobody", 0, 60, 1)  # the lock is gone: now the job is failed
    with db.read(engine) as conn:
        assert conn.execute(select(jobs.c.state).where(jobs.c.id == stuck.id)).scalar() == "failed"
    strict.dispose()
    engine.dispose()


def test_status_report(engine):
    seed_jobs(engine, 3)
    w = register(engine)
    [job] = queue.claim_jobs(engine, w, 1, 60, MAX)
    queue.complete_job(engine, job, w, rows(96))
    report = queue.status_report(engine)
    assert report["jobs"] == {"todo": 2, "running": 0, "done": 1, "failed": 0}
    assert report["completions"] == 96 and report["candidates"] == 3
    assert report["workers"][0]["state"] == "live" and report["workers"][0]["jobs_done"] == 1
    assert report["throughput_jobs_per_minute"] > 0 and report["eta_seconds"] > 0
    assert report["scans"] == [
        {
            "name": "fake",
            "split": "validation",
            "sentences_done": 3,
            "sentences_total": 3,
            "state": "complete",
            "candidates": 3,
            "sampled": 1,
            "order": "random",
            "order_seed": 123,
        }
    ]
    for i in range(40):  # a kill campaign leaves many dead workers: counted, not listed
        queue.stop_worker(engine, register(engine, f"dead{i}"))
    queue.stop_worker(engine, w)
    after = queue.status_report(engine)
    assert after["workers"] == [] and after["workers_total"] == {"live": 0, "lost": 0, "stopped": 41}
    assert after["eta_seconds"] is None  # jobs left but no live worker: no ETA


def test_database_clock_is_used_for_leases(engine):
    seed_jobs(engine, 1)
    w = register(engine)
    queue.claim_jobs(engine, w, 1, 30, MAX)
    with db.read(engine) as conn:  # both times come from the database's clock, in the claim's statement
        lease, claimed = conn.execute(select(jobs.c.lease_expires_at, jobs.c.claimed_at)).one()
    assert lease - claimed == pytest.approx(30, abs=1.0)
