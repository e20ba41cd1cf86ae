"""label after scan + worker on SQLite and PostgreSQL: exact counts, resume, two processes, export, errors."""

import json
import subprocess

import pytest
from sqlalchemy import func, select

from posresample import db, label_store
from posresample.errors import DatabaseError
from posresample.export import run_export
from posresample.label import LabelOptions, run_label
from posresample.schema import candidate_labels, candidates, completions, label_jobs, labels
from tests.helpers import cli_cmd, count


def leases(engine):
    with db.read(engine) as conn:
        return conn.execute(
            select(func.count()).select_from(label_jobs).where(label_jobs.c.owner.is_not(None))
        ).scalar_one()


def test_label_every_completion_once_and_resume_adds_nothing(sampled, tiny_tagger):
    opts = LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False)
    first = run_label(sampled, "", opts)
    assert first.added == count(sampled, completions) == 48
    assert count(sampled, labels) == 48 and count(sampled, candidate_labels) == count(sampled, candidates) == 6
    assert first.summary["labels"] == 48 and sum(first.summary["statuses"].values()) == 48
    assert sum(first.summary["upos"].values()) == first.summary["statuses"].get("ok", 0) > 0
    again = run_label(sampled, "", opts)
    assert again.added == 0 and again.candidates_added == 0 and count(sampled, labels) == 48
    assert leases(sampled) == 0  # every lease given back
    with db.read(sampled) as conn:  # the tagger's queue: every done job, each labelled
        assert (
            conn.execute(
                select(func.count()).select_from(label_jobs).where(label_jobs.c.labelled_at.is_not(None))
            ).scalar_one()
            == 6
        )


def test_an_interrupted_run_is_finished_by_the_next(sampled, tiny_tagger, monkeypatch):
    real, calls = label_store.write_labels, []

    def crash_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    opts = LabelOptions(tagger=f"spacy:{tiny_tagger}", batch_jobs=2, progress=False)
    monkeypatch.setattr(label_store, "write_labels", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_label(sampled, "", opts)
    monkeypatch.setattr(label_store, "write_labels", real)
    assert count(sampled, labels) == 16  # the first batch (2 jobs x 8) committed, the second lost
    assert run_label(sampled, "", opts).added == 32
    assert count(sampled, labels) == 48


@pytest.mark.slow
def test_two_label_processes_split_the_work(sampled, db_url, tiny_tagger):
    run = subprocess.run(
        cli_cmd(
            "label",
            "--db",
            db_url,
            "--tagger",
            f"spacy:{tiny_tagger}",
            "--processes",
            "2",
            "--batch",
            "1",
            "--no-progress",
        ),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "48 completions labelled now" in run.stdout and "48 in all" in run.stdout
    again = subprocess.run(
        cli_cmd("label", "--db", db_url, "--tagger", f"spacy:{tiny_tagger}", "--processes", "2", "--no-progress"),
        capture_output=True,
        text=True,
    )
    assert "0 completions labelled now" in again.stdout and "48 in all" in again.stdout
    with db.read(sampled) as conn:
        per_completion = conn.execute(
            select(func.count()).select_from(
                select(labels.c.completion_id)
                .group_by(labels.c.completion_id, labels.c.tagger_id)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar_one()
    assert count(sampled, labels) == 48 and per_completion == 0


def test_export_carries_labels_and_counts(sampled, tiny_tagger, tmp_path):
    run_label(sampled, "", LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False))
    run_export(sampled, str(tmp_path / "x.jsonl"), progress=False)
    lines = (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()
    meta, records = json.loads(lines[0])["metadata"], [json.loads(line) for line in lines[1:]]
    assert [t["name"] for t in meta["taggers"]] == ["sample-tagger"]
    for rec in records:
        names = [c["upos"]["sample-tagger"] for c in rec["completions"]]
        counts = rec["label_counts"].get("sample-tagger", {})
        assert sum(counts.values()) == sum(n is not None for n in names)
        assert all(counts.get(n, 0) == names.count(n) for n in set(names) if n)
        assert set(rec["original_upos"]) == {"sample-tagger"}


def test_labelling_an_empty_database_is_refused_and_writes_nothing(engine, tiny_tagger):
    from posresample.schema import taggers

    with pytest.raises(DatabaseError, match="no sampled completions to label"):
        run_label(engine, "", LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False))
    assert count(engine, taggers) == 0


def test_jobs_leased_by_a_killed_process_are_taken_over(sampled, tiny_tagger):
    """A SIGKILLed label process leaves leases and nothing else: they expire and the next run labels
    its jobs, with exact counts."""
    from posresample.tagger import load_tagger

    tagger_id = label_store.register_tagger(sampled, load_tagger(f"spacy:{tiny_tagger}").identity())
    held = label_store.claim_label_jobs(sampled, tagger_id, "deadhost:1:x", 3, lease_seconds=1.0)
    assert len(held) == 3
    assert label_store.claim_label_jobs(sampled, tagger_id, "other:2:y", 10, lease_seconds=30) == [
        j for j in range(1, 7) if j not in held
    ]  # a live lease is never claimed twice
    label_store.release_label_leases(sampled, tagger_id, "other:2:y")
    result = run_label(sampled, "", LabelOptions(tagger=f"spacy:{tiny_tagger}", lease_seconds=1.0, progress=False))
    assert result.added == 48 and count(sampled, labels) == 48 and leases(sampled) == 0


def test_labelling_while_workers_sample_picks_up_jobs_done_later(sampled, tiny_tagger):
    from sqlalchemy import update

    from posresample.schema import jobs

    with db.write(sampled) as conn:  # two jobs still being sampled
        conn.execute(update(jobs).where(jobs.c.id.in_([2, 5])).values(state="running"))
    opts = LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False)
    assert run_label(sampled, "", opts).added == 32
    with db.write(sampled) as conn:
        conn.execute(update(jobs).where(jobs.c.id.in_([2, 5])).values(state="done"))
    assert run_label(sampled, "", opts).added == 16 and count(sampled, labels) == 48
