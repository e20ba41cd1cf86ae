"""Do the verdict's 95% intervals contain the truth? Repeated known-truth studies, through a database.

    python bench/verdict_coverage.py --candidates 240 --studies 200
    python bench/verdict_coverage.py --candidates 2400 --studies 50
    python bench/verdict_coverage.py --candidates 2400 --studies 100 --direct


Each study draws N candidates from tests/known_truth.py's population (true distributions, a probe
that reads them through noise, a tagger's confusion with a treebank-sized measurement of it),
writes them to a fresh SQLite database through the project's own statements, runs `analyze`, and
checks whether each interval contains the population's value (computed from 200,000 draws): mean
TV(truth, probe), the four verdict shares, and "the distribution's top label is the probe's
argmax". The target is >= 90% at 240 and at 2,400 candidates. The table also gives each
statistic's mean error and its spread over the studies, and the plug-in's error for comparison.

`--direct` skips the database, the per-candidate report and the raw view's bootstraps: it hands the
study's label counts and probe straight to corrected_view.estimate, the function `analyze` calls for
the corrected view, so that the hundreds of studies it takes to measure a spread to 10% fit in the
time (about 4x faster at 2,400).

`--generator NAME` (implies --direct) draws the studies from a population that breaks one of the
analysis's assumptions (bench/misspecified.py: word-error, class-pair, calibrated, near-thresholds,
missing, clustered; `model` keeps them), and adds the sensitivity table's rows (the confusion's
errors x1.5 and x2): how far the ambiguous share moves, and how often the truth lies within the
span of the rows' intervals when the headline's misses it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from common import emit, machine
from misspecified import GENERATORS

from posresample import db
from posresample.analyze import run_analyze
from posresample.config import DEFAULT_MIN_LABELLED
from posresample.stats import corrected_view, deconvolution, metrics
from posresample.stats.confusion import Confusion
from posresample.stats.word_confusion import WordConfusions
from tests.known_truth import (
    PROBE_CLASSES,
    Study,
    draw_study,
    label_counts,
    population_truth,
    tagger_confusion,
    treebank_counts,
    truth_values,
    write_study,
)

STATISTICS = (
    "tv",
    "genuinely_ambiguous",
    "probe_underconfident",
    "probe_wrong",
    "undetermined",
    "majority_is_probe_argmax",
)


def estimates(summary: dict) -> dict:
    c = summary["corrected"]
    out = {
        "tv": (c["divergences"]["tv"]["estimate"], c["divergences"]["tv"]["ci95"]),
        "majority_is_probe_argmax": (c["majority_is_probe_argmax"]["share"], c["majority_is_probe_argmax"]["ci95"]),
    }
    for name in STATISTICS[1:5]:
        out[name] = (summary["verdict"][name]["share"], summary["verdict"][name]["ci95"])
    return out


def plug_ins(summary: dict) -> dict:
    """What the raw view would report for the same statistics (no intervals that aim at the truth)."""
    raw = summary["raw"]
    called = summary["corrected"]["verdict_called"]
    n = summary["candidates_analysed"]
    return {
        "tv": raw["probe_vs_empirical"]["tv"]["mean"],
        "majority_is_probe_argmax": raw["majority_is_probe_argmax"]["mean"],
        **{name: called[name] / n for name in STATISTICS[1:5]},
    }


def direct(study, tagger_counts, seed: int, counts: np.ndarray | None = None) -> dict:
    """What `estimates` and `plug_ins` read of analyze's summary, from corrected_view.estimate on the
    arrays. tagger_counts: the confusion's counts, or a confusion (one per candidate, say)."""
    counts = label_counts(study) if counts is None else counts
    confusion = tagger_counts if not isinstance(tagger_counts, np.ndarray) else Confusion(tagger_counts, "known truth")
    fixed = corrected_view.estimate(counts, study.probe, PROBE_CLASSES, confusion, seed)
    p = counts / counts.sum(axis=1, keepdims=True)
    return {
        "corrected": fixed.summary,
        "verdict": fixed.summary["verdict"],
        "candidates_analysed": len(counts),
        "raw": {
            "probe_vs_empirical": {"tv": {"mean": float(metrics.total_variation(p, study.probe).mean())}},
            "majority_is_probe_argmax": {"mean": float((p.argmax(1) == study.probe.argmax(1)).mean())},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=240)
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--true-confusion",
        action="store_true",
        help="store the tagger's true confusion (as counts of 10^7 words a row) instead of a "
        "treebank-sized measurement of it: is the measurement's error what the intervals miss?",
    )
    parser.add_argument(
        "--exemplars",
        type=int,
        default=deconvolution.EXEMPLARS,
        help="candidates' own estimates used as atoms, at most [default: %(default)s; 0: none]",
    )
    parser.add_argument(
        "--refits",
        type=int,
        default=corrected_view.REFITS,
        help="the parametric bootstrap's refits per study [default: %(default)s; 0: the two-stage bootstrap alone]",
    )
    parser.add_argument(
        "--generator",
        choices=sorted(GENERATORS),
        default=None,
        help="a population that breaks an assumption (bench/misspecified.py); implies --direct",
    )
    parser.add_argument(
        "--all-words",
        action="store_true",
        help="word-error: correct with the all-words confusion, as if no per-word counts were stored",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="no database: corrected_view.estimate on the study's arrays (the corrected view only, ~4x faster)",
    )
    args = parser.parse_args()
    default_exemplars, deconvolution.EXEMPLARS = deconvolution.EXEMPLARS, args.exemplars
    default_refits, corrected_view.REFITS = corrected_view.REFITS, args.refits
    if args.generator:
        truth = truth_values(*GENERATORS[args.generator](50_000, np.random.default_rng(12345))[:2])
    else:
        truth = population_truth(np.random.default_rng(12345))
    rng = np.random.default_rng(args.seed)
    moves, spans, misses, stored_rows = [], 0, 0, []
    hits = {k: 0 for k in STATISTICS}
    errors = {k: [] for k in STATISTICS}
    raw_errors = {k: [] for k in STATISTICS}
    widths = {k: [] for k in STATISTICS}
    start = time.perf_counter()
    for study_index in range(args.studies):
        if args.generator:
            true, probe, counts, *by_word = GENERATORS[args.generator](args.candidates, rng)
            keep = counts.sum(axis=1) >= DEFAULT_MIN_LABELLED  # as analyze leaves out candidates with too few labels
            C = tagger_confusion()
            study = Study(true[keep], probe[keep], None, C, treebank_counts(C, rng))
            tagger_counts = study.confusion * 1e7 if args.true_confusion else study.measured
            lead = Confusion(tagger_counts, "known truth")
            if by_word and args.all_words:  # the same treebank measurement, its class rows only
                lead = Confusion(by_word[0][0].counts, "all words")
            elif by_word:  # the headline corrects each candidate with its word's confusion
                measured, words = by_word[0]
                lead = WordConfusions.fit(measured).for_candidates([w for w, k in zip(words, keep) if k])
                stored_rows.append(
                    corrected_view.population_shares(
                        counts[keep], study.probe, PROBE_CLASSES, Confusion(measured.counts, "all words"), study_index
                    )["genuinely_ambiguous"]
                )
            summary = direct(study, lead, study_index, counts[keep])
            rows = [summary["verdict"]["genuinely_ambiguous"]]
            for factor in (1.5, 2.0):
                rows.append(
                    corrected_view.population_shares(
                        counts[keep], study.probe, PROBE_CLASSES, lead.scaled_errors(factor), study_index
                    )["genuinely_ambiguous"]
                )
            moves.append(max(abs(r["share"] - rows[0]["share"]) for r in rows[1:]))
            lo, hi = rows[0]["ci95"]
            if not lo <= truth["genuinely_ambiguous"] <= hi:
                misses += 1
                spans += (
                    min(r["ci95"][0] for r in rows) <= truth["genuinely_ambiguous"] <= max(r["ci95"][1] for r in rows)
                )
        elif args.direct:
            study = draw_study(args.candidates, rng)
            tagger_counts = study.confusion * 1e7 if args.true_confusion else study.measured
            summary = direct(study, tagger_counts, study_index)
        else:
            study = draw_study(args.candidates, rng)
            tagger_counts = study.confusion * 1e7 if args.true_confusion else study.measured
            with tempfile.TemporaryDirectory() as work:
                engine = db.make_engine(f"sqlite:///{os.path.join(work, 'study.db')}")
                db.upgrade(engine)
                write_study(engine, study, tagger_counts)
                summary = run_analyze(engine, min_labelled=20, seed=study_index, with_examples=False).summary
                engine.dispose()
        for name, (value, (lo, hi)) in estimates(summary).items():
            hits[name] += lo <= truth[name] <= hi
            errors[name].append(value - truth[name])
            widths[name].append(hi - lo)
        for name, value in plug_ins(summary).items():
            raw_errors[name].append(value - truth[name])
    seconds = time.perf_counter() - start
    variant = (
        ("; the true confusion" if args.true_confusion else "")
        + (f"; {args.exemplars} exemplar atoms" if args.exemplars != default_exemplars else "")
        + (f"; {args.refits} refits" if args.refits != default_refits else "")
        + (f"; population {args.generator}" if args.generator else "")
        + ("; all-words confusion" if args.all_words else "")
        + ("; --direct (no database)" if args.direct or args.generator else "; SQLite")
    )
    emit(
        f"# {args.studies} known-truth studies of {args.candidates} candidates x 96 labels, {machine('cpu')}, "
        f"{time.strftime('%Y-%m-%d')}, {seconds:.0f} s ({seconds / args.studies:.1f} s a study){variant}"
    )
    emit(
        "| statistic | population value | 95% CI contains it | mean error | spread (sd) | mean CI width | plug-in's "
        "mean error |"
    )
    emit("|---|---|---|---|---|---|---|")
    for name in STATISTICS:
        emit(
            f"| {name} | {truth[name]:.4f} | {hits[name] / args.studies:.0%} ({hits[name]}/{args.studies}) | "
            f"{np.mean(errors[name]):+.4f} | {np.std(errors[name]):.4f} | {np.mean(widths[name]):.4f} | "
            f"{np.mean(raw_errors[name]):+.4f} |"
        )

    if args.generator:
        emit(
            f"sensitivity: the ambiguous share moves by {np.mean(moves):.3f} on average at errors x1.5 / x2 "
            f"(at most {np.max(moves):.3f}); where its interval missed the truth ({misses} of {args.studies}), the "
            f"rows' intervals together held it in {spans}"
        )
    if stored_rows:
        held = sum(r["ci95"][0] <= truth["genuinely_ambiguous"] <= r["ci95"][1] for r in stored_rows)
        emit(
            f"the all-words confusion's row (the headline corrects per word): ambiguous share's mean error "
            f"{np.mean([r['share'] for r in stored_rows]) - truth['genuinely_ambiguous']:+.4f}, its interval "
            f"holds the truth in {held} of {len(stored_rows)}"
        )


if __name__ == "__main__":
    main()
