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
from posresample.schema import completions, jobs, workers
from tests.helpers import (
    POISON_TOKEN,
    TIMEOUT,
    completion_stats,
    job_states,
    outage,
    running_job_of,
    samples_per_done_job,
    seed_jobs,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.slow


def finish(procs, timeout=TIMEOUT):
    return [p.wait(timeout=timeout) for p in procs]


def scalar(engine, stmt):
    with db.read(engine) as conn:
        return conn.execute(stmt).scalar()


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
        mixed = conn.execute(
            select(completions.c.job_id)
            .group_by(completions.c.job_id)
            .having(func.count(func.distinct(completions.c.attempt)) > 1)
        ).all()
    assert mixed == []


def test_eight_workers_eight_hundred_jobs(engine, db_url, tmp_path):
    n = 800
    seed_jobs(engine, n)
    procs = [
        start_worker(db_url, "--fake-sampler", "--batch-jobs", "8", log_path=tmp_path / f"w{i}.log") for i in range(8)
    ]
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
    # Short leases make the kills cheap to recover from; on a loaded machine they also expire under
    # live, merely slow workers. Attempts are then spent by slowness, not by the kills, so they are
    # not the thing under test: plenty are allowed, and what must hold whatever the timing is checked.
    args = (
        "--fake-sampler",
        "--fake-delay",
        "0.2",
        "--batch-jobs",
        "4",
        "--lease-seconds",
        "1.5",
        "--max-attempts",
        "1000",
    )
    procs = [start_worker(db_url, *args, log_path=tmp_path / f"w{i}.log") for i in range(3)]

    def busy_workers():
        return [i for i, p in enumerate(procs) if p.poll() is None and running_job_of(engine, p.pid)]

    for round_ in range(4):
        target = rng.choice(wait_for(busy_workers, what="a worker mid-job"))
        time.sleep(rng.uniform(0, 0.2))  # a random moment inside the job (a kill point, not a synchronisation)
        procs[target].send_signal(signal.SIGKILL)
        assert procs[target].wait(timeout=300) == -signal.SIGKILL
        procs[target] = start_worker(db_url, *args, log_path=tmp_path / f"r{round_}.log")
    assert finish(procs) == [0] * len(procs)
    assert_all_done_exactly_once(engine, n)
    assert scalar(engine, select(func.max(jobs.c.attempt))) >= 2  # some job really was reclaimed


def test_frozen_worker_late_write_is_rejected(engine, db_url, tmp_path):
    seed_jobs(engine, 1)
    frozen = start_worker(
        db_url, "--fake-sampler", "--fake-delay", "1.0", "--lease-seconds", "1", log_path=tmp_path / "frozen.log"
    )
    # Freeze it while it samples: frozen inside a write transaction, it would hold SQLite's write lock.
    job = wait_for(lambda: sampling_job_of(engine, frozen.pid), what="the claim")
    frozen.send_signal(signal.SIGSTOP)
    try:
        # Past its lease, another worker reclaims the job and finishes it.
        other = start_worker(db_url, "--fake-sampler", "--lease-seconds", "1", log_path=tmp_path / "other.log")
        assert other.wait(timeout=TIMEOUT) == 0
        with db.read(engine) as conn:
            before = conn.execute(
                select(completions.c.sample_index, completions.c.attempt, completions.c.text).order_by(
                    completions.c.sample_index
                )
            ).all()
        assert {attempt for _, attempt, _ in before} == {2}
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(timeout=TIMEOUT) == 0
    with db.read(engine) as conn:
        after = conn.execute(
            select(completions.c.sample_index, completions.c.attempt, completions.c.text).order_by(
                completions.c.sample_index
            )
        ).all()
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
    """The job outlasts its lease several times over. What must hold whatever the machine's speed:
    the heartbeat moved the lease forward while the job ran, and the job was done exactly once. The
    other worker reclaims it only if a renewal came later than the lease (a starved heartbeat on a
    loaded machine, where reclaiming is right); then the slow worker's late write was discarded."""
    seed_jobs(engine, 1)
    slow = start_worker(
        db_url, "--fake-sampler", "--fake-delay", "4", "--lease-seconds", "1", log_path=tmp_path / "slow.log"
    )
    job = wait_for(lambda: running_job_of(engine, slow.pid), what="the claim")
    other = start_worker(db_url, "--fake-sampler", "--lease-seconds", "1", log_path=tmp_path / "other.log")
    expiries = set()
    while slow.poll() is None and len(expiries) < 3:
        expiries.add(scalar(engine, select(jobs.c.lease_expires_at).where(jobs.c.id == job, jobs.c.state == "running")))
        time.sleep(0.05)  # polling the lease while the job runs
    assert len(expiries - {None}) >= 2  # renewed while the job ran
    assert finish([slow, other]) == [0, 0]
    with db.read(engine) as conn:
        attempt, last_worker = conn.execute(select(jobs.c.attempt, jobs.c.last_worker)).one()
        slow_id = conn.execute(select(workers.c.id).where(workers.c.pid == slow.pid)).scalar()
    assert_all_done_exactly_once(engine, 1)
    if attempt > 1:  # reclaimed after a late renewal: the slow worker's write must have been discarded
        assert "lease lost, results discarded" in (tmp_path / "slow.log").read_text()
    else:
        assert last_worker == slow_id


def test_sigterm_stops_cleanly_and_releases(engine, db_url, tmp_path):
    seed_jobs(engine, 50)
    w = start_worker(
        db_url,
        "--fake-sampler",
        "--fake-delay",
        "0.3",
        "--batch-jobs",
        "2",
        "--stop-grace",
        "0",
        log_path=tmp_path / "w.log",
    )
    wait_for(lambda: running_job_of(engine, w.pid), what="the claim")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=600) == 0
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
    sup = subprocess.Popen(
        cli_cmd(
            "worker",
            "--db",
            db_url,
            "--no-progress",
            "--devices",
            "cpu,cpu",
            "--fake-sampler",
            "--fake-delay",
            "0.1",
            "--fake-poison-token",
            str(POISON_TOKEN),
            "--batch-jobs",
            "1",
            "--lease-seconds",
            "60",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: "restarted worker on cpu" in (tmp_path / "sup.log").read_text(), what="a restart")
    wait_for(lambda: job_states(engine).get("done", 0) >= 20, what="progress")
    sup.send_signal(signal.SIGINT)
    assert sup.wait(timeout=600) == 0
    text = (tmp_path / "sup.log").read_text()
    assert "died with signal SIGKILL" in text
    assert "restarting worker on cpu in 1s (restart 1 of 3)" in text  # a back-off, not an instant respawn
    with db.read(engine) as conn:
        live = conn.execute(select(func.count()).select_from(workers).where(workers.c.stopped_at.is_(None))).scalar()
        running = conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.state == "running", jobs.c.id != 1)
        ).scalar()
    assert live == 1  # only the poisoned child, SIGKILLed, never marked itself stopped
    assert running == 0  # the stopped children finished or released their jobs


def test_a_model_that_will_not_load_costs_no_attempt(engine, db_url, tmp_path):
    """The model loads before any claim; its error stops the worker, every job untouched."""
    seed_jobs(engine, 20, model=str(tmp_path / "moved-away"))
    w = start_worker(db_url, "--device", "cpu", log_path=tmp_path / "w.log", env={"HF_HUB_OFFLINE": "1"})
    assert w.wait(timeout=TIMEOUT) == 1
    assert job_states(engine) == {"todo": 20}
    assert scalar(engine, select(func.max(jobs.c.attempt))) == 0
    errors = [line for line in (tmp_path / "w.log").read_text().splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "cannot load" in errors[0] and "moved-away" in errors[0]


def test_a_worker_rides_out_a_database_outage(engine, db_url, tmp_path):
    """A lock held past the busy timeout, or a PostgreSQL outage, is retried, not fatal."""
    n = 60
    seed_jobs(engine, n)
    log = tmp_path / "w.log"
    w = start_worker(
        db_url,
        "--fake-sampler",
        "--fake-delay",
        "0.05",
        "--batch-jobs",
        "2",
        "--db-retry-seconds",
        "120",
        log_path=log,
        env={"POSRESAMPLE_SQLITE_BUSY_TIMEOUT": "0.5"},
    )
    wait_for(lambda: job_states(engine).get("done", 0) >= 4, what="some progress")
    engine.dispose()
    end = outage(engine, db_url)
    try:
        wait_for(lambda: "database unavailable" in log.read_text(), what="the worker to meet the outage")
        assert w.poll() is None  # still alive, retrying
    finally:
        end()
    assert w.wait(timeout=TIMEOUT) == 0
    assert_all_done_exactly_once(engine, n)


def test_children_stop_when_their_supervisor_is_killed(engine, db_url, tmp_path):
    """SIGKILL of `worker --devices` reaches the children (PR_SET_PDEATHSIG), which stop cleanly."""
    from tests.helpers import cli_cmd

    seed_jobs(engine, 2000)
    log = open(tmp_path / "sup.log", "wb")
    sup = subprocess.Popen(
        cli_cmd(
            "worker",
            "--db",
            db_url,
            "--no-progress",
            "--devices",
            "cpu,cpu",
            "--fake-sampler",
            "--fake-delay",
            "0.1",
            "--batch-jobs",
            "1",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    pids = wait_for(lambda: _live_worker_pids(engine, 2), what="two working children")
    sup.send_signal(signal.SIGKILL)
    sup.wait(timeout=600)
    wait_for(
        lambda: scalar(engine, select(func.count()).select_from(workers).where(workers.c.stopped_at.is_(None))) == 0,
        what="the children to stop",
    )
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), what=f"child {pid} to exit")
    assert job_states(engine).get("running", 0) == 0  # they finished or released their jobs


def _live_worker_pids(engine, n):
    with db.read(engine) as conn:
        pids = (
            conn.execute(
                select(workers.c.pid)
                .join(jobs, jobs.c.last_worker == workers.c.id)
                .where(workers.c.stopped_at.is_(None))
                .distinct()
            )
            .scalars()
            .all()
        )
    return pids if len(pids) >= n else None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:  # a zombie (exited, not yet reaped by init) counts as gone
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
