"""demo: the whole pipeline offline, on a tokenizer trained here, a random tiny Gemma 2 and a probe fit on it;
or, with a real model (a .gguf file or a folder), a probe fit on half the bundled sample and a scan of
the other half, and a random part of the candidates sampled."""

from __future__ import annotations

import logging
import os

import torch

from . import standins
from .config import DEFAULT_EXCLUDE, GenerationParams
from .data import parse_label_list, read_conllu
from .lm import load_model, load_tokenizer, model_dtype
from .scan import ScanOptions, run_scan
from .train_probe import collect_activations, fit_probe, save_probe, write_sidecar

log = logging.getLogger(__name__)
DEMO_LAYER = 2  # of the tiny model's 4
DEMO_TAGGER_STEPS = 100  # a few seconds; the sample is 24 sentences
DEMO_MIN_LABELLED = 20  # analyze's default, or every sample when fewer are drawn
REAL_MODEL_JOBS = 8  # candidates a real-model demo samples (a random part of them)


def real_model_layer(model) -> int:
    """A middle layer (Gemma 3 270M: 8 of 18), where a probe reads parts of speech best."""
    return max(1, (model.config.num_hidden_layers - 1) // 2)


def split_sample(workdir: str) -> tuple[str, str]:
    """The bundled sample's first and second halves as CoNLL-U files: the probe is fit on the first
    and the second is scanned (a probe fit on the sentences it scans is sure of every word of them)."""
    with open(standins.sample_conllu_path(), encoding="utf-8") as handle:
        blocks = [b for b in handle.read().split("\n\n") if b.strip()]
    half = len(blocks) // 2
    paths = []
    for name, part in (("fit", blocks[:half]), ("scan", blocks[half:])):
        paths.append(os.path.join(workdir, f"sample-{name}.conllu"))
        with open(paths[-1], "w", encoding="utf-8") as handle:
            handle.write("\n\n".join(part) + "\n\n")
    return paths[0], paths[1]


def build_demo_probe(
    model_dir: str, probe_path: str, layer: int = DEMO_LAYER, dataset: str | None = None, loaded=None
) -> str:
    """Fit the research recipe on the model's activations for the bundled sample (or `dataset`)."""
    exclude = parse_label_list(DEFAULT_EXCLUDE)
    dataset = dataset or standins.sample_conllu_path()
    model, tokenizer = loaded or (load_model(model_dir, torch.device("cpu")), load_tokenizer(model_dir))
    acts = collect_activations(model, tokenizer, read_conllu(dataset), layer, exclude, progress=False)
    sha = save_probe(fit_probe(acts), probe_path)
    write_sidecar(
        probe_path, {"model": model_dir, "layer": layer, "dtype": model_dtype(model), "sha256": sha, "dataset": dataset}
    )
    return probe_path


def run_demo(
    workdir: str,
    db_url: str | None,
    params: GenerationParams,
    progress: bool = True,
    model: str | None = None,
    max_jobs: int | None = None,
) -> dict:
    """The pipeline end to end. db_url: [sqlite:///WORKDIR/posresample.db]. model: a real model (a
    .gguf file, a folder or a Hub id) instead of the random tiny one; then at most `max_jobs`
    [REAL_MODEL_JOBS] candidates are sampled."""
    from . import db
    from .export import run_export
    from .lm import model_ref
    from .sampling.sampler import Sampler
    from .worker import Worker, WorkerOptions

    db_url = db_url or f"sqlite:///{os.path.join(workdir, 'posresample.db')}"
    if not db_url.startswith("sqlite:"):  # another database's URL is told before the model is built
        db.make_engine(db_url, check=False).dispose()
    if model is not None:
        model_ref(model)  # a bad .gguf is one line, before anything is built
    os.makedirs(workdir, exist_ok=True)
    if model is None:
        model_dir = standins.build_assets(os.path.join(workdir, "tiny-gemma2"))
        log.info("built a random tiny Gemma 2 and a locally trained tokenizer in %s", model_dir)
        layer, scanned = DEMO_LAYER, standins.sample_conllu_path()
        loaded = load_model(model_dir, torch.device("cpu")), load_tokenizer(model_dir)
        probe = build_demo_probe(model_dir, os.path.join(workdir, "probe.joblib"), loaded=loaded)
    else:
        model_dir = model_ref(model)  # a .gguf is converted once into the cache
        loaded = load_model(model_dir, torch.device("cpu")), load_tokenizer(model_dir)
        layer = real_model_layer(loaded[0])
        fit_on, scanned = split_sample(workdir)
        probe = build_demo_probe(model_dir, os.path.join(workdir, "probe.joblib"), layer, fit_on, loaded)
        max_jobs = REAL_MODEL_JOBS if max_jobs is None else max_jobs
    log.info("fit a probe on its layer-%d activations: %s", layer, probe)

    engine = db.open_database(db_url, create=True)
    params = GenerationParams(
        model=model_dir,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        max_new_tokens=params.max_new_tokens,
        num_samples=params.num_samples,
        seed=params.seed,
    )
    scan = run_scan(
        engine,
        ScanOptions(
            probe=probe,
            dataset=scanned,
            split="validation",
            model=model_dir,
            layer=layer,
            threshold=0.95,
            exclude=parse_label_list(DEFAULT_EXCLUDE),
            params=params,
            name="demo",
            device="cpu",
        ),
        progress=progress,
        loaded=loaded,
    )

    sampler = Sampler(*loaded)
    worker = Worker(
        engine, lambda _name: sampler, WorkerOptions(device="cpu", batch_jobs=8, progress=progress, max_jobs=max_jobs)
    )
    worker.install_signal_handlers()
    worker.run()

    out = os.path.join(workdir, "uncertain_resamples.jsonl")
    # the params just sampled: a re-run with other settings exports those (the database keeps both)
    meta = run_export(engine, out, scan_name="demo", params_id=scan.params_id, progress=progress)
    report = label_and_analyze(engine, workdir, scan.params_id, params.num_samples, progress)
    return {
        "workdir": workdir,
        "db_url": db_url,
        "model": model_dir,
        "probe": probe,
        "candidates": scan.candidates,
        "layer": layer,
        "records": meta["counts"]["records"],
        "export": out,
        "completions": worker.samples,
        **report,
    }


def label_and_analyze(engine, workdir: str, params_id: int, num_samples: int, progress: bool) -> dict:
    """A tagger trained on the bundled sample (once per workdir), label, analyze, the report."""
    from .analyze import run_analyze
    from .label import LabelOptions, run_label
    from .report import write_report
    from .train_tagger import run_train_tagger

    tagger_dir = os.path.join(workdir, "sample-tagger")
    if not os.path.isdir(tagger_dir):
        run_train_tagger(
            standins.sample_conllu_path(), tagger_dir, max_steps=DEMO_TAGGER_STEPS, max_epochs=100, progress=False
        )
        log.info("trained a spaCy tagger on the bundled sample: %s", tagger_dir)
    labelled = run_label(engine, "", LabelOptions(tagger=f"spacy:{tagger_dir}", scan="demo", progress=progress))
    result = run_analyze(engine, "demo", labelled.tagger, params_id, min_labelled=min(DEMO_MIN_LABELLED, num_samples))
    paths = write_report(result, os.path.join(workdir, "report"))
    return {"tagger": tagger_dir, "labels": labelled.summary["labels"], "report": paths["html"]}
