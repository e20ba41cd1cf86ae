"""Worker processes through the real CLI, on SQLite and PostgreSQL: concurrency, kills, freezes, poison.

The fake sampler (hidden `--fake-sampler`) stands in for the model so the queue is what is tested;
`--fake-delay` stands in for GPU time so a worker can be caught mid-job. Waiting is on conditions
read from the database, never on fixed sleeps.
"""

import os
import random
import signal
import subprocess
import time

import pytest
from sqlalchemy import func, select

from posresample import db
from posresample.models import completions, jobs, workers
from tests.helpers import POISON_TOKEN, completion_stats, job_states, samples_per_done_job, seed_jobs, start_worker

pytestmark = pytest.mark.slow
TIMEOUT = 180


def wait_for(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling interval while waiting on a database condition
    raise AssertionError(f"timed out waiting for {what}")


def finish(procs, timeout=TIMEOUT):
    return [p.wait(timeout=timeout) for p in procs]


def scalar(engine, stmt):
    with db.read(engine) as conn:
        return conn.execute(stmt).scalar()


def running_job_of(engine, pid):
    """The id of a job currently leased by the worker process `pid`, or None."""
    with db.read(engine) as conn:
        return conn.execute(select(jobs.c.id).join(workers, workers.c.id == jobs.c.lease_owner)
                            .where(workers.c.pid == pid, jobs.c.state == "running").limit(1)).scalar()


def sampling_job_of(engine, pid):
    """Like running_job_of, once the worker has also recorded its sampler: it is then sampling, and
    holds no write transaction (it records the sampler right after its first claim)."""
    with db.read(engine) as conn:
        recorded = conn.execute(select(workers.c.sampler).where(workers.c.pid == pid)).scalar()
    return running_job_of(engine, pid) if recorded else None


def assert_all_done_exactly_once(engine, n_jobs, num_samples=96):
    assert job_states(engine) == {"done": n_jobs}
    total, distinct, jobs_with_rows = completion_stats(engine)
    assert total == distinct == n_jobs * num_samples and jobs_with_rows == n_jobs
    assert samples_per_done_job(engine) == {num_samples}
    with db.read(engine) as conn:  # every job's rows come from one attempt
        mixed = conn.execute(select(completions.c.job_id).group_by(completions.c.job_id)
                             .having(func.count(func.distinct(completions.c.attempt)) > 1)).all()
    assert mixed == []


def test_eight_workers_two_thousand_jobs(engine, db_url, tmp_path):
    n = 2000
    seed_jobs(engine, n)
    procs = [start_worker(db_url, "--fake-sampler", "--batch-jobs", "8", log_path=tmp_path / f"w{i}.log") for i in range(8)]
    assert finish(procs) == [0] * 8
    assert_all_done_exactly_once(engine, n)
    with db.read(engine) as conn:
        per_worker = conn.execute(select(workers.c.jobs_done, workers.c.stopped_at)).all()
    assert sum(done for done, _ in per_worker) == n
    assert all(stopped is not None for _, stopped in per_worker)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(engine, db_url, tmp_path):
    n = 400
    seed_jobs(engine, n)
    rng = random.Random(7)
    args = ("--fake-sampler", "--fake-delay", "0.2", "--batch-jobs", "4", "--lease-seconds", "1.5")
    procs = [start_worker(db_url, *args, log_path=tmp_path / f"w{i}.log") for i in range(3)]

    def busy_workers():
        return [i for i, p in enumerate(procs) if p.poll() is None and running_job_of(engine, p.pid)]

    for round_ in range(4):
        target = rng.choice(wait_for(busy_workers, what="a worker mid-job"))
        time.sleep(rng.uniform(0, 0.2))  # a random moment inside the job (a kill point, not a synchronisation)
        procs[target].send_signal(signal.SIGKILL)
        assert procs[target].wait(timeout=30) == -signal.SIGKILL
        procs[target] = start_worker(db_url, *args, log_path=tmp_path / f"r{round_}.log")
    assert finish(procs) == [0] * len(procs)
    assert_all_done_exactly_once(engine, n)
    assert scalar(engine, select(func.max(jobs.c.attempt))) >= 2  # some job really was reclaimed


def test_frozen_worker_late_write_is_rejected(engine, db_url, tmp_path):
    seed_jobs(engine, 1)
    frozen = start_worker(db_url, "--fake-sampler", "--fake-delay", "1.0", "--lease-seconds", "1", log_path=tmp_path / "frozen.log")
    # Freeze it while it samples: frozen inside a write transaction, it would hold SQLite's write lock.
    job = wait_for(lambda: sampling_job_of(engine, frozen.pid), what="the claim")
    frozen.send_signal(signal.SIGSTOP)
    try:
        # Past its lease, another worker reclaims the job and finishes it.
        other = start_worker(db_url, "--fake-sampler", "--lease-seconds", "1", log_path=tmp_path / "other.log")
        assert other.wait(timeout=TIMEOUT) == 0
        with db.read(engine) as conn:
            before = conn.execute(select(completions.c.sample_index, completions.c.attempt, completions.c.text)
                                  .order_by(completions.c.sample_index)).all()
        assert {attempt for _, attempt, _ in before} == {2}
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(timeout=TIMEOUT) == 0
    with db.read(engine) as conn:
        after = conn.execute(select(completions.c.sample_index, completions.c.attempt, completions.c.text)
                             .order_by(completions.c.sample_index)).all()
    assert after == before and len(after) == 96
    assert f"job {job} attempt 1: lease lost, results discarded" in (tmp_path / "frozen.log").read_text()


def test_poison_job_ends_failed_and_the_others_finish(engine, db_url, tmp_path):
    n = 12
    seed_jobs(engine, n, poison=(5,))
    args = ("--fake-sampler", "--fake-poison-token", str(POISON_TOKEN), "--batch-jobs", "1", "--lease-seconds", "1")
    codes = []
    for i in range(8):  # a supervisor's restarts, by hand
        codes.append(start_worker(db_url, *args, log_path=tmp_path / f"w{i}.log").wait(timeout=TIMEOUT))
        if codes[-1] == 0:
            break
    assert codes == [-signal.SIGKILL] * 3 + [0]
    assert job_states(engine) == {"done": n - 1, "failed": 1}
    with db.read(engine) as conn:
        attempt, error = conn.execute(select(jobs.c.attempt, jobs.c.last_error).where(jobs.c.state == "failed")).one()
    assert attempt == 3 and "lease expired on attempt 3" in error


def test_heartbeat_keeps_a_long_job_from_being_reclaimed(engine, db_url, tmp_path):
    seed_jobs(engine, 1)
    slow = start_worker(db_url, "--fake-sampler", "--fake-delay", "4", "--lease-seconds", "1", log_path=tmp_path / "slow.log")
    wait_for(lambda: running_job_of(engine, slow.pid), what="the claim")
    other = start_worker(db_url, "--fake-sampler", "--lease-seconds", "1", log_path=tmp_path / "other.log")
    assert finish([slow, other]) == [0, 0]
    with db.read(engine) as conn:
        attempt, last_worker = conn.execute(select(jobs.c.attempt, jobs.c.last_worker)).one()
        slow_id = conn.execute(select(workers.c.id).where(workers.c.pid == slow.pid)).scalar()
    assert attempt == 1 and last_worker == slow_id
    assert_all_done_exactly_once(engine, 1)


def test_sigterm_stops_cleanly_and_releases(engine, db_url, tmp_path):
    seed_jobs(engine, 50)
    w = start_worker(db_url, "--fake-sampler", "--fake-delay", "0.3", "--batch-jobs", "2", "--stop-grace", "0",
                     log_path=tmp_path / "w.log")
    wait_for(lambda: running_job_of(engine, w.pid), what="the claim")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=60) == 0
    states = job_states(engine)
    assert states.get("running", 0) == 0 and states["todo"] > 0
    assert scalar(engine, select(workers.c.stopped_at)) is not None
    # Nothing was spent: the released jobs are claimed at attempt 1 by the next worker.
    assert start_worker(db_url, "--fake-sampler").wait(timeout=TIMEOUT) == 0
    assert scalar(engine, select(func.max(jobs.c.attempt))) == 1
    assert_all_done_exactly_once(engine, 50)


def test_supervisor_restarts_dead_children_and_stops_all_on_ctrl_c(engine, db_url, tmp_path):
    from tests.helpers import cli_cmd

    seed_jobs(engine, 400, poison=(0,))
    log = open(tmp_path / "sup.log", "wb")
    sup = subprocess.Popen(cli_cmd("worker", "--db", db_url, "--no-progress", "--devices", "cpu,cpu", "--fake-sampler",
                                   "--fake-delay", "0.1", "--fake-poison-token", str(POISON_TOKEN), "--batch-jobs", "1",
                                   "--lease-seconds", "60"), stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "restarted worker on cpu" in (tmp_path / "sup.log").read_text(), what="a restart")
    wait_for(lambda: job_states(engine).get("done", 0) >= 20, what="progress")
    sup.send_signal(signal.SIGINT)
    assert sup.wait(timeout=60) == 0
    text = (tmp_path / "sup.log").read_text()
    assert "died with signal SIGKILL" in text
    with db.read(engine) as conn:
        live = conn.execute(select(func.count()).select_from(workers).where(workers.c.stopped_at.is_(None))).scalar()
        running = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.state == "running", jobs.c.id != 1)).scalar()
    assert live == 1  # only the poisoned child, SIGKILLed, never marked itself stopped
    assert running == 0  # the stopped children finished or released their jobs
