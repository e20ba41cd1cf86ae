"""The soft-label fit and the sentence folds, on synthetic data."""

import numpy as np

from posresample.distill import as_estimator, fit_soft, group_folds, predict_soft


def test_soft_label_fit_recovers_a_known_linear_model():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 8))
    W_true, b_true = rng.standard_normal((4, 8)), rng.standard_normal(4)
    P = predict_soft(X, W_true, b_true)  # the targets are distributions, not labels
    W, b = fit_soft(X, P, lam=1e-6)
    fitted = predict_soft(X, W, b)
    assert np.abs(fitted - P).max() < 0.02
    X_new = rng.standard_normal((200, 8))
    assert np.abs(predict_soft(X_new, W, b) - predict_soft(X_new, W_true, b_true)).max() < 0.05


def test_folds_never_share_a_sentence():
    groups = np.repeat(np.arange(30), np.random.default_rng(1).integers(1, 6, 30))
    folds = group_folds(groups, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    sentence_sets = [set(groups[f].tolist()) for f in folds]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not sentence_sets[i] & sentence_sets[j]


def test_candidates_of_a_repeated_sentence_text_share_a_fold(tmp_path):
    """EWT dev repeats sentence texts ("Debra Perlingiere" 18 times, at 18 dataset indexes): the
    candidates of one text must never be split between training and test folds."""
    texts = np.array(["Debra Perlingiere"] * 18 + [f"sentence {i}" for i in range(40)], dtype=str)
    folds = group_folds(texts, 5, seed=3)
    holding = [i for i, f in enumerate(folds) if (texts[f] == "Debra Perlingiere").any()]
    assert len(holding) == 1 and (texts[folds[holding[0]]] == "Debra Perlingiere").sum() == 18


def test_the_distilled_estimator_passes_the_scan_probe_checks(tmp_path):
    import joblib

    from posresample.probe import load_probe, validate_probe

    rng = np.random.default_rng(2)
    for classes in (np.array([0, 6, 16]), np.array([0, 16])):
        W, b = rng.standard_normal((len(classes), 8)), rng.standard_normal(len(classes))
        joblib.dump(as_estimator(W, b, classes), tmp_path / "d.joblib")
        probe = load_probe(str(tmp_path / "d.joblib"))
        validate_probe(probe, hidden_size=8)
        X = rng.standard_normal((5, 8))
        assert np.allclose(probe.estimator.predict_proba(X), predict_soft(X, W, b), atol=1e-9)
        assert probe.class_ids == tuple(classes.tolist())
