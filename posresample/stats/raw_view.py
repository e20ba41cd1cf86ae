"""The raw view: the tagger's labels taken at face value, as the research scripts took them.

Plug-in divergences of the empirical shares from the probe with their noise floors (what n draws
from the probe itself score against it), shares and agreements with bootstrap intervals over
candidates, the baselines scored on a held-out half, the labels outside the probe's classes, and a
block in the original research scripts' own conventions. The corrected view (corrected.py) is the
one that leads; this one is for comparison with the earlier numbers.
"""

from __future__ import annotations

import numpy as np

from ..data import UPOS_NAMES, K
from . import metrics

FIXED_TEMPERATURES = (0.5, 2.0)  # the probe sharpened and softened, as baselines
RAW_AMBIGUOUS_BELOW = 0.9  # raw view: majority share below this
RESEARCH_FLOOR = 1e-8  # the research scripts floor both distributions at this before KL (nats)


def _ci(values, seed: int) -> dict:
    values = np.asarray(values, dtype=float)
    lo, hi = metrics.bootstrap_ci(values, seed=seed)
    return {"mean": float(values.mean()) if len(values) else float("nan"), "ci95": [lo, hi]}


def scores(p: np.ndarray, b: np.ndarray, classes: list[int], seed: int) -> dict:
    return {
        "kl": _ci(metrics.kl_on(p, b, classes), seed),
        "kl_all": _ci(metrics.kl(p, b), seed),
        "tv": _ci(metrics.total_variation(p, b), seed),
        "js": _ci(metrics.js(p, b), seed),
        "brier": _ci(metrics.brier(b, p), seed),
    }


def floors(q: np.ndarray, n: np.ndarray, classes: list[int], seed: int) -> dict:
    """Each divergence's noise floor: its mean when the labels are n draws from the probe itself."""
    rng = np.random.default_rng(seed)
    chosen = {
        "tv": metrics.total_variation,
        "js": metrics.js,
        "kl": lambda a, b: metrics.kl_on(a, b, classes),
        "brier": lambda a, b: metrics.brier(b, a),
    }
    return metrics.noise_floors(q, n, chosen, rng)


def raw_summary(p, q, n, true, orig, classes: list[int], prior: np.ndarray | None, floor: dict, seed: int) -> dict:
    from scipy.stats import pearsonr, spearmanr

    majority, pred = p.argmax(1), q.argmax(1)
    share = p.max(1)
    corr = (
        {"pearson": float(pearsonr(q.max(1), share)[0]), "spearman": float(spearmanr(q.max(1), share)[0])}
        if len(p) > 2 and np.ptp(share) > 0 and np.ptp(q.max(1)) > 0
        else {"pearson": None, "spearman": None}
    )
    return {
        "probe_vs_empirical": scores(p, q, classes, seed),
        "noise_floor": {name: _ci(values, seed) for name, values in floor.items()},
        "ambiguous_share": _ci(share < RAW_AMBIGUOUS_BELOW, seed),
        "majority_is_true_label": _ci(majority == true, seed),
        "majority_is_probe_argmax": _ci(majority == pred, seed),
        "probe_argmax_is_true_label": _ci(pred == true, seed),
        "tagger_on_original_is_true_label": _ci((orig == true)[orig >= 0], seed) if (orig >= 0).any() else None,
        "corr_probe_max_prob_vs_majority_share": corr,
        "baselines": baselines(p, q, orig, true, classes, prior, seed),
    }


def out_of_probe(p: np.ndarray, q: np.ndarray, classes: list[int], seed: int) -> dict:
    """The labels outside the probe's classes, and what they do to a KL over all classes."""
    outside = np.setdiff1d(np.arange(K), classes)
    mass = p[:, outside].sum(1)
    kl6, kl8 = metrics.kl(p, q, 1e-6), metrics.kl(p, q, 1e-8)
    return {
        "labels": [UPOS_NAMES[k] for k in outside],
        "share_of_labels": _ci(mass, seed),
        "candidates_with_any": int((mass > 0).sum()),
        "kl_all_eps_1e-6": float(kl6.mean()),
        "kl_all_eps_1e-8": float(kl8.mean()),
        "kl_on_probe_classes": float(metrics.kl_on(p, q, classes).mean()),
        # log2(1e-6 / 1e-8) = 6.64 bits per unit of out-of-probe mass: the smoothing decides that part
        "kl_change_per_unit_mass_1e-6_to_1e-8": float(np.log2(100.0)),
        "kl_share_from_out_of_probe_candidates": float(kl6[mass > 0].sum() / kl6.sum()) if kl6.sum() > 0 else 0.0,
    }


def baselines(p, q, orig, true, classes: list[int], prior: np.ndarray | None, seed: int) -> dict:
    """Every baseline scored against the empirical distributions on the same held-out half; the
    temperature, and the prior when the split could not be read, come from the other half."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(p))
    fit_half, test_half = order[: len(p) // 2], order[len(p) // 2 :]
    if len(fit_half) == 0:
        fit_half = test_half
    fitted_t = metrics.fit_temperature(p[fit_half], q[fit_half])
    if prior is None:  # the split could not be read: the fitting half's true labels
        prior = np.bincount(true[fit_half], minlength=K).astype(float)
        prior /= prior.sum()
    pt, qt = p[test_half], q[test_half]
    table = {
        "probe": qt,
        f"probe, T={FIXED_TEMPERATURES[0]:g} (sharper)": metrics.temper(qt, FIXED_TEMPERATURES[0]),
        f"probe, T={FIXED_TEMPERATURES[1]:g} (softer)": metrics.temper(qt, FIXED_TEMPERATURES[1]),
        f"probe, fitted T={fitted_t:.3g}": metrics.temper(qt, fitted_t),
        "label prior of the split": np.broadcast_to(prior, qt.shape),
        "probe's top class fixed, rest uniform over its other classes": top_fixed(qt, classes),
        "tagger on the original sentence (one-hot)": one_hot(orig[test_half], len(test_half)),
    }
    return {
        "fitted_temperature": fitted_t,
        "fit_candidates": int(len(fit_half)),
        "scored_candidates": int(len(test_half)),
        "scores": {name: scores(pt, b, classes, seed) for name, b in table.items()},
    }


def top_fixed(q: np.ndarray, classes: list[int]) -> np.ndarray:
    """The probe's top probability kept; the rest spread evenly over its other classes (not over the
    labels it excludes)."""
    out = np.zeros_like(q)
    top = q.argmax(1)
    rest = (1 - q.max(1)) / (len(classes) - 1)
    out[:, classes] = rest[:, None]
    out[np.arange(len(q)), top] = q.max(1)
    return out


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, K))
    have = labels >= 0
    out[np.flatnonzero(have), labels[have]] = 1.0
    out[~have] = 1.0 / K
    return out


def research_block(p: np.ndarray, q: np.ndarray, true: np.ndarray, classes: list[int], seed: int) -> dict:
    """The original scripts' conventions, to set beside their numbers: KL(probe || tagger) in nats,
    both floored at 1e-8 on the probe's classes; Brier against the one-hot treebank label on the
    probe's classes; the hard-argmax Brier (0 when right, 2 when wrong)."""
    per = research_values(p, q, true, classes)
    return {
        "kl_probe_tagger_nats": _ci(per["kl"], seed),
        "brier_vs_treebank": _ci(per["brier"], seed),
        "hard_argmax_brier": _ci(per["hard_brier"], seed),
    }


def research_values(p, q, true, classes: list[int]) -> dict[str, np.ndarray]:
    from scipy.special import rel_entr

    pc = np.maximum(metrics.restrict(p, classes), RESEARCH_FLOOR)
    qc = np.maximum(metrics.restrict(q, classes), RESEARCH_FLOOR)
    gold = np.zeros((len(q), K))
    gold[np.arange(len(q)), true] = 1.0
    hard = np.zeros((len(q), K))
    hard[np.arange(len(q)), q.argmax(1)] = 1.0
    return {
        "kl": rel_entr(qc / qc.sum(1, keepdims=True), pc / pc.sum(1, keepdims=True)).sum(1),
        "brier": ((q[:, classes] - gold[:, classes]) ** 2).sum(1),
        "hard_brier": ((hard[:, classes] - gold[:, classes]) ** 2).sum(1),
    }
