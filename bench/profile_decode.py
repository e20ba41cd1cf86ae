"""Where a sampler's time goes: torch.profiler over one Sampler.sample call, after a warm-up call.

    python bench/profile_decode.py --config gemma-2-2b --device cuda --peaked --decode fast --prefixes 32
    python bench/profile_decode.py --config tiny --device cpu --peaked --decode hf --prefixes 8

Prints the sampler's own phases (prefill, cache expansion, decode steps, sampling: the labels
`record_function` puts on them in posresample/sampling/sampler.py) and the top operators and kernels by
self time on the device. bench/gpu_run.sh runs it when the sampler table misses its target.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import add_arguments, emit, machine, set_threads
from sampler_speed import add_model_arguments, make_model, random_prefixes, run_sampler, sync
from torch.profiler import ProfilerActivity, profile

from posresample.sampling.sampler import Sampler, SamplingParams

PHASES = ("prefill", "expand cache", "decode step (hf)", "decode step (fast)", "sample")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode", default="fast", help="hf, fast, fast:inductor or fast:cuda-graph")
    parser.add_argument("--prefixes", type=int, default=32, help="prefixes in the profiled call")
    parser.add_argument("--peaked", action="store_true")
    parser.add_argument("--top", type=int, default=15, help="operators and kernels listed")
    add_arguments(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = set_threads(args, device.type)
    args.config = args.model or args.config
    model = make_model(args.config, device, "eager", args.peaked)
    decode, _, mode = args.decode.partition(":")
    sampler = Sampler(model, decode=decode, compile=mode or "off")
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=16, seed=123)
    prefixes = random_prefixes(args.prefixes, 24, model.config.vocab_size)
    run_sampler(sampler, prefixes, params, 96, args.prefixes)  # warm-up (and compiling) outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        run_sampler(sampler, prefixes, params, 96, args.prefixes)
        sync(device)
    wall = time.perf_counter() - t0
    on_device = "cuda" if device.type == "cuda" else "cpu"
    emit(
        f"# {args.config}, decode={args.decode}, {args.prefixes} prefixes x 96 samples x 16 tokens on "
        f"{machine(device)}, "
        f"{threads} CPU threads, torch {torch.__version__}: {wall * 1000:.0f} ms under the profiler "
        f"({wall * 1000 / args.prefixes:.1f} ms / prefix)"
    )
    events = prof.key_averages()
    total = sum(_self(e, on_device) for e in events) or 1.0
    emit("| phase | calls | ms (device, with children) | share of the call |")
    emit("|---|---|---|---|")
    for e in events:
        if e.key in PHASES:
            ms = _total(e, on_device) / 1000
            emit(f"| {e.key} | {e.count} | {ms:.1f} | {ms * 1000 / total:.0%} |")
    emit(f"| operator or kernel (top {args.top} by self time) | calls | self ms | share |")
    emit("|---|---|---|---|")
    for e in sorted(events, key=lambda e: -_self(e, on_device))[: args.top]:
        emit(f"| {e.key[:90]} | {e.count} | {_self(e, on_device) / 1000:.2f} | {_self(e, on_device) / total:.0%} |")


def _self(event, device: str) -> float:
    """Self time in microseconds on the device (CUDA) or the CPU."""
    if device == "cuda":
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


def _total(event, device: str) -> float:
    if device == "cuda":
        return float(getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0)))
    return float(event.cpu_time_total)


if __name__ == "__main__":
    main()
