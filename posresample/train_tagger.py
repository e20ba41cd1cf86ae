"""train-tagger: a spaCy UPOS tagger (tok2vec + morphologizer) trained here on UD, offline.

No pretrained weights: `spacy init config --pipeline morphologizer --optimize efficiency` builds a
small CNN tok2vec from scratch. Multiword tokens stay split, with no space between their parts
("do" + "n't"), which is what UPOS needs. Training is capped (`max_steps`, `max_epochs`): spaCy's
own limits never finish on 2 cores; it keeps the best model on dev. Accuracy is measured on gold
tokens and on raw text through the span lookup `label` uses, and written to a sidecar JSON.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_TAGGER_MAX_EPOCHS, DEFAULT_TAGGER_MAX_STEPS
from .data import UPOS_NAMES, Sentence, load_sentences, word_spans
from .errors import DatasetError
from .stats.confusion import Confusion
from .tagger import SpacyTagger, sidecar_path

log = logging.getLogger(__name__)
HELD_OUT_EVERY = 10  # given one .conllu file: every 10th sentence is held out for evaluation


@dataclass
class TaggerTrainResult:
    model_dir: str
    sidecar: str
    accuracy: dict  # {split: {"gold_tokens": acc, "raw_text": acc, "words": n}}
    sources: dict  # what was trained and evaluated on


def splits_for(dataset: str) -> tuple[list[Sentence], dict[str, list[Sentence]], dict]:
    """(train, {eval name: sentences}, description). One .conllu file: a held-out tenth of it."""
    if os.path.isfile(dataset):
        sentences = load_sentences(dataset, split=None)  # the whole file: a tenth is held out below
        train = [s for s in sentences if s.idx % HELD_OUT_EVERY]
        held = [s for s in sentences if not s.idx % HELD_OUT_EVERY]
        if not train or not held:
            raise DatasetError(f"{dataset} has too few sentences to hold out a tenth")
        return (
            train,
            {"dev": held},
            {"train": f"{dataset} (9 of every 10 sentences)", "dev": f"{dataset} (every 10th sentence, held out)"},
        )
    train = load_sentences(dataset, "train")
    evals = {"dev": load_sentences(dataset, "validation")}
    with contextlib.suppress(DatasetError):
        evals["test"] = load_sentences(dataset, "test")
    return train, evals, {"train": f"{dataset} train", **{k: f"{dataset} {k}" for k in evals}}


def aligned(sentences: list[Sentence]):
    """(sentence, each word's span in `# text`) for the sentences whose every word was found in the
    text (for the others the spacing, and so the tokenization, cannot be known)."""
    for s in sentences:
        spans = word_spans(s.text, s.words)
        if s.words and all(span is not None for span in spans):
            yield s, spans


def to_docs(vocab, sentences: list[Sentence]):
    """spaCy Docs with the UD words, their spacing in `# text`, and their UPOS."""
    from spacy.tokens import Doc

    return [
        Doc(
            vocab,
            words=[w for w, _ in s.words],
            spaces=[end < len(s.text) and s.text[end].isspace() for _, end in spans],
            pos=[UPOS_NAMES[u] for _, u in s.words],
        )
        for s, spans in aligned(sentences)
    ]


def run_train_tagger(
    dataset: str,
    out_dir: str,
    max_steps: int = DEFAULT_TAGGER_MAX_STEPS,
    max_epochs: int = DEFAULT_TAGGER_MAX_EPOCHS,
    seed: int = 0,
    progress: bool = True,
) -> TaggerTrainResult:
    import spacy
    from spacy.tokens import DocBin

    train, evals, sources = splits_for(dataset)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DatasetError(f"{out_dir} exists and is not an empty folder: give a new folder")
    _check_writable(out_dir)
    vocab = spacy.blank("en").vocab
    with tempfile.TemporaryDirectory(prefix="posresample-tagger-") as work:
        paths = {}
        for name, sentences in (("train", train), ("dev", evals["dev"])):
            paths[name] = os.path.join(work, f"{name}.spacy")
            DocBin(docs=to_docs(vocab, sentences), store_user_data=False).to_disk(paths[name])
        best = _run_spacy_training(paths, os.path.join(work, "out"), max_steps, max_epochs, seed, progress)
        os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
        shutil.copytree(best, out_dir, dirs_exist_ok=True)
    tagger = SpacyTagger(f"spacy:{out_dir}", out_dir)
    accuracy = {name: evaluate(tagger, sentences, f"{sources[name]}, raw text") for name, sentences in evals.items()}
    confusion = accuracy["dev"].pop("confusion")  # the one the analysis corrects with: held-out dev words
    for acc in accuracy.values():
        acc.pop("confusion", None)
    sidecar = write_sidecar(out_dir, accuracy, confusion, sources, len(train), max_steps, max_epochs, seed)
    return TaggerTrainResult(out_dir, sidecar, accuracy, sources)


def _check_writable(out_dir: str) -> None:
    """Before 25 minutes of training: the folder and its sidecar can be written."""
    from .errors import ProbeError, TaggerError
    from .probe import check_writable_folder

    try:
        check_writable_folder(os.path.join(out_dir, "x"))
        check_writable_folder(os.path.normpath(out_dir) + ".json")
    except ProbeError as exc:
        raise TaggerError(str(exc)) from None


def _run_spacy_training(paths: dict, output: str, max_steps: int, max_epochs: int, seed: int, progress: bool) -> str:
    from spacy import util
    from spacy.cli.init_config import init_config
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import train as train_loop

    config = init_config(lang="en", pipeline=["morphologizer"], optimize="efficiency", gpu=False, silent=True)
    overrides = {
        "paths.train": paths["train"],
        "paths.dev": paths["dev"],
        "training.max_steps": max_steps,
        "training.max_epochs": max_epochs,
        "system.seed": seed,
        "training.eval_frequency": max(1, min(200, max_steps // 5)),
    }
    config = util.load_config_from_str(config.to_str(), overrides=overrides, interpolate=False)
    # spaCy's table of losses and scores goes to stderr (stdout is for data), or nowhere
    stream = sys.stderr if progress else open(os.devnull, "w")
    try:
        with contextlib.redirect_stdout(stream):
            nlp = init_nlp(config, use_gpu=-1)
            os.makedirs(output, exist_ok=True)
            train_loop(nlp, Path(output), use_gpu=-1, stdout=stream, stderr=stream)
    finally:
        if stream is not sys.stderr:
            stream.close()
    return os.path.join(output, "model-best")


def raw_text_pairs(tagger, sentences: list[Sentence], progress: bool = False) -> tuple[list[int], list, int]:
    """(true UPOS ids, the tagger's results, words) for every word of the sentences, tagged on raw
    text through the span lookup `label` uses (the tagger's own tokenization)."""
    pairs = [(s.text, span, upos) for s, spans in aligned(sentences) for span, (_form, upos) in zip(spans, s.words)]
    results = tagger.tag([text for text, _, _ in pairs], [span for _, span, _ in pairs], progress=progress)
    return [upos for _, _, upos in pairs], results, len(pairs)


def confusion_of(true: list[int], results, source: str) -> Confusion:
    """The confusion over the words the tagger labelled (status ok), with the same counts per word
    type (the tagger's token, as `label` records it); the others are counted apart."""
    ok = [(t, r) for t, r in zip(true, results) if r.status == "ok"]
    return Confusion.from_pairs([t for t, _ in ok], [r.upos for _, r in ok], source, words=[r.word for _, r in ok])


def evaluate(tagger: SpacyTagger, sentences: list[Sentence], source: str = "held-out words") -> dict:
    """UPOS accuracy on gold tokens (the pipeline on the UD words) and on raw text (the span lookup
    `label` uses), and the raw-text confusion (true UPOS -> the tagger's)."""
    docs = to_docs(tagger.nlp.vocab, sentences)
    gold = [[t.pos_ for t in doc] for doc in docs]  # read before the pipeline overwrites them
    gold_right = sum(t.pos_ == g for doc, tags in zip(tagger.nlp.pipe(docs), gold) for t, g in zip(doc, tags))
    true, results, total = raw_text_pairs(tagger, sentences)
    raw_right = sum(r.upos == upos for r, upos in zip(results, true))
    return {
        "gold_tokens": round(gold_right / total, 4) if total else None,
        "raw_text": round(raw_right / total, 4) if total else None,
        "words": total,
        "unlabelled": sum(r.status != "ok" for r in results),
        "confusion": confusion_of(true, results, source).to_json(),
    }


def write_sidecar(
    out_dir: str,
    accuracy: dict,
    confusion: dict,
    sources: dict,
    n_train: int,
    max_steps: int,
    max_epochs: int,
    seed: int,
) -> str:
    import json

    import spacy

    from .export import package_versions

    path = sidecar_path(out_dir)
    meta = {
        "tagger": out_dir,
        "library": "spacy",
        "pipeline": ["tok2vec", "morphologizer"],
        "optimize": "efficiency",
        "sources": sources,
        "train_sentences": n_train,
        "max_steps": max_steps,
        "max_epochs": max_epochs,
        "seed": seed,
        "accuracy": accuracy,
        "confusion": confusion,
        "package_versions": package_versions() | {"spacy": spacy.__version__},
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
        handle.write("\n")
    return path


def evaluate_tagger(tagger, dataset: str, split: str, progress: bool = False) -> tuple[dict, Confusion]:
    """Any tagger on one split's raw text: ({accuracy, words, unlabelled}, its confusion)."""
    sentences = load_sentences(dataset, split)
    true, results, total = raw_text_pairs(tagger, sentences, progress)
    if not total:
        raise DatasetError(f"{dataset} {split}: no sentence whose words all align with its text")
    right = sum(r.upos == upos for r, upos in zip(results, true))
    source = f"{dataset} {split}, raw text, tagger {tagger.spec}"
    return (
        {
            "raw_text": round(right / total, 4),
            "words": total,
            "unlabelled": sum(r.status != "ok" for r in results),
            "split": split,
            "dataset": dataset,
        },
        confusion_of(true, results, source),
    )


def run_evaluate_tagger(
    engine,
    tagger_spec: str,
    tagger_name: str | None,
    dataset: str,
    split: str,
    output: str | None = None,
    progress: bool = True,
):
    """Measure a tagger's confusion on a treebank's raw text, store it with the tagger (registered
    if new) and, with `output`, write it as JSON. -> (tagger name, accuracy, Confusion)"""
    import json

    from . import label_store
    from .export import check_output
    from .tagger import load_tagger

    if output:
        check_output(output)
    tagger = load_tagger(tagger_spec, tagger_name)
    accuracy, confusion = evaluate_tagger(tagger, dataset, split, progress=progress)
    tagger_id = label_store.register_tagger(engine, tagger.identity())
    label_store.set_confusion(engine, tagger_id, confusion.to_json(), {split: accuracy})
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            json.dump(confusion.to_json(), handle, indent=1)
            handle.write("\n")
    return tagger.name, accuracy, confusion
