"""Probe loading and validation: research-style integer classes, string classes, bad files."""

import json

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from posresample.errors import ProbeError
from posresample.probe import check_sidecar, load_probe, validate_probe

RESEARCH_CLASSES = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17]


def fitted(classes, dim=16, n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    y = np.asarray(classes)[rng.integers(0, len(classes), n)]
    return LogisticRegression(max_iter=200).fit(X, y), X


def test_research_probe_loads_with_integer_classes(tmp_path):
    est, X = fitted(RESEARCH_CLASSES)
    joblib.dump(est, tmp_path / "p.joblib")
    probe = load_probe(str(tmp_path / "p.joblib"))
    assert probe.class_ids == tuple(RESEARCH_CLASSES)
    assert probe.class_names[:3] == ["NOUN", "PUNCT", "ADP"]
    validate_probe(probe, hidden_size=16)
    assert len(probe.sha256) == 64


def test_string_classes_map_to_hf_ids(tmp_path):
    est, _ = fitted(["NOUN", "VERB", "DET"])
    joblib.dump(est, tmp_path / "p.joblib")
    assert load_probe(str(tmp_path / "p.joblib")).class_ids == (8, 0, 16)  # classes_ sorted by name: DET NOUN VERB


def test_torch_probe_equals_predict_proba(tmp_path):
    est, X = fitted(RESEARCH_CLASSES, dim=32)
    joblib.dump(est, tmp_path / "p.joblib")
    probe = load_probe(str(tmp_path / "p.joblib"))
    ours = probe.to_torch("cpu").predict_proba(torch.tensor(X, dtype=torch.float32)).numpy()
    assert np.allclose(ours, est.predict_proba(X.astype(np.float32)), atol=1e-9, rtol=0)


def test_binary_probe_probabilities(tmp_path):
    est, X = fitted([0, 16])
    joblib.dump(est, tmp_path / "p.joblib")
    probe = load_probe(str(tmp_path / "p.joblib"))
    ours = probe.to_torch("cpu").predict_proba(torch.tensor(X)).numpy()
    assert np.allclose(ours, est.predict_proba(X), atol=1e-9)


def test_wrong_feature_count_is_refused(tmp_path):
    est, _ = fitted(RESEARCH_CLASSES, dim=16)
    joblib.dump(est, tmp_path / "p.joblib")
    with pytest.raises(ProbeError, match="expects 16 features but the model's hidden size is 64"):
        validate_probe(load_probe(str(tmp_path / "p.joblib")), hidden_size=64)


def test_missing_corrupt_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(ProbeError, match="not found"):
        load_probe(str(tmp_path / "none.joblib"))
    (tmp_path / "corrupt.joblib").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ProbeError, match="cannot load probe"):
        load_probe(str(tmp_path / "corrupt.joblib"))
    joblib.dump({"not": "a probe"}, tmp_path / "dict.joblib")
    with pytest.raises(ProbeError, match="not a fitted linear classifier"):
        load_probe(str(tmp_path / "dict.joblib"))


def test_unknown_class_is_refused(tmp_path):
    est, _ = fitted([0, 1, 42])
    joblib.dump(est, tmp_path / "p.joblib")
    with pytest.raises(ProbeError, match="neither a UPOS id"):
        load_probe(str(tmp_path / "p.joblib"))


def test_probabilities_that_do_not_sum_to_one_are_refused(tmp_path):
    est, X = fitted(RESEARCH_CLASSES)
    broken = BrokenProbe(max_iter=200).fit(X, est.predict(X))
    joblib.dump(broken, tmp_path / "p.joblib")
    with pytest.raises(ProbeError, match="do not sum to 1"):  # a subclass of the test's: trusted to unpickle
        validate_probe(load_probe(str(tmp_path / "p.joblib"), trust=True), hidden_size=16)


def test_sidecar_mismatch_is_refused(tmp_path):
    est, _ = fitted(RESEARCH_CLASSES)
    joblib.dump(est, tmp_path / "p.joblib")
    probe = load_probe(str(tmp_path / "p.joblib"))
    (tmp_path / "p.json").write_text(json.dumps({"model": "google/gemma-2-2b", "layer": 12}))
    check_sidecar(probe, "google/gemma-2-2b", 12)
    with pytest.raises(ProbeError, match="layer 12"):
        check_sidecar(probe, "google/gemma-2-2b", 6)
    with pytest.raises(ProbeError, match="model"):
        check_sidecar(probe, "other/model", 12)


def test_a_malformed_or_contradicting_sidecar_is_one_error(tmp_path):
    est, _ = fitted(RESEARCH_CLASSES)
    joblib.dump(est, tmp_path / "p.joblib")
    probe = load_probe(str(tmp_path / "p.joblib"))
    side = tmp_path / "p.json"
    for content, message in (
        (b"[1, 2]", "is not a JSON object"),
        (b'"layer 12"', "is not a JSON object"),
        (b"\xff\xfe{", "cannot read probe sidecar"),
        (b"{nope", "cannot read probe sidecar"),
        (json.dumps({"layer": 6, "sha256": "0" * 64}).encode(), "records another sha256"),
    ):
        side.write_bytes(content)
        with pytest.raises(ProbeError, match=message):
            check_sidecar(probe, "google/gemma-2-2b", 12)
    side.write_text(json.dumps({"layer": 12, "sha256": probe.sha256}))
    check_sidecar(probe, "google/gemma-2-2b", 12)


def test_version_mismatch_warns_but_loads(tmp_path, caplog):
    import pickle

    est, _ = fitted(RESEARCH_CLASSES)
    state = est.__getstate__()
    state["_sklearn_version"] = "0.24.2"  # as if pickled by an old scikit-learn
    with open(tmp_path / "old.joblib", "wb") as handle:
        pickle.dump(_Reduced(est, state), handle)
    probe = load_probe(str(tmp_path / "old.joblib"))
    assert probe.class_ids == tuple(RESEARCH_CLASSES)
    assert "0.24.2" in caplog.text


class BrokenProbe(LogisticRegression):
    def predict_proba(self, X):
        return np.full((len(X), len(self.classes_)), 0.5)


class _Reduced:
    """Pickles an estimator with a chosen state, as another scikit-learn version would have written it."""

    def __init__(self, est, state):
        self.est, self.state = est, state

    def __reduce__(self):
        return (LogisticRegression, (), self.state)


def probes_of_every_kind():
    """A multinomial, a one-vs-rest and a binary probe, each with its own predict_proba."""
    from sklearn.linear_model import SGDClassifier

    multinomial, X = fitted(RESEARCH_CLASSES[:5])
    ovr = SGDClassifier(loss="log_loss", max_iter=50, tol=None, random_state=0).fit(X, multinomial.predict(X))
    binary, _ = fitted([0, 16])
    return {"softmax": multinomial, "ovr": ovr, "binary": binary}, X


@pytest.mark.parametrize("kind", ["softmax", "ovr", "binary"])
def test_device_read_out_equals_predict_proba_for_every_kind_of_probe(tmp_path, kind):
    est = probes_of_every_kind()[0][kind]
    joblib.dump(est, tmp_path / "p.joblib")
    probe = load_probe(str(tmp_path / "p.joblib"))
    validate_probe(probe, hidden_size=16)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 16)) * 3  # decision values well into the range where OvR and softmax differ
    ours = probe.to_torch("cpu").predict_proba(torch.tensor(X)).numpy()
    assert np.abs(ours - est.predict_proba(X)).max() < 1e-9
    if kind == "ovr":
        assert probe.readout == "ovr"
        softmax = torch.softmax(torch.tensor(X @ probe.weight.T + probe.bias), 1).numpy()
        assert np.abs(softmax - ours).max() > 0.05  # the case the read-out check exists for


def test_a_probe_whose_probabilities_no_read_out_reproduces_is_refused(tmp_path):
    est, X = fitted(RESEARCH_CLASSES[:4])
    joblib.dump(TemperedProbe(max_iter=200).fit(X, est.predict(X)), tmp_path / "p.joblib")
    with pytest.raises(ProbeError, match="neither the softmax nor the one-vs-rest"):
        validate_probe(load_probe(str(tmp_path / "p.joblib"), trust=True), hidden_size=16)


def test_version_mismatch_warning_is_one_complete_line(tmp_path, caplog):
    import pickle

    est, _ = fitted(RESEARCH_CLASSES)
    state = est.__getstate__()
    state["_sklearn_version"] = "0.24.2"
    with open(tmp_path / "old.joblib", "wb") as handle:
        pickle.dump(_Reduced(est, state), handle)
    load_probe(str(tmp_path / "old.joblib"))
    import sklearn

    lines = [r.getMessage() for r in caplog.records if "0.24.2" in r.getMessage()]
    assert lines == [
        f"probe {tmp_path / 'old.joblib'} was pickled with scikit-learn 0.24.2, "
        f"running {sklearn.__version__}: results may differ"
    ]


class TemperedProbe(LogisticRegression):
    """predict_proba = softmax(z / 2): sums to 1, but is not what coef_ and intercept_ say."""

    def predict_proba(self, X):
        z = self.decision_function(X) / 2
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


class _RunsCode:
    """A 'probe' whose unpickling runs a shell command, as a crafted file would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_before_the_code_runs(tmp_path):
    marker = tmp_path / "pwned"
    joblib.dump(_RunsCode(marker), tmp_path / "evil.joblib")
    with pytest.raises(ProbeError, match=r"references posix\.system, and a pickle can run code.*--trust-probe"):
        load_probe(str(tmp_path / "evil.joblib"))
    assert not marker.exists()
    from sklearn.pipeline import make_pipeline

    est, X = fitted(RESEARCH_CLASSES[:4])
    joblib.dump(make_pipeline(LogisticRegression(max_iter=200)).fit(X, est.predict(X)), tmp_path / "pipe.joblib")
    with pytest.raises(ProbeError, match="sklearn.pipeline.Pipeline"):  # not code, but not a probe we unpickle
        load_probe(str(tmp_path / "pipe.joblib"))


@pytest.mark.parametrize("compress", [0, 3])
def test_every_kind_of_linear_probe_loads_without_trust(tmp_path, compress):
    for kind, est in probes_of_every_kind()[0].items():
        joblib.dump(est, tmp_path / "p.joblib", compress=compress)
        assert load_probe(str(tmp_path / "p.joblib")).class_ids == tuple(int(c) for c in est.classes_), kind


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_probe_with_non_finite_coefficients_is_refused_at_load(tmp_path, bad):
    est, _ = fitted(RESEARCH_CLASSES)
    est.coef_[3, 5] = bad
    joblib.dump(est, tmp_path / "p.joblib")
    with pytest.raises(ProbeError, match=f"{tmp_path / 'p.joblib'}: coef_ or intercept_ holds NaN or infinite"):
        load_probe(str(tmp_path / "p.joblib"))
