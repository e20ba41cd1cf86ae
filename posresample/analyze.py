"""analyze: each candidate's empirical UPOS distribution (from `label`) against the probe's.

Reads the database (the `empirical_labels` view and the candidates), computes per-candidate
divergences with their noise floors, a summary with 95% bootstrap intervals over candidates,
baselines (including a one-parameter recalibration fitted on half the candidates and scored on the
other half), and breakdowns; `report.py` turns the result into CSV, JSON, plots and one HTML page.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, text

from . import db, metrics
from .config import DEFAULT_MIN_LABELLED
from .data import UPOS_NAMES
from .errors import ConfigError, DatabaseError
from .models import candidate_labels, candidates, completions, jobs, labels, taggers

log = logging.getLogger(__name__)
K = len(UPOS_NAMES)  # every UPOS id in HF order; classes the probe lacks get probability 0

AMBIGUOUS_BELOW = 0.9  # a candidate is genuinely ambiguous when its empirical majority share is below this
FIXED_TEMPERATURES = (0.5, 2.0)  # the probe sharpened and softened, as baselines
EXAMPLES_PER_LABEL = 5  # completions per (candidate, label) embedded in the HTML report


@dataclass
class Analysis:
    scan: dict
    params_id: int
    tagger: dict
    min_labelled: int
    rows: list[dict]  # per candidate, every number (candidates.csv)
    summary: dict  # summary.json
    probe: np.ndarray  # [N, K]
    empirical: np.ndarray  # [N, K]
    examples: dict = field(default_factory=dict)  # candidate id -> {label: [(text, word start, word end)]}


def load(engine, scan_name: str | None, tagger_name: str | None, params_id: int | None):
    """The scan, params, tagger and, per candidate with labels, its row and empirical counts."""
    from .store import pick_params, pick_scan

    with db.read(engine) as conn:
        scan = pick_scan(conn, scan_name)
        params = pick_params(conn, scan["id"], params_id)
        tagger = _pick_tagger(conn, tagger_name)
        cands = conn.execute(select(candidates).where(candidates.c.scan_id == scan["id"]).order_by(candidates.c.id)).mappings().all()
        counts = conn.execute(text(
            "SELECT e.candidate_id, e.upos, e.count FROM empirical_labels e JOIN candidates c ON c.id = e.candidate_id "
            "WHERE c.scan_id = :scan AND e.params_id = :params AND e.tagger_id = :tagger"),
            {"scan": scan["id"], "params": params["id"], "tagger": tagger["id"]}).all()
        original = dict(conn.execute(select(candidate_labels.c.candidate_id, candidate_labels.c.upos).where(
            candidate_labels.c.tagger_id == tagger["id"])).all())
    per_candidate: dict[int, np.ndarray] = {}
    for cid, upos, n in counts:
        per_candidate.setdefault(cid, np.zeros(K))[upos] = n
    return scan, params, tagger, [dict(c) for c in cands], per_candidate, original


def _pick_tagger(conn, name: str | None) -> dict:
    rows = [dict(r) for r in conn.execute(select(taggers).order_by(taggers.c.id)).mappings()]
    if not rows:
        raise DatabaseError("no labels yet: run `cli.py label --tagger ...` first")
    if name is None:
        if len(rows) > 1:
            raise ConfigError(f"the database holds labels of {len(rows)} taggers ({', '.join(r['name'] for r in rows)}): pick one with --tagger")
        return rows[0]
    match = [r for r in rows if r["name"] == name]
    if not match:
        raise ConfigError(f"no tagger named {name!r} (have: {', '.join(r['name'] for r in rows)})")
    return match[-1]


def probe_matrix(cands: list[dict], classes: list[int]) -> np.ndarray:
    """Each candidate's probe probabilities on all K UPOS ids (zeros for classes the probe lacks)."""
    q = np.zeros((len(cands), K))
    q[:, classes] = np.array([c["probe_probs"] for c in cands], dtype=np.float64)
    return q


def label_prior(scan: dict, fallback: np.ndarray) -> tuple[np.ndarray, str]:
    """The UPOS distribution of the scanned split's words (excluded labels left out), or, where the
    dataset cannot be read here, of the candidates' true labels."""
    from .data import load_sentences
    from .errors import DatasetError

    try:
        sentences = load_sentences(scan["dataset"], scan["split"])
    except DatasetError:
        return fallback / fallback.sum(), "true labels of the candidates (the scanned split could not be read)"
    counts = np.zeros(K)
    for s in sentences:
        for _form, upos in s.words:
            counts[upos] += 1
    counts[list(scan["excluded_labels"])] = 0
    return counts / counts.sum(), f"words of {scan['split']} in {scan['dataset']}"


def analyze(engine, scan_name: str | None = None, tagger_name: str | None = None, params_id: int | None = None,
            min_labelled: int = DEFAULT_MIN_LABELLED, seed: int = 0, with_examples: bool = True) -> Analysis:
    scan, params, tagger, cands, per_candidate, original = load(engine, scan_name, tagger_name, params_id)
    kept = [c for c in cands if per_candidate.get(c["id"], np.zeros(K)).sum() >= min_labelled]
    if not kept:
        raise DatabaseError(f"no candidate of scan {scan['name']!r} has {min_labelled} or more labelled completions "
                            f"by tagger {tagger['name']!r}: run `cli.py label`, or lower --min-labelled")
    counts = np.stack([per_candidate[c["id"]] for c in kept])  # [N, K]
    n = counts.sum(axis=1)
    p = counts / n[:, None]
    q = probe_matrix(kept, list(scan["probe_classes"]))
    true = np.array([c["true_label"] for c in kept])
    orig = np.array([original.get(c["id"], -1) if original.get(c["id"]) is not None else -1 for c in kept])
    floor = metrics.expected_tv_between_draws(p, n, seed=seed)
    rows = per_candidate_rows(kept, p, q, n, true, orig, floor)
    prior, prior_source = label_prior(scan, np.bincount(true, minlength=K).astype(float))
    summary = summarise(p, q, n, true, orig, prior, floor, seed) | {
        "scan": scan["name"], "split": scan["split"], "model": scan["model"], "layer": scan["layer"],
        "generation_params_id": params["id"], "tagger": {k: tagger[k] for k in ("name", "spec", "accuracy")},
        "candidates_in_scan": len(cands), "candidates_analysed": len(kept), "min_labelled": min_labelled,
        "ambiguous_below": AMBIGUOUS_BELOW, "kl_smoothing": metrics.KL_EPSILON, "prior_source": prior_source,
        "breakdowns": {"true_label": breakdown(rows, "true_label"), "probe_top2": breakdown(rows, "probe_top2")},
    }
    examples = load_examples(engine, [c["id"] for c in kept], tagger["id"], params["id"], params["model"]) if with_examples else {}
    return Analysis(scan, params["id"], tagger, min_labelled, rows, summary, q, p, examples)


def per_candidate_rows(cands, p, q, n, true, orig, floor: np.ndarray) -> list[dict]:
    tv, jsd, kld, bri = metrics.total_variation(p, q), metrics.js(p, q), metrics.kl(p, q), metrics.brier(q, p)
    hp, hq = metrics.entropy(p), metrics.entropy(q)
    majority, pred = p.argmax(axis=1), q.argmax(axis=1)
    top2 = np.argsort(-q, axis=1)[:, :2]
    se = metrics.multinomial_se(p, n)
    rows = []
    for i, c in enumerate(cands):
        rows.append({
            "candidate_id": c["id"], "dataset_idx": c["dataset_idx"], "sent_id": c["sent_id"],
            "target_position": c["target_position"], "target_token": c["target_token"], "prefix_text": c["prefix_text"],
            "sentence_text": c["sentence_text"], "n_labelled": int(n[i]),
            "true_label": UPOS_NAMES[true[i]], "probe_pred": UPOS_NAMES[pred[i]], "probe_max_prob": float(q[i].max()),
            "probe_top2": f"{UPOS_NAMES[top2[i, 0]]}/{UPOS_NAMES[top2[i, 1]]}",
            "empirical_majority": UPOS_NAMES[majority[i]], "empirical_majority_share": float(p[i].max()),
            "majority_share_se": float(se[i, majority[i]]),
            "tagger_on_original": UPOS_NAMES[orig[i]] if orig[i] >= 0 else None,
            "tv": float(tv[i]), "tv_noise_floor": float(floor[i]), "js": float(jsd[i]), "kl": float(kld[i]),
            "brier": float(bri[i]), "entropy_empirical": float(hp[i]), "entropy_probe": float(hq[i]),
            "probe_agrees_with_majority": bool(pred[i] == majority[i]),
            "majority_is_true_label": bool(majority[i] == true[i]), "probe_is_true_label": bool(pred[i] == true[i]),
            "ambiguous": bool(p[i].max() < AMBIGUOUS_BELOW),
            "empirical": {UPOS_NAMES[k]: round(float(p[i, k]), 4) for k in np.flatnonzero(p[i])},
            "probe": {UPOS_NAMES[k]: round(float(q[i, k]), 4) for k in np.argsort(-q[i])[:6] if q[i, k] > 0.005},
        })
    return rows


def _ci(values, seed: int) -> dict:
    lo, hi = metrics.bootstrap_ci(np.asarray(values, dtype=float), seed=seed)
    return {"mean": float(np.mean(values)), "ci95": [lo, hi]}


def _scores(p: np.ndarray, b: np.ndarray, seed: int) -> dict:
    return {"kl": _ci(metrics.kl(p, b), seed), "tv": _ci(metrics.total_variation(p, b), seed),
            "js": _ci(metrics.js(p, b), seed), "brier": _ci(metrics.brier(b, p), seed)}


def baselines(p, q, orig, prior, seed: int) -> dict:
    """Every baseline scored against the empirical distributions on the same (held-out) half."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(p))
    fit_half, test_half = order[: len(p) // 2], order[len(p) // 2:]
    if len(fit_half) == 0:
        fit_half = test_half
    fitted_t = metrics.fit_temperature(p[fit_half], q[fit_half])
    pt, qt = p[test_half], q[test_half]
    top = np.zeros_like(qt)
    top[np.arange(len(qt)), qt.argmax(1)] = qt.max(1)
    rest = (1 - qt.max(1)) / (K - 1)
    top = np.where(top > 0, top, rest[:, None])
    onehot = np.zeros_like(qt)
    have = orig[test_half] >= 0
    onehot[np.flatnonzero(have), orig[test_half][have]] = 1.0
    onehot[~have] = 1.0 / K
    table = {
        "probe": qt, f"probe, T={FIXED_TEMPERATURES[0]:g} (sharper)": metrics.temper(qt, FIXED_TEMPERATURES[0]),
        f"probe, T={FIXED_TEMPERATURES[1]:g} (softer)": metrics.temper(qt, FIXED_TEMPERATURES[1]),
        f"probe, fitted T={fitted_t:.3g}": metrics.temper(qt, fitted_t),
        "label prior of the split": np.broadcast_to(prior, qt.shape),
        "probe's top class fixed, rest uniform": top,
        "tagger on the original sentence (one-hot)": onehot,
    }
    return {"fitted_temperature": fitted_t, "fit_candidates": int(len(fit_half)), "scored_candidates": int(len(test_half)),
            "scores": {name: _scores(pt, b, seed) for name, b in table.items()}}


def summarise(p, q, n, true, orig, prior, floor: np.ndarray, seed: int) -> dict:
    from scipy.stats import pearsonr, spearmanr

    majority, pred = p.argmax(1), q.argmax(1)
    share = p.max(1)
    tv = metrics.total_variation(p, q)
    corr = {"pearson": float(pearsonr(q.max(1), share)[0]), "spearman": float(spearmanr(q.max(1), share)[0])} \
        if len(p) > 2 and np.ptp(share) > 0 and np.ptp(q.max(1)) > 0 else {"pearson": None, "spearman": None}
    return {
        "n_labelled": {"mean": float(n.mean()), "min": int(n.min()), "max": int(n.max())},
        "probe_vs_empirical": _scores(p, q, seed),
        "tv_noise_floor": _ci(floor, seed),
        "tv_above_noise_floor_share": _ci(tv > 2 * floor, seed),
        "ambiguous_share": _ci(share < AMBIGUOUS_BELOW, seed),
        "majority_is_true_label": _ci(majority == true, seed),
        "majority_is_probe_argmax": _ci(majority == pred, seed),
        "probe_argmax_is_true_label": _ci(pred == true, seed),
        "tagger_on_original_is_true_label": _ci((orig == true)[orig >= 0], seed) if (orig >= 0).any() else None,
        "corr_probe_max_prob_vs_majority_share": corr,
        "baselines": baselines(p, q, orig, prior, seed),
    }


def breakdown(rows: list[dict], key: str, top: int = 12) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    out = [{key: k, "n": len(g), "mean_tv": float(np.mean([r["tv"] for r in g])),
            "ambiguous_share": float(np.mean([r["ambiguous"] for r in g])),
            "majority_is_true_label": float(np.mean([r["majority_is_true_label"] for r in g])),
            "probe_is_true_label": float(np.mean([r["probe_is_true_label"] for r in g]))} for k, g in groups.items()]
    return sorted(out, key=lambda r: -r["n"])[:top]


def load_examples(engine, candidate_ids: list[int], tagger_id: int, params_id: int, model: str) -> dict:
    """Up to EXAMPLES_PER_LABEL completions per (candidate, label), for the report: [text, start, end]
    with the whole text decoded as `label` decoded it and the tagger's word at [start, end)."""
    from .errors import ModelError
    from .label import target_span
    from .modeling import load_tokenizer

    try:
        tok = load_tokenizer(model)
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    except ModelError:  # the tokenizer is not here: show the continuations without highlighting
        decode = None
    wanted = set(candidate_ids)
    out: dict[int, dict[str, list]] = {}
    seen: Counter = Counter()
    with db.read(engine) as conn:
        rows = conn.execute(
            select(jobs.c.candidate_id, labels.c.upos_name, labels.c.status, labels.c.word, completions.c.text,
                   completions.c.token_ids, candidates.c.prefix_token_ids)
            .join(completions, completions.c.id == labels.c.completion_id).join(jobs, jobs.c.id == completions.c.job_id)
            .join(candidates, candidates.c.id == jobs.c.candidate_id)
            .where(labels.c.tagger_id == tagger_id, jobs.c.params_id == params_id)
            .order_by(jobs.c.candidate_id, completions.c.sample_index))
        for cid, upos, status, word, continuation, token_ids, prefix_ids in rows:
            key = upos if status == "ok" else f"({status})"
            if cid not in wanted or seen[cid, key] >= EXAMPLES_PER_LABEL:
                continue
            seen[cid, key] += 1
            example = [continuation, 0, 0]
            if decode is not None:
                full, span = target_span(decode, list(prefix_ids), list(token_ids))
                example = [full, 0, 0]
                if span is not None:
                    end = span[0] + len(word) if word and full[span[0]:span[0] + len(word)] == word else span[1]
                    example = [full, span[0], end]
            out.setdefault(cid, {}).setdefault(key, []).append(example)
    return out
