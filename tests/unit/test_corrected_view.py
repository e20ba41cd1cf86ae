"""The corrected view's population intervals: the parametric bootstrap's pieces (the treebank
measurement drawn again, the widening by the refits' spread), that the refits only ever widen
what the two-stage bootstrap gives, and that running them on threads changes nothing. (Coverage
over many studies: bench/verdict_coverage.py.)"""

import numpy as np
import pytest
from scipy.stats import t

from posresample.stats import corrected_view
from posresample.stats.confusion import Confusion
from tests.known_truth import PROBE_CLASSES, draw_study, label_counts


def test_a_redrawn_measurement_keeps_each_rows_words_and_averages_to_the_matrix():
    rng = np.random.default_rng(0)
    measured = Confusion(draw_study(1, rng).measured, "a treebank sample")
    draws = np.stack([measured.redrawn(rng).counts for _ in range(400)])
    assert np.allclose(draws.sum(axis=2), measured.counts.sum(axis=1))  # every row's word count, every time
    assert (draws[:, ~measured.support] == 0).all()  # a class never measured stays unmeasured
    rows = measured.counts.sum(axis=1, keepdims=True)
    expected = rows * measured.matrix()
    se = np.sqrt(rows * measured.matrix() * (1 - measured.matrix()) / len(draws))
    assert (np.abs(draws.mean(axis=0) - expected)[measured.support] <= 5 * se[measured.support] + 1e-9).all()
    assert Confusion.identity().redrawn(rng).exact  # the labels taken as the truth: nothing to redraw


def test_the_refits_widen_an_interval_to_t_times_their_spread_and_never_narrow_it():
    refits = np.array([0.40, 0.42, 0.44, 0.41, 0.43, 0.45, 0.39, 0.42, 0.44, 0.40])
    half = t.ppf(0.975, len(refits) - 1) * refits.std(ddof=1)
    assert np.allclose(corrected_view.widen(0.42, [0.415, 0.425], refits), [0.42 - half, 0.42 + half])
    assert corrected_view.widen(0.42, [0.30, 0.55], refits) == [0.30, 0.55]  # already wider: kept
    assert corrected_view.widen(0.42, [0.415, 0.425], None) == [0.415, 0.425]
    assert corrected_view.widen(0.42, [0.415, 0.425], np.array([0.5])) == [0.415, 0.425]  # one refit has no spread


def test_every_population_interval_contains_the_two_stage_one_and_the_refits_are_counted():
    rng = np.random.default_rng(5)
    study = draw_study(150, rng)
    counts = label_counts(study)
    confusion = Confusion(study.measured, "a treebank sample")
    alone = corrected_view.estimate(counts, study.probe, PROBE_CLASSES, confusion, seed=3, refits=0).summary
    widened = corrected_view.estimate(counts, study.probe, PROBE_CLASSES, confusion, seed=3, refits=6).summary
    assert alone["population"]["refits"] == 0 and widened["population"]["refits"] == 6
    pairs = [(alone["verdict"][v], widened["verdict"][v]) for v in alone["verdict"]]
    pairs += [(alone["majority_is_probe_argmax"], widened["majority_is_probe_argmax"])]
    pairs += [(alone["divergences"][d], widened["divergences"][d]) for d in alone["divergences"]]
    grown = 0
    for before, after in pairs:
        key = "share" if "share" in before else "estimate"
        assert before[key] == after[key]  # the estimate is the same; only its interval may grow
        assert after["ci95"][0] <= before["ci95"][0] + 1e-12 and after["ci95"][1] >= before["ci95"][1] - 1e-12
        grown += (after["ci95"][1] - after["ci95"][0]) > (before["ci95"][1] - before["ci95"][0]) + 1e-9
    assert grown >= 1


def fitted(study, rng: np.random.Generator, replicates: int = 50):
    """What corrected_view.estimate fits before its refits: the counts, the measured confusion, the
    deconvolution and the two-stage replicates."""
    counts = label_counts(study)
    confusion = Confusion(study.measured, "a treebank sample")
    C = confusion.matrix()
    g = corrected_view.deconvolution.deconvolve(
        counts, study.probe, C, confusion.support, corrected_view.verdict.mle(counts, C, confusion.support), rng
    )
    return counts, confusion, g, corrected_view.TwoStage(g.posterior, rng, replicates=replicates)


def test_the_refits_come_out_the_same_on_one_thread_or_four(monkeypatch):
    """Each replicate study has its own generator, seeded before any runs: which thread runs which
    replicate, and when, cannot change the result."""
    rng = np.random.default_rng(8)
    study = draw_study(120, rng)
    counts, confusion, g, boot = fitted(study, rng)
    runs = []
    for threads in (1, 4):
        monkeypatch.setattr(corrected_view, "MAX_THREADS", threads)
        runs.append(
            corrected_view.refit_estimates(
                counts, study.probe, PROBE_CLASSES, confusion, g, boot, np.random.default_rng(21), refits=5
            )
        )
    for name in corrected_view.SUMMARIES:
        assert np.isfinite(runs[0][name]).all() and np.ptp(runs[0][name]) > 0  # five different studies
        assert np.allclose(runs[0][name], runs[1][name], rtol=1e-12, atol=1e-15)
    assert np.allclose(runs[0]["curve"], runs[1]["curve"], rtol=1e-12, equal_nan=True)


def test_refits_held_back_by_memory_run_after_the_rest_and_change_nothing(monkeypatch):
    """Where memory limits the refits to fewer threads than the cores (16,000 candidates), they run
    after the rest of the analysis instead of beside it, one at a time: the result is the same, and
    the caller's work (analyze's raw view and examples) runs once, after them."""
    from posresample.stats.deconvolution import deconvolve
    from posresample.stats.verdict import mle

    rng = np.random.default_rng(9)
    study = draw_study(100, rng)
    counts, confusion = label_counts(study), Confusion(study.measured, "a treebank sample")
    order = []
    beside = corrected_view.estimate(
        counts, study.probe, PROBE_CLASSES, confusion, 3, refits=4, meanwhile=lambda: order.append("meanwhile")
    )
    monkeypatch.setattr(corrected_view, "REFIT_MEMORY", 1)  # too little for two at once: one, deferred
    assert corrected_view.refit_threads(4, 100) == 1
    real = corrected_view._refit
    monkeypatch.setattr(corrected_view, "_refit", lambda *a: order.append("refit") or real(*a))
    after = corrected_view.estimate(
        counts, study.probe, PROBE_CLASSES, confusion, 3, refits=4, meanwhile=lambda: order.append("meanwhile")
    )
    assert order == ["meanwhile"] + ["refit"] * 4 + ["meanwhile"]
    assert after.summary == beside.summary
    # the atoms built a block at a time are the atoms
    C, support = confusion.matrix(), confusion.support
    g = deconvolve(counts, study.probe, C, support, mle(counts, C, support), np.random.default_rng(0))
    whole = g.atoms
    assert whole.shape == (100, g.keep.shape[1], counts.shape[1]) and np.allclose(whole.sum(axis=2), 1)
    assert np.array_equal(np.concatenate([g.atom_block(i, i + 7) for i in range(0, 100, 7)]), whole)
    rows, slots = np.array([5, 0, 99]), np.array([[0], [3], [1]])
    assert np.array_equal(g.atoms_of(rows, slots)[:, 0], whole[rows, slots[:, 0]])


@pytest.mark.slow
def test_the_refits_spread_is_the_spread_between_independent_studies():
    """Known truth: 24 independent studies of 600 candidates from one population. The refits of
    each study estimate how much its estimates would vary between studies; the root mean square
    of those estimates is set against the spread the 24 studies actually show.
    (bench/verdict_coverage.py measures the coverage itself, over 80-200 studies.)"""
    from threadpoolctl import threadpool_limits

    studies, rng = np.random.default_rng(77), np.random.default_rng(78)  # the studies do not hang on the fits
    estimates, spreads = [], []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(24):
            study = draw_study(600, studies)
            counts, confusion, g, boot = fitted(study, rng)
            values = corrected_view.atom_values(g, study.probe, PROBE_CLASSES)
            estimates.append({k: (g.posterior * values[k]).sum(axis=1).mean() for k in corrected_view.SUMMARIES})
            refits = corrected_view.refit_estimates(
                counts, study.probe, PROBE_CLASSES, confusion, g, boot, rng, refits=10
            )
            spreads.append({k: refits[k].std(ddof=1) for k in corrected_view.SUMMARIES})
    for name in ("tv", "genuinely_ambiguous", "probe_underconfident", "probe_wrong", "majority_is_probe_argmax"):
        between = np.std([e[name] for e in estimates], ddof=1)
        said = np.sqrt(np.mean([s[name] ** 2 for s in spreads]))
        # 24 studies know their spread to ~15% (chi-square, 23 degrees of freedom): 0.6-1.67 is
        # about 2.5 of those either way, and still fails refits that say half or twice the truth
        assert 0.6 <= said / between <= 1.67, (name, said, between)


def test_the_float32_likelihood_is_within_1e_4_of_float64():
    """The deconvolution's logs are taken in float32 for speed: relative likelihoods (each
    candidate's atoms against its best) stay within 1e-4 of float64's, on a 96-label study."""
    from posresample.stats import deconvolution, metrics
    from posresample.stats.confusion import Confusion

    rng = np.random.default_rng(3)
    study = draw_study(300, rng)
    counts, q = label_counts(study), study.probe
    confusion = Confusion(study.measured, "known truth")
    C, support = confusion.matrix(), confusion.support
    order = deconvolution.rank_order(q)
    from posresample.stats import verdict

    mle = verdict.mle(counts, C, support)
    shared = deconvolution.shared_atoms(np.take_along_axis(mle, order, axis=1), rng)
    probe = np.stack([metrics.temper(q, t) for t in deconvolution.PROBE_TEMPERATURES], axis=1)
    relative = []
    for dtype in (np.float32, np.float64):
        ll = deconvolution._loglik(counts, C, support, order, shared, probe, dtype=dtype)
        relative.append(np.exp(ll - ll.max(axis=1, keepdims=True)))
    assert np.abs(relative[0] - relative[1]).max() < 1e-4


def test_deconvolutions_on_threads_share_one_memory_budget(monkeypatch):
    """The refits and the sensitivity rows may run at once: together they hold at most REFIT_MEMORY,
    a third waits until one of two is done, and one alone runs whatever its size."""
    import threading

    monkeypatch.setattr(corrected_view, "REFIT_MEMORY", 2 * 100 * corrected_view.REFIT_BYTES_PER_CANDIDATE)
    budget = corrected_view.MemoryBudget()
    entered = {name: threading.Event() for name in "abc"}
    leave = {name: threading.Event() for name in "abc"}

    def run(name, candidates=100):
        with budget.hold(candidates):
            entered[name].set()
            leave[name].wait(30)

    threads = {name: threading.Thread(target=run, args=(name,)) for name in "abc"}
    for name in "ab":
        threads[name].start()
        assert entered[name].wait(30)
    threads["c"].start()
    assert not entered["c"].wait(0.3)  # two at once fill the budget: the third waits
    leave["a"].set()
    assert entered["c"].wait(30)  # and runs once one is done
    leave["b"].set(), leave["c"].set()
    for thread in threads.values():
        thread.join(30)
    big = threading.Thread(target=run, args=("a", 10**6))  # over the whole budget, alone: runs
    entered["a"].clear()
    big.start()
    assert entered["a"].wait(30)
    big.join(30)


def _paired_studies(refits: int, studies: int = 16, n: int = 150) -> tuple[float, list[dict]]:
    """Candidates sampled untempered and tempered to 0.7 through a tagger that errs by word type,
    analysed with the class rows that cannot see it: (the population's difference in the ambiguous
    share, each study's compare_samplers difference)."""
    from posresample.stats.metrics import temper
    from tests.known_truth import draw_truth, draw_word_study, labels_through, truth_values

    rng = np.random.default_rng(3)
    truth = np.stack([draw_truth(rng) for _ in range(50_000)])
    planted = (
        truth_values(temper(truth, 0.7), truth)["genuinely_ambiguous"]
        - truth_values(truth, truth)["genuinely_ambiguous"]
    )

    out = []
    for s in range(studies):
        study = draw_word_study(n, rng)
        this = labels_through(temper(study.truth, 0.7), study.confusions, rng)
        other = labels_through(study.truth, study.confusions, rng)
        class_rows = Confusion(study.measured.counts, "the class rows")
        compared = corrected_view.compare_samplers(
            this, other, study.probe, PROBE_CLASSES, class_rows, seed=s, refits=refits
        )
        out.append(compared["difference"]["genuinely_ambiguous"])
    return planted, out


@pytest.mark.slow
def test_the_paired_difference_covers_a_tempering_through_word_level_tagger_error():
    """The difference between two samplings of the same candidates, on a truth that breaks the
    model (the tagger errs by word type, the analysis has class rows): its interval contains the
    population's difference in nearly every study and is as wide as the estimates' spread asks
    (bench/compare_coverage.py: 91-100% over 80 studies). Without the replicate studies it was
    narrower than that spread allows (covering 82% on the model itself)."""
    planted, diffs = _paired_studies(refits=10)
    estimates = np.array([d["estimate"] for d in diffs])
    widths = np.array([d["ci95"][1] - d["ci95"][0] for d in diffs])
    covered = sum(d["ci95"][0] <= planted <= d["ci95"][1] for d in diffs)
    assert covered >= 14, (covered, planted, diffs)
    assert abs(estimates.mean() - planted) < 2 * estimates.std(ddof=1) / np.sqrt(len(diffs))  # no bias to speak of
    assert widths.mean() > 3.4 * estimates.std(ddof=1)  # a 95% interval of a normal estimate: 3.92 sd
    _, bare = _paired_studies(refits=0)
    assert np.mean([d["ci95"][1] - d["ci95"][0] for d in bare]) < 0.8 * widths.mean()
