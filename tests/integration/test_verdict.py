"""The verdict on studies with a known truth (tests/known_truth.py), written to SQLite and PostgreSQL
through the project's own statements: the correction, the test of the probe, the verdicts, and the
files scripts read. (Interval coverage over many studies: bench/verdict_coverage.py.)"""

import csv
import json

import numpy as np
import pytest

from posresample.analyze import run_analyze
from posresample.data import UPOS_IDS
from posresample.report import write_report
from posresample.stats import metrics, verdict
from posresample.stats.confusion import Confusion
from tests.known_truth import PROBE_CLASSES, K, draw_study, label_counts, planted_verdicts, write_study


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_correction_is_closer_to_the_truth_and_is_the_raw_shares_under_the_identity(engine):
    """(SQLite only: analyze's queries run on both databases in test_the_files_scripts_read_carry_the_stable_names.)"""
    rng = np.random.default_rng(1)
    study = draw_study(150, rng)
    write_study(engine, study, study.measured)
    a = run_analyze(engine, min_labelled=20)
    raw_error = metrics.total_variation(a.empirical, study.truth).mean()
    corrected_error = metrics.total_variation(a.corrected, study.truth).mean()
    assert corrected_error < 0.8 * raw_error, (corrected_error, raw_error)  # the tagger's 6% is taken out
    plain = run_analyze(engine, min_labelled=20, confusion=Confusion.identity(), with_examples=False)
    assert np.allclose(plain.corrected, plain.empirical, atol=1e-9)


def test_the_probe_test_holds_its_size_and_finds_a_probe_off_by_a_tv_of_0_3():
    rng = np.random.default_rng(2)
    n = 400
    calibrated = draw_study(n, rng, calibrated=True)
    counts = label_counts(calibrated)
    measured = Confusion(calibrated.measured, "a treebank sample")
    size = (verdict.probe_test(counts, calibrated.probe, measured, rng).p < 0.05).mean()
    assert size <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / n)  # at most ~5%, plus binomial slack
    off = calibrated.probe.copy()  # 0.3 of the mass moved to a class the word never takes
    for row in off:
        empty = [c for c in PROBE_CLASSES if row[c] < 0.01]
        row *= 0.7
        row[empty[0]] += 0.3
    assert np.allclose(metrics.total_variation(calibrated.truth, off), 0.3, atol=0.02)
    assert (verdict.probe_test(counts, off, measured, rng).q <= 0.05).mean() > 0.9


def planted(rng, per_class: int = 40):
    """Candidates of each verdict class: one reading and the probe's argmax, one reading and another
    argmax, two readings at 35-65%."""
    truth, probe = [], []
    for kind in ("underconfident", "wrong", "ambiguous"):
        for _ in range(per_class):
            a, b = rng.choice([UPOS_IDS[x] for x in ("NOUN", "VERB", "ADJ", "PRON", "ADP", "DET")], 2, replace=False)
            pi, q = np.zeros(K), np.zeros(K)
            q[PROBE_CLASSES] = 0.01
            if kind == "ambiguous":
                w = rng.uniform(0.35, 0.65)
                pi[a], pi[b] = w, 1 - w
            else:
                pi[a] = 1.0
            top = a if kind != "wrong" else b
            q[top] += 0.6
            q[b if top == a else a] += 0.2
            truth.append(pi)
            probe.append(q / q.sum())
    return np.array(truth), np.array(probe)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_each_planted_verdict_class_is_recovered(engine):
    """(SQLite only: analyze's queries run on both databases in test_the_files_scripts_read_carry_the_stable_names.)"""
    rng = np.random.default_rng(3)
    truth, probe = planted(rng)
    study = draw_study(len(truth), rng, truth=truth, probe=probe)
    write_study(engine, study, study.measured)
    a = run_analyze(engine, min_labelled=20, with_examples=False)
    called = [r["verdict"] for r in a.rows]
    for kind in ("probe_underconfident", "probe_wrong", "genuinely_ambiguous"):
        mine = [c for c, p in zip(called, planted_verdicts(truth, probe)) if p == kind]
        assert len(mine) == 40 and mine.count(kind) >= 32, (kind, mine.count(kind))
    shares = a.summary["verdict"]
    for kind in ("probe_underconfident", "probe_wrong", "genuinely_ambiguous"):  # a third each, in the interval
        lo, hi = shares[kind]["ci95"]
        assert lo <= 1 / 3 <= hi, (kind, shares[kind])


def test_the_files_scripts_read_carry_the_stable_names(engine, tmp_path):
    rng = np.random.default_rng(4)
    study = draw_study(60, rng)
    write_study(engine, study, study.measured)
    paths = write_report(run_analyze(engine, min_labelled=20), str(tmp_path / "report"))
    summary = json.loads(open(paths["summary"]).read())
    assert set(summary["verdict"]) == set(verdict.VERDICTS)
    for entry in [*summary["verdict"].values(), summary["probe_contradicted_fdr05"]]:
        assert set(entry) == {"share", "ci95"} and entry["ci95"][0] <= entry["share"] <= entry["ci95"][1]
    assert summary["headline"].startswith("Of 60 uncertain tokens, ")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 60 and {"verdict", "p_value", "q_value", "corrected_NOUN", "corrected_NOUN_lo"} <= set(rows[0])
    assert {r["verdict"] for r in rows} <= set(verdict.VERDICTS)
    assert all(0 < float(r["p_value"]) <= 1 and float(r["p_value"]) <= float(r["q_value"]) + 1e-12 for r in rows)
    for png in ("curve", "verdicts"):
        assert open(paths[png], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_confusion_files_are_one_line_and_write_nothing(engine, db_url, tmp_path):
    from click.testing import CliRunner

    from posresample.cli import cli

    rng = np.random.default_rng(5)
    study = draw_study(30, rng)
    write_study(engine, study, study.measured)
    cases = {
        "notjson.json": ("{ nope", "is not JSON"),
        "unknown.json": (json.dumps({"NOUN": {"NOUN": 10, "NOUNISH": 1}}), "unknown UPOS label 'NOUNISH'"),
        "zero.json": (
            json.dumps({"NOUN": {"NOUN": 10}, "VERB": {"VERB": 0, "NOUN": 0}}),
            "the row of VERB has no counts",
        ),
        "negative.json": (json.dumps({"NOUN": {"NOUN": -3}}), "not a count in [0, 1e+12]"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        out = tmp_path / f"report-{name}"
        result = CliRunner().invoke(
            cli, ["analyze", "--db", db_url, "--tagger-confusion", str(tmp_path / name), "-o", str(out)]
        )
        assert result.exit_code == 1, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert not out.exists()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(Confusion(study.measured, "given").to_json()))
    result = CliRunner().invoke(
        cli, ["analyze", "--db", db_url, "--tagger-confusion", str(good), "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Of 30 uncertain tokens, ")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["corrected"]["confusion"]["source"] == "given"
    assert summary["corrected"]["population"]["refits"] == 10  # the default
    assert "analyze: replicate studies: 100%" in result.stderr and "10/10" in result.stderr  # the bar, on stderr
    quiet = CliRunner().invoke(
        cli,
        [
            "analyze",
            "--db",
            db_url,
            "--tagger-confusion",
            str(good),
            "--no-progress",
            "--refits",
            "3",
            "-o",
            str(tmp_path / "r3"),
        ],
    )
    assert quiet.exit_code == 0, quiet.output
    assert "replicate studies" not in quiet.stderr
    assert json.loads((tmp_path / "r3" / "summary.json").read_text())["corrected"]["population"]["refits"] == 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unwritable_report_folder_or_a_bad_sidecar_is_one_line_before_any_work(engine, db_url, tmp_path):
    from click.testing import CliRunner

    from posresample.cli import cli

    write_study(engine, draw_study(20, np.random.default_rng(6)), None)
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases = [
        (["-o", "/proc/nope/report"], "cannot write the report to /proc/nope/report"),
        (["-o", str(tmp_path / "r1"), "--distill", str(tmp_path / "empty.json")], "is not JSON"),
        (["-o", str(tmp_path / "r2"), "--distill", str(tmp_path / "list.json")], "is not a distill sidecar"),
        (["-o", str(tmp_path / "r3"), "--distill", str(tmp_path / "missing.json")], "cannot read distill sidecar"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["analyze", "--db", db_url, *args])
        assert result.exit_code == 1, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.output
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))
