"""How often a sample changes with the batch it was drawn in.

    python bench/batch_invariance.py --config tiny --device cpu --dtype float32
    python bench/batch_invariance.py --config tiny --device cpu --dtype bfloat16
    python bench/batch_invariance.py --config gemma-2-2b --device cuda --dtype bfloat16 --peaked

Noise is keyed by (seed, job, sample, step), so a sample can only change with its batch through
the logits: a different batch shape (other prefixes, other left padding, rows split by an
out-of-memory halving) runs other kernels and reduction orders, which move the last bits. This
samples N prefixes of varied lengths x 96 samples with the same seed and keys three ways: each
prefix alone; all of them in one call; all of them with max_rows 48 (every job split in two, as
an OOM halving does), and counts the samples whose tokens differ from the alone run. For scale,
it also compares the decode paths with each other on the same batch (other attention arithmetic).
With --seconds, each variant uses as many of the N prefixes as its share of the budget allows
(the alone runs dominate: they stop at half the share) and the table says how many.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Budget, add_arguments, emit, machine, set_threads
from sampler_speed import add_model_arguments, make_model

from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams


def varied_prefixes(n: int, vocab: int, shortest: int = 6, longest: int = 40) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(shortest, longest + 1, (n,), generator=gen).tolist()
    return [[2] + torch.randint(3, vocab, (length - 1,), generator=gen).tolist() for length in lengths]


def tokens(sampler: Sampler, requests: list[SampleRequest], params: SamplingParams) -> list[list[list[int]]]:
    return [[s.token_ids for s in out] for out in sampler.sample(requests, params)]


def compare(reference, other) -> tuple[float, float, float]:
    """Share of samples that differ, share whose first token differs, mean first differing step."""
    pairs = [(a, b) for ra, rb in zip(reference, other) for a, b in zip(ra, rb)]
    differ = [(a, b) for a, b in pairs if a != b]
    first = sum(a[:1] != b[:1] for a, b in pairs)
    steps = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in differ]
    return len(differ) / len(pairs), first / len(pairs), (sum(steps) / len(steps) if steps else float("nan"))


@torch.inference_mode()
def prefill_logit_delta(model, prefixes: list[list[int]]) -> float:
    """max |logit alone - logit in one left-padded batch| over the prefixes' next-token logits: the
    size of what a batch shape moves, which is what can flip a draw."""
    from transformers import DynamicCache

    sampler = Sampler(model)
    ids, mask = sampler._left_pad(prefixes)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = sampler._forward(ids, mask, positions, DynamicCache(config=model.config)).float()
    delta = 0.0
    for row, prefix in enumerate(prefixes):
        one, one_mask = sampler._left_pad([prefix])
        alone = sampler._forward(
            one, one_mask, (one_mask.cumsum(-1) - 1).clamp(min=0), DynamicCache(config=model.config)
        )
        delta = max(delta, float((alone[0].float() - batched[row]).abs().max()))
    return delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="[default: bfloat16 on a GPU, float32 on the CPU, as the worker loads]",
    )
    parser.add_argument("--prefixes", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--peaked", action="store_true", help="peaked next-token distributions, as a trained model has")
    parser.add_argument(
        "--decode", default="hf,fast", help="sampler variants: hf, fast, fast:inductor, fast:cuda-graph"
    )
    add_arguments(parser)
    args = parser.parse_args()

    budget = Budget(args.seconds)
    device = torch.device(args.device)
    threads = set_threads(args, device.type)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    args.config = args.model or args.config
    model = make_model(args.config, device, "eager", args.peaked, dtype)
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=args.max_new_tokens, seed=123)
    prefixes = varied_prefixes(args.prefixes, model.config.vocab_size)
    requests = [SampleRequest(p, key=i, sample_indices=tuple(range(args.num_samples))) for i, p in enumerate(prefixes)]
    emit(
        f"# {args.config}, {next(model.parameters()).dtype}, {machine(device)}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, {threads} CPU threads, {'peaked' if args.peaked else 'flat (random)'} "
        "distributions, "
        f"{len(prefixes)} prefixes of {min(map(len, prefixes))}-{max(map(len, prefixes))} tokens x "
        f"{args.num_samples} samples x {args.max_new_tokens} tokens"
    )
    emit(f"max |logit alone - logit batched| at prefill: {prefill_logit_delta(model, prefixes):.3g}")
    emit(
        "| variant | batching vs alone | prefixes | samples that differ | first token differs | mean first differing "
        "step |"
    )
    emit("|---|---|---|---|---|---|")
    together = {}
    variants = args.decode.split(",")
    for i, variant in enumerate(variants):
        decode, compile_mode = (variant.split(":") + ["off"])[:2]

        def make(max_rows=None):
            return Sampler(model, max_rows=max_rows, decode=decode, compile=compile_mode)

        deadline = budget.share(len(variants) - i)
        halfway = time.monotonic() + (deadline - time.monotonic()) / 2
        alone = []
        for r in requests:  # at least one; the batched runs below take the prefixes done alone
            alone.append(tokens(make(), [r], params)[0])
            if time.monotonic() >= halfway:
                break
        used = requests[: len(alone)]
        together[variant] = tokens(make(), used, params)
        runs = {
            "all prefixes in one call": together[variant],
            "max_rows 48 (each job split)": tokens(make(48), used, params),
        }
        for name, run in runs.items():
            row(variant, name, len(used), compare(alone, run))
    done = list(together)
    for other in done[1:]:  # the size of a change of kernels, for scale: another decode path, same batch
        n = min(len(together[done[0]]), len(together[other]))
        row(f"{other} vs {done[0]}", "all prefixes in one call", n, compare(together[done[0]][:n], together[other][:n]))


def row(variant: str, batching: str, prefixes: int, result: tuple[float, float, float]) -> None:
    differ, first, step = result
    emit(
        f"| {variant} | {batching} | {prefixes} | {differ:.2%} | {first:.2%} | "
        f"{'-' if step != step else f'{step:.1f}'} |"
    )


if __name__ == "__main__":
    main()
