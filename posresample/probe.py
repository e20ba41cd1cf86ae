"""Load and validate the researcher's scikit-learn probe, and apply it on the model's device."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .data import UPOS_IDS, UPOS_NAMES
from .errors import ProbeError

log = logging.getLogger(__name__)


@dataclass
class Probe:
    path: str
    sha256: str
    estimator: object
    class_ids: tuple[int, ...]  # UPOS ids, in the estimator's classes_ order
    weight: np.ndarray  # [C, D] (C == 1 for a binary probe)
    bias: np.ndarray  # [C]
    readout: str = "softmax"  # how predict_proba turns X W^T + b into probabilities: see READOUTS

    @property
    def class_names(self) -> list[str]:
        return [UPOS_NAMES[i] for i in self.class_ids]

    def to_torch(self, device) -> TorchProbe:
        return TorchProbe(self, device)


# softmax: multinomial LogisticRegression (lbfgs and the other multinomial solvers).
# ovr: one-vs-rest, as scikit-learn's _predict_proba_lr does it: sigmoid per class, rows normalised
#      (SGDClassifier(loss="log_loss"), LogisticRegression liblinear or multi_class="ovr").
# A binary probe (one decision value) is the sigmoid under both.
READOUTS = ("softmax", "ovr")
READOUT_TOLERANCE = 1e-6  # largest |ours - predict_proba| accepted


def readout_probs(logits: torch.Tensor, readout: str) -> torch.Tensor:
    """Probabilities from decision values [N, C] (C == 1: binary) the way `readout` says. -> [N, C or 2]"""
    if logits.shape[1] == 1:  # binary: sigmoid of one decision value
        positive = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - positive, positive], dim=1)
    if readout == "softmax":
        return torch.softmax(logits, dim=1)
    per_class = torch.sigmoid(logits)
    return per_class / per_class.sum(dim=1, keepdim=True)


class TorchProbe:
    """predict_proba on the GPU in float64, equal to scikit-learn's within 1e-9 (checked at load)."""

    def __init__(self, probe: Probe, device):
        self.weight = torch.as_tensor(probe.weight, dtype=torch.float64, device=device)  # [C, D]
        self.bias = torch.as_tensor(probe.bias, dtype=torch.float64, device=device)  # [C]
        self.readout = probe.readout

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        logits = features.to(torch.float64) @ self.weight.T + self.bias  # [N, C]
        return readout_probs(logits, self.readout)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a pickled linear probe may reference. A pickle can name any importable callable and call it
# on load (os.system, builtins.exec, ...): every other global is refused unless the user trusts the
# file (scan --trust-probe).
SAFE_GLOBALS = frozenset(
    {
        ("sklearn.linear_model._logistic", "LogisticRegression"),
        ("sklearn.linear_model._logistic", "LogisticRegressionCV"),
        ("sklearn.linear_model._stochastic_gradient", "SGDClassifier"),
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)
SAFE_MODULES = ("sklearn._loss._loss", "sklearn.linear_model._sgd_fast")  # SGDClassifier's loss objects


def _allowed(module: str, name: str) -> bool:
    if (module, name) in SAFE_GLOBALS:
        return True
    if module in SAFE_MODULES and name[:1].isupper():  # the Cython loss classes only, no functions
        return True
    return module.startswith("numpy.dtypes") and name.endswith("DType")  # numpy 2's dtype classes


def restricted_load(path: str):
    """joblib.load through an unpickler that only builds the classes above (a linear probe and its
    numpy arrays); anything else raises UnpicklingError naming the global, before it is called."""
    import pickle

    from joblib import numpy_pickle

    class Unpickler(numpy_pickle.NumpyUnpickler):
        def find_class(self, module, name):
            if not _allowed(module, name):
                raise pickle.UnpicklingError(f"it references {module}.{name}")
            return super().find_class(module, name)

    with open(path, "rb") as raw, numpy_pickle._validate_fileobject_and_memmap(raw, path, None) as (handle, _mmap):
        if isinstance(handle, str):  # joblib < 0.10's format, which loads companion files
            raise pickle.UnpicklingError("it is in joblib's pre-0.10 format")
        return Unpickler(path, handle, True).load()


def load_probe(path: str, trust: bool = False) -> Probe:
    """Load a joblib probe; warn on a scikit-learn version mismatch, refuse what cannot be used.

    By default only a linear classifier and its arrays are unpickled (restricted_load); `trust`
    unpickles the file as it is, which runs whatever code it names."""
    import pickle

    import joblib

    if not os.path.isfile(path):
        raise ProbeError(f"probe file not found: {path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator = joblib.load(path) if trust else restricted_load(path)
        except pickle.UnpicklingError as exc:
            if trust or not str(exc).startswith("it "):
                raise ProbeError(f"cannot load probe {path}: UnpicklingError: {exc}") from None
            raise ProbeError(
                f"probe {path} is not unpickled: {exc}, and a pickle can run code when loaded; "
                "posresample loads scikit-learn linear classifiers only, unless you trust the file "
                "(--trust-probe)"
            ) from None
        except Exception as exc:  # unpickling raises anything: EOFError, KeyError, ValueError, ...
            raise ProbeError(f"cannot load probe {path}: {type(exc).__name__}: {exc}") from None
    for warning in caught:
        if "InconsistentVersionWarning" in type(warning.message).__name__:
            log.warning("%s", version_warning(path, warning.message))
    for attr in ("coef_", "intercept_", "classes_", "predict_proba"):
        if not hasattr(estimator, attr):
            raise ProbeError(f"{path} is not a fitted linear classifier (no {attr})")
    class_ids = tuple(_class_id(c, path) for c in estimator.classes_)
    weight = np.asarray(estimator.coef_, dtype=np.float64)
    bias = np.asarray(estimator.intercept_, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[0] not in (1, len(class_ids)):
        raise ProbeError(f"{path}: coef_ shape {weight.shape} does not fit {len(class_ids)} classes")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ProbeError(f"{path}: coef_ or intercept_ holds NaN or infinite values: not a usable probe")
    return Probe(
        path=path, sha256=file_sha256(path), estimator=estimator, class_ids=class_ids, weight=weight, bias=bias
    )


def version_warning(path: str, message) -> str:
    """scikit-learn's InconsistentVersionWarning as one complete line."""
    old = getattr(message, "original_sklearn_version", None)
    new = getattr(message, "current_sklearn_version", None)
    if old is None or new is None:
        return f"probe {path}: " + " ".join(str(message).split())
    return f"probe {path} was pickled with scikit-learn {old}, running {new}: results may differ"


def _class_id(value, path: str) -> int:
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(UPOS_NAMES):
        return int(value)
    if isinstance(value, str) and value in UPOS_IDS:
        return UPOS_IDS[value]
    raise ProbeError(f"{path}: class {value!r} is neither a UPOS id (0-{len(UPOS_NAMES) - 1}) nor a UPOS tag")


def validate_probe(probe: Probe, hidden_size: int, sample: np.ndarray | None = None) -> None:
    """Features must match the model; predict_proba rows must sum to 1 within 1e-6; and the device
    read-out must reproduce predict_proba: sets `probe.readout` to the one that does, or refuses."""
    n_features = getattr(probe.estimator, "n_features_in_", probe.weight.shape[1])
    if n_features != hidden_size:
        raise ProbeError(f"probe expects {n_features} features but the model's hidden size is {hidden_size}")
    if len(set(probe.class_ids)) != len(probe.class_ids):
        raise ProbeError(f"{probe.path}: duplicate classes {probe.class_ids}")
    if sample is None:
        sample = probe_sample(probe, hidden_size)
    expected = np.asarray(probe.estimator.predict_proba(sample), dtype=np.float64)
    sums = expected.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise ProbeError(f"{probe.path}: predict_proba rows do not sum to 1 (got {sums[:4].tolist()})")
    errors = {}
    for readout in READOUTS:
        probe.readout = readout
        errors[readout] = readout_error(probe, torch.as_tensor(sample), expected)
        if errors[readout] <= READOUT_TOLERANCE:
            return
    raise ProbeError(
        f"{probe.path}: predict_proba is neither the softmax nor the one-vs-rest normalisation of "
        f"X coef_^T + intercept_ (off by {min(errors.values()):.2g}): its probabilities cannot be "
        "reproduced on the device"
    )


def probe_sample(probe: Probe, hidden_size: int, rows: int = 48) -> np.ndarray:
    """Random features whose decision values span the range where read-outs differ (|z| ~ 0.3 to 10)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, hidden_size))
    spread = float(np.std(X @ probe.weight.T)) or 1.0
    return X * np.geomspace(0.3, 10.0, rows)[:, None] / spread


def readout_error(probe: Probe, features: torch.Tensor, expected: np.ndarray) -> float:
    """Largest |device read-out - predict_proba| on these features."""
    ours = probe.to_torch("cpu").predict_proba(features.double().cpu()).numpy()
    return float(np.abs(ours - expected).max()) if ours.shape == expected.shape else float("inf")


def check_readout(probe: Probe, features: torch.Tensor, rows: int = 64) -> None:
    """On real activations (the scan's first batch): the device read-out equals predict_proba."""
    sample = features[:rows].double().cpu()
    expected = np.asarray(probe.estimator.predict_proba(sample.numpy()), dtype=np.float64)
    error = readout_error(probe, sample, expected)
    if error > READOUT_TOLERANCE:
        raise ProbeError(
            f"{probe.path}: on the model's activations the {probe.readout} read-out differs from "
            f"predict_proba by {error:.2g}"
        )


def sidecar_path(probe_path: str) -> str:
    return os.path.splitext(probe_path)[0] + ".json"


def check_probe_output(path: str) -> None:
    """Before any work: a probe output whose .json sidecar would overwrite it, a folder, or a
    place that cannot be written is refused in one line."""
    if os.path.isdir(path):
        raise ProbeError(
            f"cannot write {path}: it is a folder; give a file name such as {os.path.join(path, 'probe.joblib')}"
        )
    if os.path.abspath(sidecar_path(path)) == os.path.abspath(path):
        raise ProbeError(
            f"cannot write the probe to {path}: its .json sidecar goes to the same path; give a .joblib name"
        )
    check_writable_folder(path)


def check_writable_folder(path: str) -> None:
    """The folder `path` goes into exists (or can be made) and can be written."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # the nearest existing parent decides whether makedirs can succeed
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ProbeError(f"cannot write {path}: {folder} is not a writable folder")


def check_sidecar(probe: Probe, model: str, layer: int, dtype: str | None = None) -> None:
    """When train-probe's sidecar JSON sits beside the probe, refuse a model or layer mismatch and
    warn when the probe was fit on activations of another dtype than the scan computes."""
    path = sidecar_path(probe.path)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ProbeError(f"cannot read probe sidecar {path}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(meta, dict):
        raise ProbeError(f"probe sidecar {path} is not a JSON object (train-probe writes one): fix or remove it")
    if meta.get("sha256") not in (None, probe.sha256):
        raise ProbeError(
            f"probe sidecar {path} records another sha256 than {probe.path}: it describes another "
            "probe; remove it or put the probe it describes back"
        )
    if meta.get("model") not in (None, model):
        raise ProbeError(f"probe was trained on model {meta['model']!r} ({path}), not {model!r}")
    if meta.get("layer") not in (None, layer):
        raise ProbeError(f"probe was trained on layer {meta['layer']} ({path}), not layer {layer}")
    if dtype is not None and meta.get("dtype") not in (None, dtype):
        log.warning(
            "probe was fit on %s activations (%s) and this scan computes %s ones: probabilities "
            "near the threshold may differ",
            meta["dtype"],
            path,
            dtype,
        )
