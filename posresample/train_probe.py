"""train-probe: activations for every labelled token, then the research recipe's LogisticRegression."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from .data import UPOS_NAMES, Sentence, tokenize_with_labels
from .lm import layer_activations, model_ref, pad_batch

log = logging.getLogger(__name__)
ACTIVATION_BATCH = 32  # sentences per forward pass


@dataclass
class Activations:
    X: np.ndarray  # [N, D] float32
    y: np.ndarray  # [N] UPOS ids
    positions: np.ndarray  # [N, 2]: (sentence index in the split, token position)


@torch.inference_mode()
def collect_activations(
    model,
    tokenizer,
    sentences: list[Sentence],
    layer: int,
    exclude: tuple[int, ...] = (),
    batch_size: int = ACTIVATION_BATCH,
    progress: bool = True,
) -> Activations:
    """hidden_states[layer] of every token with a label not in `exclude` (same alignment as scan)."""
    device = next(model.parameters()).device
    xs, ys, where = [], [], []
    for start in tqdm(range(0, len(sentences), batch_size), desc="activations", unit="batch", disable=not progress):
        batch = sentences[start : start + batch_size]
        encoded = [tokenize_with_labels(tokenizer, s) for s in batch]
        ids, mask = pad_batch([e.input_ids for e in encoded], tokenizer.pad_token_id or 0)
        hidden = layer_activations(model, ids.to(device), mask.to(device), layer).float().cpu()  # [B, T, D]
        for row, (sentence, e) in enumerate(zip(batch, encoded)):
            for pos, label in enumerate(e.labels):
                if label is not None and label not in exclude:
                    xs.append(hidden[row, pos].numpy())
                    ys.append(label)
                    where.append((sentence.idx, pos))
    dim = model.config.hidden_size
    return Activations(
        X=np.stack(xs).astype(np.float32) if xs else np.zeros((0, dim), np.float32),
        y=np.asarray(ys, dtype=np.int64),
        positions=np.asarray(where, dtype=np.int64).reshape(-1, 2),
    )


def research_probe(seed: int = 0):
    """LogisticRegression(C=1.0, max_iter=500, class_weight='balanced', solver='lbfgs'), multinomial.

    scikit-learn >= 1.8 removed `multi_class` (lbfgs is multinomial anyway): pass it only where it exists.
    """
    from sklearn.linear_model import LogisticRegression

    kwargs = dict(C=1.0, max_iter=500, class_weight="balanced", solver="lbfgs", random_state=seed)
    if "multi_class" in inspect.signature(LogisticRegression).parameters:
        kwargs["multi_class"] = "multinomial"
    return LogisticRegression(**kwargs)


def fit_probe(acts: Activations, seed: int = 0):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    probe = research_probe(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 500 iterations is the recipe, converged or not
        probe.fit(acts.X, acts.y)
    return probe


def evaluate(probe, acts: Activations) -> tuple[float, str]:
    from sklearn.metrics import classification_report

    if len(acts.y) == 0:
        return float("nan"), "(no tokens)"
    known = np.isin(acts.y, probe.classes_)
    pred = probe.predict(acts.X[known])
    accuracy = float((pred == acts.y[known]).mean()) if known.any() else float("nan")
    labels = sorted(set(acts.y[known].tolist()) | set(pred.tolist()))
    report = classification_report(
        acts.y[known], pred, labels=labels, target_names=[UPOS_NAMES[i] for i in labels], zero_division=0
    )
    return accuracy, report


def write_sidecar(probe_path: str, meta: dict) -> str:
    from .probe import sidecar_path

    path = sidecar_path(probe_path)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
        handle.write("\n")
    return path


def save_probe(probe, path: str) -> str:
    import joblib

    from .probe import file_sha256

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    joblib.dump(probe, path)
    return file_sha256(path)


@dataclass
class TrainOptions:
    dataset: str
    split: str
    eval_split: str | None  # None: validation where the dataset has one (eval_source); "": no evaluation
    model: str
    layer: int
    exclude: tuple[int, ...]
    output: str
    max_sentences: int | None = None
    cache_dir: str | None = None
    device: str | None = None
    attn: str = "auto"
    batch_size: int = ACTIVATION_BATCH


@dataclass
class TrainResult:
    probe_path: str
    sidecar_path: str
    accuracy: float | None
    report: str
    n_train: int
    classes: list[int]
    eval_split: str | None = None


def _cache_key(opts: TrainOptions, split: str) -> str:
    from .scan_store import canonical

    return canonical(
        {
            "model": opts.model,
            "layer": opts.layer,
            "dtype": _dtype(opts),
            "dataset": os.path.abspath(opts.dataset) if os.path.exists(opts.dataset) else opts.dataset,
            "split": split,
            "exclude": list(opts.exclude),
            "max_sentences": opts.max_sentences,
        }
    )


def _dtype(opts: TrainOptions) -> str:
    """The dtype the activations are computed in (the model loads in it on this device)."""
    from .lm import default_dtype, dtype_name, pick_device

    return dtype_name(default_dtype(pick_device(opts.device)))


def _cached(opts: TrainOptions, split: str, compute) -> Activations:
    """Activations from `cache_dir/<split>-L<layer>.npz` when its key matches, else computed (and saved)."""
    if not opts.cache_dir:
        return compute()
    path = os.path.join(opts.cache_dir, f"{split}-L{opts.layer}.npz")
    key = _cache_key(opts, split)
    if os.path.isfile(path):
        with np.load(path) as data:
            if "key" in data and str(data["key"]) == key:
                log.info("activations for %s from cache %s", split, path)
                return Activations(X=data["X"], y=data["y"], positions=data["positions"])
        log.info("cache %s was made with other settings: recomputing", path)
    acts = compute()
    os.makedirs(opts.cache_dir, exist_ok=True)
    np.savez(path, X=acts.X, y=acts.y, positions=acts.positions, key=np.asarray(key))
    return acts


def eval_source_for(dataset: str, eval_split: str | None) -> tuple[str, str | None]:
    """Where the held-out accuracy is measured: (dataset, split), or (dataset, None) for nowhere.

    A folder or a Hub id holds every split. One .conllu file holds one: in the UD layout
    (`*-ud-train.conllu`) the file of the eval split beside it is used; otherwise there is nothing
    held out, which the default notes and an explicit --eval-split refuses."""
    from .data import SPLIT_FILE_SUFFIX
    from .errors import DatasetError

    if eval_split == "":
        return dataset, None
    explicit, split = eval_split is not None, eval_split or "validation"
    if split not in SPLIT_FILE_SUFFIX:
        raise DatasetError(f"--eval-split {split!r}: use train, validation or test ('' for none)")
    if not os.path.isfile(dataset):
        return dataset, split
    named = re.search(r"-ud-(train|dev|test)\.conllu$", os.path.basename(dataset))
    name = os.path.basename(dataset)
    beside = (
        os.path.join(os.path.dirname(dataset), name[: named.start()] + f"-ud-{SPLIT_FILE_SUFFIX[split]}.conllu")
        if named
        else None
    )
    if beside and os.path.isfile(beside):
        return beside, split
    why = (
        f"{dataset} is one split and no {os.path.basename(beside)} lies beside it"
        if beside
        else f"{dataset} is one split, not a UD treebank's file"
    )
    if explicit:
        raise DatasetError(f"--eval-split {split}: {why}; pass the treebank's folder, or --eval-split ''")
    log.info("no held-out evaluation: %s (pass the treebank's folder to evaluate on %s)", why, split)
    return dataset, None


def run_train_probe(opts: TrainOptions, progress: bool = True) -> TrainResult:
    """Activations (or the cache) -> research-recipe probe -> joblib + sidecar JSON."""
    from .data import load_sentences
    from .errors import DatasetError
    from .export import package_versions
    from .lm import check_layer, load_model, load_tokenizer, pick_device
    from .probe import check_probe_output

    check_probe_output(opts.output)  # before the model and the fit: a bad output is told at once
    opts = replace(opts, model=model_ref(opts.model))  # a .gguf is recorded (sidecar, cache key) by its sha256
    train_sents = load_sentences(opts.dataset, opts.split)[: opts.max_sentences]
    eval_source, eval_split = eval_source_for(opts.dataset, opts.eval_split)
    opts = replace(opts, eval_split=eval_split)
    eval_sents = load_sentences(eval_source, eval_split) if eval_split else []
    loaded = {}

    def model_and_tokenizer():
        if not loaded:
            loaded["tok"] = load_tokenizer(opts.model)
            loaded["model"] = load_model(opts.model, pick_device(opts.device), opts.attn)
            check_layer(loaded["model"], opts.layer)
        return loaded["model"], loaded["tok"]

    def compute(sentences):
        return lambda: collect_activations(
            *model_and_tokenizer(), sentences, opts.layer, opts.exclude, opts.batch_size, progress
        )

    train = _cached(opts, opts.split, compute(train_sents))
    if len(set(train.y.tolist())) < 2:
        raise DatasetError(f"{opts.split} has fewer than two labels after excluding {opts.exclude}: nothing to fit")
    log.info("fitting LogisticRegression on %d tokens x %d features", *train.X.shape)
    probe = fit_probe(train)
    accuracy, report = (None, "")
    if eval_sents:
        accuracy, report = evaluate(probe, _cached(opts, opts.eval_split, compute(eval_sents)))
    sha = save_probe(probe, opts.output)
    meta = {
        "model": opts.model,
        "layer": opts.layer,
        "dtype": _dtype(opts),
        "dataset": opts.dataset,
        "split": opts.split,
        "eval_split": opts.eval_split,
        "max_sentences": opts.max_sentences,
        "classes": [int(c) for c in probe.classes_],
        "label_names": [UPOS_NAMES[int(c)] for c in probe.classes_],
        "excluded_labels": [UPOS_NAMES[i] for i in opts.exclude],
        "n_train_tokens": int(len(train.y)),
        "eval_accuracy": accuracy,
        "recipe": {k: v for k, v in probe.get_params().items() if k in ("C", "max_iter", "class_weight", "solver")},
        "package_versions": package_versions(),
        "sha256": sha,
    }
    sidecar = write_sidecar(opts.output, meta)
    return TrainResult(opts.output, sidecar, accuracy, report, int(len(train.y)), meta["classes"], opts.eval_split)
