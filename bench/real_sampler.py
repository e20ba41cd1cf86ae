"""The sampler on a real model, side by side with the seed's loop, on real prefixes (CPU or GPU).

    python bench/real_sampler.py --model study/gemma-3-270m-q4_k_m.gguf --db sqlite:///study/study.db \
        --prefixes 8 --baseline-prefixes 2 --threads 2

A real model (a .gguf file, a folder or a Hub id) and real prefixes: the first --prefixes
candidates of a scan in its queue order (a random sample of them) with --db, else prefixes cut from
UD English-EWT validation sentences. 96 samples x 16 new tokens, temperature 0.7, top-p 0.95.

  - the seed's loop: one `generate` call per prefix on 96 copies of it (HF adds top_k=50 and sorts
    the whole vocabulary for top-p);
  - posresample's Sampler (decode hf), --per-call prefixes per call (the worker's CPU batch);
  - the sample phase's share of the Sampler's time (the token draws, timed around sample_tokens);
  - the floor: the prefix's matrix FLOPs (every Linear and the 262k-row head, 96 x 16 tokens) at the
    float32 matmul rate measured here on the head's own shape.

Targets on a 2-core CPU: the sample phase at most 15% of the time, the Sampler at least 6x the
loop and within 1.3x of the floor. Timings synchronise the device; a warm-up call (which also
compiles the normaliser) is timed apart.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Budget, DrawTimer, add_arguments, emit, machine, set_threads, sync

from posresample.lm import load_model, load_tokenizer, model_ref, pick_device
from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

PARAMS = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=16, seed=123)
NUM_SAMPLES = 96
TARGET_SHARE, TARGET_RATIO, TARGET_FLOOR = 0.15, 6.0, 1.3


def scan_prefixes(db_url: str, n: int) -> list[list[int]]:
    from sqlalchemy import select

    from posresample import db
    from posresample.schema import candidates, jobs

    with db.read(db.make_engine(db_url)) as conn:
        rows = conn.execute(
            select(candidates.c.prefix_token_ids)
            .join(jobs, jobs.c.candidate_id == candidates.c.id)
            .order_by(jobs.c.priority, jobs.c.id)
            .limit(n)
        ).scalars()
        return [list(r) for r in rows]


def ewt_prefixes(tokenizer, n: int) -> list[list[int]]:
    from posresample.data import load_sentences

    sentences = load_sentences("../shared/data/ud_english_ewt", "validation")
    out = []
    for s in sentences[::37]:
        ids = tokenizer(s.text).input_ids
        if len(ids) > 8:
            out.append(ids[: len(ids) // 2])
        if len(out) == n:
            break
    return out


@torch.inference_mode()
def seed_loop(model, prefixes, deadline: float) -> tuple[int, float]:
    done, start = 0, time.perf_counter()
    for prefix in prefixes:
        ids = torch.tensor([prefix], device=model.device).repeat(NUM_SAMPLES, 1)
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=PARAMS.temperature,
            top_p=PARAMS.top_p,
            max_new_tokens=PARAMS.max_new_tokens,
            pad_token_id=0,
        )
        done += 1
        if time.monotonic() >= deadline:
            break
    sync(model.device)
    return done, time.perf_counter() - start


def run_sampler(sampler: Sampler, prefixes, per_call: int, deadline: float, device) -> tuple[int, float, float]:
    done, start = 0, time.perf_counter()
    with DrawTimer(device) as draws:
        for i in range(0, len(prefixes), per_call):
            chunk = prefixes[i : i + per_call]
            sampler.sample([SampleRequest(p, i + j, tuple(range(NUM_SAMPLES))) for j, p in enumerate(chunk)], PARAMS)
            done += len(chunk)
            if time.monotonic() >= deadline:
                break
        sync(device)
    return done, time.perf_counter() - start, draws.seconds


def matmul_floor(model, device) -> tuple[float, float]:
    """(seconds per prefix at the measured float32 matmul rate, that rate in GFLOP/s)."""
    macs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    flops = 2 * macs * NUM_SAMPLES * PARAMS.max_new_tokens
    head = model.get_output_embeddings().weight  # [V, D]
    x = torch.randn(NUM_SAMPLES * 4, head.shape[1], device=device, dtype=head.dtype)
    torch.mm(x, head.T)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        torch.mm(x, head.T)
    sync(device)
    rate = 3 * 2 * x.shape[0] * head.numel() / (time.perf_counter() - start)
    return flops / rate, rate / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a .gguf file, a model folder or a Hub id")
    parser.add_argument("--db", default=None, help="take the prefixes from this scan's queue (else EWT validation)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--baseline-prefixes", type=int, default=2)
    parser.add_argument(
        "--per-call", type=int, default=4, help="prefixes per Sampler call (the worker's CPU --batch-jobs)"
    )
    add_arguments(parser)
    args = parser.parse_args()
    device = pick_device(args.device)
    threads = set_threads(args, device.type)
    budget = Budget(args.seconds)
    ref = model_ref(args.model)
    model, tokenizer = load_model(ref, device), load_tokenizer(ref)
    prefixes = scan_prefixes(args.db, args.prefixes + 1) if args.db else ewt_prefixes(tokenizer, args.prefixes + 1)
    emit(
        f"# real-model sampler: {model.config.model_type}, vocab {model.config.vocab_size}, {machine(device)}, "
        f"{threads} thread(s), {time.strftime('%Y-%m-%d')}"
    )
    emit(
        f"# {len(prefixes) - 1} prefixes of {min(map(len, prefixes))}-{max(map(len, prefixes))} tokens, "
        f"{NUM_SAMPLES} x {PARAMS.max_new_tokens}, T {PARAMS.temperature}, top-p {PARAMS.top_p}"
    )
    sampler = Sampler(model, tokenizer)
    start = time.perf_counter()
    run_sampler(sampler, prefixes[:1], 1, float("inf"), device)  # warm-up: compiles the normaliser
    emit(f"# warm-up (one prefix, compiling included): {time.perf_counter() - start:.1f} s")
    done, seconds, draws = run_sampler(
        sampler, prefixes[1:], args.per_call, time.monotonic() + budget.left() / 2, device
    )
    floor, gflops = matmul_floor(model, device)
    base_done, base_seconds = seed_loop(
        model, prefixes[1 : 1 + args.baseline_prefixes], time.monotonic() + budget.left()
    )
    per, base_per = seconds / done, base_seconds / base_done
    emit("| what | prefixes | s / prefix | prefixes / s |")
    emit("|---|---|---|---|")
    emit(
        f"| the seed's loop (`generate` per prefix on 96 copies) | {base_done} | {base_per:.2f} | {1 / base_per:.3f} |"
    )
    emit(f"| Sampler (hf), {args.per_call} prefixes per call | {done} | {per:.2f} | {1 / per:.3f} |")
    emit(
        f"| floor: matrix FLOPs at {gflops:.0f} GFLOP/s (float32 mm, the head's shape) | - | {floor:.2f} | "
        f"{1 / floor:.3f} |"
    )
    share, ratio, to_floor = draws / seconds, base_per / per, per / floor
    emit(
        f"sample phase {share:.1%} of the Sampler's time (target <= {TARGET_SHARE:.0%}); {ratio:.1f}x the loop "
        f"(target >= {TARGET_RATIO:g}x); {to_floor:.2f}x the floor (target <= {TARGET_FLOOR:g}x): "
        + (
            "all targets met"
            if share <= TARGET_SHARE and ratio >= TARGET_RATIO and to_floor <= TARGET_FLOOR
            else "a target missed"
        )
    )


if __name__ == "__main__":
    main()
