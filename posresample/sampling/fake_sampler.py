"""A fast stand-in sampler for queue tests and benchmarks: no model, same interface as Sampler.

Tokens come from the same noise hash, so its output is deterministic per (seed, key, sample, step).
It can also misbehave on purpose: take time (`delay`) or kill its own process on a poison prefix.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from .draw import row_hash
from .sampler import Sample, SampleRequest, SamplingParams

FAKE_VOCAB = 1000
FAKE_EOS = 1


class FakeSampler:
    def __init__(self, delay: float = 0.0, poison_token: int | None = None):
        self.delay = delay
        self.poison_token = poison_token

    def decode(self, token_ids: list[int]) -> str:
        return " ".join(f"t{t}" for t in token_ids)

    def describe(self) -> dict:
        return {"decode": "fake", "torch": torch.__version__}

    def sample(self, requests: list[SampleRequest], params: SamplingParams, should_abort=lambda: False):
        if self.poison_token is not None and any(self.poison_token in r.prefix_ids for r in requests):
            os.kill(os.getpid(), signal.SIGKILL)  # the poison job takes its worker down, every time
        if self.delay:
            time.sleep(self.delay)  # stands in for GPU time: lets tests freeze or kill a worker mid-job
        return [self._one(r, params) for r in requests]

    def _one(self, request: SampleRequest, params: SamplingParams) -> list[Sample]:
        keys = torch.full((len(request.sample_indices),), request.key, dtype=torch.long)
        idx = torch.tensor(request.sample_indices, dtype=torch.long)
        steps = torch.stack([row_hash(params.seed, keys, idx, s) for s in range(params.max_new_tokens)], 1)
        samples = []
        for row in (steps % FAKE_VOCAB).tolist():
            end = next((i + 1 for i, t in enumerate(row) if t == FAKE_EOS), None)
            samples.append(Sample(row[:end], "eos") if end else Sample(row, "length"))
        return samples
