"""distill: a linear probe trained on the empirical UPOS distributions, scored against the original.

Training data: each labelled candidate's residual stream at the target position (hidden_states[L] of
its prefix, the read the scan makes; cached as .npz) and its empirical UPOS distribution as a soft
target. The model is multinomial logistic regression fitted to soft labels: minimise the mean
cross-entropy to the empirical distribution plus lambda/2 ||W||^2, a convex objective, by full-batch
L-BFGS in float64 (scikit-learn's LogisticRegression takes hard labels only). lambda is chosen by
grouped cross-validation inside each training fold. Folds split by sentence, never by token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from .analyze import load, probe_matrix
from .data import UPOS_NAMES, K
from .errors import ConfigError, DatabaseError
from .stats import metrics

log = logging.getLogger(__name__)
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried by cross-validation
INNER_FOLDS = 3
LBFGS_STEPS = 100  # iterations at most; a fit usually stops earlier, at a gradient norm of 1e-5


@dataclass
class DistillData:
    candidate_ids: list[int]
    groups: np.ndarray  # [N] sentence text: folds never split one, nor a text the split repeats
    target: np.ndarray  # [N, K] empirical distributions
    probe: np.ndarray  # [N, K] the original probe's probabilities
    true: np.ndarray  # [N] treebank UPOS ids
    features: dict[int, np.ndarray]  # layer -> [N, D]


def fit_soft(X: np.ndarray, P: np.ndarray, lam: float, steps: int = LBFGS_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """argmin_W,b mean_i CE(P_i, softmax(W x_i + b)) + lam/2 ||W||^2 -> (W [C, D], b [C]). Exact up to
    L-BFGS convergence: the objective is convex."""
    x = torch.as_tensor(X, dtype=torch.float64)
    p = torch.as_tensor(P, dtype=torch.float64)
    mean, scale = x.mean(0), x.std(0).clamp(min=1e-8)
    z = (x - mean) / scale  # standardised inside the fit only; folded back into W and b below
    w = torch.zeros(p.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(p.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        max_iter=steps,
        tolerance_grad=1e-5,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        logits = z @ w.T + b
        loss = -(p * torch.log_softmax(logits, dim=1)).sum(1).mean() + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W = (w / scale).detach()
    return W.numpy(), (b - (w * mean / scale).sum(1)).detach().numpy()


def predict_soft(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    logits = X @ W.T + b
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def group_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k folds of row indices; every sentence's rows land in one fold."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(unique)
    fold_of = {g: i % k for i, g in enumerate(order)}
    labels = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(labels == i) for i in range(k)]


def choose_lambda(X, P, groups, seed: int = 0) -> float:
    """The L2 strength with the lowest held-out cross-entropy over INNER_FOLDS sentence folds."""
    folds = group_folds(groups, min(INNER_FOLDS, len(np.unique(groups))), seed)
    losses = []
    for lam in LAMBDAS:
        total = 0.0
        for test in folds:
            train = np.setdiff1d(np.arange(len(X)), test)
            W, b = fit_soft(X[train], P[train], lam)
            total += -(P[test] * np.log(np.clip(predict_soft(X[test], W, b), 1e-12, None))).sum()
        losses.append(total)
    return LAMBDAS[int(np.argmin(losses))]


def cross_validate(data: DistillData, layer: int, folds: int, seed: int = 0, bar=None) -> dict:
    """Held-out scores of the distilled probe, the original, and the original with a fitted T."""
    X, P = data.features[layer], data.target
    held = {name: np.zeros_like(P) for name in ("distilled", "original probe", "original probe, fitted T")}
    lambdas = []
    for test in group_folds(data.groups, folds, seed):
        if bar is not None:
            bar.update(1)
        train = np.setdiff1d(np.arange(len(X)), test)
        lam = choose_lambda(X[train], P[train], data.groups[train], seed)
        lambdas.append(lam)
        W, b = fit_soft(X[train], P[train], lam)
        held["distilled"][test] = predict_soft(X[test], W, b)
        held["original probe"][test] = data.probe[test]
        t = metrics.fit_temperature(P[train], data.probe[train])
        held["original probe, fitted T"][test] = metrics.temper(data.probe[test], t)
    out = {"layer": layer, "lambdas": lambdas, "scores": {}}
    for name, Q in held.items():
        out["scores"][name] = {
            "kl": _ci(metrics.kl(P, Q), seed),
            "tv": _ci(metrics.total_variation(P, Q), seed),
            "brier": _ci(metrics.brier(Q, P), seed),
            "accuracy_true_label": _ci(Q.argmax(1) == data.true, seed),
        }
    return out


def _ci(values, seed: int) -> dict:
    lo, hi = metrics.bootstrap_ci(np.asarray(values, dtype=float), seed=seed)
    return {"mean": float(np.mean(values)), "ci95": [lo, hi]}


def as_estimator(W: np.ndarray, b: np.ndarray, classes: np.ndarray):
    """A fitted scikit-learn LogisticRegression carrying W and b: the scan's probe contract
    (integer UPOS classes_, predict_proba = softmax of X coef_^T + intercept_)."""
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression()
    est.classes_ = classes.astype(np.int64)
    est.n_features_in_ = W.shape[1]
    if len(classes) == 2:  # binary: one decision value, sigmoid(z1 - z0) == softmax
        est.coef_, est.intercept_ = (W[1] - W[0])[None, :], np.array([b[1] - b[0]])
    else:
        est.coef_, est.intercept_ = W, b
    est.n_iter_ = np.array([LBFGS_STEPS])
    return est


def collect(engine, scan_name, tagger_name, params_id, min_labelled: int) -> tuple[dict, DistillData, list[dict]]:
    scan, params, tagger, cands, per_candidate, _original = load(engine, scan_name, tagger_name, params_id)
    kept = [c for c in cands if per_candidate.get(c["id"], np.zeros(K)).sum() >= min_labelled]
    if len(kept) < 10:
        raise DatabaseError(
            f"{len(kept)} candidates have {min_labelled} or more labelled completions: too few to distil "
            "(label more, or lower --min-labelled)"
        )
    counts = np.stack([per_candidate[c["id"]] for c in kept])
    # grouped by text, not index: EWT dev repeats 45 sentence texts ("Debra Perlingiere" 18 times),
    # whose candidates would otherwise sit in both a training and a test fold
    data = DistillData(
        [c["id"] for c in kept],
        np.array([c["sentence_text"] for c in kept], dtype=str),
        counts / counts.sum(1, keepdims=True),
        probe_matrix(kept, list(scan["probe_classes"])),
        np.array([c["true_label"] for c in kept]),
        {},
    )
    return {"scan": scan, "params": params, "tagger": tagger}, data, kept


@torch.inference_mode()
def prefix_activations(model, prefixes: list[list[int]], layers: list[int], batch: int = 32) -> dict[int, np.ndarray]:
    """hidden_states[L] at each prefix's last token, for every layer asked (one forward per batch)."""
    from .lm import layer_activations, pad_batch

    device = next(model.parameters()).device
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for start in range(0, len(prefixes), batch):
        chunk = prefixes[start : start + batch]
        ids, mask = pad_batch(chunk, model.config.pad_token_id or 0)
        last = torch.tensor([len(p) - 1 for p in chunk])
        if len(layers) == 1:
            hidden = {layers[0]: layer_activations(model, ids.to(device), mask.to(device), layers[0])}
        else:
            states = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True, use_cache=False
            ).hidden_states
            hidden = {layer: states[layer] for layer in layers}
        for layer, h in hidden.items():
            out[layer].append(h[torch.arange(len(chunk)), last.to(device)].float().cpu().numpy())
    return {layer: np.concatenate(v) for layer, v in out.items()}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model")


def model_fingerprint(model_name: str) -> str:
    """What the cached activations depend on: the model's files, not its name. A folder (or the Hub
    snapshot it resolves to offline) is fingerprinted by config.json's bytes and each weight file's
    name, size and mtime; a name that resolves to nothing here stays a name."""
    if model_name.startswith("gguf:sha256:"):  # a GGUF file's sha256 names its weights already
        return model_name
    folder = model_name if os.path.isdir(model_name) else _snapshot(model_name)
    if folder is None:
        return model_name
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(WEIGHT_SUFFIXES) or not os.path.isfile(path):
            continue
        stat = os.stat(path)
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        if name == "config.json":
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _snapshot(model_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # not cached, not a repo id, or no huggingface_hub: the name is all there is
        return None


def cached_activations(
    model_name: str, prefixes: list[list[int]], layers: list[int], cache_dir: str | None, device: str | None
) -> dict[int, np.ndarray]:
    """Activations from cache_dir when the same model and prefixes were read before, else computed."""
    from .lm import check_layer, load_model, model_dtype, pick_device

    key = hashlib.sha256(json.dumps([model_fingerprint(model_name), prefixes]).encode()).hexdigest()[:16]
    found, missing = {}, []
    for layer in layers:
        path = os.path.join(cache_dir, f"distill-{key}-L{layer}.npz") if cache_dir else None
        if path and os.path.isfile(path):
            with np.load(path) as f:
                found[layer] = f["X"]
        else:
            missing.append(layer)
    if missing:
        model = load_model(model_name, pick_device(device))
        for layer in missing:
            check_layer(model, layer)  # one line, before any work
        log.info("reading layers %s of %s for %d prefixes (%s)", missing, model_name, len(prefixes), model_dtype(model))
        fresh = prefix_activations(model, prefixes, missing)
        for layer, X in fresh.items():
            if cache_dir:
                os.makedirs(cache_dir, exist_ok=True)
                np.savez(os.path.join(cache_dir, f"distill-{key}-L{layer}.npz"), X=X)
        found.update(fresh)
    return found


@dataclass
class DistillResult:
    probe_path: str
    sidecar_path: str
    layer_results: list[dict]  # cross_validate() per layer
    plot_path: str | None
    n_candidates: int


def run_distill(
    engine,
    output: str,
    tagger_name: str | None = None,
    scan_name: str | None = None,
    params_id: int | None = None,
    layers: list[int] | None = None,
    min_labelled: int = 20,
    folds: int = 5,
    cache_dir: str | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> DistillResult:
    from tqdm import tqdm

    from .probe import check_probe_output
    from .train_probe import save_probe, write_sidecar

    check_probe_output(output)
    meta, data, kept = collect(engine, scan_name, tagger_name, params_id, min_labelled)
    scan = meta["scan"]
    layers = layers or [scan["layer"]]
    sentences = len(np.unique(data.groups))
    if sentences < 2:
        raise DatabaseError("the labelled candidates come from one sentence: cross-validation needs two or more")
    if folds > sentences:
        raise ConfigError(
            f"--folds {folds} is more than the {sentences} sentences the labelled candidates come from: "
            f"use --folds {sentences} or fewer"
        )
    data.features = cached_activations(
        scan["model"], [list(c["prefix_token_ids"]) for c in kept], layers, cache_dir, device
    )
    with tqdm(total=len(layers) * folds, desc="cross-validate", unit="fold", disable=not progress) as bar:
        results = [cross_validate(data, layer, folds, seed, bar) for layer in layers]
    layer = layers[0]
    classes = np.flatnonzero(data.target.sum(0) > 0)  # the UPOS ids the completions ever took
    lam = choose_lambda(data.features[layer], data.target[:, classes], data.groups, seed)
    W, b = fit_soft(data.features[layer], data.target[:, classes], lam)
    sha = save_probe(as_estimator(W, b, classes), output)
    sidecar = write_sidecar(
        output,
        {
            "model": scan["model"],
            "layer": layer,
            "dtype": scan.get("dtype"),
            "sha256": sha,
            "kind": "distilled: soft-label multinomial logistic regression (torch L-BFGS, float64) on empirical UPOS "
            "distributions",
            "training_data": {
                "scan": scan["name"],
                "dataset": scan["dataset"],
                "split": scan["split"],
                "generation_params_id": meta["params"]["id"],
                "tagger": meta["tagger"]["name"],
                "candidates": len(kept),
                "min_labelled": min_labelled,
            },
            "l2": lam,
            "classes": [int(c) for c in classes],
            "label_names": [UPOS_NAMES[c] for c in classes],
            "cross_validation": {"folds": folds, "split_by": "sentence text", "layers": results},
        },
    )
    plot = layer_plot(results, os.path.splitext(output)[0] + "-layers.png") if len(layers) > 1 else None
    return DistillResult(output, sidecar, results, plot, len(kept))


def layer_plot(results: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    layers = [r["layer"] for r in results]
    for name in ("distilled", "original probe, fitted T", "original probe"):
        means = [r["scores"][name]["kl"]["mean"] for r in results]
        lows = [m - r["scores"][name]["kl"]["ci95"][0] for m, r in zip(means, results)]
        highs = [r["scores"][name]["kl"]["ci95"][1] - m for m, r in zip(means, results)]
        ax.errorbar(layers, means, yerr=[lows, highs], marker="o", capsize=3, label=name)
    ax.set(
        title="Held-out KL(empirical || prediction) by layer",
        xlabel="layer (hidden_states index)",
        ylabel="mean KL, bits (95% bootstrap CI)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
