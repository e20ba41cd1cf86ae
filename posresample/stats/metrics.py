"""Divergences between distributions over the UPOS ids, their noise floors, and a fitted
temperature: scipy's entropy, Jensen-Shannon and rel_entr, and only what scipy lacks.

Every function takes rows of distributions over the same classes ([..., K], rows summing to 1)
and returns one value per row. Logarithms are base 2 (bits), so the Jensen-Shannon divergence lies
in [0, 1], unless a name says nats.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy as _entropy

KL_EPSILON = 1e-6  # KL(p || q) over all classes smooths q: q' = (q + eps) / (1 + K eps)
LN2 = np.log(2.0)
FLOOR_DRAWS = 100  # Monte Carlo draws per candidate for a noise floor


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(axis=-1)


def entropy(p: np.ndarray) -> np.ndarray:
    return _entropy(p, base=2, axis=-1) if p.size else np.zeros(p.shape[:-1])


def js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (scipy gives the distance, its square root)."""
    p, q = np.broadcast_arrays(p, q)
    with np.errstate(invalid="ignore"):  # scipy's sqrt of a rounding-negative 0 for equal rows
        return np.nan_to_num(jensenshannon(p, q, base=2, axis=-1)) ** 2


def smooth(q: np.ndarray, eps: float = KL_EPSILON) -> np.ndarray:
    return (q + eps) / (1 + q.shape[-1] * eps)


def kl(p: np.ndarray, q: np.ndarray, eps: float = KL_EPSILON) -> np.ndarray:
    """KL(p || q) in bits over all classes, q smoothed by `eps`: mass of p where q has none (the
    labels outside the probe's classes) costs log(1/eps) a unit, so the value depends on eps."""
    return rel_entr(p, smooth(q, eps)).sum(axis=-1) / LN2


def restrict(p: np.ndarray, classes: list[int]) -> np.ndarray:
    """p on `classes` only, renormalised (rows with no mass there become uniform on them)."""
    inside = p[..., classes]
    total = inside.sum(axis=-1, keepdims=True)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 1.0 / len(classes))


def kl_on(p: np.ndarray, q: np.ndarray, classes: list[int], eps: float = KL_EPSILON) -> np.ndarray:
    """KL(p || q) in bits over the probe's classes, both renormalised there (the way the research
    scripts align the two), q smoothed by `eps` there: a softmax probe gives each of its classes
    mass already, so only a one-hot baseline feels the smoothing."""
    return rel_entr(restrict(p, classes), smooth(restrict(q, classes), eps)).sum(axis=-1) / LN2


def brier(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Brier score of the forecast q against the outcome distribution p: sum (q - p)^2."""
    return ((q - p) ** 2).sum(axis=-1)


DIVERGENCES = {"tv": total_variation, "js": js, "kl": kl, "brier": lambda p, q: brier(q, p)}


def noise_floors(
    q: np.ndarray, n: np.ndarray, divergences: dict, rng: np.random.Generator, draws: int = FLOOR_DRAWS
) -> dict[str, np.ndarray]:
    """Each divergence's floor: what n draws from the reference q show from q itself, by chance alone
    (Monte Carlo, the same draws for every divergence): E[d(Multinomial(n, q) / n, q)] per row. A
    plug-in divergence of n labels from the probe this size is what a probe equal to the truth would
    score (with an error-free tagger)."""
    out = {name: np.empty(len(q)) for name in divergences}
    for start in range(0, len(q), 256):
        rows = slice(start, start + 256)
        counts = rng.multinomial(
            np.maximum(n[rows], 1).astype(np.int64)[:, None], q[rows][:, None, :], size=(len(q[rows]), draws)
        )
        shares = counts / np.maximum(n[rows], 1)[:, None, None]
        for name, divergence in divergences.items():
            out[name][rows] = divergence(shares, q[rows][:, None, :]).mean(axis=1)
    return out


def noise_floor(
    q: np.ndarray, n: np.ndarray, divergence, rng: np.random.Generator, draws: int = FLOOR_DRAWS
) -> np.ndarray:
    return noise_floors(q, n, {"d": divergence}, rng, draws)["d"]


def multinomial_se(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Standard error of each empirical share from n draws: sqrt(p (1 - p) / n). -> [N, K]"""
    return np.sqrt(p * (1 - p) / np.maximum(n, 1)[..., None])


def temper(q: np.ndarray, temperature: float) -> np.ndarray:
    """q^(1/T), renormalised: T < 1 sharpens, T > 1 softens (a softmax's logits divided by T)."""
    logq = np.log(np.clip(q, 1e-300, None)) / temperature
    logq -= logq.max(axis=-1, keepdims=True)
    out = np.exp(logq) * (q > 0)
    return out / out.sum(axis=-1, keepdims=True)


def fit_temperature(p: np.ndarray, q: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The T minimising mean KL(p || temper(q, T)) (bounded scalar search in log T). Mass of p outside
    q's support costs the same at every T and does not move the optimum."""
    from scipy.optimize import minimize_scalar

    def loss(log_t):
        return float(kl(p, temper(q, np.exp(log_t))).mean())

    best = minimize_scalar(loss, bounds=(np.log(low), np.log(high)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(best.x))


def bootstrap_ci(values: np.ndarray, seed: int = 0, resamples: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over rows (candidates), reproducible by seed."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    res = bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def jeffreys_interval(successes: float, n: int) -> dict:
    """{share, ci95}: the Jeffreys interval of a share of n, Beta(x + 1/2, n - x + 1/2) quantiles (the
    bound at 0 or n is the end itself)."""
    from scipy.stats import beta

    lo = 0.0 if successes <= 0 else float(beta.ppf(0.025, successes + 0.5, n - successes + 0.5))
    hi = 1.0 if successes >= n else float(beta.ppf(0.975, successes + 0.5, n - successes + 0.5))
    return {"share": successes / n, "ci95": [lo, hi]}
