"""Scan speed: the whole scan stage (tokenize, first `layer` layers, probe on the device, SQLite writes).

    python bench/scan_speed.py --config tiny --device cpu
    python bench/scan_speed.py --config gemma-2-2b --device cuda      # target: 2,001 sentences < 20 s

Uses UD English-EWT validation from ../shared/data/ud_english_ewt or --ewt (CC BY-SA 4.0), a randomly
initialised Gemma2ForCausalLM (gemma-2-2b's exact config, or a tiny one), a BPE tokenizer trained
here on the train split (32k entries: about as many tokens per sentence as Gemma's own), and a
probe fit on random features of the model's width. The model is built in memory (no 5 GB
checkpoint written and read back) and handed to `run_scan`; the clock covers `run_scan` after a
warm-up: the scan a user waits for, less the model's loading. With --seconds, the scan stops after
the batch that crosses its share of the budget and the rate is over the sentences it did.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from common import REPO, Budget, add_arguments, emit, machine, set_threads

from posresample import db, lm, scan, standins
from posresample.config import GenerationParams
from posresample.data import parse_label_list, read_conllu
from posresample.train_probe import research_probe

EWT = os.environ.get("POSRESAMPLE_EWT") or os.path.join(os.path.dirname(REPO), "shared", "data", "ud_english_ewt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "gemma-2-2b"], default="tiny")
    parser.add_argument(
        "--model",
        default=None,
        help="a real model instead of --config's random one: a .gguf file, a model folder or a Hub id",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layer", type=int, default=None, help="default: 12 for gemma-2-2b, 2 for tiny, 8 for --model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=None, help="scan only the first N (default: all 2,001)")
    parser.add_argument(
        "--ewt",
        default=EWT,
        help="folder with en_ewt-ud-{train,dev}.conllu [default: $POSRESAMPLE_EWT or ../shared/data/ud_english_ewt]",
    )
    add_arguments(parser)
    args = parser.parse_args()
    budget = Budget(args.seconds)
    threads = set_threads(args, torch.device(args.device).type)

    layer = args.layer if args.layer is not None else (8 if args.model else 12 if args.config == "gemma-2-2b" else 2)
    device = torch.device(args.device)
    # the header first: a step cut by its cap while the tokenizer trains still says what it was
    emit(
        f"# {args.model or args.config}, layer {layer}, {machine(device)}, {threads} CPU threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    work = tempfile.mkdtemp(prefix="scan-bench-")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.model:  # a real model: converted once (a .gguf) and loaded as scan loads it
        model_path = lm.model_ref(args.model)
        model, tokenizer = lm.load_model(model_path, device), lm.load_tokenizer(model_path)
        config = model.config
    else:
        train = [s.text for s in read_conllu(os.path.join(args.ewt, "en_ewt-ud-train.conllu"))]
        model_path = os.path.join(work, "model")
        tokenizer = standins.build_tokenizer(model_path, vocab_size=32000, texts=train)
        config = (
            standins.gemma2_2b_config()
            if args.config == "gemma-2-2b"
            else standins.tiny_gemma2_config(vocab_size=32000)
        )
        model = standins.build_model(config, seed=0, dtype=dtype, device=device).eval()

    rng = np.random.default_rng(0)
    classes = np.array([0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17])
    probe = research_probe().fit(
        rng.standard_normal((600, config.hidden_size)) * 0.05, classes[rng.integers(0, 15, 600)]
    )
    import joblib

    joblib.dump(probe, os.path.join(work, "probe.joblib"))
    dataset = os.path.join(args.ewt, "en_ewt-ud-dev.conllu")
    if args.sentences:
        dataset = os.path.join(work, "dev.conllu")
        with open(os.path.join(args.ewt, "en_ewt-ud-dev.conllu"), encoding="utf-8") as src:
            blocks = src.read().split("\n\n")[: args.sentences]
        with open(dataset, "w", encoding="utf-8") as dst:
            dst.write("\n\n".join(blocks) + "\n\n")

    opts = scan.ScanOptions(
        probe=os.path.join(work, "probe.joblib"),
        dataset=dataset,
        split="validation",
        model=model_path,
        layer=layer,
        threshold=0.95,
        exclude=parse_label_list("_,SYM,INTJ"),
        params=GenerationParams(model="bench"),
        name="bench",
        device=args.device,
        batch_size=args.batch_size,
        stop_after_seconds=None if args.seconds is None else budget.left() * 0.8,
    )
    ids = torch.tensor([tokenizer("warm up")["input_ids"]], device=device)
    lm.layer_activations(model, ids, torch.ones_like(ids), layer)
    engine = db.make_engine(f"sqlite:///{os.path.join(work, 'scan.db')}")
    db.upgrade(engine)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = scan.run_scan(engine, opts, progress=False, loaded=(model, tokenizer))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n = result.scan["sentences_done"]
    tokens = result.scan["tokens_seen"]
    emit(
        f"{n} sentences, {tokens} labelled tokens, {result.candidates} candidates in {seconds:.1f} s "
        f"({n / seconds:.0f} sentences/s; all {result.scan['sentences_total']} at this rate: "
        f"{result.scan['sentences_total'] * seconds / max(n, 1):.1f} s), model built in memory, its load not included"
    )


if __name__ == "__main__":
    main()
