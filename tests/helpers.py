"""Test helpers: queue jobs without a model, count rows, run the CLI in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from posresample import db, scan_store
from posresample.config import GenerationParams
from posresample.schema import candidates, completions, jobs, labels, workers

REPO = Path(__file__).resolve().parent.parent
POISON_TOKEN = 999_999
TIMEOUT = 900  # a safety net for a hung process, not a speed requirement: a loaded machine is slow
LAYER = 2  # the tiny model's layer the pipeline tests scan
NUM_SAMPLES = 8  # continuations per prefix in the pipeline tests


def fake_scan_identity(**overrides) -> dict:
    """What makes a synthetic scan that scan (scan_store's SCAN_IDENTITY), for tests that write one."""
    identity = dict(
        dataset="fake",
        split="validation",
        model="fake",
        layer=1,
        probe_sha256="0" * 64,
        threshold=0.95,
        excluded_labels=[],
        dtype="float32",
        attn="eager",
    )
    return identity | overrides


def tiny_scan_options(tiny_dir, tiny_probe, sample_conllu) -> list[str]:
    """`scan`'s options for the tiny model's probe on the bundled sample, on the CPU."""
    return [
        "--probe",
        str(tiny_probe),
        "--dataset",
        str(sample_conllu),
        "--model",
        str(tiny_dir),
        "--layer",
        str(LAYER),
        "--device",
        "cpu",
    ]


def seed_jobs(
    engine,
    n: int,
    num_samples: int = 96,
    max_new_tokens: int = 16,
    poison: tuple[int, ...] = (),
    model: str = "fake",
    order: str = "random",
) -> list[int]:
    """A scan with n fake candidates and one todo job each; candidates listed in `poison` carry POISON_TOKEN.
    Returns the job ids in the order claims take them (priority, then id)."""
    params = GenerationParams(model=model, num_samples=num_samples, max_new_tokens=max_new_tokens)
    identity = fake_scan_identity()
    extra = dict(probe_path="fake.joblib", probe_classes=[0, 1], sentences_total=n)
    scan, pid = scan_store.open_scan(
        engine, "fake", identity, extra, params, owner="seed_jobs", lease_seconds=60, order=order
    )
    scan_store.release_scan_lease(engine, scan["id"], "seed_jobs")
    rows = [
        dict(
            dataset_idx=i,
            sent_id=str(i),
            sentence_text=f"sentence {i}",
            target_position=1,
            target_token_id=7,
            target_token="x",
            prefix_text="x",
            prefix_token_ids=[2, POISON_TOKEN if i in poison else 7],
            true_label=0,
            true_label_name="NOUN",
            probe_probs=[0.5, 0.5],
            probe_pred=0,
            probe_pred_name="NOUN",
            probe_max_prob=0.5,
        )
        for i in range(n)
    ]
    for start in range(0, n, 1000):
        scan_store.save_scan_batch(engine, scan["id"], pid, rows[start : start + 1000], min(start + 1000, n), 0, 0)
    with db.read(engine) as conn:
        return list(conn.execute(select(jobs.c.id).order_by(jobs.c.priority, jobs.c.id)).scalars())


def job_states(engine) -> dict:
    with db.read(engine) as conn:
        return dict(conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all())


def completion_stats(engine) -> tuple[int, int, int]:
    """(completion rows, distinct (job, sample_index) pairs, jobs that have any rows)."""
    with db.read(engine) as conn:
        total = conn.execute(select(func.count()).select_from(completions)).scalar_one()
        distinct = conn.execute(
            select(func.count()).select_from(
                select(completions.c.job_id, completions.c.sample_index).distinct().subquery()
            )
        ).scalar_one()
        per_job = conn.execute(select(func.count(func.distinct(completions.c.job_id)))).scalar_one()
    return total, distinct, per_job


def samples_per_done_job(engine) -> set[int]:
    with db.read(engine) as conn:
        counts = conn.execute(
            select(func.count(completions.c.id))
            .select_from(jobs)
            .outerjoin(completions, completions.c.job_id == jobs.c.id)
            .where(jobs.c.state == "done")
            .group_by(jobs.c.id)
        ).scalars()
        return set(counts)


def candidate_count(engine) -> int:
    with db.read(engine) as conn:
        return conn.execute(select(func.count()).select_from(candidates)).scalar_one()


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), *args]


def start_worker(db_url: str, *args: str, log_path: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        cli_cmd("worker", "--db", db_url, "--no-progress", *args),
        stdout=out,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
    )


def assert_samples_agree(a: list[list[list[int]]], b: list[list[list[int]]], max_share: float = 0.005) -> None:
    """Two batchings of the same jobs: same jobs and sample counts, and at most `max_share` of the
    samples (at least one) differing. Exact equality would be flaky: a batch shape moves fp32 logits
    by ~1e-5, which flips a draw now and then (docs/design.md, Reproducibility)."""
    assert [len(job) for job in a] == [len(job) for job in b]
    pairs = [(x, y) for ja, jb in zip(a, b) for x, y in zip(ja, jb)]
    differ = sum(x != y for x, y in pairs)
    assert differ <= max(1, int(max_share * len(pairs))), f"{differ} of {len(pairs)} samples differ"


def seed_labelled(engine, true_dists, probe_dists, classes, num_samples: int = 96, seed: int = 0) -> None:
    """A synthetic sampled-and-labelled scan: candidate i's probe says probe_dists[i] (over `classes`),
    and its num_samples completions' labels are drawn from true_dists[i] (over all UPOS ids)."""
    import numpy as np
    from sqlalchemy import insert, update

    from posresample.data import UPOS_NAMES
    from posresample.schema import candidate_labels, scans, taggers

    rng = np.random.default_rng(seed)
    n = len(true_dists)
    seed_jobs(engine, n, num_samples=num_samples, model="/nonexistent/synthetic-model")  # no tokenizer: no decoding
    with db.write(engine) as conn:
        conn.execute(update(scans).values(probe_classes=list(classes)))
        cand_ids = list(conn.execute(select(candidates.c.id).order_by(candidates.c.id)).scalars())
        for cid, probs, truth in zip(cand_ids, probe_dists, true_dists):
            pred = classes[int(np.argmax(probs))]
            conn.execute(
                update(candidates)
                .where(candidates.c.id == cid)
                .values(
                    probe_probs=[float(x) for x in probs],
                    probe_pred=pred,
                    probe_pred_name=UPOS_NAMES[pred],
                    probe_max_prob=float(np.max(probs)),
                    sentence_text=f"x sentence {cid}",
                    true_label=int(np.argmax(truth)),
                    true_label_name=UPOS_NAMES[int(np.argmax(truth))],
                )
            )
        conn.execute(update(jobs).values(state="done", attempt=1))
        job_of = dict(conn.execute(select(jobs.c.candidate_id, jobs.c.id)).all())
        tagger_id = conn.execute(
            insert(taggers)
            .values(
                name="synthetic",
                spec="synthetic:",
                identity_key="synthetic",
                library="none",
                library_version="0",
                created_at=0.0,
            )
            .returning(taggers.c.id)
        ).scalar_one()
        comp_rows, label_upos = [], []
        for cid, truth in zip(cand_ids, true_dists):
            for i, upos in enumerate(rng.choice(len(truth), size=num_samples, p=truth)):
                comp_rows.append(
                    dict(
                        job_id=job_of[cid],
                        sample_index=i,
                        text=f"c{i}",
                        token_ids=[5],
                        num_tokens=1,
                        finish_reason="length",
                        attempt=1,
                    )
                )
                label_upos.append(int(upos))
        ids = (
            conn.execute(insert(completions).returning(completions.c.id, sort_by_parameter_order=True), comp_rows)
            .scalars()
            .all()
        )
        conn.execute(
            insert(labels),
            [
                dict(completion_id=c, tagger_id=tagger_id, upos=u, upos_name=UPOS_NAMES[u], word="w", status="ok")
                for c, u in zip(ids, label_upos)
            ],
        )
        conn.execute(
            insert(candidate_labels),
            [
                dict(
                    candidate_id=cid,
                    tagger_id=tagger_id,
                    upos=int(np.argmax(t)),
                    upos_name=UPOS_NAMES[int(np.argmax(t))],
                    word="w",
                    status="ok",
                )
                for cid, t in zip(cand_ids, true_dists)
            ],
        )


def lock_timeout_engine(url: str, seconds: int = 2):
    """An engine whose sessions give up on a row lock after `seconds` (PostgreSQL): a claim that would
    block on a locked row errors instead of waiting, so a test sees the difference."""
    from sqlalchemy import event

    strict = db.make_engine(url, check=False)

    @event.listens_for(strict, "connect")
    def _lock_timeout(dbapi_conn, _record):
        with dbapi_conn.cursor() as cur:
            cur.execute(f"set lock_timeout = '{seconds}s'")
        dbapi_conn.commit()

    return strict


def wait_for(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling interval while waiting on a database condition
    raise AssertionError(f"timed out waiting for {what}")


def running_job_of(engine, pid):
    """The id of a job currently leased by the worker process `pid`, or None."""
    with db.read(engine) as conn:
        return conn.execute(
            select(jobs.c.id)
            .join(workers, workers.c.id == jobs.c.lease_owner)
            .where(workers.c.pid == pid, jobs.c.state == "running")
            .limit(1)
        ).scalar()


def outage(engine, db_url):
    """Make the database unreachable for the worker: a held exclusive lock (SQLite), or connections
    refused and the open ones terminated (PostgreSQL). Returns the function that ends it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if engine.dialect.name == "sqlite":
        import sqlite3

        holder = sqlite3.connect(make_url(db_url).database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        return lambda: (holder.execute("COMMIT"), holder.close())
    name = make_url(db_url).database
    admin = create_engine(make_url(db_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})

    def end():
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        admin.dispose()

    return end


def count(engine, table):
    with db.read(engine) as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def scan_options(tiny_dir, probe, dataset, **kw):
    from posresample.data import parse_label_list
    from posresample.scan import ScanOptions

    params = GenerationParams(model=tiny_dir, num_samples=NUM_SAMPLES, max_new_tokens=6)
    base = dict(
        probe=probe,
        dataset=dataset,
        split="validation",
        model=tiny_dir,
        layer=LAYER,
        threshold=0.95,
        exclude=parse_label_list("_,SYM,INTJ"),
        params=params,
        name="t",
        device="cpu",
        batch_size=5,
    )
    base.update(kw)
    return ScanOptions(**base)


def run_tiny_worker(engine, tiny_model, tokenizer):
    from posresample.sampling.sampler import Sampler
    from posresample.worker import Worker, WorkerOptions

    w = Worker(
        engine, lambda _name: Sampler(tiny_model, tokenizer), WorkerOptions(device="cpu", batch_jobs=6, progress=False)
    )
    w.run()
    return w


def invoke(*args):
    from click.testing import CliRunner

    from posresample.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result, pattern):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr
    assert "Traceback" not in result.output
