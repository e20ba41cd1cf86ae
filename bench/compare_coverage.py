"""Does the paired difference between two samplings cover the truth? analyze's `other_params`, on known truths.

    python bench/compare_coverage.py --candidates 300 --studies 40
    python bench/compare_coverage.py --candidates 300 --studies 40 --generator word-error

Each study draws N candidates' label distributions as the model gives them untempered (the
"other" sampling: temperature 1, top-p 1), tempers each to T = 0.7 (metrics.temper: the "this"
sampling, as the study's worker draws), and draws 96 labels of every candidate under both through
the tagger's confusion. corrected_view.compare_samplers, what analyze runs for `other_params`,
estimates the difference this - other of the four verdict shares and of the second reading's mass,
with its paired 95% interval. The estimand is the population's difference (truth_values of the
tempered population minus the untempered one's, over 100,000 draws); the table gives how often the
interval contains it, the mean error, and the interval's mean width.

`--generator` picks the population: `model` (tests/known_truth.py's: every assumption holds),
`word-error` (the tagger errs by word type, 8 points worse on half of them; analysed with the
treebank's class rows, which cannot see it: the paired design is expected to cancel much of the
error, the per-side shares not), `word-error-per-word` (the same, analysed with the per-word
confusion, as analyze does when per-word counts are stored), `near-thresholds` (second readings at
the verdict's 0.10 cut, where tempering moves the most candidates across it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emit, machine
from misspecified import _near_truth

from posresample.stats import corrected_view
from posresample.stats.confusion import Confusion
from posresample.stats.metrics import temper
from posresample.stats.word_confusion import WordConfusions
from tests.known_truth import (
    PROBE_CLASSES,
    draw_probe,
    draw_truth,
    draw_word_study,
    labels_through,
    tagger_confusion,
    treebank_counts,
    truth_values,
)

TEMPERATURE = 0.7
STATISTICS = corrected_view.COMPARED
GENERATORS = ("model", "word-error", "word-error-per-word", "near-thresholds")


def second_mass(truth: np.ndarray) -> float:
    return float(np.sort(truth, axis=1)[:, -2].mean())


def population_values(truth: np.ndarray, probe: np.ndarray) -> dict:
    values = truth_values(truth, probe)
    return {**{v: values[v] for v in STATISTICS if v in values}, "second_mass": second_mass(truth)}


def population_difference(generator: str, rng: np.random.Generator, n: int = 100_000) -> dict:
    """The estimand: tempered minus untempered, per statistic, over a large draw of the population."""
    truth_of = _near_truth if generator == "near-thresholds" else draw_truth
    truth = np.stack([truth_of(rng) for _ in range(n)])
    probe = np.stack([draw_probe(pi, rng) for pi in truth])
    tempered, untempered = population_values(temper(truth, TEMPERATURE), probe), population_values(truth, probe)
    return {v: tempered[v] - untempered[v] for v in STATISTICS}


def draw(generator: str, n: int, rng: np.random.Generator):
    """(untempered truth, probe, the tagger's confusion (one per candidate [N, K, K], or one [K, K]),
    the confusion analysed)."""
    if generator.startswith("word-error"):
        study = draw_word_study(n, rng)
        if generator == "word-error-per-word":
            analysed = WordConfusions.fit(study.measured).for_candidates(study.words)
        else:
            analysed = Confusion(study.measured.counts, "known truth: the class rows")
        return study.truth, study.probe, study.confusions, analysed
    truth_of = _near_truth if generator == "near-thresholds" else draw_truth
    truth = np.stack([truth_of(rng) for _ in range(n)])
    probe = np.stack([draw_probe(pi, rng) for pi in truth])
    C = tagger_confusion()
    return truth, probe, C, Confusion(treebank_counts(C, rng), "known truth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generator", choices=GENERATORS, default="model")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    target = population_difference(args.generator, np.random.default_rng(args.seed + 1))
    covered = {v: 0 for v in STATISTICS}
    errors = {v: [] for v in STATISTICS}
    widths = {v: [] for v in STATISTICS}
    for s in range(args.studies):
        truth, probe, confusions, analysed = draw(args.generator, args.candidates, rng)
        this = labels_through(temper(truth, TEMPERATURE), confusions, rng)
        other = labels_through(truth, confusions, rng)
        out = corrected_view.compare_samplers(this, other, probe, PROBE_CLASSES, analysed, seed=s)
        for v in STATISTICS:
            d = out["difference"][v]
            lo, hi = d["ci95"]
            covered[v] += lo <= target[v] <= hi
            errors[v].append(d["estimate"] - target[v])
            widths[v].append(hi - lo)
    emit(
        f"# compare_samplers coverage: {args.generator}, {args.studies} studies x {args.candidates} candidates, "
        f"T {TEMPERATURE} against 1, seed {args.seed}; {machine('cpu')}, {time.strftime('%Y-%m-%d')}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    emit("| difference (T 0.7 - T 1) | population | covered | mean error | sd of estimates | mean width |")
    emit("|---|---|---|---|---|---|")
    for v in STATISTICS:
        emit(
            f"| {v} | {target[v]:+.4f} | {covered[v] / args.studies:.0%} ({covered[v]}/{args.studies}) | "
            f"{np.mean(errors[v]):+.4f} | {np.std(errors[v], ddof=1):.4f} | {np.mean(widths[v]):.4f} |"
        )


if __name__ == "__main__":
    main()
