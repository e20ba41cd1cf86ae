"""Per candidate: the word's UPOS distribution behind the tagger's labels, its intervals, a test of
the probe against the labels, and a verdict.

The model: candidate i's completions are n_i independent words whose true UPOS follows pi_i; the
tagger reads a word of true class t as l with probability C[t, l] (its confusion, measured on
held-out treebank words); so the labels are Multinomial(n_i, pi_i C).

- `mle`: the maximum-likelihood pi_i, by EM on the simplex (the latent true class of each label),
  over the classes the confusion covers. With C the identity it is the raw shares.
- `posterior`: draws of pi_i under a reference Dirichlet prior of one pseudo-count in all, by data
  augmentation (each label's true class, then pi), with C redrawn from its own Dirichlet posterior
  every sweep, so the intervals carry the confusion's uncertainty too; and the two probabilities a
  verdict turns on, Rao-Blackwellized, from a longer chain where they are near the tail.
- `probe_test`: the p-value of the labels under the probe pushed through the tagger, q_i C: a
  Monte Carlo likelihood-ratio (G) test, replicates drawn with C from its posterior, refined where
  the observed statistic beats every replicate; Benjamini-Hochberg across candidates.
- `verdicts`: the rule in docs/design.md (and below) on the 95% intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import K
from .confusion import Confusion, PerCandidate, per_candidate

AMBIGUOUS_SECOND = 0.10  # genuinely ambiguous: the second label's lower 95% bound is at least this
DOMINANT_FIRST = 0.90  # one label dominates: its lower 95% bound is at least this
VERDICTS = ("genuinely_ambiguous", "probe_underconfident", "probe_wrong", "undetermined")
SWEEPS, BURN_IN = 220, 20  # Gibbs sweeps, the first discarded (chains start at the point estimate): 200 draws
TEST_REPLICATES = (199, 1_800, 18_000)  # Monte Carlo passes; later ones only where a decision is still open
TEST_DRAW_BUDGET = 1_000_000  # multinomial draws a refinement pass may spend in all
TEST_POOL = 200  # with a confusion per candidate: draws of each one per block of replicates
CHUNK = 128  # candidates per vectorised block
LEVEL = 0.95  # the intervals' level
THRESHOLDS = np.array([AMBIGUOUS_SECOND, DOMINANT_FIRST])  # what `Posterior.below` is measured at
BATCHES = 10  # batch means for the Monte Carlo sd of a verdict's probability
REFINE_SDS, REFINE_FACTOR = 4.0, 6  # a probability within 4 of its sds of the tail: a chain 6x as long
RB_MARGIN = 0.1  # a share of draws below the threshold this far from the tail decides the verdict alone


def mle(counts: np.ndarray, C: np.ndarray, support: np.ndarray, iters: int = 400, tol: float = 1e-9) -> np.ndarray:
    """argmax_pi sum_l x_l log (pi C)_l over the simplex on `support`: EM (each label's latent true
    class), accelerated by SQUAREM (Varadhan & Roland 2008) row by row, with a plain EM step kept
    wherever the extrapolation would lower the likelihood. A row stops once no share of it moves by
    `tol` in a step, so the rows that converge slowly do not hold the rest. counts [N, K], C [K, K]
    or one per candidate [N, K, K] -> [N, K]."""
    n = counts.sum(axis=1, keepdims=True)
    each = C.ndim == 3

    def step(pi, x, n, Cs):
        mix = mixed(pi, Cs)  # [N, K] label probabilities
        ratio = np.divide(x, mix, out=np.zeros_like(x), where=mix > 0)
        back = np.einsum("nl,nkl->nk", ratio, Cs) if each else ratio @ Cs.T
        return pi * back / n  # expected true-class shares

    def loglik(pi, x, Cs):
        return (x * np.log(np.maximum(mixed(pi, Cs), 1e-300))).sum(axis=1)

    pi = np.where(support, 1.0, 0.0) * np.ones_like(counts)
    pi /= pi.sum(axis=1, keepdims=True)
    active = np.arange(len(counts))  # the rows still moving
    for _ in range(iters):
        if not len(active):
            break
        p, x, m = pi[active], counts[active], n[active]
        Cs = C[active] if each else C
        one = step(p, x, m, Cs)
        two = step(one, x, m, Cs)
        r, v = one - p, two - 2 * one + p
        alpha = -np.sqrt((r * r).sum(1, keepdims=True) / np.maximum((v * v).sum(1, keepdims=True), 1e-300))
        alpha = np.minimum(alpha, -1.0)
        jump = np.maximum(p - 2 * alpha * r + alpha * alpha * v, 0.0) * support
        jump = step(jump / np.maximum(jump.sum(axis=1, keepdims=True), 1e-300), x, m, Cs)
        new = np.where((loglik(jump, x, Cs) >= loglik(two, x, Cs))[:, None], jump, two)
        pi[active] = new
        active = active[np.abs(new - p).max(axis=1) >= tol]
    return pi


def mixed(pi: np.ndarray, C: np.ndarray) -> np.ndarray:
    """The label distributions pi C, [N, K]: C one confusion [K, K] or one per row [N, K, K]."""
    return np.einsum("nk,nkl->nl", pi, C) if C.ndim == 3 else pi @ C


def _sweeps(counts: np.ndarray, confusion: PerCandidate, rng: np.random.Generator, sweeps: int, start: np.ndarray):
    """The data-augmentation Gibbs sampler: each sweep draws C from its posterior (each candidate's
    own, where they differ), each label's true class given pi, then pi given those classes. Yields
    (alpha, pi) a sweep: pi ~ Dirichlet(alpha), alpha = the prior + the true classes' counts. The
    chain starts at `start` ([N, K], the point estimate, so it is near its target from the first
    sweep), mixed with a tenth of the uniform on the support (every supported class kept possible)."""
    support = confusion.support
    prior = np.where(support, 1.0 / support.sum(), 0.0)
    rows, labels = np.nonzero(counts)  # one multinomial per (candidate, observed label)
    n_pairs = counts[rows, labels].astype(np.int64)
    member = confusion.group[rows]  # each pair's confusion
    uniform = np.where(support, 1.0, 0.0) * np.ones_like(counts)
    uniform /= uniform.sum(axis=1, keepdims=True)
    pi = 0.9 * start + 0.1 * uniform
    for columns in confusion.label_columns(member, labels, sweeps, rng):  # [P, K]: C[:, l] of each pair's confusion
        weights = pi[rows] * columns  # [P, K]: P(true t | label l, pi)
        weights /= weights.sum(axis=1, keepdims=True)
        true = rng.multinomial(n_pairs, weights)  # [P, K] the labels' true classes
        z = np.bincount(
            (rows[:, None] * K + np.arange(K)).ravel(), weights=true.ravel(), minlength=len(counts) * K
        ).reshape(len(counts), K)
        alpha = prior + z
        pi = _dirichlet(alpha, support, rng)
        yield alpha, pi


def _dirichlet(alpha: np.ndarray, support: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gamma = rng.gamma(np.where(support, alpha, 1.0)) * support
    gamma = np.maximum(gamma, 1e-300) * support  # a draw of 0 for a tiny alpha stays on the simplex
    return gamma / gamma.sum(axis=-1, keepdims=True)


def intervals(draws: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed posterior intervals per class: ([N, K], [N, K])."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail], axis=1)
    return lo.astype(np.float64), hi.astype(np.float64)


@dataclass
class Posterior:
    """Each candidate's posterior summary: its intervals, and the probabilities its verdict turns on."""

    lo: np.ndarray  # [N, K] equal-tailed LEVEL intervals per class, from the draws
    hi: np.ndarray
    below: np.ndarray  # [N, 2] P(second label < AMBIGUOUS_SECOND), P(first label < DOMINANT_FIRST)
    refined: int  # candidates whose `below` came from a longer chain


def posterior(
    counts: np.ndarray,
    confusion: Confusion | PerCandidate,
    point: np.ndarray,
    rng: np.random.Generator,
    block: int = 2048,
) -> Posterior:
    """Posterior draws of pi and their intervals, a block of candidates at a time (each candidate's
    chain is its own), and the two probabilities a verdict turns on. The prior is Dirichlet(1 /
    |support|) on the supported classes (one pseudo-count in all, so a label seen in every completion
    keeps a lower bound near 1); with the identity confusion the posterior is a Dirichlet, drawn
    directly.

    A verdict asks whether a lower bound clears a threshold, i.e. whether P(pi_k < threshold) is at
    most the tail, (1 - LEVEL) / 2. Where the share of draws below the threshold leaves that in doubt
    (within RB_MARGIN of the tail) the probability is Rao-Blackwellized: given a sweep's true
    classes, pi_k is exactly Beta(a, a0 - a), so the estimate is the mean over the kept sweeps of
    that Beta's CDF at the threshold, far less noisy than counting draws or reading a quantile off
    200 of them (whose Monte Carlo sd is about 0.007). Where the estimate is still within
    REFINE_SDS of its own Monte Carlo sd (batch means) of the tail, it is computed again from a
    chain REFINE_FACTOR times longer. With the identity confusion it is exact. `confusion`: one for
    all, or one per candidate."""
    confusion = per_candidate(confusion, len(counts))
    first, second = ranked(point)
    labels = np.stack([second, first], axis=1)
    los, his, belows, errors = [], [], [], []
    for i in range(0, len(counts), block):
        part = slice(i, i + block)
        draws, below, error = _chain(
            counts[part], confusion.subset(np.arange(len(counts))[part]), labels[part], SWEEPS, rng, point[part]
        )
        lo, hi = intervals(draws)
        los.append(lo), his.append(hi), belows.append(below), errors.append(error)
        del draws
    lo, hi, below, error = (np.concatenate(x) for x in (los, his, belows, errors))
    tail = (1 - LEVEL) / 2
    close = np.abs(below - tail) < REFINE_SDS * error  # [N, 2]
    near = np.flatnonzero(close.any(axis=1))
    if len(near) and not confusion.exact:
        _draws, again, _error = _chain(
            counts[near],
            confusion.subset(near),
            labels[near],
            SWEEPS * REFINE_FACTOR,
            rng,
            point[near],
            close[near],
        )
        below[near] = np.where(close[near], again, below[near])
    return Posterior(lo, hi, below, 0 if confusion.exact else len(near))


def _chain(
    counts: np.ndarray,
    confusion: Confusion | PerCandidate,
    labels: np.ndarray,
    sweeps: int,
    rng: np.random.Generator,
    start: np.ndarray,
    wanted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chain per candidate: (the draws kept, [n, sweeps - BURN_IN, K] float32 (for SWEEPS only);
    P(pi[labels[:, j]] < THRESHOLDS[j]), [n, 2], Rao-Blackwellized where it is in doubt (else the
    share of draws below); its Monte Carlo sd by the means of BATCHES batches, [n, 2] (0 where not
    Rao-Blackwellized)). A longer chain computes the probabilities `wanted` ([n, 2] bool) only
    (default: both)."""
    from scipy.special import betainc

    confusion = per_candidate(confusion, len(counts))
    rows = np.arange(len(counts))
    if confusion.exact:  # the posterior is Dirichlet(prior + counts): its marginals are Betas
        alpha = np.where(confusion.support, 1.0 / confusion.support.sum(), 0.0) + counts
        mine = alpha[rows[:, None], labels]
        below = betainc(mine, alpha.sum(axis=1, keepdims=True) - mine, THRESHOLDS)
        prior_counts = np.broadcast_to(alpha, (SWEEPS - BURN_IN, *alpha.shape)).transpose(1, 0, 2)
        return _dirichlet(prior_counts, confusion.support, rng), below, np.zeros_like(below)
    kept = sweeps - BURN_IN
    keep_draws = sweeps == SWEEPS
    draws = np.empty((len(counts), kept, K), dtype=np.float32) if keep_draws else None
    a, a0 = np.empty((len(counts), kept, 2), dtype=np.float32), np.empty((len(counts), kept, 1), dtype=np.float32)
    for sweep, (alpha, pi) in enumerate(_sweeps(counts, confusion, rng, sweeps, start)):
        if sweep < BURN_IN:
            continue
        a[:, sweep - BURN_IN], a0[:, sweep - BURN_IN, 0] = alpha[rows[:, None], labels], alpha.sum(axis=1)
        if keep_draws:
            draws[:, sweep - BURN_IN] = pi
    # the Beta CDFs where the verdict may be in doubt: every pair of a longer chain; of the first one,
    # those whose share of draws below the threshold is within RB_MARGIN of the tail (far from it,
    # that share decides the verdict as surely, and the CDFs would cost a second or two at 4,000)
    if keep_draws:
        drawn = (draws[rows[:, None], :, labels].transpose(0, 2, 1) < THRESHOLDS).mean(axis=1)  # [n, 2]
        doubt = np.abs(drawn - (1 - LEVEL) / 2) < RB_MARGIN
    else:
        drawn = np.zeros((len(counts), 2))
        doubt = np.ones((len(counts), 2), dtype=bool) if wanted is None else wanted
    below, error = drawn.copy(), np.zeros((len(counts), 2))
    for j in range(2):
        pick = np.flatnonzero(doubt[:, j])
        if len(pick):
            mine = a[pick, :, j].astype(np.float64)
            cdf = betainc(mine, a0[pick, :, 0] - mine, THRESHOLDS[j])
            batches = cdf[:, : kept - kept % BATCHES].reshape(len(pick), BATCHES, -1).mean(axis=2)
            below[pick, j] = cdf.mean(axis=1)
            error[pick, j] = batches.std(axis=1, ddof=1) / np.sqrt(BATCHES)
    return draws, below, error


def ranked(point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and second label by the point estimate (ties: the lower UPOS id first)."""
    order = np.argsort(-point, axis=1, kind="stable")
    return order[:, 0], order[:, 1]


def verdicts(point: np.ndarray, below: np.ndarray, probe_pred: np.ndarray) -> np.ndarray:
    """Each candidate's verdict, an index into VERDICTS, from `Posterior.below`:
    genuinely ambiguous when the second label's lower bound is >= 0.10 (P(second < 0.10) is at
    most the tail); else, when the first label's lower bound is >= 0.90, the probe was
    under-confident (that label is its argmax) or wrong (it is not); else undetermined (too few
    labels, or intervals too wide to say)."""
    first, _second = ranked(point)
    tail = (1 - LEVEL) / 2
    ambiguous = below[:, 0] <= tail
    dominant = below[:, 1] <= tail
    out = np.full(len(point), VERDICTS.index("undetermined"))
    out[dominant & (first == probe_pred)] = VERDICTS.index("probe_underconfident")
    out[dominant & (first != probe_pred)] = VERDICTS.index("probe_wrong")
    out[ambiguous] = VERDICTS.index("genuinely_ambiguous")
    return out


def g_statistic(counts: np.ndarray, expected: np.ndarray, rare: np.ndarray) -> np.ndarray:
    """The likelihood-ratio statistic 2 sum x log(x / (n p)) over the last axis, the `rare` labels
    (expected count under 1) pooled into one cell, as goodness-of-fit tests pool sparse cells: a
    single label where the tagger's confusion is barely measured then cannot decide the test."""
    n = counts.sum(axis=-1, keepdims=True)
    pooled_x = np.where(rare, counts, 0).sum(axis=-1, keepdims=True)
    pooled_p = np.where(rare, expected, 0).sum(axis=-1, keepdims=True)
    x = np.concatenate([np.where(rare, 0, counts), pooled_x], axis=-1)
    p = np.concatenate(
        [
            np.where(rare, 0, expected) * np.ones_like(counts, dtype=float),
            pooled_p * np.ones_like(pooled_x, dtype=float),
        ],
        axis=-1,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 0, x * np.log(x / (n * p)), 0.0)
    return 2 * terms.sum(axis=-1)


@dataclass
class TestResult:
    p: np.ndarray  # [N] Monte Carlo p-values, (1 + exceedances) / (1 + replicates)
    replicates: np.ndarray  # [N] replicates each candidate's p-value rests on
    q: np.ndarray  # [N] Benjamini-Hochberg adjusted


def probe_test(
    counts: np.ndarray,
    q: np.ndarray,
    confusion: Confusion | PerCandidate,
    rng: np.random.Generator,
    passes: tuple[int, ...] = TEST_REPLICATES,
    fdr: float = 0.05,
) -> TestResult:
    """H0: candidate i's labels are Multinomial(n_i, q_i C). Each replicate draws C from its posterior,
    then labels from q_i C; the statistic is G against q_i C-hat. The first pass covers everyone;
    later passes add replicates only where more could change a Benjamini-Hochberg decision at
    `fdr`: candidates not rejected whose p-value is at its floor or within Monte Carlo error of the
    cut (a rejected one stays rejected as its p-value falls), within a draw budget. `confusion`:
    one for all, or one per candidate."""
    from scipy.stats import false_discovery_control

    confusion = per_candidate(confusion, len(counts))
    C_hat = confusion.matrices()
    expected = mixed(q, C_hat[confusion.group]) if len(C_hat) > 1 else q @ C_hat[0]
    rare = counts.sum(axis=1, keepdims=True) * expected < 1.0  # [N, K] cells pooled, per candidate
    observed = g_statistic(counts, expected, rare)
    exceed = np.zeros(len(counts))
    total = np.zeros(len(counts))
    todo = np.arange(len(counts))
    for i, reps in enumerate(passes):
        if i:
            todo = _undecided(exceed, total, fdr)
            todo = todo[: max(1, TEST_DRAW_BUDGET // reps)] if len(todo) * reps > TEST_DRAW_BUDGET else todo
            if not len(todo):
                break
        todo = todo[np.argsort(confusion.group[todo], kind="stable")]  # a block's candidates share few confusions
        for part in np.array_split(todo, max(1, len(todo) // CHUNK)):
            if len(part):
                exceed[part] += _exceedances(
                    counts[part], q[part], observed[part], expected[part], rare[part], confusion.subset(part), reps, rng
                )
                total[part] += reps
    p = (1 + exceed) / (1 + total)
    return TestResult(p, total, false_discovery_control(p, method="bh"))


def _undecided(exceed: np.ndarray, total: np.ndarray, fdr: float) -> np.ndarray:
    """Candidates whose BH decision more replicates could still change."""
    from scipy.stats import false_discovery_control

    p = (1 + exceed) / (1 + total)
    rejected = false_discovery_control(p, method="bh") <= fdr
    ranks = np.sort(p)
    passing = ranks <= fdr * np.arange(1, len(p) + 1) / len(p)
    cut = ranks[np.flatnonzero(passing).max()] if passing.any() else fdr / len(p)
    error = 3 * np.sqrt(p * (1 - p) / total) + 1 / (1 + total)
    return np.flatnonzero(~rejected & (p - error <= cut))


def _exceedances(counts, q, observed, expected, rare, confusion: PerCandidate, reps, rng, block: int = 1000):
    """How many of `reps` null replicates reach each candidate's observed statistic. With one
    confusion per candidate, each of the candidates' confusions is drawn TEST_POOL times and the
    replicates take those draws at random (a draw a replicate would cost [size, K, K] a member)."""
    n = counts.sum(axis=1).astype(np.int64)
    expected, rare = expected[:, None, :], rare[:, None, :]  # [c, 1, K]
    hits = np.zeros(len(counts))
    members = range(len(confusion.members))  # those of these candidates only (`PerCandidate.subset`)
    single = len(confusion.members) == 1
    pools = {} if single else {g: confusion.members[g].draws(min(reps, TEST_POOL), rng) for g in members}
    for start in range(0, reps, block):
        size = min(block, reps - start)
        null = np.empty((len(counts), size, K))
        for g in members:
            mine = np.flatnonzero(confusion.group == g)
            if single:
                Cs = confusion.members[g].draws(size, rng)  # [size, K, K] one confusion per replicate
            else:
                Cs = pools[g][rng.integers(0, len(pools[g]), size=size)]
            null[mine] = np.einsum("ck,skl->csl", q[mine], Cs, optimize=True)  # [c, size, K]
        null /= null.sum(axis=2, keepdims=True)
        draws = rng.multinomial(n[:, None], null)  # [c, size, K]
        hits += (g_statistic(draws, expected, rare) >= observed[:, None] - 1e-9).sum(axis=1)
    return hits
