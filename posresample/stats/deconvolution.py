"""Population estimates that cover the truth: an empirical-Bayes deconvolution of the candidates'
UPOS distributions.

A share such as "second label >= 0.10" or a mean such as TV(pi, q), computed from each candidate's
noisy estimate, is biased by the noise (a probe equal to the truth scored TV 0.063 against 96
labels), and the bias stays while the interval shrinks with more candidates: such intervals cover
the plug-in, not the truth. Here the distribution G of pi over candidates is estimated first, by
nonparametric maximum likelihood (Kiefer-Wolfowitz) over a fixed set of atoms, each candidate's
labels entering through the tagger's confusion; each candidate's posterior under G then gives
E[f(pi_i, q_i) | labels_i], and their mean estimates the population mean of f without the noise's
bias (the posterior means average to G's own mean of f: Robbins, Efron's "g-modeling").

Atoms live in each candidate's probe-rank frame (rank 1 = the probe's argmax), so that G can learn
how the truth relates to the probe's ranking: the vertices, two-label mixtures on a grid of 50 bin midpoints over
the top ranks (and the labels outside the probe's classes), the candidates' own sparsified
maximum-likelihood estimates, and "the probe itself, recalibrated" (q^(1/T) for a few T), a
candidate-specific atom that lets a calibrated probe be recognised as one. The intervals are
corrected.py's two-stage bootstrap over these posteriors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..data import K
from . import metrics

GRID = 50  # two-label atoms at the midpoints of 50 bins: 0.01, 0.03, .. 0.99
# No atom lies on a verdict threshold (second label 0.10, first 0.90): an atom there would stand for
# the truths on both sides of it and count them all on one (which side, rounding decides).
FIRST_RANKS = 3  # two-label atoms: the first label at one of the probe's first 3 ranks, the second at any
TOP_RANKS = 6  # ... and every pair of the first 6 ranks
TRIPLE_RANKS, TRIPLE_GRID = 4, 12  # three-label atoms over the first 4 ranks, shares in twelfths (none at 0.10)
EXEMPLARS = 2000  # candidates' own estimates used as atoms, at most
EXEMPLAR_FLOOR = 0.05  # an exemplar's components below this are dropped (noise would make them spread)
PROBE_TEMPERATURES = (0.5, 0.7, 1.0, 1.4, 2.0)  # the probe recalibrated, as candidate-specific atoms
KEEP = 64  # atoms kept per candidate posterior (the rest hold < 1e-9 of it)
LIKELIHOOD_BLOCK = 128  # candidates a block: its [n, atoms, labels] float32 temporaries are ~25 MB each
CUTOFF = 20.0  # atoms under exp(-20) of a candidate's best likelihood are dropped (sparse)


def rank_order(q: np.ndarray) -> np.ndarray:
    """order[i, r] = the class at probe rank r for candidate i (ties by UPOS id)."""
    return np.argsort(-q, axis=1, kind="stable")


def shared_atoms(mle_rank: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Atoms in the rank frame [M, K]: vertices, two-label grids, sparsified exemplars."""
    grid = (np.arange(GRID) + 0.5) / GRID
    # a first reading among the probe's top ranks, a second anywhere (the probe need not know of it)
    pairs = sorted(
        {(a, b) for a in range(FIRST_RANKS) for b in range(a + 1, K)}
        | {(a, b) for a in range(TOP_RANKS) for b in range(a + 1, TOP_RANKS)}
    )
    blocks = [np.eye(K)]
    for a, b in pairs:
        block = np.zeros((len(grid), K))
        block[:, a], block[:, b] = grid, 1 - grid
        blocks.append(block)
    steps = np.arange(1, TRIPLE_GRID)  # three-label atoms over the top ranks, on a coarser grid
    shares = (
        np.array([(i, j, TRIPLE_GRID - i - j) for i in steps for j in steps if TRIPLE_GRID - i - j >= 1]) / TRIPLE_GRID
    )
    for ranks in itertools.combinations(range(TRIPLE_RANKS), 3):
        block = np.zeros((len(shares), K))
        block[:, list(ranks)] = shares
        blocks.append(block)
    pick = rng.choice(len(mle_rank), size=min(EXEMPLARS, len(mle_rank)), replace=False)
    sparse = np.where(mle_rank[pick] >= EXEMPLAR_FLOOR, mle_rank[pick], 0.0)
    blocks.append(sparse / sparse.sum(axis=1, keepdims=True))
    return np.vstack(blocks)


@dataclass
class Deconvolution:
    """G's weights, and each candidate's posterior over its KEEP likeliest atoms. The atoms are
    indices (`keep`) into the shared atoms (rank frame) and the candidate's probe atoms, turned into
    distributions in the candidate's class frame a block at a time (`atom_block`): [N, KEEP, K] of
    them at once would be 150 MB at 16,000 candidates."""

    weights: np.ndarray  # [M + P] over the shared atoms then the probe atoms
    posterior: np.ndarray  # [N, KEEP] the kept atoms' posterior probabilities (rows sum to 1)
    keep: np.ndarray  # [N, KEEP] the kept atoms: < M a shared atom, else probe atom keep - M
    shared: np.ndarray  # [M, K] rank frame
    probe: np.ndarray  # [N, P, K] class frame
    inverse: np.ndarray  # [N, K] inverse[i, class] = the class's probe rank

    def atoms_of(self, rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The kept atoms `slots` [B, S] of candidates `rows` [B], in their class frames: [B, S, K]."""
        idx = np.take_along_axis(self.keep[rows], slots, axis=1)
        ranks = np.broadcast_to(self.inverse[rows][:, None, :], (*idx.shape, K))
        m = len(self.shared)
        from_shared = np.take_along_axis(
            self.shared[np.minimum(idx, m - 1)], ranks, axis=2
        )  # class c: its rank's value
        if not self.probe.shape[1]:
            return from_shared
        from_probe = np.take_along_axis(
            self.probe[rows], np.clip(idx - m, 0, self.probe.shape[1] - 1)[:, :, None].repeat(K, axis=2), axis=1
        )
        return np.where((idx < m)[:, :, None], from_shared, from_probe)

    def atom_block(self, start: int, stop: int) -> np.ndarray:
        """Candidates start..stop's kept atoms: [stop - start, KEEP, K]."""
        rows = np.arange(start, min(stop, len(self.keep)))
        return self.atoms_of(rows, np.broadcast_to(np.arange(self.keep.shape[1]), (len(rows), self.keep.shape[1])))

    @property
    def atoms(self) -> np.ndarray:
        """Every candidate's kept atoms at once: [N, KEEP, K]."""
        return self.atom_block(0, len(self.keep))


def deconvolve(
    counts: np.ndarray, q: np.ndarray, C: np.ndarray, support: np.ndarray, mle: np.ndarray, rng: np.random.Generator
) -> Deconvolution:
    order = rank_order(q)
    inverse = np.argsort(order, axis=1)  # inverse[i, class] = its rank
    shared = shared_atoms(np.take_along_axis(mle, order, axis=1), rng)  # [M, K] rank frame
    probe = (
        np.stack([metrics.temper(q, t) for t in PROBE_TEMPERATURES], axis=1)
        if PROBE_TEMPERATURES
        else np.zeros((len(q), 0, K))
    )  # [N, P, K] class frame
    likelihood = sparse_likelihood(counts, C, support, order, shared, probe)
    weights = npmle(likelihood)
    keep, post = posterior_top(likelihood, weights)
    return Deconvolution(weights, post, keep, shared, probe, inverse)


def sparse_likelihood(counts, C, support, order, shared, probe, cutoff: float = CUTOFF):
    """L[i, j] / max_j L[i, j] for every atom within exp(-cutoff) of the candidate's best, as a sparse
    matrix built a block of candidates at a time: memory grows with the candidates, not with
    candidates x atoms."""
    from scipy.sparse import csr_matrix, vstack

    # blocks of candidates with alike numbers of distinct labels: a block's arrays are as wide as its
    # widest candidate, so one candidate with 14 labels among ones with 3 would make them all 14 wide
    by_width = np.argsort((counts > 0).sum(axis=1), kind="stable")
    blocks = []
    for start in range(0, len(counts), LIKELIHOOD_BLOCK):
        part = by_width[start : start + LIKELIHOOD_BLOCK]
        ll = _loglik(counts[part], C[part] if C.ndim == 3 else C, support, order[part], shared, probe[part])
        ll -= ll.max(axis=1, keepdims=True)
        blocks.append(csr_matrix(np.where(ll >= -cutoff, np.exp(ll), 0.0)))
    stacked = vstack(blocks, format="csr")
    blocks.clear()  # two copies of the likelihoods at a time, not three
    return stacked[np.argsort(by_width)]


def posterior_top(E, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's KEEP likeliest atoms under the weights, and their posterior probabilities
    (the rest hold under exp(-CUTOFF) of a candidate's likelihood, or no weight)."""
    n = E.shape[0]
    keep = np.zeros((n, KEEP), dtype=np.int64)
    post = np.zeros((n, KEEP))
    for i in range(n):
        cols = E.indices[E.indptr[i] : E.indptr[i + 1]]
        mass = E.data[E.indptr[i] : E.indptr[i + 1]] * weights[cols]
        top = np.argsort(-mass, kind="stable")[:KEEP]
        keep[i, : len(top)], post[i, : len(top)] = cols[top], mass[top]
        keep[i, len(top) :] = cols[top[0]]  # padding repeats the best atom, with probability 0
    post /= post.sum(axis=1, keepdims=True)
    return keep, post


def _loglik(counts, C, support, order, shared, probe, dtype=np.float32) -> np.ndarray:
    """log P(labels | pi = atom) for shared atoms (rank frame) and probe atoms (class frame), C one
    confusion [K, K] or each candidate's [n, K, K], over
    each candidate's observed labels only (a handful of the 18). In float32, half the time of float64
    (the logs of [n, M, L] mixtures are most of it): a log-likelihood of -1,000 is then off by
    ~1e-4, a relative likelihood by 1e-4 of itself, where the candidates' sampling moves it by
    factors (tests/unit/test_corrected_view.py holds it to that against float64)."""
    f32 = dtype
    seen = counts > 0
    width = max(1, int(seen.sum(axis=1).max()))
    labels = np.argsort(~seen, axis=1, kind="stable")[:, :width]  # [n, L] observed labels first
    x = (np.take_along_axis(counts, labels, axis=1) * np.take_along_axis(seen, labels, axis=1)).astype(
        f32
    )  # [n, L] 0 past them
    C32 = C.astype(f32)
    # [n, K(rank), K(label)]: the confusion row of the class at each rank (C one for all, or one a candidate)
    C_rank = np.take_along_axis(C32, order[:, :, None], axis=1) if C.ndim == 3 else C32[order]
    C_seen = np.take_along_axis(C_rank, np.broadcast_to(labels[:, None, :], (len(order), K, width)), axis=2)
    mix = np.matmul(shared.astype(f32)[None], C_seen)  # [n, M, L]
    tiny = np.finfo(f32).tiny  # log(0) would be -inf, and -inf x 0 labels NaN
    ll = np.matmul(np.log(np.maximum(mix, tiny)), x[:, :, None])[:, :, 0].astype(float)  # [n, M]
    outside = ~np.take_along_axis(np.broadcast_to(support, order.shape), order, axis=1)  # [n, K(rank)]
    ll[(outside.astype(f32) @ (shared > 0).T.astype(f32)) > 0] = -np.inf  # no mass where the tagger was never measured
    C_labels = (
        np.take_along_axis(C32, np.broadcast_to(labels[:, None, :], (len(order), K, width)), axis=2)
        if C.ndim == 3
        else C32[:, labels].transpose(1, 0, 2)
    )  # [n, K, L]
    mixp = np.matmul(probe.astype(f32), C_labels)  # [n, P, L]
    llp = np.matmul(np.log(np.maximum(mixp, tiny)), x[:, :, None])[:, :, 0].astype(float)
    llp[(probe * ~support).sum(-1) > 0] = -np.inf
    return np.concatenate([ll, llp], axis=1)


NPMLE_TOL = 1e-6  # nats per candidate: a SQUAREM step that gains less than this x N ends the fit


def npmle(E, iters: int = 80, tol: float = NPMLE_TOL) -> np.ndarray:
    """Mixing weights maximising sum_i log sum_j w_j L_ij over the simplex (Kiefer-Wolfowitz), L the
    sparse relative likelihoods: the EM fixed point w_j <- sum_i post_ij / N from uniform weights,
    accelerated by SQUAREM (the step is kept only where it raises the likelihood), for at most
    `iters` steps, ending once a step gains under tol x N nats (the log-likelihood then crawls:
    at 4,000 candidates it moves 0.04 nats from step 40 to 80, the study's shares by 0.0003)."""
    m = np.ones(E.shape[0])
    total = m.sum()
    ET = E.T  # a CSC view, no copy of the likelihoods (a CSR transpose's products were no faster)

    def step(w, Ew=None):
        return w * (ET @ (m / np.maximum(E @ w if Ew is None else Ew, 1e-300))) / total

    def objective(Ew):
        return float(m @ np.log(np.maximum(Ew, 1e-300)))

    w = np.full(E.shape[1], 1.0 / E.shape[1])
    Ew = E @ w
    last = objective(Ew)
    for _ in range(iters):
        one = step(w, Ew)
        two = step(one)
        r, v = one - w, two - 2 * one + w
        alpha = min(-np.sqrt((r @ r) / max(v @ v, 1e-300)), -1.0)
        jump = np.maximum(w - 2 * alpha * r + alpha * alpha * v, 0.0)
        jump = step(jump / jump.sum())
        E_jump, E_two = E @ jump, E @ two  # each kept product is the next step's first
        at_jump, at_two = objective(E_jump), objective(E_two)
        w, Ew = (jump, E_jump) if at_jump >= at_two else (two, E_two)
        best = max(at_jump, at_two)
        if best - last < tol * total:
            break
        last = best
    return w / w.sum()
