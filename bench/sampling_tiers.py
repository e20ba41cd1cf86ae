"""Token sampling alone: what the second prefilter tier saves on rows with a wide nucleus.

    python bench/sampling_tiers.py --device cpu
    python bench/sampling_tiers.py --device cuda --rows 1024

Synthetic logits over gemma-2-2b's vocabulary (256,000), N(0, scale^2) per token, so the nucleus
(temperature 0.7, top-p 0.95) ranges from a handful of tokens (scale 4) through hundreds or
thousands (3, 2.5) to most of the vocabulary (0.3, what random weights give). For each scale it
times `sample_tokens` with the tiers 256 -> 4096 -> whole vocabulary (the default) and with 256 ->
whole vocabulary (no second tier), checks that both draw the same tokens, and prints ms per 1,000
rows and how many rows ended in each tier. Then, at temperature 1.0 and top-p 1.0 (every token kept:
the estimand's untempered comparison), it times `sample_tokens`' one race over the raw logits
against the general path it takes at any other top-p (the tiers: the top 256 and 4,096 tried and
found short, then the whole row divided, its float64 normaliser and probabilities, the race over
them), and checks they draw the same tokens.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Budget, add_arguments, emit, machine, set_threads

from posresample.sampling.draw import (
    DEFAULT_PREFILTER,
    WIDE_PREFILTER,
    _kept,
    apply_temperature_top_k,
    race,
    race_vocabulary,
    row_hash,
    sample_tokens,
)


def nucleus_sizes(logits: torch.Tensor) -> torch.Tensor:
    probs = apply_temperature_top_k(logits, 0.7, None).softmax(-1).sort(-1, descending=True).values
    return ((probs.cumsum(-1) - probs) < 0.95).sum(-1)


def timed(device, fn, repeat: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=256000)
    parser.add_argument("--repeat", type=int, default=3)
    add_arguments(parser)
    args = parser.parse_args()
    budget = Budget(args.seconds)
    device = torch.device(args.device)
    threads = set_threads(args, device.type)
    gen = torch.Generator().manual_seed(0)
    rows = row_hash(123, torch.arange(args.rows), torch.zeros(args.rows, dtype=torch.long), 0).to(device)
    emit(
        f"# {args.rows} rows x {args.vocab} tokens on {machine(device)}, {threads} CPU threads, torch "
        f"{torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    emit(
        "| logit scale | nucleus min / median / max | rows in 256 / 4096 / all | ms per 1k rows, 256 -> 4096 -> all "
        "| ms per 1k rows, 256 -> all | speed-up | same tokens |"
    )
    emit("|---|---|---|---|---|---|---|")
    for scale in (4.0, 3.0, 2.5, 0.3):
        if budget.spent():
            emit(f"# budget spent: scales from {scale} on not measured")
            break
        logits = (torch.randn(args.rows, args.vocab, generator=gen) * scale).to(device)
        sizes = nucleus_sizes(logits).cpu()
        tiers = [
            int((sizes <= DEFAULT_PREFILTER).sum()),
            int(((sizes > DEFAULT_PREFILTER) & (sizes <= WIDE_PREFILTER)).sum()),
            int((sizes > WIDE_PREFILTER).sum()),
        ]
        tiered_s, tiered = timed(device, lambda: sample_tokens(logits, rows, 0.7, 0.95), args.repeat)
        plain_s, plain = timed(
            device, lambda: sample_tokens(logits, rows, 0.7, 0.95, wide_prefilter=DEFAULT_PREFILTER), args.repeat
        )
        per_k = 1000 / args.rows * 1000
        emit(
            f"| {scale} | {int(sizes.min())} / {int(sizes.median())} / {int(sizes.max())} | "
            f"{' / '.join(map(str, tiers))} "
            f"| {tiered_s * per_k:.1f} | {plain_s * per_k:.1f} | {plain_s / tiered_s:.1f}x | "
            f"{torch.equal(tiered, plain)} |"
        )
    emit("")
    emit(
        "| logit scale | top-p 1: ms per 1k rows, one race over the raw logits | the general path | speed-up "
        "| same tokens |"
    )
    emit("|---|---|---|---|---|")
    for scale in (4.0, 0.3):
        if budget.spent():
            break
        logits = (torch.randn(args.rows, args.vocab, generator=gen) * scale).to(device)
        fast_s, fast = timed(device, lambda: sample_tokens(logits, rows, 1.0, 1.0), args.repeat)

        def general():  # what sample_tokens does at any other top-p: the tiers, then a race over their kept set
            chosen = torch.empty(len(logits), dtype=torch.long)
            for which, ids, probs in _kept(logits, 1.0, 1.0, None, DEFAULT_PREFILTER, WIDE_PREFILTER):
                picks = rows if which is None else rows[which]
                drawn = race_vocabulary(probs, picks) if ids is None else race(probs, ids, picks, logits.shape[-1])
                if which is None:
                    return drawn
                chosen[which] = drawn
            return chosen

        general_s, slow = timed(device, general, args.repeat)
        per_k = 1000 / args.rows * 1000
        emit(
            f"| {scale} | {fast_s * per_k:.1f} | {general_s * per_k:.1f} | {general_s / fast_s:.1f}x | "
            f"{torch.equal(fast, slow)} |"
        )


if __name__ == "__main__":
    main()
