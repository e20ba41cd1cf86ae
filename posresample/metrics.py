"""Distances between the probe's distribution and the empirical one, with their noise: pure numpy.

Every function takes rows of distributions over the same classes ([N, K], rows summing to 1) and
returns one value per row, unless it says otherwise. Logarithms are base 2 (bits), so the
Jensen-Shannon divergence lies in [0, 1].
"""

from __future__ import annotations

import numpy as np

KL_EPSILON = 1e-6  # KL(empirical || probe) smooths the probe: q' = (q + eps) / (1 + K * eps)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(axis=-1)


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log2(y) with 0 * log 0 = 0."""
    out = np.zeros(np.broadcast(x, y).shape)
    mask = x > 0
    np.log2(np.broadcast_to(y, out.shape), out=out, where=mask)
    return np.where(mask, x * out, 0.0)


def entropy(p: np.ndarray) -> np.ndarray:
    return -_xlogy(p, p).sum(axis=-1)


def smooth(q: np.ndarray, eps: float = KL_EPSILON) -> np.ndarray:
    return (q + eps) / (1 + q.shape[-1] * eps)


def kl(p: np.ndarray, q: np.ndarray, eps: float = KL_EPSILON) -> np.ndarray:
    """KL(p || q) in bits with q smoothed by `eps`, so a class the probe gave 0 costs a finite amount."""
    return (_xlogy(p, p) - _xlogy(p, smooth(q, eps))).sum(axis=-1)


def js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = 0.5 * (p + q)
    return 0.5 * (_xlogy(p, p) - _xlogy(p, m)).sum(axis=-1) + 0.5 * (_xlogy(q, q) - _xlogy(q, m)).sum(axis=-1)


def brier(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Brier score of the forecast q against the (empirical) outcome distribution p: sum (q - p)^2."""
    return ((q - p) ** 2).sum(axis=-1)


def multinomial_se(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Standard error of each empirical share from n draws: sqrt(p (1 - p) / n). -> [N, K]"""
    return np.sqrt(p * (1 - p) / np.maximum(n, 1)[..., None])


def expected_tv_between_draws(p: np.ndarray, n: np.ndarray, draws: int = 200, seed: int = 0) -> np.ndarray:
    """The TV two independent samples of n from p show by chance alone (Monte Carlo): a divergence
    below this is within the noise of n completions."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(p))
    for i, (row, count) in enumerate(zip(p, n)):
        count = max(int(count), 1)
        a = rng.multinomial(count, row / row.sum(), size=draws) / count
        b = rng.multinomial(count, row / row.sum(), size=draws) / count
        out[i] = total_variation(a, b).mean()
    return out


def bootstrap_ci(values: np.ndarray, statistic=np.mean, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over rows (candidates), reproducible by seed."""
    values = np.asarray(values)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    stats = np.array([statistic(values[idx]) for idx in picks])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def temper(q: np.ndarray, temperature: float) -> np.ndarray:
    """q^(1/T), renormalised: T < 1 sharpens, T > 1 softens (a softmax's logits divided by T)."""
    logq = np.log(np.clip(q, 1e-300, None)) / temperature
    logq -= logq.max(axis=-1, keepdims=True)
    out = np.exp(logq) * (q > 0)
    return out / out.sum(axis=-1, keepdims=True)


def fit_temperature(p: np.ndarray, q: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The T minimising mean KL(p || temper(q, T)): a grid in log T, then golden-section refinement."""
    grid = np.geomspace(low, high, 41)
    losses = [kl(p, temper(q, t)).mean() for t in grid]
    best = int(np.argmin(losses))
    a, b = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if kl(p, temper(q, np.exp(c))).mean() < kl(p, temper(q, np.exp(d))).mean():
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))
