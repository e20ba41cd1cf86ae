"""The tagger's confusion per word type: the hierarchical estimate recovers planted word rows and
its own spread, keeps to the class row where words do not differ, and travels through JSON."""

import numpy as np
import pytest

from posresample.data import UPOS_IDS, K
from posresample.stats import corrected_view, verdict
from posresample.stats.confusion import Confusion, PerCandidate, parse_confusion
from posresample.stats.word_confusion import WordConfusions
from tests.known_truth import PROBE_CLASSES, ROW_WORDS, draw_study, tagger_confusion

ADP, SCONJ = UPOS_IDS["ADP"], UPOS_IDS["SCONJ"]


def planted(rng, spread: float | None, types: int = 60):
    """Word types of every class, each with a row drawn from Dirichlet(spread x C[t]) (None: C[t]
    itself), measured on 1-300 words: ({word: [K, K] counts}, {word: (t, true row)})."""
    C = tagger_confusion()
    by_word, truth = {}, {}
    for name in ROW_WORDS:
        t = UPOS_IDS[name]
        for j in range(types):
            row = C[t] if spread is None else rng.dirichlet(spread * C[t] + 1e-12)
            counts = np.zeros((K, K))
            counts[t] = rng.multinomial(300 if j < 6 else int(rng.integers(1, 40)), row)
            by_word[f"{name.lower()}{j}"] = counts
            truth[f"{name.lower()}{j}"] = (t, row)
    return by_word, truth


def test_the_words_rows_come_closer_to_the_planted_ones_than_the_class_row_or_their_own_counts():
    rng = np.random.default_rng(0)
    by_word, truth = planted(rng, spread=60.0)
    base = Confusion(sum(by_word.values()), "planted", by_word=by_word)
    fit = WordConfusions.fit(base)
    error = {"shrunk": 0.0, "class row": 0.0, "own counts": 0.0}
    for word, (t, row) in truth.items():
        own = by_word[word][t] / by_word[word][t].sum()
        error["shrunk"] += np.abs(fit.for_word(word).matrix()[t] - row).sum()
        error["class row"] += np.abs(base.matrix()[t] - row).sum()
        error["own counts"] += np.abs(own - row).sum()
    assert error["shrunk"] < 0.95 * error["class row"] and error["shrunk"] < 0.7 * error["own counts"], error
    # the spread between words is found, within a factor of the planted 60 pseudo-words
    strengths = fit.strength[[UPOS_IDS[name] for name in ROW_WORDS]]
    assert 20 < np.median(strengths) < 180, strengths


def test_words_that_err_alike_follow_the_class_row():
    """No spread planted: the strengths are large and every word's row is the class row's, however
    its own few words fell."""
    rng = np.random.default_rng(1)
    by_word, truth = planted(rng, spread=None)
    fit = WordConfusions.fit(Confusion(sum(by_word.values()), "planted", by_word=by_word))
    C = tagger_confusion()
    assert np.median(fit.strength[[UPOS_IDS[n] for n in ROW_WORDS]]) > 1_000
    worst = max(np.abs(fit.for_word(word).matrix()[t] - C[t]).sum() for word, (t, _row) in truth.items())
    assert worst < 0.08, worst


def test_a_planted_hard_word_is_recovered_and_an_unmeasured_word_takes_the_rows():
    """One ADP word tagged SCONJ 20% of the time (the class: 2.5%), measured on 250 words among
    ordinary ADP words: its row comes out near 20%; a word never measured gets the class's mean
    row, with a spread wide enough to hold a word like it."""
    rng = np.random.default_rng(2)
    by_word, _truth = planted(rng, spread=None)
    hard = tagger_confusion()[ADP].copy()
    hard[SCONJ] += 0.2 - hard[SCONJ]
    hard[ADP] -= hard.sum() - 1
    counts = np.zeros((K, K))
    counts[ADP] = rng.multinomial(250, hard)
    by_word["that"] = counts
    base = Confusion(sum(by_word.values()), "planted", by_word=by_word)
    fit = WordConfusions.fit(base)
    assert 0.12 < fit.for_word("That ").matrix()[ADP, SCONJ] < 0.24  # keyed as the tagger's token, any case
    unseen = fit.for_word("never-seen")
    assert abs(unseen.matrix()[ADP, SCONJ] - base.matrix()[ADP, SCONJ]) < 0.02
    draws = unseen.draws(2000, rng)[:, ADP, SCONJ]
    assert np.quantile(draws, 0.99) > 0.06  # words may differ: an unmeasured one is not sure to be average


def test_the_per_word_counts_travel_through_json_and_are_checked():
    counts = np.zeros((K, K))
    counts[ADP, ADP], counts[ADP, SCONJ] = 40, 9
    c = Confusion(counts * 10, "dev", by_word={"that": counts})
    back = parse_confusion(c.to_json(), "c.json")
    assert (back.counts == c.counts).all() and set(back.by_word) == {"that"}
    assert (back.by_word["that"] == counts).all()
    assert back.covering(np.ones(K, dtype=bool)).by_word is back.by_word  # kept where rows are filled
    from posresample.errors import ConfigError

    bad = c.to_json() | {"by_word": {"that": {"ADP": {"WORD": 3}}}}
    with pytest.raises(ConfigError, match="word 'that'"):
        parse_confusion(bad, "c.json")


def test_one_confusion_per_candidate_all_alike_gives_the_single_confusion_s_answers():
    """The per-candidate paths (EM, Gibbs, the probe test, the deconvolution) agree with the one
    confusion's when every candidate's is the same one."""
    rng = np.random.default_rng(4)
    study = draw_study(150, rng)
    counts = np.stack([np.bincount(row, minlength=K) for row in study.labels]).astype(float)
    conf = Confusion(study.measured, "a treebank sample")
    alike = PerCandidate((conf, conf, conf), rng.integers(0, 3, size=150), "alike")
    one, many = verdict.mle(counts, conf.matrix(), conf.support), verdict.mle(counts, alike.matrix(), alike.support)
    assert np.abs(one - many).max() < 1e-6
    shares = [
        corrected_view.population_shares(counts, study.probe, PROBE_CLASSES, c, 0)["genuinely_ambiguous"]["share"]
        for c in (conf, alike)
    ]
    assert abs(shares[0] - shares[1]) < 0.01, shares
    post = [verdict.posterior(counts, c, one, np.random.default_rng(5)) for c in (conf, alike)]
    calls = [verdict.verdicts(one, p.below, study.probe.argmax(1)) for p in post]
    assert (calls[0] != calls[1]).mean() < 0.05  # two chains' Monte Carlo, not two models
    tests = [verdict.probe_test(counts, study.probe, c, np.random.default_rng(6)).p for c in (conf, alike)]
    assert np.corrcoef(np.log(tests[0]), np.log(tests[1]))[0, 1] > 0.9


def test_a_word_row_for_a_class_the_class_counts_lack_is_left_out():
    """A hand-made file may give a word a row its class-level counts lack: the word's confusion
    keeps the class-level support (so every candidate's confusions share it), not a crash."""
    counts = np.zeros((K, K))
    counts[ADP, ADP], counts[ADP, SCONJ] = 400, 10
    word = np.zeros((K, K))
    word[ADP, ADP], word[SCONJ, SCONJ] = 30, 5  # SCONJ: no class-level row
    words = {"that": word}
    for j in range(12):  # enough ordinary ADP words for a fit
        words[f"adp{j}"] = np.zeros((K, K))
        words[f"adp{j}"][ADP, ADP] = 20
    base = Confusion(counts, "hand-made", by_word=words)
    per = WordConfusions.fit(base).for_candidates(["that", "other", None])
    assert per.group[0] != 0 and list(per.group[1:]) == [0, 0] and (per.support == base.support).all()


def test_a_handful_of_held_out_words_is_no_per_word_confusion():
    """Twenty held-out words cannot say how words differ: no per-word fit, the class rows stand."""
    rng = np.random.default_rng(7)
    by_word, _truth = planted(rng, spread=60.0, types=1)
    few = dict(list(by_word.items())[:6])
    assert WordConfusions.fit(Confusion(sum(few.values()), "a sample", by_word=few)) is None
