"""Human labels in the analysis and the export, on SQLite and PostgreSQL, against counts made by hand:
the tagger's confusion and accuracy on the completions, Cohen's kappa, correcting with that
confusion, and the human labels analysed like any tagger's."""

import json

import numpy as np
import pytest
from sqlalchemy import func, select

from posresample import agreement, annotate, db
from posresample.analyze import run_analyze
from posresample.data import UPOS_IDS
from posresample.export import run_export
from posresample.schema import annotation_items, candidates, completions, jobs, labels, taggers
from tests.known_truth import K, draw_study, write_study


@pytest.fixture
def labelled(engine):
    """20 candidates x 4 completions; the machine tagger says NOUN for the first candidates' words."""
    truth = np.zeros((20, K))
    truth[:, UPOS_IDS["NOUN"]] = 1.0
    probe = np.full((20, K), 0.0)
    probe[:, [UPOS_IDS["NOUN"], UPOS_IDS["VERB"]]] = [0.6, 0.4]
    study = draw_study(20, np.random.default_rng(0), num_samples=4, truth=truth, probe=probe, confusion=np.eye(K))
    write_study(engine, study, study.measured)
    annotate.build_queue(engine, 1, 1, sample=80, overlap=0.0)
    return engine


def completion_ids(engine, n):
    with db.read(engine) as conn:
        return conn.execute(
            select(annotation_items.c.id, annotation_items.c.completion_id).order_by(annotation_items.c.rank).limit(n)
        ).all()


def give(engine, annotator, items, answers):
    tagger_id = annotate.register_annotator(engine, annotator)
    for (item_id, _), answer in zip(items, answers):
        if answer in ("unsure", "no_span"):
            annotate.answer(engine, item_id, tagger_id, None, answer)
        else:
            annotate.answer(engine, item_id, tagger_id, UPOS_IDS[answer], "ok")
    return tagger_id


def test_confusion_accuracy_and_kappa_on_completions_by_hand(labelled, tmp_path):
    engine = labelled
    items = completion_ids(engine, 10)
    # the machine said NOUN for all ten (identity tagger on one-reading NOUN truths)
    ana = ["NOUN", "NOUN", "NOUN", "NOUN", "NOUN", "NOUN", "VERB", "VERB", "ADJ", "unsure"]
    bob = ["NOUN", "NOUN", "NOUN", "VERB", "NOUN", "NOUN", "VERB", "ADJ", "ADJ", "NOUN"]
    give(engine, "ana", items, ana)
    give(engine, "bob", items, bob)
    h = run_analyze(engine, min_labelled=1, tagger_name="known", with_examples=False).summary["human_labels"]
    on = h["tagger_on_completions"]["human:ana"]
    assert on["completions"] == 9 and on["right"] == 6 and on["human_unsure"] == 1  # 6 NOUN of 9 with a UPOS
    assert on["confusion"] == {"NOUN": {"NOUN": 6}, "VERB": {"NOUN": 2}, "ADJ": {"NOUN": 1}}
    from scipy.stats import beta

    assert on["accuracy"]["share"] == pytest.approx(6 / 9)
    assert on["accuracy"]["ci95"] == pytest.approx([beta.ppf(0.025, 6.5, 3.5), beta.ppf(0.975, 6.5, 3.5)])
    [k] = h["kappa"]
    assert k["annotators"] == ["human:ana", "human:bob"] and k["completions"] == 10 and k["agree"] == 7
    # by hand: categories NOUN, VERB, ADJ, unsure; p_o = 7/10; ana's margins 6, 2, 1, 1; bob's 6, 2, 2, 0
    p_e = (6 * 6 + 2 * 2 + 1 * 2 + 1 * 0) / 100
    assert k["kappa"] == pytest.approx((0.7 - p_e) / (1 - p_e))


def test_correcting_with_the_confusion_on_completions_and_analysing_the_people(labelled):
    engine = labelled
    items = completion_ids(engine, 8)
    give(engine, "ana", items, ["NOUN"] * 6 + ["VERB"] * 2)
    a = run_analyze(engine, min_labelled=1, tagger_name="known", confusion_from="human:ana", with_examples=False)
    source = a.summary["corrected"]["confusion"]["source"]
    assert source.startswith("known against human:ana on 8 completions")
    people = run_analyze(engine, min_labelled=1, tagger_name="human:ana", with_examples=False)
    assert people.summary["labels_analysed"] == 8 and people.summary["corrected"]["confusion"]["exact"]
    from posresample.errors import ConfigError

    with pytest.raises(ConfigError, match="no annotator 'human:nobody'"):
        run_analyze(engine, min_labelled=1, tagger_name="known", confusion_from="human:nobody")


def test_export_carries_human_labels_like_a_taggers(labelled, tmp_path):
    engine = labelled
    items = completion_ids(engine, 3)
    give(engine, "ana", items, ["VERB", "unsure", "NOUN"])
    out = tmp_path / "x.jsonl"
    run_export(engine, str(out), progress=False)
    lines = out.read_text().splitlines()
    meta, records = json.loads(lines[0])["metadata"], [json.loads(line) for line in lines[1:]]
    assert [t["name"] for t in meta["taggers"]] == ["known", "human:ana"]
    wanted = {cid for _, cid in items}
    with db.read(engine) as conn:  # where each labelled completion sits in the export
        where = {
            cid: (job, index)
            for cid, job, index in conn.execute(
                select(completions.c.id, completions.c.job_id, completions.c.sample_index).where(
                    completions.c.id.in_(wanted)
                )
            )
        }
    by_job = {r["job_id"]: r["completions"] for r in records}
    human = {cid: by_job[job][index]["upos"].get("human:ana", "absent") for cid, (job, index) in where.items()}
    assert sorted(human.values(), key=str) == sorted(["VERB", None, "NOUN"], key=str)
    with db.read(engine) as conn:
        rows = (
            conn.execute(
                select(labels.c.status)
                .join(taggers, taggers.c.id == labels.c.tagger_id)
                .where(taggers.c.name == "human:ana")
            )
            .scalars()
            .all()
        )
    assert sorted(rows) == ["ok", "ok", "unsure"]


def test_the_queue_shows_disagreements_first_spreads_strata_and_jobs_and_grows_in_place(engine):
    """30 candidates x 8 completions in two probe strata (NOUN/VERB, ADJ/ADV); the machine tagger
    disagrees with the probe's argmax on some completions. The queue puts every disagreement first,
    alternates the strata, shows one completion of each job before a second of any, and a larger
    --sample adds to the end without moving or repeating an item."""
    rng = np.random.default_rng(4)
    truth, probe = np.zeros((30, K)), np.zeros((30, K))
    truth[:20, [UPOS_IDS["NOUN"], UPOS_IDS["VERB"]]] = [0.8, 0.2]
    truth[20:, [UPOS_IDS["ADJ"], UPOS_IDS["ADV"]]] = [0.9, 0.1]
    probe[:20, [UPOS_IDS["NOUN"], UPOS_IDS["VERB"]]] = [0.6, 0.4]
    probe[20:, [UPOS_IDS["ADJ"], UPOS_IDS["ADV"]]] = [0.7, 0.3]
    write_study(engine, draw_study(30, rng, num_samples=8, truth=truth, probe=probe, confusion=np.eye(K)), None)
    with db.read(engine) as conn:
        from posresample.schema import candidates, jobs

        rows = conn.execute(
            select(completions.c.id, jobs.c.id, candidates.c.probe_pred, labels.c.upos)
            .join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .join(labels, labels.c.completion_id == completions.c.id)
        ).all()
    job_of = {c: j for c, j, _, _ in rows}
    disagrees = {c for c, _, pred, upos in rows if upos != pred}
    noun_jobs = {j for _, j, pred, _ in rows if pred == UPOS_IDS["NOUN"]}
    assert 20 < len(disagrees) < 80  # the VERB and ADV readings

    def queue():
        with db.read(engine) as conn:
            return conn.execute(
                select(annotation_items.c.completion_id, annotation_items.c.reason).order_by(annotation_items.c.rank)
            ).all()

    assert annotate.build_queue(engine, 1, 1, sample=150, overlap=0.0, seed=3) == 150
    first = queue()
    ids = [c for c, _ in first]
    assert len(set(ids)) == 150
    assert {c for c, why in first if why == "disagrees"} == disagrees  # every disagreement, marked as such
    assert all(why == "disagrees" for _, why in first[: len(disagrees)])  # and all of them first
    rest = ids[len(disagrees) :]
    strata = ["noun" if job_of[c] in noun_jobs else "adj" for c in rest]
    assert strata[:20] == (["noun", "adj"] * 10 if strata[0] == "noun" else ["adj", "noun"] * 10)  # round robin
    for stratum in ("noun", "adj"):  # within a stratum every job once before any job twice
        seen: dict[int, int] = {}
        rounds = []
        for c, s in zip(rest, strata):
            if s == stratum:
                rounds.append(seen.get(job_of[c], 0))
                seen[job_of[c]] = rounds[-1] + 1
        assert rounds == sorted(rounds) and rounds[-1] > 0, rounds  # the n-th of a job after the (n-1)-th of all
    assert annotate.build_queue(engine, 1, 1, sample=240, overlap=0.0, seed=3) == 240
    grown = queue()
    assert grown[:150] == first and len({c for c, _ in grown}) == 240 == len(job_of)  # in place, no repeat, all of them
    assert annotate.build_queue(engine, 1, 1, sample=300, overlap=0.0) == 240  # nothing left to add


def test_the_tagger_measured_on_a_disagreement_first_queue_is_weighted_back_to_the_study(engine):
    """Known truth: one-reading NOUN and ADJ words, the probe right about each, and a tagger that
    calls 15% of NOUNs PROPN and 10% of ADJs NOUN. The default queue shows every disagreement
    first, so counted as answered the NOUN row's error looks several times larger; weighted by
    stratum, and measured on a simple random sample, it is the tagger's error in the study."""
    rng = np.random.default_rng(5)
    noun, adj, propn = UPOS_IDS["NOUN"], UPOS_IDS["ADJ"], UPOS_IDS["PROPN"]
    n = 150
    truth = np.zeros((n, K))
    truth[: n // 2, noun], truth[n // 2 :, adj] = 1.0, 1.0
    C = np.eye(K)
    C[noun, [noun, propn]], C[adj, [adj, noun]] = [0.85, 0.15], [0.90, 0.10]
    study = draw_study(n, rng, num_samples=8, truth=truth, probe=truth.copy(), confusion=C)
    write_study(engine, study, study.measured)
    in_study = (study.labels[: n // 2] == propn).mean()  # the tagger's NOUN -> PROPN rate in this study
    annotate.build_queue(engine, 1, 1, sample=300, overlap=0.0)
    with db.read(engine) as conn:
        queued = conn.execute(
            select(annotation_items.c.id, annotation_items.c.completion_id, annotation_items.c.reason)
        ).all()
        true_of = {  # candidate i of the study is the scan's dataset_idx i
            cid: int(study.truth[idx].argmax())
            for cid, idx in conn.execute(
                select(completions.c.id, candidates.c.dataset_idx)
                .join(jobs, jobs.c.id == completions.c.job_id)
                .join(candidates, candidates.c.id == jobs.c.candidate_id)
            ).all()
        }
    assert sum(r == "disagrees" for _, _, r in queued) > 100  # the errors come first
    ana = annotate.register_annotator(engine, "ana")
    for item_id, completion_id, _ in queued:  # a person who always knows the truth
        annotate.answer(engine, item_id, ana, true_of[completion_id], "ok")
    with db.read(engine) as conn:
        known = dict(conn.execute(select(taggers).where(taggers.c.name == "known")).mappings().one())
    answered = [c for _, c, _ in queued if true_of[c] == noun]
    machine = agreement.answers(engine, 1, 1, known["id"])
    naive = np.mean([machine[c][1] == propn for c in answered])
    weighted = agreement.confusion_from(engine, 1, 1, known, "human:ana")
    rate = weighted.counts[noun, propn] / weighted.counts[noun].sum()
    assert naive > in_study + 0.15  # counted as answered: far too many errors
    assert abs(rate - in_study) < 0.03, (rate, in_study)
    assert "weighted by stratum" in weighted.source

    # a simple random sample of all 1,200 completions: some of it was queued (and answered) already
    assert annotate.build_queue(engine, 1, 1, sample=300, overlap=0.0, seed=1, at_random=True) == 300
    with db.read(engine) as conn:
        drawn = conn.execute(
            select(annotation_items.c.id, annotation_items.c.completion_id).where(annotation_items.c.reason == "random")
        ).all()
        total = conn.execute(select(func.count()).select_from(annotation_items)).scalar_one()
    again = sum(c in {q for _, q, _ in queued} for _, c in drawn)
    assert len(drawn) == 300 and 30 < again < 120 and total == 300 + 300 - again  # ~300 x 300 / 1,200 = 75
    for item_id, completion_id in drawn:
        if completion_id not in {q for _, q, _ in queued}:
            annotate.answer(engine, item_id, ana, true_of[completion_id], "ok")
    assert annotate.build_queue(engine, 1, 1, sample=300, overlap=0.0, seed=1, at_random=True) == 300  # as it was
    at_random = agreement.confusion_from(engine, 1, 1, known, "human:ana")
    assert "drawn at random" in at_random.source and at_random.counts[[noun, adj]].sum() == 300  # those alone
    rate = at_random.counts[noun, propn] / at_random.counts[noun].sum()
    assert abs(rate - in_study) < 0.08, (rate, in_study)  # ~150 NOUN completions: sd ~0.03
