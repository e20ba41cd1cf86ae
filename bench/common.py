"""What the bench scripts share: the thread count (set, and printed), a time budget, flushed lines.

A loaded machine makes torch's default thread count a liability (on a saturated 2-core machine the
per-prefix generate loop ran 10x slower with two threads than with one), so the CPU benches set
one thread unless told otherwise, and every header says how many were used. A budget
(`--seconds`) lets a variant measure what it can in its share and report it, instead of being
killed by the caller's timeout; every table line is flushed as it is printed, so whatever finished
is in the log even if the process is killed afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads [default: 1 on the CPU, torch's own with CUDA]"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="time budget: each part measures what fits in its share and reports it [default: none]",
    )


def set_threads(args, device_type: str) -> int:
    import torch

    threads = args.threads or (1 if device_type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine(device) -> str:
    import torch

    if getattr(device, "type", device) == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus)"


def emit(line: str = "") -> None:
    print(line, flush=True)


class Budget:
    """Seconds left of `--seconds` (None: unlimited), handed out in shares."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def share(self, parts: int) -> float:
        """An equal share of what is left among `parts` remaining parts, as a deadline."""
        return time.monotonic() + self.left() / max(parts, 1)

    def spent(self) -> bool:
        return self.left() <= 0


def sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize(device)


class DrawTimer:
    """Seconds spent in the Sampler's token draws (sample_tokens, the device synchronised around
    each), summed over the calls made inside the `with`."""

    def __init__(self, device):
        from posresample.sampling import sampler as sampler_module

        self.module = sampler_module
        self.device, self.seconds, self.original = device, 0.0, sampler_module.sample_tokens

    def __enter__(self):
        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = self.original(*args, **kwargs)
            sync(self.device)
            self.seconds += time.perf_counter() - start
            return out

        self.module.sample_tokens = timed
        return self

    def __exit__(self, *exc):
        self.module.sample_tokens = self.original
