"""The CLI in-process: one-line errors with no data touched, help for every command, the docs."""

import json
import re

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from posresample.cli import cli
from tests.helpers import REPO, assert_one_line_error, invoke


@pytest.fixture
def wrong_width_probe(tmp_path):
    rng = np.random.default_rng(0)
    probe = LogisticRegression(max_iter=50).fit(rng.standard_normal((60, 10)), rng.integers(0, 3, 60))
    joblib.dump(probe, tmp_path / "narrow.joblib")
    return str(tmp_path / "narrow.joblib")


def test_scan_errors_are_one_line_and_touch_no_data(scan_args, tmp_path, wrong_width_probe):
    (tmp_path / "corrupt.joblib").write_bytes(b"not a pickle")
    (tmp_path / "notud.conllu").write_text("hello world\n")
    cases = [
        ({"--probe": str(tmp_path / "missing.joblib")}, "probe file not found"),
        ({"--probe": str(tmp_path / "corrupt.joblib")}, "cannot load probe"),
        ({"--probe": wrong_width_probe}, "expects 10 features but the model's hidden size is 64"),
        ({"--layer": "9"}, r"--layer 9 is out of range: the model has hidden_states\[0..4\]"),
        ({"--dataset": str(tmp_path / "nowhere")}, "dataset not found"),
        ({"--dataset": str(tmp_path / "notud.conllu")}, "is not CoNLL-U"),
        ({"--model": "/no/such/folder"}, "cannot load model: no model folder at /no/such/folder, and not a Hub id"),
        ({"--split": "nosuch"}, "unknown split 'nosuch'; use train, validation or test"),
        ({"--db": "mysql://x/y"}, "unsupported database"),
        ({"--db": "sqlite:////no/such/folder/x.db"}, "folder /no/such/folder does not exist"),
        ({"--db": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, "cannot open database"),
    ]
    for over, pattern in cases:
        assert_one_line_error(invoke(*scan_args(**over)), pattern)
        assert not scan_args.db.exists(), over  # nothing written, not even an empty file


def test_scan_then_rescan_via_cli(scan_args):
    first = invoke(*scan_args())
    assert first.exit_code == 0, first.output
    n = int(re.search(r"(\d+) candidates \((\d+) new\)", first.stdout).group(1))
    again = invoke(*scan_args())
    assert f"{n} candidates (0 new)" in again.stdout
    assert_one_line_error(invoke(*scan_args(**{"--threshold": "0.5"})), "exists with another configuration")


def test_read_commands_on_a_missing_or_empty_database(tmp_path):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    out = tmp_path / "x.jsonl"
    assert_one_line_error(invoke("export", "-o", str(out), "--db", missing), "no database at")
    assert_one_line_error(invoke("status", "--db", missing), "no database at")
    assert_one_line_error(invoke("worker", "--db", missing, "--fake-sampler"), "no database at")
    assert not (tmp_path / "none.db").exists()
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert invoke("db", "upgrade", "--db", empty).exit_code == 0
    assert_one_line_error(invoke("export", "-o", str(out), "--db", empty), "holds no scan")
    assert not out.exists()


def test_worker_refuses_a_compile_mode_it_cannot_run(tmp_path):
    db = f"sqlite:///{tmp_path / 'w.db'}"
    for args, pattern in [
        (["--compile", "inductor"], "needs --decode fast"),
        (["--decode", "fast", "--compile", "cuda-graph", "--device", "cpu"], "needs a CUDA device"),
    ]:
        result = CliRunner().invoke(cli, ["worker", "--db", db, *args])
        assert result.exit_code == 2 and re.search(r"Error: .*" + pattern, result.stderr), result.stderr
    assert not (tmp_path / "w.db").exists()


def test_verbose_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["-v", "status", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code != 0 and type(result.exception).__name__ == "DatabaseError"


def test_db_upgrade_reports_the_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'u.db'}"
    first, second = invoke("db", "upgrade", "--db", url), invoke("db", "upgrade", "--db", url)
    assert re.fullmatch(r"schema at \w+ \(was empty\)\n", first.stdout)
    assert re.fullmatch(r"schema at \w+\n", second.stdout)


def test_version():
    from posresample import __version__

    assert invoke("--version").stdout.strip().endswith(__version__)


def all_commands(group=cli, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from all_commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


def test_every_command_has_help_with_an_example_and_is_documented():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    docs = readme + (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for path in all_commands():
        result = invoke(*path, "--help")
        assert result.exit_code == 0
        assert "Example" in result.stdout, path
        assert f"cli.py {' '.join(path)}" in docs, f"{' '.join(path)} is not documented"


def test_non_finite_and_out_of_range_values_are_refused_before_anything_is_written(scan_args):
    """NaN/inf floats and integers past the 32/64-bit columns, each one line, no file."""
    cases = [
        ({"--threshold": "nan"}, r"--threshold.*'nan' is not a finite number"),
        ({"--temperature": "inf"}, r"--temperature.*'inf' is not a finite number"),
        ({"--temperature": "0"}, r"--temperature.*0 is not in \(0, inf\]"),
        ({"--top-p": "1.5"}, r"--top-p.*1\.5 is not in \(0, 1\]"),
        ({"--num-samples": "100000"}, r"--num-samples.*100000 is not in the range 1<=x<=65536"),
        ({"--max-new-tokens": "5000"}, r"--max-new-tokens"),
        ({"--top-k": str(2**31)}, r"--top-k"),
        ({"--seed": str(2**63)}, r"--seed"),
        ({"--max-prefixes": str(2**31)}, r"--max-prefixes"),
    ]
    for over, pattern in cases:
        result = invoke(*scan_args(**over))
        assert result.exit_code == 2, (over, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and re.search(pattern, errors[0]), (over, result.stderr)
        assert not scan_args.db.exists(), over


def test_a_conllu_line_with_the_wrong_number_of_columns_is_an_error(scan_args, tmp_path):
    bad = tmp_path / "short.conllu"
    bad.write_text("# text = a b\n1\ta\ta\tNOUN\t_\t_\t0\troot\t_\t_\n2\tb\tb\tNOUN\t_\n\n")
    assert_one_line_error(invoke(*scan_args(**{"--dataset": str(bad)})), r"short\.conllu:3 is not CoNLL-U: .* has 5")
    assert not scan_args.db.exists()


def test_export_file_errors_are_one_line(scan_args, tmp_path, monkeypatch):
    assert invoke(*scan_args(**{"--max-prefixes": "2"})).exit_code == 0
    db = f"sqlite:///{scan_args.db}"
    assert_one_line_error(
        invoke("export", "-o", "/nonexistent/x.jsonl", "--db", db), "folder /nonexistent does not exist"
    )
    assert_one_line_error(invoke("export", "-o", str(tmp_path), "--db", db), "it is a folder")
    import io
    from types import SimpleNamespace

    from posresample import export as export_module

    class FullDisk(io.TextIOWrapper):
        def write(self, _text):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "io", SimpleNamespace(TextIOWrapper=FullDisk))
    out = tmp_path / "full.jsonl"
    assert_one_line_error(
        invoke("export", "-o", str(out), "--db", db), r"cannot write .*full\.jsonl: No space left on device"
    )
    assert not out.exists() and not (tmp_path / "full.jsonl.partial").exists()


def test_export_writes_into_a_pipe_or_device_and_refuses_suffixes_it_cannot_write(scan_args, tmp_path):
    """A named pipe, /dev/null or /dev/stdout are written in place, never replaced by a regular file."""
    import os
    import stat
    import threading

    assert invoke(*scan_args(**{"--max-prefixes": "2"})).exit_code == 0
    db = f"sqlite:///{scan_args.db}"
    assert_one_line_error(
        invoke("export", "-o", str(tmp_path / "out.zip"), "--db", db),
        r"export writes \.jsonl or \.jsonl\.zst .* not \.zip",
    )
    assert not (tmp_path / "out.zip").exists()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    assert invoke("export", "-o", str(fifo), "--db", db).exit_code == 0
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and json.loads(received[0].splitlines()[0])["metadata"]
    assert invoke("export", "-o", "/dev/null", "--db", db).exit_code == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not os.path.exists("/dev/null.partial")


def test_status_names_the_scan_and_how_far_it_got(scan_args):
    assert invoke(*scan_args(**{"--max-prefixes": "3"})).exit_code == 0
    db = f"sqlite:///{scan_args.db}"
    text = invoke("status", "--db", db).stdout
    assert re.search(
        r"scan +default +validation +\d+/24 sentences, partial +\(3 candidates; 0/3 candidates sampled\)", text
    ), text
    assert "workers      0 live, 0 lost (no heartbeat), 0 stopped" in text
    report = json.loads(invoke("status", "--json", "--db", db).stdout)
    [scan] = report["scans"]
    assert scan["name"] == "default" and scan["state"] == "partial" and scan["sentences_total"] == 24
    assert scan["sentences_done"] < 24 and report["workers"] == []
    assert invoke(*scan_args()).exit_code == 0
    assert json.loads(invoke("status", "--json", "--db", db).stdout)["scans"][0]["state"] == "complete"


def test_requeue_of_a_held_job_needs_force(scan_args):
    from posresample import db as dbmod
    from posresample import queue

    assert invoke(*scan_args(**{"--max-prefixes": "1"})).exit_code == 0
    url = f"sqlite:///{scan_args.db}"
    engine = dbmod.make_engine(url)
    queue.register_worker(engine, "h:1:live", "cpu", 60)
    [job] = queue.claim_jobs(engine, "h:1:live", 1, 60, 3)
    assert_one_line_error(invoke("requeue", "--job", str(job.id), "--db", url), "held by live worker h:1:live.*--force")
    assert invoke("requeue", "--job", str(job.id), "--force", "--db", url).stdout == "requeued 1 job(s)\n"


def test_no_progress_silences_the_model_loader_too(scan_args):
    import subprocess
    import sys

    args = scan_args(**{"--max-prefixes": "2"})
    quiet = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args, "--no-progress"], capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr
    # transformers >= 5 draws "Loading weights: 100%|...| 46/46 [...it/s]" unless told not to
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr


def test_worker_bar_has_a_total_and_an_eta(tmp_path, capsys):
    from posresample import db as dbmod
    from posresample.sampling.fake_sampler import FakeSampler
    from posresample.worker import Worker, WorkerOptions
    from tests.helpers import seed_jobs

    engine = dbmod.make_engine(f"sqlite:///{tmp_path / 'bar.db'}")
    dbmod.upgrade(engine)
    seed_jobs(engine, 12, num_samples=2, max_new_tokens=2)
    Worker(engine, lambda _m: FakeSampler(), WorkerOptions(batch_jobs=4, progress=True)).run()
    frames = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any(re.search(r"jobs: +100%\|.*\| 12/12 \[", f) for f in frames), frames
    assert any(re.search(r"4/12 \[\d\d:\d\d<\d\d:\d\d", f) for f in frames), frames  # elapsed<remaining: an ETA


def test_demo_run_again_with_other_settings_exports_what_it_just_sampled(tmp_path):
    """The second run samples new params and exports them, not 'pick one with --params'."""
    workdir = tmp_path / "demo"
    first = invoke("demo", "--workdir", str(workdir), "--no-progress", "--num-samples", "2", "--max-new-tokens", "2")
    assert first.exit_code == 0, first.output
    second = invoke("demo", "--workdir", str(workdir), "--no-progress", "--num-samples", "3", "--max-new-tokens", "2")
    assert second.exit_code == 0, second.output
    lines = (workdir / "uncertain_resamples.jsonl").read_text(encoding="utf-8").splitlines()
    header, record = json.loads(lines[0])["metadata"], json.loads(lines[1])
    assert header["generation_params"]["num_samples"] == 3 and len(record["completions"]) == 3


def test_the_full_help_in_the_docs_is_current():
    """docs/cli.md ends with every command's --help; `python scripts/cli-help-doc` rewrites it."""
    from posresample.cli import full_help_markdown

    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert text[text.index("## Full help") :] == full_help_markdown()
