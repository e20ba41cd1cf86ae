"""analyze on databases whose labels are drawn from known distributions, on SQLite and PostgreSQL:
the raw shares, the bias the noise puts in a plug-in divergence and its removal, a recalibration
recovered, the files written."""

import json

import numpy as np
import pytest
from sqlalchemy import select

from posresample import db
from posresample.analyze import run_analyze
from posresample.report import write_report
from posresample.stats import metrics
from posresample.stats.confusion import Confusion
from tests.known_truth import K, draw_study, write_study

CLASSES = [0, 16, 6, 14]  # NOUN, VERB, ADJ, ADV


def known(n=40, seed=1):
    rng = np.random.default_rng(seed)
    truth_small = rng.dirichlet(np.full(len(CLASSES), 0.7), size=n)
    truth = np.zeros((n, K))
    truth[:, CLASSES] = truth_small
    return truth, rng


def worse_tagger_study(sqlite_url: str, seed: int):
    """A SQLite study of 400 whose labels come through a tagger three times as wrong as the treebank
    measurement stored with it: (engine, study, the treebank's confusion C, the generator)."""
    from tests.known_truth import tagger_confusion, treebank_counts

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    rng = np.random.default_rng(seed)
    C = tagger_confusion()
    worse = Confusion(C * 10_000, "the tagger on these words").scaled_errors(3.0).matrix()
    study = draw_study(400, rng, confusion=worse)
    write_study(engine, study, treebank_counts(C, rng))
    return engine, study, C, rng


def perfect_tagger():
    return np.eye(K)


def test_a_probe_equal_to_the_truth_scores_about_zero_once_the_noise_is_removed(engine):
    """Raw: within a few standard errors of the truth, and a plug-in TV of about its noise floor.
    Corrected: the noise's share of the TV removed (a probe equal to the truth scored 0.063 raw)."""
    truth, rng = known()
    study = draw_study(len(truth), rng, truth=truth, probe=truth, confusion=perfect_tagger())
    write_study(engine, study, None)
    a = run_analyze(engine, min_labelled=20, confusion=Confusion.identity(), with_examples=False)
    assert len(a.rows) == 40 and all(r["n_labelled"] == 96 for r in a.rows)
    assert (np.abs(a.empirical - truth) <= 4 * np.sqrt(truth * (1 - truth) / 96) + 1e-9).all()
    raw = a.summary["raw"]["probe_vs_empirical"]["tv"]["mean"]
    floor = a.summary["raw"]["noise_floor"]["tv"]["mean"]
    assert 0.5 * floor < raw < 1.5 * floor  # the plug-in is the floor: noise, not a real gap
    fixed = a.summary["corrected"]["divergences"]["tv"]
    assert fixed["estimate"] < 0.4 * raw and fixed["ci95"][0] < 0.02


def test_a_miscalibrated_probe_is_found_and_recalibrated(engine, tmp_path):
    truth, rng = known(n=60, seed=2)
    probe = metrics.temper(truth, 0.4)  # an overconfident probe
    study = draw_study(len(truth), rng, truth=truth, probe=probe, confusion=perfect_tagger())
    write_study(engine, study, None)
    a = run_analyze(engine, min_labelled=20, confusion=Confusion.identity())
    fixed, raw = a.summary["corrected"]["divergences"]["tv"], a.summary["raw"]["noise_floor"]["tv"]["mean"]
    assert fixed["ci95"][0] > 1.5 * raw  # a real gap, not noise
    for fitted in a.summary["fitted_temperature"].values():
        assert 1.6 < fitted < 4.0  # undoes T = 0.4 (1 / 0.4 = 2.5)
    b = a.summary["raw"]["baselines"]
    scores = b["scores"]
    assert scores[f"probe, fitted T={b['fitted_temperature']:.3g}"]["kl"]["mean"] < 0.5 * scores["probe"]["kl"]["mean"]
    paths = write_report(a, str(tmp_path / "report"))
    summary = json.loads(open(paths["summary"]).read())
    assert summary["candidates_analysed"] == 60
    assert open(paths["csv"]).read().count("\n") == 61
    for name in ("curve", "verdicts", "reliability", "scatter", "tv_hist", "per_label"):
        assert open(paths[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(paths["html"], encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 6 and "http://" not in page and "https://" not in page


def test_out_of_probe_labels_are_their_own_line_and_the_smoothing_is_stated(engine):
    truth, rng = known(n=40, seed=3)
    truth[:20] *= 0.8
    truth[:20, 15] = 0.2  # INTJ: outside the probe's classes
    probe = truth.copy()
    probe[:, 15] = 0  # the probe cannot say INTJ
    probe /= probe.sum(1, keepdims=True)
    study = draw_study(len(truth), rng, truth=truth, probe=probe, confusion=perfect_tagger())
    write_study(engine, study, None)
    a = run_analyze(engine, min_labelled=20, confusion=Confusion.identity(), with_examples=False)
    o = a.summary["out_of_probe"]
    assert "INTJ" in o["labels"] and o["candidates_with_any"] >= 19
    assert o["share_of_labels"]["mean"] == pytest.approx(0.1, abs=0.03)
    assert o["kl_all_eps_1e-8"] - o["kl_all_eps_1e-6"] == pytest.approx(6.64 * o["share_of_labels"]["mean"], rel=0.1)
    assert o["kl_on_probe_classes"] < o["kl_all_eps_1e-6"]  # the KL on the probe's classes is not decided by eps


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_random_part_of_the_scan_sampled_estimates_the_whole_scan(engine):
    """A worker stopped by --max-jobs leaves the first jobs of the scan's random order: a simple
    random sample. analyze says so, counts the flow, and its shares' intervals hold the values of
    all the scan's candidates (the sample's own values differ from them, by sampling). (SQLite
    only: the random order's claims are test_job_order's, on both databases; analyze's queries run
    on both in the other tests here.)"""
    from tests.known_truth import truth_values

    rng = np.random.default_rng(11)
    study = draw_study(500, rng)
    write_study(engine, study, study.measured, sampled=200)
    a = run_analyze(engine, min_labelled=20, with_examples=False, refits=4)
    s = a.summary
    assert s["flow"] == {"scanned": 500, "sampled": 200, "labelled_enough": 200, "analysed": 200}
    assert s["sample"]["random_sample"] and "simple random sample" in s["sample"]["reading"]
    assert "a random sample of the scan's 500" in s["headline"]
    sampled_idx = sorted(r["dataset_idx"] for r in a.rows)
    assert 150 < np.mean(sampled_idx) < 350 and sampled_idx[-1] > 400  # spread over the scan, not its first 200
    whole = truth_values(study.truth, study.probe)
    for name in ("genuinely_ambiguous", "probe_underconfident", "probe_wrong"):
        lo, hi = s["verdict"][name]["ci95"]
        assert lo <= whole[name] <= hi, (name, lo, whole[name], hi)


def test_a_confusion_without_rows_for_the_tagger_s_labels_is_filled_and_said_so(engine):
    """A one-row confusion ({NOUN: {NOUN: 5}}) used to give every mass to NOUN. Rows for the labels
    the tagger gave are filled with the identity, and the first line says which."""
    rng = np.random.default_rng(5)
    study = draw_study(40, rng, confusion=perfect_tagger())
    write_study(engine, study, None)
    partial = Confusion(np.where(np.arange(K)[:, None] == 0, np.eye(K) * 5, 0.0), "one row")
    a = run_analyze(engine, min_labelled=20, confusion=partial, with_examples=False, refits=2)
    s = a.summary
    assert s["headline"].startswith("Warning: the tagger's confusion (one row) has no row for ")
    assert "NOUN" not in s["confusion_filled"] and len(s["confusion_filled"]) >= 5
    firsts = {r["corrected_first"] for r in a.rows}
    assert len(firsts) > 3  # not everything NOUN
    agree = np.mean([r["corrected_first"] == r["empirical_majority"] for r in a.rows])
    assert agree > 0.9
    assert sum(s["verdict_counts"].values()) == 40


def test_confusion_counts_past_any_treebank_are_one_line_errors():
    from posresample.errors import ConfigError
    from posresample.stats.confusion import parse_confusion

    for n in (9.3e18, 1e308, 10**400, float("nan"), -1):
        with pytest.raises(ConfigError, match="not a count in"):
            parse_confusion({"NOUN": {"NOUN": n}}, "c.json")


def test_values_edited_by_hand_are_one_line_naming_the_row(engine):
    from sqlalchemy import update

    from posresample import db
    from posresample.errors import DatabaseError
    from posresample.schema import candidates, labels

    rng = np.random.default_rng(6)
    study = draw_study(30, rng)
    write_study(engine, study, study.measured)
    with db.write(engine) as conn:
        cid = conn.execute(candidates.select().limit(1)).first().id
        conn.execute(update(candidates).where(candidates.c.id == cid).values(probe_probs=[0.5, 0.5]))
    with pytest.raises(DatabaseError, match=f"candidate {cid}: probe_probs is not 15 probabilities"):
        run_analyze(engine, min_labelled=20, with_examples=False, refits=0)
    with db.write(engine) as conn:
        conn.execute(update(candidates).where(candidates.c.id == cid).values(probe_probs=[1 / 15] * 15))
        first = conn.execute(labels.select().limit(1)).first().id
        conn.execute(update(labels).where(labels.c.id == first).values(upos=99))
    with pytest.raises(DatabaseError, match="has labels with upos 99"):
        run_analyze(engine, min_labelled=20, with_examples=False, refits=0)


def test_the_sensitivity_table_flags_a_tagger_worse_on_these_words_than_measured(sqlite_url):
    """Labels drawn through a tagger three times as wrong as the treebank measurement handed to
    analyze: the headline overstates the ambiguous share (tagger error read as ambiguity), and the
    table shows it: the share falls from the stored row to x1.5 to x2, toward the truth. (SQLite
    only: its queries are the ones every test here runs on both databases.)"""
    engine, study, _C, _rng = worse_tagger_study(sqlite_url, 21)
    s = run_analyze(engine, min_labelled=20, with_examples=False, refits=2).summary
    rows = {r["confusion"]: r["verdict"]["genuinely_ambiguous"]["share"] for r in s["sensitivity"]}
    truth = float((np.sort(study.truth, axis=1)[:, -2] >= 0.10).mean())
    assert list(rows) == ["stored", "errors x1.5", "errors x2", "hard words"]
    assert rows["stored"] > rows["errors x1.5"] > rows["errors x2"]
    assert rows["stored"] - truth > 0.08 and abs(rows["errors x2"] - truth) < rows["stored"] - truth
    assert s["sensitivity_line"].startswith(f"sensitivity: genuinely ambiguous {rows['stored']:.0%} with the stored")
    assert s["tagger_on_candidates"]["accuracy"] == 1.0 and s["tagger_on_candidates"]["words"] == 400
    uncertain = s["tagger_on_candidates"]["uncertain_tokens"]  # every candidate's original word: here all analysed
    assert uncertain["accuracy"] == 1.0 and uncertain["words"] == 400 and 0.99 < uncertain["ci95"][0] < 1.0
    by_t = [row["share"] for row in s["ambiguous_by_threshold"]]
    assert [row["threshold"] for row in s["ambiguous_by_threshold"]] == [0.05, 0.10, 0.20, 0.30]
    assert by_t == sorted(by_t, reverse=True) and by_t[1] == s["verdict"]["genuinely_ambiguous"]["share"]
    assert "temperature 0.7, top-p 0.95" in s["estimand"]


@pytest.mark.slow
def test_the_estimand_curve_recovers_the_planted_shares(engine):
    """The share with a second reading of at least t, for each t, against the planted truth."""
    rng = np.random.default_rng(22)
    study = draw_study(600, rng)
    write_study(engine, study, study.measured)
    s = run_analyze(engine, min_labelled=20, with_examples=False, refits=4).summary
    second = np.sort(study.truth, axis=1)[:, -2]
    for row in s["ambiguous_by_threshold"]:
        lo, hi = row["ci95"]
        assert lo <= float((second >= row["threshold"]).mean()) <= hi, row
    lo, hi = s["corrected"]["second_reading_mass"]["ci95"]
    assert lo <= float(second.mean()) <= hi


def test_a_perfect_tagger_s_sensitivity_rows_agree(engine):
    rng = np.random.default_rng(23)
    study = draw_study(120, rng, confusion=perfect_tagger())
    write_study(engine, study, np.eye(K) * 1000)
    s = run_analyze(engine, min_labelled=20, with_examples=False, refits=0).summary
    shares = [r["verdict"]["genuinely_ambiguous"]["share"] for r in s["sensitivity"][:3]]
    assert max(shares) - min(shares) < 0.01, shares


def test_the_accounting_shows_the_labels_that_are_not_ok(engine):
    """Labels without a clean span are left out of every count analysed: the summary, the text line
    and the page say how many there were, by status, beside the flow of candidates."""
    from posresample.analyze import flow_line
    from posresample.schema import labels

    study = draw_study(40, np.random.default_rng(3), num_samples=24)
    write_study(engine, study, study.measured)
    with db.write(engine) as conn:  # completions 1-24 are one job's, 25-48 another's: 5 and 6 of their labels not ok
        conn.execute(
            labels.update()
            .where(labels.c.completion_id.in_([1, 2, 3, 4, 5, 25, 26, 27, 28, 29]))
            .values(status="no_span", upos=None, upos_name=None)
        )
        conn.execute(
            labels.update().where(labels.c.completion_id == 30).values(status="empty", upos=None, upos_name=None)
        )
    result = run_analyze(engine, min_labelled=20, refits=0, with_examples=False)
    st = result.summary["label_statuses"]
    assert st["labels"] == 40 * 24 and st["counts"] == {"empty": 1, "no_span": 10, "ok": 40 * 24 - 11}
    assert abs(sum(st["rates"].values()) - 1) < 1e-12 and st["rates"]["no_span"] == 10 / 960
    assert result.summary["flow"]["labelled_enough"] == 38  # 19 and 18 ok labels: under --min-labelled 20
    line = flow_line(result.summary)
    assert "40 scanned -> 40 sampled -> 38 with 20 or more ok labels" in line and "no_span 1.0%" in line


def test_a_second_tagger_is_a_row_of_its_own_and_shows_the_first_s_error(sqlite_url):
    """Two taggers label the same completions: the first errs three times as often as its stored
    treebank measurement says, so its headline reads tagger error as ambiguity; the second errs as
    measured. The second's own labels under its own confusion are a row of the table, near the
    truth: the table shows the headline does not hold. (SQLite only: the second tagger's counts come
    from the same empirical_labels query as the first's, which every test here runs on both.)"""
    from posresample.schema import scans
    from tests.known_truth import treebank_counts, write_tagger

    engine, study, C, rng = worse_tagger_study(sqlite_url, 24)
    honest = draw_study(400, rng, truth=study.truth, probe=study.probe, confusion=C)
    with db.read(engine) as conn:
        scan_id = conn.execute(select(scans.c.id)).scalar_one()
    write_tagger(engine, scan_id, honest.labels, study.truth, treebank_counts(C, rng), name="second")
    s = run_analyze(engine, tagger_name="known", min_labelled=20, with_examples=False, refits=0).summary
    rows = {r["confusion"]: r for r in s["sensitivity"]}
    assert list(rows) == ["stored", "errors x1.5", "errors x2", "hard words", "tagger second"]
    assert "its own labels, 400 candidates" in rows["tagger second"]["source"]
    share = {name: r["verdict"]["genuinely_ambiguous"]["share"] for name, r in rows.items()}
    truth = float((np.sort(study.truth, axis=1)[:, -2] >= 0.10).mean())
    assert share["stored"] - truth > 0.08, (share, truth)
    assert abs(share["tagger second"] - truth) < (share["stored"] - truth) / 2, (share, truth)
    assert "tagger second" in s["sensitivity_line"]
    engine.dispose()


def test_a_word_specific_tagger_error_is_corrected_by_the_per_word_confusion(sqlite_url, tmp_path):
    """Half the candidates' words are tagged 8 points worse on their class than the class's row says,
    and the stored confusion carries the held-out counts per word type. The headline uses the
    per-word confusion and lands near the planted share; the all-words row reads the extra error as
    ambiguity and lands well above it. The word table names the candidates' words. (SQLite only: the
    query is the one every test here runs on both databases.)"""
    from tests.known_truth import as_study, draw_word_study

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    rng = np.random.default_rng(31)
    words = draw_word_study(500, rng)
    write_study(engine, as_study(words, rng), words.measured, words=words.words)
    a = run_analyze(engine, min_labelled=20, with_examples=False, refits=2)
    s = a.summary
    rows = {r["confusion"]: r["verdict"]["genuinely_ambiguous"] for r in s["sensitivity"]}
    assert list(rows) == ["per word", "stored", "errors x1.5", "errors x2", "hard words"]
    assert s["sensitivity"][0]["headline"] and "per word type" in s["corrected"]["confusion"]["source"]
    truth = float((np.sort(words.truth, axis=1)[:, -2] >= 0.10).mean())
    lo, hi = rows["per word"]["ci95"]
    assert lo <= truth <= hi, (truth, rows["per word"])
    assert rows["stored"]["share"] - truth > 2 * abs(rows["per word"]["share"] - truth) + 0.02, (truth, rows)
    w = s["word_confusion"]
    assert w["candidates_with_measured_word"] == 500 and w["words"][0]["held_out_words"] >= 50
    hard = [x for x in w["words"] if "-hard-" in x["word"]]
    # planted: 0.08 below the class's row; each word's estimate lies between its own counts and the row
    assert len(hard) >= 3 and all(x["accuracy"] < x["shrunk_accuracy"] < x["class_rows_accuracy"] for x in hard)
    assert np.mean([x["class_rows_accuracy"] - x["shrunk_accuracy"] for x in hard]) > 0.03
    write_report(a, str(tmp_path / "report"))
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="word-confusion"' in page and hard[0]["word"] in page


def test_the_same_candidates_sampled_again_untempered_are_compared_on_those_candidates(sqlite_url, tmp_path):
    """The study's candidates' words sampled at temperature 0.7 have their second readings
    squeezed (a 0.8/0.2 word tempered to about 0.88/0.12); the first 150 of the queue sampled
    again at temperature 1.0 and top-p 1.0 show the untempered split. The comparison is on those
    150 alone, and finds the second reading's mass larger untempered, by about the planted amount.
    (SQLite only: the queries are the ones every test here runs on both databases.)"""
    from posresample.analyze import params_lines
    from posresample.stats.metrics import temper
    from tests.known_truth import draw_study, tagger_confusion, write_resampled

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    rng = np.random.default_rng(41)
    untempered = draw_study(300, rng)
    tempered = temper(untempered.truth, 0.7)
    study = draw_study(300, rng, truth=tempered, probe=untempered.probe)
    write_study(engine, study, study.measured)
    again = draw_study(300, rng, truth=untempered.truth, probe=untempered.probe, confusion=tagger_confusion())
    pid = write_resampled(engine, again.labels, sampled=150)
    a = run_analyze(engine, params_id=1, min_labelled=20, with_examples=False, refits=0)
    (r,) = a.summary["other_params"]
    assert r["params_id"] == pid and r["temperature"] == 1.0 and r["top_p"] == 1.0 and r["candidates"] == 150
    from posresample.schema import jobs

    with db.read(engine) as conn:  # the 150 are the first of the queue's order, under both params
        both = conn.execute(select(jobs.c.candidate_id).where(jobs.c.params_id == pid, jobs.c.state == "done")).all()
    assert len(both) == 150
    second = np.sort(untempered.truth, axis=1)[:, -2], np.sort(tempered, axis=1)[:, -2]
    order = [c["dataset_idx"] for c in a.rows]
    planted = float(np.mean([second[0][i] - second[1][i] for i in order]))  # over all 300: the sample's own
    d = r["difference"]["second_mass"]  # here (tempered) - there (untempered)
    assert d["ci95"][0] <= d["estimate"] <= d["ci95"][1] < 0
    assert abs(d["estimate"] + planted) < 0.03, (d, planted)
    assert r["this"]["genuinely_ambiguous"]["share"] < r["other"]["genuinely_ambiguous"]["share"]
    (line,) = params_lines(a.summary)
    assert line.startswith("sampled again at temperature 1, top-p 1 (params 2) on the same 150 candidates")
    write_report(a, str(tmp_path / "report"))
    assert "sampled again at temperature 1, top-p 1 (params 2)" in (tmp_path / "report" / "index.html").read_text()


def test_per_word_counts_measured_on_the_training_split_are_not_used(sqlite_url, caplog):
    """A confusion measured on the tagger's own training words (evaluate-tagger --split train)
    cannot say how it errs on words it has not seen: the class rows correct, and a warning says so."""
    from posresample.schema import taggers
    from tests.known_truth import as_study, draw_word_study

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    rng = np.random.default_rng(32)
    words = draw_word_study(120, rng)
    write_study(engine, as_study(words, rng), words.measured, words=words.words)
    with db.write(engine) as conn:
        conn.execute(taggers.update().values(accuracy={"train": {"raw_text": 0.99, "split": "train"}}))
    s = run_analyze(engine, min_labelled=20, with_examples=False, refits=0).summary
    assert s["sensitivity"][0]["confusion"] == "stored" and s["word_confusion"] is None
    assert "measured on its training split" in caplog.text


def test_continuations_sampled_in_two_dtypes_are_listed_and_warned_about(sqlite_url, caplog):
    """A study half sampled by a float32 worker and half by a bf16 one (worker --dtype): analyze lists
    both samplers with their jobs and warns that the verdict is of a mixture; one dtype, no warning."""
    import logging

    from sqlalchemy import update

    from posresample import queue
    from posresample.analyze import load, samplers_of
    from posresample.schema import jobs

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    study = draw_study(60, np.random.default_rng(5), confusion=perfect_tagger())
    write_study(engine, study, np.eye(K) * 1000)
    scan, params = load(engine, None, None, None)[:2]
    queue.record_sampler(engine, "known:1:truth", params["model"], {"decode": "hf", "dtype": "float32"})
    with caplog.at_level(logging.WARNING, logger="posresample.analyze"):
        assert samplers_of(engine, scan, params) == [{"jobs": 60, "sampler": {"decode": "hf", "dtype": "float32"}}]
    assert "several dtypes" not in caplog.text
    queue.register_worker(engine, "known:2:bf16", "cpu", 600)
    queue.record_sampler(engine, "known:2:bf16", params["model"], {"decode": "hf", "dtype": "bfloat16"})
    with engine.begin() as conn:
        ids = conn.execute(select(jobs.c.id).order_by(jobs.c.id)).scalars().all()
        conn.execute(update(jobs).where(jobs.c.id.in_(ids[::3])).values(last_worker="known:2:bf16"))
    with caplog.at_level(logging.WARNING, logger="posresample.analyze"):
        summary = run_analyze(engine, min_labelled=20, with_examples=False, refits=0).summary
    used = sorted((entry["sampler"]["dtype"], entry["jobs"]) for entry in summary["samplers"])
    assert used == [("bfloat16", 20), ("float32", 40)]
    assert "several dtypes (bfloat16: 20 jobs, float32: 40 jobs)" in caplog.text
    engine.dispose()
