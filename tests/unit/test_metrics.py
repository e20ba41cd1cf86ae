"""Metrics against hand-computed values on small fixed distributions."""

import numpy as np
import pytest

from posresample.stats import metrics

P = np.array([[0.5, 0.5, 0.0]])
Q = np.array([[0.25, 0.25, 0.5]])


def test_total_variation_and_brier():
    assert metrics.total_variation(P, Q)[0] == pytest.approx(0.5)  # (0.25 + 0.25 + 0.5) / 2
    assert metrics.brier(Q, P)[0] == pytest.approx(0.0625 + 0.0625 + 0.25)


def test_entropy_in_bits():
    assert metrics.entropy(P)[0] == pytest.approx(1.0)
    assert metrics.entropy(np.full((1, 4), 0.25))[0] == pytest.approx(2.0)


def test_js_divergence():
    # M = (0.375, 0.375, 0.25): JS = 0.5 KL(P||M) + 0.5 KL(Q||M)
    kl_pm = 2 * 0.5 * np.log2(0.5 / 0.375)
    kl_qm = 2 * 0.25 * np.log2(0.25 / 0.375) + 0.5 * np.log2(0.5 / 0.25)
    assert metrics.js(P, Q)[0] == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm)
    assert metrics.js(P, P)[0] == pytest.approx(0.0)
    assert metrics.js(np.array([[1.0, 0]]), np.array([[0, 1.0]]))[0] == pytest.approx(1.0)


def test_kl_on_the_probe_classes_renormalises_both():
    p = np.array([[0.45, 0.45, 0.1]])  # 0.1 outside the probe's classes 0 and 1
    q = np.array([[0.5, 0.5, 0.0]])
    assert metrics.kl_on(p, q, [0, 1])[0] == pytest.approx(0.0, abs=1e-5)
    assert metrics.kl(p, q)[0] > 1.5  # the outside mass costs log2(1 / eps) a unit over all classes
    assert metrics.js(p, p)[0] == pytest.approx(0.0, abs=1e-12)


def test_kl_smooths_the_probe_as_stated():
    eps = metrics.KL_EPSILON
    q = np.array([[1.0, 0.0]])
    p = np.array([[0.5, 0.5]])
    smoothed = (q + eps) / (1 + 2 * eps)
    expected = 0.5 * np.log2(0.5 / smoothed[0, 0]) + 0.5 * np.log2(0.5 / smoothed[0, 1])
    assert metrics.kl(p, q)[0] == pytest.approx(expected)
    assert np.isfinite(metrics.kl(p, q)[0]) and metrics.kl(p, p)[0] == pytest.approx(0.0, abs=1e-5)


def test_bootstrap_is_reproducible_and_covers_the_mean():
    values = np.random.default_rng(3).normal(1.0, 1.0, 400)
    first, again = metrics.bootstrap_ci(values, seed=7), metrics.bootstrap_ci(values, seed=7)
    assert first == again and first[0] < values.mean() < first[1]
    assert first[1] - first[0] == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.2)


def test_noise_floor_is_one_sample_against_the_reference_and_shrinks_with_n():
    q = np.array([[0.6, 0.3, 0.1]] * 2)
    rng = np.random.default_rng(0)
    floor = metrics.noise_floor(q, np.array([10, 1000]), metrics.total_variation, rng, draws=4000)
    assert floor[0] > 5 * floor[1] > 0
    # two classes at 1/2, n = 100: TV = |X/n - 1/2| with X ~ Binomial(100, 1/2), whose mean is 0.0398
    half = metrics.noise_floor(np.array([[0.5, 0.5]]), np.array([100]), metrics.total_variation, rng, draws=20000)
    assert half[0] == pytest.approx(0.0398, rel=0.03)
    se = metrics.multinomial_se(q, np.array([100, 100]))
    assert se[0, 0] == pytest.approx(np.sqrt(0.6 * 0.4 / 100))


def test_fitted_temperature_recovers_a_known_one():
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(5), size=300)
    p = metrics.temper(q, 2.5)  # the truth is the probe softened by T = 2.5
    assert metrics.fit_temperature(p, q) == pytest.approx(2.5, rel=0.02)


def test_report_offsets_are_utf16_units_as_javascript_slices():
    """A prefix with characters outside the Basic Multilingual Plane: the page's slice(s, e) of the
    text must still cut out the target word."""
    from posresample.report import utf16_examples, utf16_offsets

    text = "😀😀 From here on"
    s, e = text.index("From"), text.index("From") + 4
    s16, e16 = utf16_offsets(text, s, e)
    units = text.encode("utf-16-le")
    assert units[2 * s16 : 2 * e16].decode("utf-16-le") == "From" and (s16, e16) == (s + 2, e + 2)
    packed = utf16_examples({7: {"ADP": [[" here on", s, e], [" x", -1, -1]]}}, {7: "😀😀 From"})
    assert packed == {"7": {"ADP": [[" here on", s16, e16], [" x", -1, -1]]}}
