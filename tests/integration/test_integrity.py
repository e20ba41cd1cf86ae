"""Integrity on both databases: schemas are written only where they belong, tagger names are
identities, label claims skip locked rows and ride out outages."""

import sqlite3
import subprocess

import pytest
from sqlalchemy import create_engine, func, inspect, select, text

from posresample import db, label_store
from posresample.errors import DatabaseError, TaggerError
from posresample.label import LabelOptions, run_label
from posresample.schema import labels, taggers
from tests.helpers import cli_cmd, count, outage, tiny_scan_options


def tables(url):
    eng = create_engine(url)
    try:
        return set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


@pytest.fixture
def foreign_url(db_url):
    """Another application's database: one table of its own, no Alembic."""
    eng = create_engine(db_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)"))
    eng.dispose()
    return db_url


def run_cli(*args):
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=600)


def one_error(proc, pattern):
    import re

    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), proc.stderr
    assert "Traceback" not in proc.stderr


def test_commands_refuse_another_applications_database_and_write_nothing(
    foreign_url, tiny_tagger, tiny_dir, tiny_probe, sample_conllu
):
    one_error(
        run_cli(
            "label", "--db", foreign_url, "--tagger", f"spacy:{tiny_tagger}", "--no-progress", "--db-retry-seconds", "0"
        ),
        "holds another application's tables \\(invoices\\)",
    )
    one_error(run_cli("db", "upgrade", "--db", foreign_url), "another application's tables")
    one_error(
        run_cli(
            "scan",
            "--db",
            foreign_url,
            *tiny_scan_options(tiny_dir, tiny_probe, sample_conllu),
            "--no-progress",
        ),
        "another application's tables",
    )
    for command in (["status"], ["export", "-o", "-"], ["worker", "--fake-sampler", "--db-retry-seconds", "0"]):
        one_error(run_cli(*command, "--db", foreign_url), "another application's tables")
    assert tables(foreign_url) == {"invoices"}
    if foreign_url.startswith("sqlite"):
        path = foreign_url.removeprefix("sqlite:///")
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL


def test_an_unrelated_alembic_database_is_not_called_a_newer_posresample(db_url):
    eng = create_engine(db_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('a1b2c3d4e5f6')"))
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    eng.dispose()
    one_error(
        run_cli("db", "upgrade", "--db", db_url), "belongs to another application \\(Alembic revision a1b2c3d4e5f6"
    )
    assert tables(db_url) == {"alembic_version", "users"}


def test_label_on_an_empty_file_creates_no_schema(tmp_path, tiny_tagger):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    one_error(
        run_cli("label", "--db", f"sqlite:///{path}", "--tagger", f"spacy:{tiny_tagger}", "--no-progress"),
        "holds no posresample data yet",
    )
    assert path.read_bytes() == b""


def test_a_malformed_tagger_sidecar_is_one_line_and_nothing_is_written(sampled, db_url, tiny_tagger, tmp_path):
    import shutil

    broken = tmp_path / "broken-tagger"
    shutil.copytree(tiny_tagger, broken)
    (tmp_path / "broken-tagger.json").write_text("{ not json")
    one_error(
        run_cli("label", "--db", db_url, "--tagger", f"spacy:{broken}", "--no-progress"),
        "tagger sidecar .*broken-tagger.json is not JSON",
    )
    assert count(sampled, taggers) == 0


def test_two_taggers_of_one_name_are_refused(sampled, tiny_tagger, tmp_path):
    """Same name, other files: outputs are keyed by name, so the second is refused (not merged)."""
    import shutil

    other = tmp_path / "sample-tagger"  # the same folder name, so the same default tagger name
    shutil.copytree(tiny_tagger, other)
    (other / "NOTES.txt").write_text("retrained")  # other files: another identity
    run_label(sampled, "", LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False))
    with pytest.raises(TaggerError, match="a different tagger is already named 'sample-tagger'.*--tagger-name"):
        run_label(sampled, "", LabelOptions(tagger=f"spacy:{other}", progress=False))
    renamed = run_label(sampled, "", LabelOptions(tagger=f"spacy:{other}", tagger_name="sample-2", progress=False))
    assert renamed.added == 48
    with db.read(sampled) as conn:
        names = conn.execute(select(taggers.c.name).order_by(taggers.c.id)).scalars().all()
        per_tagger = dict(
            conn.execute(
                select(taggers.c.name, func.count(labels.c.id))
                .join(labels, labels.c.tagger_id == taggers.c.id)
                .group_by(taggers.c.name)
            ).all()
        )
    assert names == ["sample-tagger", "sample-2"] and per_tagger == {"sample-tagger": 48, "sample-2": 48}


def test_the_migration_renames_taggers_that_share_a_name(db_url):
    """Databases from before 0006 may hold two taggers of one name: they are told apart, not merged."""
    from alembic import command

    eng = db.make_engine(db_url)
    with eng.connect() as conn:
        command.upgrade(db.alembic_config(connection=conn), "0005")
        conn.commit()
    with eng.begin() as conn:
        for i, key in enumerate(("a", "b")):
            conn.execute(
                text(
                    "INSERT INTO taggers (name, spec, identity_key, library, library_version, created_at) "
                    f"VALUES ('ewt', 'spacy:x{i}', '{key}', 'spacy', '3', 0)"
                )
            )
    db.upgrade(eng)
    with db.read(eng) as conn:
        assert conn.execute(select(taggers.c.name).order_by(taggers.c.id)).scalars().all() == ["ewt", "ewt-2"]
    eng.dispose()


@pytest.mark.postgres
def test_a_locked_lease_row_does_not_stall_label_claims(
    pg_url, tiny_dir, tiny_probe, sample_conllu, tiny_model, tokenizer, tiny_tagger
):
    """A transaction holding one row of the label queue must not block other label processes."""

    from posresample.scan import run_scan
    from posresample.tagger import load_tagger
    from tests.helpers import run_tiny_worker, scan_options

    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=6), progress=False)
    run_tiny_worker(engine, tiny_model, tokenizer)
    tagger_id = label_store.register_tagger(engine, load_tagger(f"spacy:{tiny_tagger}").identity())
    [stale] = label_store.claim_label_jobs(engine, tagger_id, "dead:1:x", 1, lease_seconds=0.01)
    frozen = engine.connect()
    frozen.begin()
    frozen.execute(text("SELECT job_id FROM label_jobs WHERE job_id = :j FOR UPDATE"), {"j": stale})
    from tests.helpers import lock_timeout_engine

    strict = lock_timeout_engine(pg_url)  # a blocked claim errors instead of waiting

    try:
        claimed = label_store.claim_label_jobs(strict, tagger_id, "live:2:y", 10, lease_seconds=30)
        assert len(claimed) == 5 and stale not in claimed
    finally:
        frozen.rollback()
        frozen.close()
        strict.dispose()
    assert label_store.claim_label_jobs(engine, tagger_id, "live:3:z", 10, lease_seconds=30) == [stale]
    engine.dispose()


def test_label_rides_out_an_outage_at_start_up(sampled, db_url, tiny_tagger, tmp_path):
    """A held SQLite lock, or a PostgreSQL that refuses connections, when label starts."""
    log = tmp_path / "label.log"
    sampled.dispose()
    end = outage(sampled, db_url)
    try:
        with open(log, "wb") as handle:
            proc = subprocess.Popen(
                cli_cmd(
                    "label",
                    "--db",
                    db_url,
                    "--tagger",
                    f"spacy:{tiny_tagger}",
                    "--no-progress",
                    "--db-retry-seconds",
                    "120",
                ),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**__import__("os").environ, "POSRESAMPLE_SQLITE_BUSY_TIMEOUT": "0.5"},
            )
            from tests.helpers import wait_for

            wait_for(lambda: "database unavailable" in log.read_text(), what="label to meet the outage")
            assert proc.poll() is None  # alive, retrying
    finally:
        end()
    assert proc.wait(timeout=600) == 0, log.read_text()
    assert "48 completions labelled now" in log.read_text() and count(sampled, labels) == 48


def test_a_labeller_retries_a_transient_error(sampled, tiny_tagger, monkeypatch):
    from sqlalchemy.exc import OperationalError

    real, failures = label_store.write_labels, []

    def flaky(*args, **kw):
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kw)

    monkeypatch.setattr(label_store, "write_labels", flaky)
    result = run_label(sampled, "", LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False, db_retry_seconds=30))
    assert len(failures) == 2 and result.added == 48 and count(sampled, labels) == 48


def test_scan_into_a_foreign_database_is_refused_by_the_library_too(foreign_url):
    engine = db.make_engine(foreign_url)
    with pytest.raises(DatabaseError, match="another application's tables"):
        db.ensure_schema(engine, migrate=True)
    engine.dispose()
    assert tables(foreign_url) == {"invoices"}


def test_a_truncated_checkpoint_stops_the_worker_in_one_line(engine, db_url, tiny_dir, tmp_path):
    """A cut-off model.safetensors is a one-line error, every job untouched."""
    import os
    import shutil

    from tests.helpers import job_states, seed_jobs

    model = tmp_path / "cut"
    shutil.copytree(tiny_dir, model)
    weights = model / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(os.path.getsize(weights) // 2)
    seed_jobs(engine, 3, model=str(model))
    proc = run_cli("worker", "--db", db_url, "--device", "cpu", "--no-progress")
    one_error(proc, f"cannot load model {model}: .*(incomplete|deserializ)")
    assert job_states(engine) == {"todo": 3}


def test_a_worker_rides_out_an_outage_at_start_up(engine, db_url, tmp_path):
    """A held SQLite lock (or PostgreSQL refusing connections) when the worker starts."""
    import os

    from tests.helpers import job_states, seed_jobs, start_worker, wait_for

    seed_jobs(engine, 6, num_samples=2, max_new_tokens=2)
    engine.dispose()
    log = tmp_path / "w.log"
    end = outage(engine, db_url)
    try:
        worker = start_worker(
            db_url,
            "--fake-sampler",
            "--db-retry-seconds",
            "120",
            log_path=log,
            env={"POSRESAMPLE_SQLITE_BUSY_TIMEOUT": "0.5"},
        )
        wait_for(lambda: "database unavailable" in log.read_text(), what="the worker to meet the outage")
        assert worker.poll() is None  # alive, retrying
    finally:
        end()
    assert worker.wait(timeout=600) == 0, log.read_text()
    assert job_states(engine) == {"done": 6}
    assert os.path.exists(log)
