"""demo: the whole pipeline offline, on a tokenizer trained here, a random tiny Gemma 2 and a probe fit on it."""

from __future__ import annotations

import logging
import os

import torch

from . import tiny
from .config import DEFAULT_EXCLUDE, GenerationParams
from .data import parse_label_list, read_conllu
from .modeling import load_model, load_tokenizer, model_dtype
from .scan import ScanOptions, run_scan
from .train import collect_activations, fit_probe, save_probe, write_sidecar

log = logging.getLogger(__name__)
DEMO_LAYER = 2  # of the tiny model's 4
DEMO_TAGGER_STEPS = 100  # a few seconds; the sample is 24 sentences
DEMO_MIN_LABELLED = 20  # analyze's default, or every sample when fewer are drawn


def build_demo_probe(model_dir: str, probe_path: str, layer: int = DEMO_LAYER) -> str:
    """Fit the research recipe on the tiny model's activations for the bundled sample."""
    exclude = parse_label_list(DEFAULT_EXCLUDE)
    model = load_model(model_dir, torch.device("cpu"))
    sentences = read_conllu(tiny.sample_conllu_path())
    acts = collect_activations(model, load_tokenizer(model_dir), sentences, layer, exclude, progress=False)
    sha = save_probe(fit_probe(acts), probe_path)
    write_sidecar(probe_path, {"model": model_dir, "layer": layer, "dtype": model_dtype(model), "sha256": sha,
                               "dataset": tiny.sample_conllu_path()})
    return probe_path


def run_demo(workdir: str, engine_factory, params: GenerationParams, progress: bool = True) -> dict:
    from .export import export
    from .sampler import Sampler
    from .worker import Worker, WorkerOptions

    os.makedirs(workdir, exist_ok=True)
    model_dir = tiny.build_assets(os.path.join(workdir, "tiny-gemma2"))
    log.info("built a random tiny Gemma 2 and a locally trained tokenizer in %s", model_dir)
    probe = build_demo_probe(model_dir, os.path.join(workdir, "probe.joblib"))
    log.info("fit a probe on its layer-%d activations: %s", DEMO_LAYER, probe)

    engine = engine_factory()
    params = GenerationParams(model=model_dir, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                              max_new_tokens=params.max_new_tokens, num_samples=params.num_samples, seed=params.seed)
    scan = run_scan(engine, ScanOptions(
        probe=probe, dataset=tiny.sample_conllu_path(), split="validation", model=model_dir, layer=DEMO_LAYER,
        threshold=0.95, exclude=parse_label_list(DEFAULT_EXCLUDE), params=params, name="demo", device="cpu"),
        progress=progress)

    sampler = Sampler(load_model(model_dir, torch.device("cpu")), load_tokenizer(model_dir))
    worker = Worker(engine, lambda _name: sampler, WorkerOptions(device="cpu", batch_jobs=8, progress=progress))
    worker.install_signal_handlers()
    worker.run()

    out = os.path.join(workdir, "uncertain_resamples.jsonl")
    # the params just sampled: a re-run with other settings exports those (the database keeps both)
    meta = export(engine, out, scan_name="demo", params_id=scan.params_id, progress=progress)
    report = label_and_analyze(engine, workdir, scan.params_id, params.num_samples, progress)
    return {"workdir": workdir, "model": model_dir, "probe": probe, "candidates": scan.candidates,
            "records": meta["counts"]["records"], "export": out, "completions": worker.samples, **report}


def label_and_analyze(engine, workdir: str, params_id: int, num_samples: int, progress: bool) -> dict:
    """A tagger trained on the bundled sample (once per workdir), label, analyze, the report."""
    from .analyze import analyze
    from .label import LabelOptions, run_label
    from .report import write_report
    from .train_tagger import train_tagger

    tagger_dir = os.path.join(workdir, "sample-tagger")
    if not os.path.isdir(tagger_dir):
        train_tagger(tiny.sample_conllu_path(), tagger_dir, max_steps=DEMO_TAGGER_STEPS, max_epochs=100, progress=False)
        log.info("trained a spaCy tagger on the bundled sample: %s", tagger_dir)
    labelled = run_label(engine, "", LabelOptions(tagger=f"spacy:{tagger_dir}", scan="demo", progress=progress))
    result = analyze(engine, "demo", labelled.tagger, params_id, min_labelled=min(DEMO_MIN_LABELLED, num_samples))
    paths = write_report(result, os.path.join(workdir, "report"))
    return {"tagger": tagger_dir, "labels": labelled.summary["labels"], "report": paths["html"]}
