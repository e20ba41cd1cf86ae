"""distill on a labelled tiny-model database, end to end, on SQLite (distill only reads, through
analyze.load, which test_analyze runs on both databases)."""

import json

import numpy as np
import pytest

from posresample.distill import run_distill
from posresample.errors import DatabaseError
from posresample.label import LabelOptions, run_label
from posresample.probe import check_sidecar, load_probe, validate_probe
from posresample.scan import run_scan
from tests.helpers import NUM_SAMPLES, run_tiny_worker, scan_options

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def labelled(engine, tiny_dir, tiny_probe, sample_conllu, tiny_model, tokenizer, tiny_tagger):
    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=24), progress=False)
    run_tiny_worker(engine, tiny_model, tokenizer)
    run_label(engine, "", LabelOptions(tagger=f"spacy:{tiny_tagger}", progress=False))
    return engine


def test_distill_end_to_end(labelled, tiny_dir, tiny_model, tmp_path, monkeypatch):
    from posresample import distill

    monkeypatch.setattr(distill, "LAMBDAS", (1e-2, 1.0))  # two L2 strengths keep the nested CV quick here
    out = str(tmp_path / "distilled.joblib")
    result = run_distill(
        labelled,
        out,
        layers=[2, 1],
        min_labelled=NUM_SAMPLES,
        folds=3,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        progress=False,
    )
    assert result.n_candidates == 24 and [r["layer"] for r in result.layer_results] == [2, 1]
    for r in result.layer_results:
        assert set(r["scores"]) == {"distilled", "original probe", "original probe, fitted T"}
        for scores in r["scores"].values():
            lo, hi = scores["kl"]["ci95"]
            assert lo <= scores["kl"]["mean"] <= hi and scores["kl"]["mean"] >= 0
    probe = load_probe(out)  # the scan accepts it
    validate_probe(probe, tiny_model.config.hidden_size)
    check_sidecar(probe, tiny_dir, 2)
    meta = json.loads(open(result.sidecar_path).read())
    assert meta["training_data"]["candidates"] == 24 and meta["cross_validation"]["split_by"].startswith("sentence")
    assert open(result.plot_path, "rb").read(4) == b"\x89PNG"
    # the activations are cached: a second run does not need the model
    again = run_distill(
        labelled,
        str(tmp_path / "again.joblib"),
        layers=[2],
        min_labelled=NUM_SAMPLES,
        folds=3,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        progress=False,
    )
    assert np.isclose(
        again.layer_results[0]["scores"]["distilled"]["kl"]["mean"],
        result.layer_results[0]["scores"]["distilled"]["kl"]["mean"],
    )


def test_folds_are_sentence_texts_and_too_many_folds_are_refused(labelled, tmp_path):
    from sqlalchemy import func, select

    from posresample import db
    from posresample.errors import ConfigError
    from posresample.schema import candidates

    with db.read(labelled) as conn:
        texts = conn.execute(select(func.count(func.distinct(candidates.c.sentence_text)))).scalar_one()
    with pytest.raises(
        ConfigError, match=f"--folds 50 is more than the {texts} sentences .* use --folds {texts} or fewer"
    ):
        run_distill(labelled, str(tmp_path / "d.joblib"), min_labelled=NUM_SAMPLES, folds=50, progress=False)
    assert not (tmp_path / "d.joblib").exists()


def test_the_activation_cache_follows_the_weights_not_the_path(labelled, tiny_dir, tmp_path):
    """Same model path, new weights: the cached activations of the old weights must not be reused."""
    import os
    import shutil

    from posresample import distill, standins

    model_dir = str(tmp_path / "model")
    shutil.copytree(tiny_dir, model_dir)
    prefixes = [[2, 5, 9], [2, 7]]
    cache = str(tmp_path / "cache")
    first = distill.cached_activations(model_dir, prefixes, [2], cache, "cpu")[2]
    assert distill.cached_activations(model_dir, prefixes, [2], cache, "cpu")[2].tolist() == first.tolist()
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    standins.build_model(standins.tiny_gemma2_config(vocab), seed=1, out_dir=model_dir)  # other weights, same folder
    again = distill.cached_activations(model_dir, prefixes, [2], cache, "cpu")[2]
    assert np.abs(again - first).max() > 1e-3 and len(os.listdir(cache)) == 2


def test_distill_refuses_too_few_labelled_candidates(labelled, tmp_path):
    with pytest.raises(DatabaseError, match="too few to distil"):
        run_distill(labelled, str(tmp_path / "d.joblib"), min_labelled=NUM_SAMPLES + 1)


def test_a_layer_the_model_lacks_is_one_error_before_any_fit(labelled, tmp_path):
    from posresample.errors import ModelError

    with pytest.raises(ModelError, match="--layer 9 is out of range"):
        run_distill(
            labelled,
            str(tmp_path / "d.joblib"),
            layers=[2, 9],
            min_labelled=NUM_SAMPLES,
            folds=2,
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "d.joblib").exists()
