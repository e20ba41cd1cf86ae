"""The sampler on a real model, side by side with the seed's loop, on real prefixes (CPU or GPU).

    python bench/real_sampler.py --model study/gemma-3-270m-q4_k_m.gguf --db sqlite:///study/study.db \
        --prefixes 8 --baseline-prefixes 2 --threads 2 --variants float32,bfloat16,int8-head,int8

A real model (a .gguf file, a folder or a Hub id) and real prefixes: the first --prefixes
candidates of a scan in its queue order (a random sample of them) with --db, else prefixes cut from
UD English-EWT validation sentences. 96 samples x 16 new tokens, temperature 0.7, top-p 0.95.

  - the seed's loop: one `generate` call per prefix on 96 copies of it, in float32 (HF adds
    top_k=50 and sorts the whole vocabulary for top-p);
  - posresample's Sampler (decode hf), --per-call prefixes per call (the worker's CPU batch), once
    per --variants entry: float32 (the model's own samples), bfloat16 (`worker --dtype bfloat16`),
    and two that only this bench builds: int8 (torch's dynamic int8 quantization of every Linear,
    the head included) and int8-head (the head alone);
  - the sample phase's share of the Sampler's time (the token draws, timed around sample_tokens);
  - the floor: the prefix's matrix FLOPs (every Linear and the 262k-row head, 96 x 16 tokens) at the
    matmul rate measured here on the head's own shape, in the variant's dtype;
  - how far a variant's samples are from float32's: the share of continuations (and of first
    tokens) that come out identical under the same noise keys, and the total variation distance
    between the two models' sampling distributions (after temperature and top-p) at each of the
    16 steps of float32's own continuations (teacher-forced).

Targets on a 2-core CPU: the sample phase at most 15% of the time, the Sampler at least 6x the
loop and within 1.3x of the floor. Timings synchronise the device; a warm-up call (which also
compiles the normaliser) is timed apart.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from common import Budget, DrawTimer, add_arguments, emit, machine, set_threads, sync

from posresample.lm import load_model, load_tokenizer, model_ref, pick_device
from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

PARAMS = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=16, seed=123)
NUM_SAMPLES = 96
TARGET_SHARE, TARGET_RATIO, TARGET_FLOOR = 0.15, 6.0, 1.3
VARIANTS = ("float32", "bfloat16", "int8-head", "int8")


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


def run_sampler(sampler: Sampler, prefixes, per_call: int, deadline: float, device):
    """(prefixes done, seconds, seconds in the token draws, the samples per prefix)."""
    done, start, out = 0, time.perf_counter(), []
    with DrawTimer(device) as draws:
        for i in range(0, len(prefixes), per_call):
            chunk = prefixes[i : i + per_call]
            out += sampler.sample(
                [SampleRequest(p, i + j, tuple(range(NUM_SAMPLES))) for j, p in enumerate(chunk)], PARAMS
            )
            done += len(chunk)
            if time.monotonic() >= deadline:
                break
        sync(device)
    return done, time.perf_counter() - start, draws.seconds, out


def build_variant(ref: str, device, variant: str):
    """The model as a variant samples it: float32, bfloat16, or float32 with int8 Linears."""
    if variant == "bfloat16":
        return load_model(ref, device, dtype=torch.bfloat16)
    model = load_model(ref, device, dtype=torch.float32)
    if variant.startswith("int8"):
        from torch.ao.quantization import quantize_dynamic  # x86 int8 kernels (VNNI); CPU only

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks its eager quantization deprecated
            if variant == "int8":
                quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
            else:
                head = quantize_dynamic(torch.nn.Sequential(model.lm_head), {torch.nn.Linear}, dtype=torch.qint8)
                model.lm_head = head[0]
    return model


def matmul_rate(shape: tuple[int, int], dtype, device) -> float:
    """GFLOP/s of torch.mm at the head's shape ([V, D] weights, 4 prefixes' rows) in `dtype`."""
    head = torch.randn(*shape, device=device, dtype=dtype)
    x = torch.randn(NUM_SAMPLES * 4, shape[1], device=device, dtype=dtype)
    torch.mm(x, head.T)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        torch.mm(x, head.T)
    sync(device)
    return 3 * 2 * x.shape[0] * head.numel() / (time.perf_counter() - start) / 1e9


def identical(reference, samples) -> tuple[float, float]:
    """Shares of continuations, and of first tokens, that two samplings drew alike (same noise keys)."""
    pairs = [(a.token_ids, b.token_ids) for ra, rb in zip(reference, samples) for a, b in zip(ra, rb)]
    return sum(a == b for a, b in pairs) / len(pairs), sum(a[:1] == b[:1] for a, b in pairs) / len(pairs)


@torch.inference_mode()
def step_tv(reference_model, model, prefixes, reference, per_prefix: int = 8) -> torch.Tensor:
    """[sequences, 16]: total variation between the two models' sampling distributions (temperature,
    then top-p, by transformers' own warpers) at each step of float32's full-length continuations."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warp = LogitsProcessorList([TemperatureLogitsWarper(PARAMS.temperature), TopPLogitsWarper(PARAMS.top_p)])
    steps, out = PARAMS.max_new_tokens, []
    for prefix, samples in zip(prefixes, reference):
        full = [s.token_ids for s in samples if len(s.token_ids) == steps][:per_prefix]
        if not full:
            continue
        ids = torch.tensor([prefix + t[:-1] for t in full], device=reference_model.device)
        probs = []
        for m in (reference_model, model):
            last = torch.arange(
                ids.shape[1] - steps, ids.shape[1], device=ids.device
            )  # by index: a contiguous head input
            logits = m(input_ids=ids, logits_to_keep=last).logits.float()
            probs.append(torch.softmax(warp(ids, logits.reshape(-1, logits.shape[-1])), -1))
        out.append((0.5 * (probs[0] - probs[1]).abs().sum(-1)).reshape(len(full), steps).cpu())
    return torch.cat(out)


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
    parser.add_argument(
        "--variants",
        default="float32,bfloat16",
        help=f"comma-separated, of {','.join(VARIANTS)}; float32, the reference, always runs first",
    )
    add_arguments(parser)
    args = parser.parse_args()
    variants = ["float32"] + [v for v in args.variants.split(",") if v and v != "float32"]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    device = pick_device(args.device)
    if device.type != "cpu" and any(v.startswith("int8") for v in variants):
        parser.error("the int8 variants use torch's x86 int8 kernels: --device cpu")
    threads = set_threads(args, device.type)
    budget = Budget(args.seconds)
    ref = model_ref(args.model)
    reference_model, tokenizer = build_variant(ref, device, "float32"), load_tokenizer(ref)
    prefixes = scan_prefixes(args.db, args.prefixes + 1) if args.db else ewt_prefixes(tokenizer, args.prefixes + 1)
    emit(
        f"# real-model sampler: {reference_model.config.model_type}, vocab {reference_model.config.vocab_size}, "
        f"{machine(device)}, {threads} thread(s), {time.strftime('%Y-%m-%d')}"
    )
    emit(
        f"# {len(prefixes) - 1} prefixes of {min(map(len, prefixes))}-{max(map(len, prefixes))} tokens, "
        f"{NUM_SAMPLES} x {PARAMS.max_new_tokens}, T {PARAMS.temperature}, top-p {PARAMS.top_p}"
    )
    macs = sum(m.weight.numel() for m in reference_model.modules() if isinstance(m, torch.nn.Linear))
    flops = 2 * macs * NUM_SAMPLES * PARAMS.max_new_tokens
    head_shape = tuple(reference_model.get_output_embeddings().weight.shape)
    timed, reference = {}, None
    for n, variant in enumerate(variants):
        model = reference_model if variant == "float32" else build_variant(ref, device, variant)
        sampler = Sampler(model, tokenizer)
        start = time.perf_counter()
        run_sampler(sampler, prefixes[:1], 1, float("inf"), device)  # warm-up: compiles the normaliser
        emit(f"# {variant}: warm-up (one prefix, compiling included) {time.perf_counter() - start:.1f} s")
        deadline = budget.share(len(variants) - n + 1)
        done, seconds, draws, samples = run_sampler(sampler, prefixes[1:], args.per_call, deadline, device)
        dtype = {"bfloat16": torch.bfloat16}.get(variant, torch.float32)
        rate = None if variant.startswith("int8") else matmul_rate(head_shape, dtype, device)
        timed[variant] = (done, seconds, draws, rate)
        if variant == "float32":
            reference = samples
        else:
            tv = step_tv(reference_model, model, prefixes[1 : 1 + done], reference)
            timed[variant] += (identical(reference[:done], samples), tv)
        del sampler, model
    base_done, base_seconds = seed_loop(
        reference_model, prefixes[1 : 1 + args.baseline_prefixes], time.monotonic() + budget.left()
    )
    base_per = base_seconds / base_done
    emit("| what | prefixes | s / prefix | prefixes / s | x the loop | floor s / prefix (head mm) | x the floor |")
    emit("|---|---|---|---|---|---|---|")
    emit(
        f"| the seed's loop (`generate` per prefix on 96 copies), float32 | {base_done} | {base_per:.2f} | "
        f"{1 / base_per:.3f} | 1.0 | - | - |"
    )
    verdicts = []
    for variant, (done, seconds, draws, rate, *_) in timed.items():
        per = seconds / done
        floor = f"{flops / rate / 1e9:.2f} ({rate:.0f} GFLOP/s)" if rate else "-"
        to_floor = per / (flops / rate / 1e9) if rate else None
        emit(
            f"| Sampler (hf), {variant}, {args.per_call} prefixes per call | {done} | {per:.2f} | {1 / per:.3f} | "
            f"{base_per / per:.1f} | {floor} | {f'{to_floor:.2f}' if to_floor else '-'} |"
        )
        share, ratio = draws / seconds, base_per / per
        met = share <= TARGET_SHARE and ratio >= TARGET_RATIO and to_floor is not None and to_floor <= TARGET_FLOOR
        verdicts.append(
            f"{variant}: sample phase {share:.1%} of the Sampler's time (target <= {TARGET_SHARE:.0%}); "
            f"{ratio:.1f}x the float32 loop (target >= {TARGET_RATIO:g}x)"
            + (f"; {to_floor:.2f}x its floor (target <= {TARGET_FLOOR:g}x)" if to_floor else "; no floor measured")
            + (": all targets met" if met else ": a target missed")
        )
    for line in verdicts:
        emit(line)
    if len(timed) > 1:
        emit()
        emit(
            "| variant | continuations identical to float32's | first tokens identical | "
            "TV at the first step (mean) | TV over 16 steps (mean / 95th pct) | steps with TV > 0.1 |"
        )
        emit("|---|---|---|---|---|---|")
        for variant, (*_, (same, first), tv) in list(timed.items())[1:]:
            emit(
                f"| {variant} | {same:.1%} | {first:.1%} | {tv[:, 0].mean():.4f} | "
                f"{tv.mean():.4f} / {tv.flatten().quantile(0.95):.4f} | {(tv > 0.1).float().mean():.1%} |"
            )


if __name__ == "__main__":
    main()
