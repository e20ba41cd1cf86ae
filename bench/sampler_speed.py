"""Sampler speed: the design's per-prefix `generate` loop against posresample's sampler, one process.

    python bench/sampler_speed.py --config tiny --device cpu --prefixes 32 --baseline-prefixes 8 --peaked
    python bench/sampler_speed.py --config gemma-2-2b --device cuda --prefixes 512 --baseline-prefixes 16 --peaked

Both run on a randomly initialised Gemma2ForCausalLM (gemma-2-2b's exact config: same FLOPs and
bytes, no download; or a tiny one for the CPU), on the same random prefixes of --prefix-len tokens,
96 samples x 16 new tokens, temperature 0.7, top-p 0.95. The baseline is one `generate` call per
prefix on 96 copies of it (HF adds top_k=50 there; it only makes the baseline cheaper). Timings
synchronise the device before reading the clock; a warm-up pass is not counted.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posresample import tiny  # noqa: E402
from posresample.sampler import SampleRequest, Sampler, SamplingParams  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model(name: str, device: torch.device, attn: str, peaked: bool, dtype: torch.dtype | None = None):
    """Random weights; bf16 on a GPU and float32 on the CPU unless dtype says otherwise."""
    config = tiny.gemma2_2b_config() if name == "gemma-2-2b" else tiny.tiny_gemma2_config(vocab_size=4096)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = tiny.build_model(config, seed=0, dtype=dtype, device=device)
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
def run_generate(model, prefixes, params: SamplingParams, num_samples: int) -> int:
    tokens = 0
    for prefix in prefixes:
        ids = torch.tensor([prefix], device=model.device).repeat(num_samples, 1)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_new_tokens,
                             pad_token_id=0)
        tokens += (out[:, ids.shape[1]:] != 0).sum().item()
    return tokens


def run_sampler(sampler: Sampler, prefixes, params: SamplingParams, num_samples: int, per_call: int) -> int:
    tokens = 0
    for start in range(0, len(prefixes), per_call):
        requests = [SampleRequest(p, key=start + i, sample_indices=tuple(range(num_samples)))
                    for i, p in enumerate(prefixes[start:start + per_call])]
        for samples in sampler.sample(requests, params):
            tokens += sum(len(s.token_ids) for s in samples)
    return tokens


@torch.inference_mode()
def nucleus_share(model, prefixes) -> float:
    from posresample.sampling import DEFAULT_PREFILTER, apply_temperature_top_k, nucleus

    logits = torch.stack([model(input_ids=torch.tensor([p], device=model.device)).logits[0, -1] for p in prefixes])
    scores = apply_temperature_top_k(logits, 0.7, None)
    top = scores.topk(DEFAULT_PREFILTER, dim=-1).values
    return float(nucleus(top, torch.logsumexp(scores, -1, keepdim=True), 0.95)[1].float().mean())


def timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    tokens = fn()
    sync(device)
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "gemma-2-2b"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn", default="eager")
    parser.add_argument("--prefixes", type=int, default=16, help="prefixes for the sampler")
    parser.add_argument("--baseline-prefixes", type=int, default=4, help="prefixes for the generate loop")
    parser.add_argument("--per-call", type=int, default=64, help="prefixes per sampler.sample call (the worker's --batch-jobs)")
    parser.add_argument("--prefix-len", type=int, default=24)
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--peaked", action="store_true", help="peaked next-token distributions, as a trained model has")
    parser.add_argument("--decode", default="hf,fast",
                        help="sampler variants to time, comma-separated: hf, fast, or fast:MODE with MODE one of "
                             "gemma_decode's compile modes (fast:inductor, fast:cuda-graph)")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = make_model(args.config, device, args.attn, args.peaked)
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=args.max_new_tokens, seed=123)
    prefixes = random_prefixes(max(args.prefixes, args.baseline_prefixes), args.prefix_len, model.config.vocab_size)
    samplers = {variant: Sampler(model, max_rows=args.max_rows, decode=variant.split(":")[0],
                                 compile=(variant.split(":") + ["off"])[1])
                for variant in args.decode.split(",")}

    print(f"# {args.config} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}"
          f" ({os.cpu_count()} cpus), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, attn={args.attn}, "
          f"prefix {args.prefix_len} tokens, {args.num_samples} x {args.max_new_tokens} new tokens, "
          f"{'peaked' if args.peaked else 'flat (random)'} distributions, {nucleus_share(model, prefixes[:4]):.0%} of first steps fit the top-256 prefilter")
    run_generate(model, prefixes[:1], params, args.num_samples)  # warm-up
    for sampler in samplers.values():  # warm-up on two batch shapes: inductor then compiles for any shape
        for n in (1, 2):
            run_sampler(sampler, prefixes[:n], params, args.num_samples, args.per_call)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_s, base_tok = timed(device, lambda: run_generate(model, prefixes[: args.baseline_prefixes], params, args.num_samples))
    base_rate = args.baseline_prefixes / base_s
    print("| variant | prefixes | seconds | ms / prefix | prefixes/s | tokens/s | peak MiB | vs generate |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| per-prefix generate (96 copies) | {args.baseline_prefixes} | {base_s:.2f} | {1000 / base_rate:.1f} | "
          f"{base_rate:.2f} | {base_tok / base_s:.0f} | {peak_memory_mb(device):.0f} | 1.0x |")
    for variant, sampler in samplers.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        secs, toks = timed(device, lambda: run_sampler(sampler, prefixes[: args.prefixes], params, args.num_samples, args.per_call))
        rate = args.prefixes / secs
        print(f"| Sampler decode={variant} (max_rows {sampler.max_rows}) | {args.prefixes} | {secs:.2f} | {1000 / rate:.1f} | "
              f"{rate:.2f} | {toks / secs:.0f} | {peak_memory_mb(device):.0f} | {rate / base_rate:.1f}x |")


if __name__ == "__main__":
    main()
