"""Which bootstrap of one study gives the spread the population estimates show between studies?

    python bench/verdict_bootstraps.py --candidates 2400 --replicates 20 --seed 7

One known-truth study (tests/known_truth.py, as bench/verdict_coverage.py draws them). Its
population estimates (stats/corrected_view.py: NPMLE deconvolution, each candidate's posterior mean under it)
are recomputed on replicate studies made three ways, and the standard deviation of each statistic
over the replicates is set beside the others:

- two-stage: what `analyze` reports (corrected_view.TwoStage: candidates resampled, each resampled
  candidate's distribution drawn from its posterior under the one fitted G; G is not fitted again);
- nonparametric refit: candidates resampled with their labels, everything fitted again;
- parametric refit: what `analyze` adds (corrected_view.refit_estimates): candidates resampled, each
  one's distribution drawn from its posterior, 96 new labels drawn through the tagger's confusion,
  the treebank measurement of the confusion drawn again, everything fitted again.

The spread between independent studies is bench/verdict_coverage.py's `spread (sd)` column. Each
refit costs a whole deconvolution (the time per replicate is printed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emit, machine
from verdict_coverage import STATISTICS

from posresample.stats import corrected_view, deconvolution, verdict
from posresample.stats.confusion import Confusion
from tests.known_truth import PROBE_CLASSES, draw_study, label_counts


def fit(counts: np.ndarray, q: np.ndarray, confusion: Confusion, rng: np.random.Generator) -> dict[str, float]:
    """The population estimates as corrected_view.estimate makes them."""
    means = corrected_view.posterior_means(counts, q, PROBE_CLASSES, confusion.matrix(), confusion.support, rng)
    return {name: float(means[name].mean()) for name in STATISTICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=2400)
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # as analyze runs them: its refits beside one BLAS thread
        run(args)


def run(args) -> None:
    rng = np.random.default_rng(args.seed)
    study = draw_study(args.candidates, rng)
    counts = label_counts(study)
    q, confusion = study.probe, Confusion(study.measured, "known truth: a treebank-sized sample")
    C, support = confusion.matrix(), confusion.support
    g = deconvolution.deconvolve(counts, q, C, support, verdict.mle(counts, C, support), rng)
    values = corrected_view.atom_values(g, q, PROBE_CLASSES)
    base = {name: float((g.posterior * values[name]).sum(axis=1).mean()) for name in STATISTICS}
    boot = corrected_view.TwoStage(g.posterior, rng)
    two_stage = {name: float(np.std(boot.replicate_means(values[name]), ddof=1)) for name in STATISTICS}
    n = len(counts)
    nonparametric, start = [], time.perf_counter()
    for _ in range(args.replicates):
        rows = rng.integers(0, n, n)
        nonparametric.append(fit(counts[rows], q[rows], confusion, rng))
    seconds = {"nonparametric": time.perf_counter() - start}
    start = time.perf_counter()
    parametric = corrected_view.refit_estimates(
        counts, q, PROBE_CLASSES, confusion, g, boot, rng, refits=args.replicates
    )
    seconds["parametric"] = time.perf_counter() - start
    emit(
        f"# one known-truth study of {n} candidates x 96 labels (--seed {args.seed}), {args.replicates} replicates "
        "each, "
        f"{machine('cpu')}, {time.strftime('%Y-%m-%d')}; a refit replicate took "
        f"{seconds['nonparametric'] / args.replicates:.1f} s (nonparametric), "
        f"{seconds['parametric'] / args.replicates:.1f} s (parametric)"
    )
    emit("| statistic | estimate | two-stage sd | nonparametric refit sd | parametric refit sd |")
    emit("|---|---|---|---|---|")
    for name in STATISTICS:
        spread = np.std([r[name] for r in nonparametric], ddof=1), np.std(parametric[name], ddof=1)
        emit(f"| {name} | {base[name]:.4f} | {two_stage[name]:.4f} | {spread[0]:.4f} | {spread[1]:.4f} |")


if __name__ == "__main__":
    main()
