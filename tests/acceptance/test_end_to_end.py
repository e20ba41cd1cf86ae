"""The real CLI in subprocesses with the tiny real model: scan, a worker SIGKILLed mid-run, export.

A job re-run after a crash draws the same noise, so the export equals that of an uninterrupted run
(which here also uses the other decode path).
"""

import json
import signal
import subprocess

import pytest

from tests.helpers import (
    assert_samples_agree,
    cli_cmd,
    job_states,
    running_job_of,
    start_worker,
    tiny_scan_options,
    wait_for,
)

pytestmark = pytest.mark.slow


def scan(db_url, tiny_dir, tiny_probe, sample_conllu):
    subprocess.run(
        cli_cmd(
            "scan",
            *tiny_scan_options(tiny_dir, tiny_probe, sample_conllu),
            "--num-samples",
            "24",
            "--max-new-tokens",
            "8",
            "--max-prefixes",
            "24",
            "--db",
            db_url,
        ),
        check=True,
        capture_output=True,
    )


def export_records(db_url, path):
    subprocess.run(cli_cmd("export", "-o", str(path), "--db", db_url, "--no-progress"), check=True, capture_output=True)
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{k: r[k] for k in ("dataset_idx", "prefix", "completions")} for r in map(json.loads, lines[1:])]


@pytest.fixture(scope="module")
def clean_records(tiny_dir, tiny_probe, sample_conllu, tmp_path_factory):
    """An uninterrupted run on the shared-prefix decode path, made once for both databases' tests."""
    folder = tmp_path_factory.mktemp("clean")
    clean_url = f"sqlite:///{folder / 'clean.db'}"
    scan(clean_url, tiny_dir, tiny_probe, sample_conllu)
    assert (
        start_worker(clean_url, "--device", "cpu", "--decode", "fast", log_path=folder / "c.log").wait(timeout=900) == 0
    )
    return export_records(clean_url, folder / "clean.jsonl")


def test_killed_worker_run_equals_a_clean_run(db_url, tiny_dir, tiny_probe, sample_conllu, tmp_path, clean_records):
    from posresample import db as dbmod

    scan(db_url, tiny_dir, tiny_probe, sample_conllu)
    engine = dbmod.make_engine(db_url)

    victim = start_worker(
        db_url, "--device", "cpu", "--batch-jobs", "2", "--lease-seconds", "2", log_path=tmp_path / "v.log"
    )
    wait_for(lambda: job_states(engine).get("done", 0) >= 4 and running_job_of(engine, victim.pid), what="mid-run")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=600) == -signal.SIGKILL
    assert 0 < job_states(engine).get("done", 0) < 24
    assert (
        start_worker(db_url, "--device", "cpu", "--lease-seconds", "2", log_path=tmp_path / "r.log").wait(timeout=900)
        == 0
    )
    assert job_states(engine) == {"done": 24}

    resumed = export_records(db_url, tmp_path / "resumed.jsonl")
    # The uninterrupted run took the shared-prefix decode path: both paths must give the same samples.
    clean = clean_records
    assert len(resumed) == 24 and all(len(r["completions"]) == 24 for r in resumed)

    def key(r):
        return r["dataset_idx"], r["prefix"]["target_position"]

    resumed, clean = sorted(resumed, key=key), sorted(clean, key=key)
    assert [(r["dataset_idx"], r["prefix"]) for r in resumed] == [(r["dataset_idx"], r["prefix"]) for r in clean]
    assert_samples_agree(
        [[c["token_ids"] for c in r["completions"]] for r in resumed],
        [[c["token_ids"] for c in r["completions"]] for r in clean],
    )


@pytest.mark.postgres
def test_two_scans_of_one_name_at_once_are_safe(pg_url, tiny_dir, tiny_probe, sample_conllu, tmp_path):
    """On a fresh database, the second is refused in one line (or runs after the first);
    either way the limit holds and progress is counted once. On PostgreSQL, where the second used to
    die on the scan's unique name and both used to insert; SQLite's single writer hides the race
    (the lease logic is the same code, tested on both in test_pipeline)."""
    db_url = pg_url
    from sqlalchemy import func, select

    from posresample import db as dbmod
    from posresample.schema import candidates, scans

    args = (
        "scan",
        *tiny_scan_options(tiny_dir, tiny_probe, sample_conllu),
        "--num-samples",
        "2",
        "--max-new-tokens",
        "2",
        "--max-prefixes",
        "15",
        "--no-progress",
    )
    procs = [
        subprocess.Popen(cli_cmd(*args, "--db", db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    for code, err in outcomes:
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert code == 0 or (code == 1 and len(errors) == 1 and "is being run by" in errors[0]), err
    clean = f"sqlite:///{tmp_path / 'clean.db'}"
    subprocess.run(cli_cmd(*args, "--db", clean), check=True, capture_output=True)
    seen = []
    for url in (db_url, clean):
        engine = dbmod.make_engine(url)
        with dbmod.read(engine) as conn:
            seen.append(conn.execute(select(scans.c.tokens_seen, scans.c.sentences_done)).one())
            assert conn.execute(select(func.count()).select_from(candidates)).scalar() == 15
        engine.dispose()
    assert seen[0] == seen[1]
