"""analyze on a synthetic database whose labels are drawn from known distributions, on SQLite and
PostgreSQL: the report must recover them within the noise floor; the files it writes."""

import json

import numpy as np
import pytest

from posresample.analyze import analyze
from posresample.data import UPOS_IDS
from posresample.report import write_report
from tests.helpers import seed_labelled

CLASSES = [UPOS_IDS[n] for n in ("NOUN", "VERB", "ADJ", "ADV")]


def known(n=40, seed=1):
    rng = np.random.default_rng(seed)
    truth_small = rng.dirichlet(np.full(4, 0.7), size=n)  # over the 4 probe classes
    truth = np.zeros((n, 18))
    truth[:, CLASSES] = truth_small
    return truth, truth_small


def test_the_analysis_recovers_known_distributions(engine, tmp_path):
    truth, truth_small = known()
    seed_labelled(engine, truth, truth_small, CLASSES)  # the probe says the truth itself
    a = analyze(engine, min_labelled=20)
    assert len(a.rows) == 40 and all(r["n_labelled"] == 96 for r in a.rows)
    err = np.abs(a.empirical - truth)
    se = np.sqrt(truth * (1 - truth) / 96)
    assert (err <= 4 * se + 1e-9).all()  # every share within 4 standard errors of the truth
    tv = np.array([r["tv"] for r in a.rows])
    floor = np.array([r["tv_noise_floor"] for r in a.rows])
    # a probe that is right differs from the empirical only by sampling noise
    assert tv.mean() < 1.5 * floor.mean()
    assert a.summary["baselines"]["fitted_temperature"] == pytest.approx(1.0, abs=0.3)


def test_a_miscalibrated_probe_is_found_and_recalibrated(engine, tmp_path):
    from posresample.metrics import temper

    truth, truth_small = known(n=60, seed=2)
    seed_labelled(engine, truth, temper(truth_small, 0.4), CLASSES)  # an overconfident probe
    a = analyze(engine, min_labelled=20)
    tv = a.summary["probe_vs_empirical"]["tv"]
    assert tv["ci95"][0] > 1.5 * a.summary["tv_noise_floor"]["mean"]  # a real gap, not noise
    fitted = a.summary["baselines"]["fitted_temperature"]
    assert 1.6 < fitted < 4.0  # undoes T = 0.4 (1 / 0.4 = 2.5)
    scores = a.summary["baselines"]["scores"]
    assert scores[f"probe, fitted T={fitted:.3g}"]["kl"]["mean"] < 0.5 * scores["probe"]["kl"]["mean"]
    paths = write_report(a, str(tmp_path / "report"))
    summary = json.loads(open(paths["summary"]).read())
    assert summary["candidates_analysed"] == 60
    assert open(paths["csv"]).read().count("\n") == 61
    for name in ("reliability", "scatter", "tv_hist", "per_label"):
        assert open(paths[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(paths["html"], encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 4 and "http://" not in page and "https://" not in page
