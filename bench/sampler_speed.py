"""Sampler speed: the design's per-prefix `generate` loop against posresample's sampler, one process.

    python bench/sampler_speed.py --config tiny --device cpu --prefixes 32 --baseline-prefixes 8 --peaked
    python bench/sampler_speed.py --config gemma-2-2b --device cuda --prefixes 512 --baseline-prefixes 16 --peaked \
        --decode hf,fast,fast:cuda-graph --seconds 120

Both run on a randomly initialised Gemma2ForCausalLM (gemma-2-2b's exact config: same FLOPs and
bytes, no download; or a tiny one for the CPU), on the same random prefixes of --prefix-len tokens,
96 samples x 16 new tokens, temperature 0.7, top-p 0.95. The baseline is one `generate` call per
prefix on 96 copies of it (HF adds top_k=50 there; it only makes the baseline cheaper). Timings
synchronise the device before reading the clock; a warm-up pass (and any compiling) is timed apart.
With --seconds, the budget left after the model is built is shared out: the generate loop and each
variant measure as many prefixes as fit their share (at least one call) and report what they did.
The last line says whether the GPU target (>= 50 prefixes/s, >= 40x the loop) was met; the
"token draws" column is the share of each variant's time spent drawing tokens (at gemma-2-2b's
256,000-token vocabulary on the GPU: whether the draw or the matmuls bound a step).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from common import Budget, DrawTimer, add_arguments, emit, machine, set_threads

from posresample import standins
from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

TARGET_PER_SECOND = 50  # prefixes/s on one H100/H200 at gemma-2-2b's shapes
TARGET_RATIO = 40  # x the per-prefix generate loop in the same run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CONFIGS = ("tiny", "gemma-2-2b")


def add_model_arguments(parser) -> None:
    parser.add_argument("--config", choices=CONFIGS, default="tiny", help="random weights at these shapes")
    parser.add_argument(
        "--model",
        default=None,
        help="a real model instead of --config's random one: a .gguf file "
        "(converted once into the cache), a model folder or a Hub id",
    )


def make_model(name: str, device: torch.device, attn: str, peaked: bool, dtype: torch.dtype | None = None):
    """Random weights at a config's shapes (bf16 on a GPU and float32 on the CPU unless dtype says
    otherwise); or, where `name` is none of CONFIGS, the real model it names (`peaked` is moot)."""
    if name not in CONFIGS:
        from posresample.lm import load_model, model_ref

        model = load_model(model_ref(name), device)
        model.config._attn_implementation = attn
        return model.eval()
    config = standins.gemma2_2b_config() if name == "gemma-2-2b" else standins.tiny_gemma2_config(vocab_size=4096)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = standins.build_model(config, seed=0, dtype=dtype, device=device)
    if peaked:
        # Random weights give near-uniform next-token distributions, whose 95% nucleus spans most of
        # the vocabulary (every row takes the exact full-vocabulary path). A trained model's is
        # usually a few dozen tokens: scale the final norm (same FLOPs) to get peaked distributions.
        with torch.no_grad():
            model.model.norm.weight.fill_(30.0)
    model.config._attn_implementation = attn
    return model.to(device).eval()


def random_prefixes(n: int, length: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [[2] + torch.randint(3, vocab, (length - 1,), generator=gen).tolist() for _ in range(n)]


@torch.inference_mode()
def run_generate(model, prefixes, params: SamplingParams, num_samples: int, deadline: float) -> tuple[int, int]:
    """The design's baseline, one prefix at a time until `deadline`. -> (prefixes done, tokens)."""
    tokens = done = 0
    for prefix in prefixes:
        with torch.inference_mode():
            ids = torch.tensor([prefix], device=model.device).repeat(num_samples, 1)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                max_new_tokens=params.max_new_tokens,
                pad_token_id=0,
            )
            tokens += (out[:, ids.shape[1] :] != 0).sum().item()
        done += 1
        if time.monotonic() >= deadline:
            break
    return done, tokens


def run_sampler(
    sampler: Sampler,
    prefixes,
    params: SamplingParams,
    num_samples: int,
    per_call: int,
    deadline: float = float("inf"),
    seconds_per_prefix: float = 0.0,
) -> tuple[int, int]:
    """Sampler.sample on `per_call` prefixes at a time until `deadline`. -> (prefixes done, tokens).

    With an estimate of the seconds per prefix, a call is made no larger than what fits the time
    left (a call cannot be cut short), down to one prefix."""
    tokens = done = 0
    if seconds_per_prefix > 0 and deadline != float("inf"):
        per_call = max(1, min(per_call, int((deadline - time.monotonic()) / seconds_per_prefix)))
    for start in range(0, len(prefixes), per_call):
        requests = [
            SampleRequest(p, key=start + i, sample_indices=tuple(range(num_samples)))
            for i, p in enumerate(prefixes[start : start + per_call])
        ]
        for samples in sampler.sample(requests, params):
            tokens += sum(len(s.token_ids) for s in samples)
        done += len(requests)
        if time.monotonic() >= deadline:
            break
    return done, tokens


@torch.inference_mode()
def nucleus_share(model, prefixes) -> float:
    from posresample.sampling.draw import DEFAULT_PREFILTER, apply_temperature_top_k, nucleus

    logits = torch.stack([model(input_ids=torch.tensor([p], device=model.device)).logits[0, -1] for p in prefixes])
    scores = apply_temperature_top_k(logits, 0.7, None)
    top = scores.topk(DEFAULT_PREFILTER, dim=-1).values
    return float(nucleus(top, torch.logsumexp(scores, -1, keepdim=True).double(), 0.95)[1].float().mean())


def timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)  # a real model's own prefixes and its seed loop: bench/real_sampler.py
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn", default="eager")
    parser.add_argument("--prefixes", type=int, default=16, help="prefixes for the sampler (at most)")
    parser.add_argument("--baseline-prefixes", type=int, default=4, help="prefixes for the generate loop (at most)")
    parser.add_argument(
        "--per-call", type=int, default=64, help="prefixes per sampler.sample call (the worker's --batch-jobs)"
    )
    parser.add_argument("--prefix-len", type=int, default=24)
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--peaked", action="store_true", help="peaked next-token distributions, as a trained model has")
    parser.add_argument(
        "--decode",
        default="hf,fast",
        help="sampler variants to time, comma-separated: hf, fast, or fast:MODE with MODE one of "
        "fast_decode's compile modes (fast:inductor, fast:cuda-graph)",
    )
    add_arguments(parser)
    args = parser.parse_args()

    budget = Budget(args.seconds)
    device = torch.device(args.device)
    threads = set_threads(args, device.type)
    args.config = args.model or args.config
    built_s, model = timed(device, lambda: make_model(args.config, device, args.attn, args.peaked))
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=args.max_new_tokens, seed=123)
    prefixes = random_prefixes(max(args.prefixes, args.baseline_prefixes), args.prefix_len, model.config.vocab_size)
    variants = args.decode.split(",")
    samplers = {
        v: Sampler(model, max_rows=args.max_rows, decode=v.split(":")[0], compile=(v.split(":") + ["off"])[1])
        for v in variants
    }

    emit(
        f"# {args.config} on {machine(device)}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
        f"{threads} CPU threads, attn={args.attn}, prefix {args.prefix_len} tokens, {args.num_samples} x "
        f"{args.max_new_tokens} new tokens, {'peaked' if args.peaked else 'flat (random)'} distributions, "
        f"{nucleus_share(model, prefixes[:4]):.0%} of first steps fit the top-256 prefilter; model built in "
        f"{built_s:.1f} s" + (f"; budget {args.seconds:.0f} s" if args.seconds else "")
    )
    warm_s, _ = timed(device, lambda: run_generate(model, prefixes[:1], params, args.num_samples, 0.0))
    warm = {}
    emit(f"# warm-up of the generate loop: {warm_s:.1f} s")
    per_prefix = {}
    for variant, sampler in samplers.items():  # two batch shapes: inductor then compiles for any shape
        warm[variant], _ = timed(
            device, lambda: run_sampler(sampler, prefixes[:1], params, args.num_samples, args.per_call)
        )
        two_s, _ = timed(device, lambda: run_sampler(sampler, prefixes[:2], params, args.num_samples, args.per_call))
        warm[variant] += two_s
        per_prefix[variant] = two_s / 2  # compiled by now: a fair estimate of a call's cost per prefix
        emit(
            f"# warm-up of {variant} (compiling included): {warm[variant]:.1f} s; {budget.left():.0f} s of the budget "
            "left"
        )
    emit(
        "| variant | prefixes | seconds | ms / prefix | prefixes/s | tokens/s | peak MiB | token draws | vs generate |"
    )
    emit("|---|---|---|---|---|---|---|---|---|")
    reset_peak(device)
    base_s, (base_n, base_tok) = timed(
        device,
        lambda: run_generate(
            model, prefixes[: args.baseline_prefixes], params, args.num_samples, budget.share(len(variants) + 1)
        ),
    )
    base_rate = base_n / base_s
    emit(
        f"| per-prefix generate (96 copies) | {base_n} | {base_s:.2f} | {1000 / base_rate:.1f} | "
        f"{base_rate:.2f} | {base_tok / base_s:.0f} | {peak_memory_mb(device):.0f} | - | 1.0x |"
    )
    best = (0.0, None)
    for i, (variant, sampler) in enumerate(samplers.items()):
        reset_peak(device)
        with DrawTimer(
            device
        ) as draws:  # the token draws' share of the time: does the draw or the matmul bound a step?
            secs, (n, toks) = timed(
                device,
                lambda: run_sampler(
                    sampler,
                    prefixes[: args.prefixes],
                    params,
                    args.num_samples,
                    args.per_call,
                    budget.share(len(variants) - i),
                    per_prefix[variant],
                ),
            )
        rate = n / secs
        best = max(best, (rate, variant), key=lambda b: b[0])
        emit(
            f"| Sampler decode={variant} (max_rows {sampler.max_rows}) | {n} | {secs:.2f} | {1000 / rate:.1f} | "
            f"{rate:.2f} | {toks / secs:.0f} | {peak_memory_mb(device):.0f} | {draws.seconds / secs:.0%} | "
            f"{rate / base_rate:.1f}x |"
        )
    met = best[0] >= TARGET_PER_SECOND and best[0] / base_rate >= TARGET_RATIO
    emit(
        f"# target (>= {TARGET_PER_SECOND} prefixes/s and >= {TARGET_RATIO}x generate): best {best[1]} "
        f"{best[0]:.1f} prefixes/s, {best[0] / base_rate:.1f}x: {'met' if met else 'missed'}"
    )


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
