"""train-probe on the tiny model: the recipe, the sidecar, the cache, and a scan driven by the result."""

import json

import joblib
import numpy as np
import pytest

from posresample.data import UPOS_IDS, parse_label_list, read_conllu, read_parquet
from posresample.train_probe import TrainOptions, research_probe, run_train_probe

EXCLUDED = {UPOS_IDS["_"], UPOS_IDS["SYM"], UPOS_IDS["INTJ"]}


def options(tiny_dir, dataset, out, **kw):
    base = dict(
        dataset=dataset,
        split="validation",
        eval_split=None,
        model=tiny_dir,
        layer=2,
        exclude=parse_label_list("_,SYM,INTJ"),
        output=str(out),
        device="cpu",
    )
    base.update(kw)
    return TrainOptions(**base)


def test_recipe_parameters():
    params = research_probe().get_params()
    assert (params["C"], params["max_iter"], params["class_weight"], params["solver"]) == (
        1.0,
        500,
        "balanced",
        "lbfgs",
    )


def test_fixture_probe_excludes_labels_writes_sidecar_and_drives_a_scan(tiny_dir, sample_conllu, tmp_path, engine):
    from posresample.config import GenerationParams
    from posresample.scan import ScanOptions, run_scan

    sentences = read_conllu(sample_conllu)
    assert {UPOS_IDS["SYM"], UPOS_IDS["INTJ"]} <= {label for s in sentences for _, label in s.words}  # really excluded
    result = run_train_probe(options(tiny_dir, sample_conllu, tmp_path / "p.joblib"), progress=False)
    probe = joblib.load(result.probe_path)
    assert probe.classes_.dtype.kind == "i" and not EXCLUDED & set(probe.classes_.tolist())
    assert list(probe.classes_) == sorted(probe.classes_)
    meta = json.loads(open(result.sidecar_path).read())
    from posresample.probe import file_sha256

    assert (meta["model"], meta["layer"], meta["sha256"]) == (tiny_dir, 2, file_sha256(result.probe_path))
    assert meta["classes"] == probe.classes_.tolist() and meta["excluded_labels"] == ["_", "SYM", "INTJ"]
    assert "scikit-learn" in meta["package_versions"]

    scan = run_scan(
        engine,
        ScanOptions(
            probe=result.probe_path,
            dataset=sample_conllu,
            split="validation",
            model=tiny_dir,
            layer=2,
            threshold=0.95,
            exclude=parse_label_list("_,SYM,INTJ"),
            params=GenerationParams(model=tiny_dir),
            name="p",
            device="cpu",
        ),
        progress=False,
    )
    assert scan.candidates > 0


def test_cached_activations_give_the_same_probe(tiny_dir, sample_conllu, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    direct = run_train_probe(options(tiny_dir, sample_conllu, tmp_path / "a.joblib"), progress=False)
    first = run_train_probe(
        options(tiny_dir, sample_conllu, tmp_path / "b.joblib", cache_dir=str(cache)), progress=False
    )
    assert sorted(p.name for p in cache.iterdir()) == ["validation-L2.npz"]

    import posresample.train_probe as train_mod

    def no_model(*_a, **_k):
        raise AssertionError("the model ran although the cache matched")

    monkeypatch.setattr(train_mod, "collect_activations", no_model)
    cached = run_train_probe(
        options(tiny_dir, sample_conllu, tmp_path / "c.joblib", cache_dir=str(cache)), progress=False
    )
    coefs = [joblib.load(r.probe_path).coef_ for r in (direct, first, cached)]
    assert np.allclose(coefs[0], coefs[1]) and np.array_equal(coefs[1], coefs[2])
    with pytest.raises(AssertionError, match="the model ran"):  # another layer does not reuse the cache
        run_train_probe(
            options(tiny_dir, sample_conllu, tmp_path / "d.joblib", cache_dir=str(cache), layer=1), progress=False
        )


@pytest.mark.shared_data
def test_train_on_a_slice_of_ewt(tiny_dir, shared_ewt, tmp_path):
    """Uses ../shared/data/ud_english_ewt (UD English-EWT, CC BY-SA 4.0)."""
    result = run_train_probe(
        options(tiny_dir, str(shared_ewt), tmp_path / "p.joblib", split="train", eval_split="test", max_sentences=60),
        progress=False,
    )
    probe = joblib.load(result.probe_path)
    assert not EXCLUDED & set(probe.classes_.tolist()) and len(probe.classes_) >= 10
    assert 0.0 < result.accuracy <= 1.0 and "NOUN" in result.report


@pytest.mark.shared_data
def test_hf_parquet_and_conllu_agree_on_ewt_dev(shared_ewt, tmp_path):
    """Uses ../shared/data/ud_english_ewt: the dev file rewritten in the HF parquet schema reads back the same."""
    import conllu
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    with open(shared_ewt / "en_ewt-ud-dev.conllu", encoding="utf-8") as handle:
        for tl in conllu.parse_incr(handle):
            rows.append(
                {
                    "idx": tl.metadata["sent_id"],
                    "text": tl.metadata["text"],
                    "tokens": [t["form"] for t in tl],
                    "upos": [
                        UPOS_IDS[t["upos"] or "_"] if isinstance(t["id"], int) or t["id"][1] == "." else UPOS_IDS["_"]
                        for t in tl
                    ],
                    "head": [
                        str(t["head"]) if isinstance(t["id"], int) else ("None" if t["id"][1] == "-" else "_")
                        for t in tl
                    ],
                }
            )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    ours = read_conllu(str(shared_ewt / "en_ewt-ud-dev.conllu"))
    theirs = read_parquet([str(tmp_path / "validation.parquet")])
    assert len(ours) == len(theirs) == 2001
    assert [(s.sent_id, s.text, s.words) for s in ours] == [(s.sent_id, s.text, s.words) for s in theirs]
