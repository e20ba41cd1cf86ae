"""Inputs that used to destroy, misfile or fail late: each is one line `Error:` before any work, or
does the right thing."""

from __future__ import annotations

import shutil
import sqlite3

from posresample import db
from tests.helpers import assert_one_line_error, fake_scan_identity, invoke


def probe_args(tiny_dir, dataset, out, *extra):
    return [
        "train-probe",
        "--model",
        tiny_dir,
        "--dataset",
        dataset,
        "--split",
        "train",
        "--layer",
        "2",
        "--device",
        "cpu",
        "-o",
        str(out),
        *extra,
    ]


def test_a_probe_output_named_like_its_sidecar_is_refused_before_any_work(tiny_dir, sample_conllu, tmp_path):
    out = tmp_path / "p.json"
    assert_one_line_error(invoke(*probe_args(tiny_dir, sample_conllu, out)), "sidecar goes to the same path")
    assert not out.exists()
    url = f"sqlite:///{tmp_path / 'd.db'}"
    db.upgrade(db.make_engine(url))
    assert_one_line_error(invoke("distill", "-o", str(out), "--db", url), "sidecar goes to the same path")


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tiny_dir, sample_conllu, tmp_path):
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    assert_one_line_error(invoke(*probe_args(tiny_dir, sample_conllu, a_file / "p.joblib")), "is not a writable folder")
    assert_one_line_error(
        invoke("train-tagger", "--dataset", sample_conllu, "-o", str(a_file / "tagger")), "is not a writable folder"
    )


def test_train_probe_on_one_ud_file_evaluates_on_the_dev_file_beside_it(tiny_dir, sample_conllu, tmp_path):
    train = tmp_path / "xx_t-ud-train.conllu"
    shutil.copy(sample_conllu, train)
    alone = invoke(*probe_args(tiny_dir, str(train), tmp_path / "a.joblib"))
    assert alone.exit_code == 0 and "accuracy" not in alone.stdout  # no dev file beside it: no evaluation
    assert_one_line_error(
        invoke(*probe_args(tiny_dir, str(train), tmp_path / "b.joblib", "--eval-split", "test")),
        r"--eval-split test: .* no xx_t-ud-test\.conllu lies beside it",
    )
    assert_one_line_error(
        invoke(*probe_args(tiny_dir, str(train), tmp_path / "b.joblib", "--eval-split", "dev2")),
        "--eval-split 'dev2': use train, validation or test",
    )
    shutil.copy(sample_conllu, tmp_path / "xx_t-ud-dev.conllu")
    paired = invoke(*probe_args(tiny_dir, str(train), tmp_path / "c.joblib"))
    assert paired.exit_code == 0 and "validation accuracy:" in paired.stdout


def test_another_applications_table_named_like_ours_is_refused_with_the_file_untouched(tmp_path):
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, command TEXT)")
        conn.execute("INSERT INTO jobs (command) VALUES ('backup')")
    before = path.read_bytes()
    assert_one_line_error(
        invoke("db", "upgrade", "--db", f"sqlite:///{path}"), r"holds another application's tables \(jobs\)"
    )
    assert path.read_bytes() == before  # header bytes 18-19 (the journal mode) included


def test_machine_labels_cannot_pose_as_a_persons(tiny_tagger, tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    db.upgrade(db.make_engine(url))
    assert_one_line_error(
        invoke("label", "--tagger", f"spacy:{tiny_tagger}", "--tagger-name", "human:eve", "--db", url),
        "names starting with 'human:' are people's labels",
    )


def test_inputs_accepted_without_a_word_are_refused(scan_args, tmp_path):
    comments = tmp_path / "comments.conllu"
    comments.write_text("# sent_id = 1\n# text = nothing here\n\n")
    ranges = tmp_path / "ranges.conllu"
    ranges.write_text("# text = don't\n1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n\n")
    for path in (comments, ranges):
        assert_one_line_error(invoke(*scan_args(**{"--dataset": str(path)})), "holds no CoNLL-U words")
    for name in ("", "two\nlines", "x" * 201, " padded"):
        result = invoke(*scan_args(**{"--name": name}))
        assert result.exit_code == 2 and "a scan name is 1-200 printable characters" in result.output
    assert not scan_args.db.exists()
    result = invoke("requeue", "--failed", "--force", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 2 and "--force applies to --job ID only" in result.output
    work = tmp_path / "demo"
    assert_one_line_error(invoke("demo", "--workdir", str(work), "--db", "mysql://x/y"), "unsupported database")
    assert not (work / "tiny-gemma2").exists()


def test_a_scan_without_candidates_says_so_on_export(tmp_path):
    """A scan whose probe is sure of every token queues nothing: export says why, not which params."""
    from posresample import scan_store
    from posresample.config import GenerationParams

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    identity = fake_scan_identity(dataset="d", model="m")
    scan, _ = scan_store.open_scan(
        engine,
        "sure",
        identity,
        dict(probe_path="p", probe_classes=[0, 1], sentences_total=1),
        GenerationParams(model="m"),
        "o",
        60,
    )
    scan_store.release_scan_lease(engine, scan["id"], "o")
    for params in ([], ["--params", "1"]):
        assert_one_line_error(
            invoke("export", "-o", str(tmp_path / "x.jsonl"), "--db", url, *params),
            r"this scan has no candidates \(no token under its threshold\)",
        )
    assert not (tmp_path / "x.jsonl").exists()
