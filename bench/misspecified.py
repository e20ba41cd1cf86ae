"""Known-truth populations that break the analysis's assumptions, for bench/verdict_coverage.py.

The analysis assumes each candidate's labels are Multinomial(n, pi C) with C the tagger's treebank
confusion, n about 96, candidates independent, and ambiguity unrelated to how the tagger errs. Each
generator here breaks one of those; `model` keeps them all (tests/known_truth.py's population).
A generator returns (truth [N, K], probe [N, K], label counts [N, K]), and word-error a fourth
element, its treebank measurement per word type; the estimand is always the population's value
over all candidates (tests/known_truth.py's truth_values).
"""

from __future__ import annotations

import numpy as np

from posresample.data import UPOS_IDS, UPOS_NAMES, K
from tests.known_truth import CONFUSED_WITH, PROBE_CLASSES, draw_probe, draw_truth, draw_word_study, tagger_confusion

NUM_SAMPLES = 96
CLUSTER = 4  # candidates per sentence (clustered)


def _labels(mixed: np.ndarray, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts [N, K]: n[i] labels from the row mixed[i] (each row's label distribution)."""
    return np.stack([rng.multinomial(int(k), row / row.sum()) for row, k in zip(mixed, n)]).astype(float)


def _population(rng: np.random.Generator, n: int, truth_of=None) -> tuple[np.ndarray, np.ndarray]:
    truth = np.stack([(truth_of or draw_truth)(rng) for _ in range(n)])
    return truth, np.stack([draw_probe(pi, rng) for pi in truth])


def model(n: int, rng: np.random.Generator):
    truth, probe = _population(rng, n)
    return truth, probe, _labels(truth @ tagger_confusion(), np.full(n, NUM_SAMPLES), rng)


def word_error(n: int, rng: np.random.Generator):
    """Word-specific C_w: per class, as many words that err WORD_ERROR more than the class row as
    words that err as it does (tests/known_truth.py draw_word_study), with the treebank's counts
    per word type stored beside the class-level ones, so the per-word confusion can see it. Returns
    a fourth element, (the measured Confusion with its per-word counts, each candidate's word)."""
    study = draw_word_study(n, rng)
    return study.truth, study.probe, study.counts, (study.measured, study.words)


def _pair_truth(rng: np.random.Generator) -> np.ndarray:
    """draw_truth, but a two-reading word's second reading is the one the tagger most often tags
    its first as."""
    pi = draw_truth(rng)
    first, second, third = (int(k) for k in np.argsort(-pi, kind="stable")[:3])
    swap = UPOS_IDS[CONFUSED_WITH[UPOS_NAMES[first]][0]]
    if pi[second] > 0 and pi[third] == 0 and swap in PROBE_CLASSES and swap != first:
        pi[swap], pi[second] = pi[swap] + pi[second], 0.0
    return pi


def class_pair(n: int, rng: np.random.Generator):
    """Ambiguity between exactly the classes the tagger confuses (ADP/SCONJ, NOUN/PROPN, ...)."""
    truth, probe = _population(rng, n, _pair_truth)
    return truth, probe, _labels(truth @ tagger_confusion(), np.full(n, NUM_SAMPLES), rng)


def calibrated(n: int, rng: np.random.Generator):
    """The probe is the truth."""
    truth = np.stack([draw_truth(rng) for _ in range(n)])
    return truth, truth.copy(), _labels(truth @ tagger_confusion(), np.full(n, NUM_SAMPLES), rng)


def _near_truth(rng: np.random.Generator) -> np.ndarray:
    """Two readings with the second's mass at the verdict thresholds: 0.05-0.15, or 0.85-0.95 first."""
    pi = np.zeros(K)
    first, second = rng.choice(PROBE_CLASSES, 2, replace=False)
    e = rng.uniform(0.05, 0.15)
    pi[first], pi[second] = 1 - e, e
    return pi


def near_thresholds(n: int, rng: np.random.Generator):
    truth, probe = _population(rng, n, _near_truth)
    return truth, probe, _labels(truth @ tagger_confusion(), np.full(n, NUM_SAMPLES), rng)


def missing(n: int, rng: np.random.Generator):
    """Labels missing more often the more ambiguous the word: one-reading words keep their 96, the
    others 8-96 (uniform); analyze leaves out those under --min-labelled 20, so the candidates
    analysed are not those scanned."""
    truth, probe = _population(rng, n)
    ambiguous = np.sort(truth, axis=1)[:, -2] >= 0.10
    kept = np.where(ambiguous, rng.integers(8, NUM_SAMPLES + 1, n), NUM_SAMPLES)
    return truth, probe, _labels(truth @ tagger_confusion(), kept, rng)


def clustered(n: int, rng: np.random.Generator):
    """Candidates in sentences of CLUSTER: one truth and one probe for each sentence's candidates."""
    sentences = -(-n // CLUSTER)
    truth, probe = _population(rng, sentences)
    truth, probe = np.repeat(truth, CLUSTER, axis=0)[:n], np.repeat(probe, CLUSTER, axis=0)[:n]
    return truth, probe, _labels(truth @ tagger_confusion(), np.full(n, NUM_SAMPLES), rng)


GENERATORS = {
    "model": model,
    "word-error": word_error,
    "class-pair": class_pair,
    "calibrated": calibrated,
    "near-thresholds": near_thresholds,
    "missing": missing,
    "clustered": clustered,
}
