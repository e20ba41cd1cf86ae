"""The order a scan's jobs drain in: a seeded random permutation by default, dataset order on request."""

from __future__ import annotations

import pytest
from scipy.stats import spearmanr
from sqlalchemy import func, select, update

from posresample import db, queue, scan_store
from posresample.errors import ConfigError
from posresample.schema import candidates, jobs, scans
from posresample.worker import JobBudget, Worker, WorkerOptions
from tests.helpers import fake_scan_identity, job_states, seed_jobs

MAX = 3


def drain_order(engine, batch: int = 7) -> list[int]:
    """Claim every job in batches, as workers would; -> dataset_idx in claim order."""
    worker = queue.new_worker_id()
    queue.register_worker(engine, worker, "cpu", 60)
    order = []
    while claimed := queue.claim_jobs(engine, worker, batch, 60, MAX):
        order += sorted((j for j in claimed), key=lambda j: _priority(engine, j.id))
    return [j.dataset_idx for j in order]


def _priority(engine, job_id: int) -> tuple[int, int]:
    with db.read(engine) as conn:
        return conn.execute(select(jobs.c.priority, jobs.c.id).where(jobs.c.id == job_id)).one()


def test_random_order_is_uncorrelated_with_the_dataset_and_claims_each_job_once(engine):
    seed_jobs(engine, 400)
    order = drain_order(engine)
    assert sorted(order) == list(range(400))  # every job claimed, exactly once
    rho = spearmanr(order, range(400)).statistic
    assert abs(rho) < 0.15  # 4 sd of a rank correlation at n=400 is 0.2: 0.15 is tight but not flaky
    assert order[:20] != list(range(20))
    assert job_states(engine) == {"running": 400}


def test_same_seed_same_order_other_seed_other_order():
    first = [scan_store.job_priority("random", 7, i, 3) for i in range(300)]
    again = [scan_store.job_priority("random", 7, i, 3) for i in range(300)]
    other = [scan_store.job_priority("random", 8, i, 3) for i in range(300)]
    assert first == again and first != other
    assert all(0 <= p < 2**31 for p in first + other)  # fits jobs.priority, a signed 32-bit column
    assert abs(spearmanr(first, other).statistic) < 0.25
    assert scan_store.job_priority("dataset", 7, 5, 3) == 0 and scan_store.job_priority(None, None, 5, 3) == 0


def test_dataset_order_drains_in_id_order(engine):
    seed_jobs(engine, 30, order="dataset")
    assert drain_order(engine) == list(range(30))


def test_another_order_on_an_existing_scan_is_refused_and_none_resumes(engine):
    seed_jobs(engine, 3)
    identity = fake_scan_identity()
    extra = dict(probe_path="fake.joblib", probe_classes=[0, 1], sentences_total=3)
    from posresample.config import GenerationParams

    params = GenerationParams(model="fake")
    with pytest.raises(ConfigError, match="drains in random order .seed 123., not dataset order"):
        scan_store.open_scan(engine, "fake", identity, extra, params, "x", 60, order="dataset")
    with pytest.raises(ConfigError, match="not random order .seed 9."):
        scan_store.open_scan(engine, "fake", identity, extra, params, "x", 60, order="random", order_seed=9)
    scan, _ = scan_store.open_scan(engine, "fake", identity, extra, params, "x", 60)  # no order given: resumes
    assert scan["job_order"] == "random" and scan["order_seed"] == 123


def test_a_second_generation_params_row_queues_the_same_candidates_in_the_same_order(engine):
    """Sampling again at another temperature: a worker budget of N takes the same N candidates."""
    from posresample.config import GenerationParams

    seed_jobs(engine, 50)
    with db.write(engine) as conn:
        scan_id = conn.execute(select(scans.c.id)).scalar_one()
        pid = scan_store.params_id(conn, GenerationParams(model="fake", temperature=1.0, top_p=1.0))
        scan_store.enqueue_missing_jobs(conn, scan_id, pid)
    with db.read(engine) as conn:
        rows = conn.execute(select(jobs.c.params_id, jobs.c.candidate_id, jobs.c.priority)).all()
    by_params: dict[int, dict[int, int]] = {}
    for params, cand, prio in rows:
        by_params.setdefault(params, {})[cand] = prio
    first, second = by_params.values()
    assert first == second


def test_a_scan_made_before_the_order_existed_keeps_dataset_order(engine):
    """A NULL job_order (revision 0008 on an old database) resumes in dataset order, priority 0."""
    seed_jobs(engine, 10)
    with db.write(engine) as conn:
        conn.execute(update(scans).values(job_order=None, order_seed=None))
        scan_id = conn.execute(select(scans.c.id)).scalar_one()
        pid = conn.execute(select(jobs.c.params_id)).scalars().first()
        conn.execute(jobs.delete())
        assert scan_store.enqueue_missing_jobs(conn, scan_id, pid) == 10
    with db.read(engine) as conn:
        assert set(conn.execute(select(jobs.c.priority)).scalars()) == {0}
        assert conn.execute(select(func.count()).select_from(candidates)).scalar_one() == 10
    assert drain_order(engine) == list(range(10))


def test_job_budget_in_memory_and_shared_through_a_file(tmp_path):
    budget = JobBudget(5)
    assert budget.take(4) == 4 and budget.take(4) == 1 and budget.take(4) == 0
    budget.give_back(2)
    assert budget.take(4) == 2
    assert JobBudget(None).take(8) == 8
    path = tmp_path / "budget.txt"
    path.write_text("6")
    a, b = JobBudget(6, str(path)), JobBudget(6, str(path))
    assert a.take(4) == 4 and b.take(4) == 2 and a.take(1) == 0
    b.give_back(1)
    assert path.read_text() == "1" and a.take(3) == 1


class _CountingSampler:
    """Enough of a sampler for the worker loop: one token per sample."""

    def sample(self, requests, params, should_abort=lambda: False):
        from posresample.sampling.sampler import Sample

        return [[Sample([5], "length") for _ in r.sample_indices] for r in requests]

    def decode(self, ids):
        return "x"

    def describe(self):
        return {"decode": "counting"}


def test_worker_max_jobs_stops_after_n_jobs(engine):
    seed_jobs(engine, 20, num_samples=2)
    opts = WorkerOptions(batch_jobs=4, progress=False, max_jobs=7)
    Worker(engine, lambda _model: _CountingSampler(), opts).run()
    assert job_states(engine) == {"done": 7, "todo": 13}
