"""Sample many continuations per prefix with a shared prefill. No database imports.

A batch of prefixes is prefilled once (left padding, explicit position ids), each prefix's KV cache
and first-token logits are copied into its sample rows, and all rows decode together. Batches are
sized from free GPU memory and halved (and remembered) on out-of-memory. Noise is keyed by
(seed, key, sample_index, step), so results do not depend on how rows were batched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.profiler import record_function  # labels for bench/profile_decode.py; near free unprofiled

from ..lm import cache_kwarg, pad_batch
from .draw import DEFAULT_PREFILTER, row_hash, sample_tokens

log = logging.getLogger(__name__)
CPU_MAX_ROWS = 512  # rows per decode batch on the CPU
# "hf": the model's own forward on a KV cache copied per sample; "fast": fast_decode's shared-prefix
# step (Gemma 2, equal-sized groups), falling back to "hf" for a chunk it cannot take.
DECODE_PATHS = ("hf", "fast")
GPU_MEMORY_FRACTION = 0.6  # share of free GPU memory the KV cache and logits may use
GPU_MAX_ROWS = 8192


class Aborted(Exception):
    """Raised inside a decode loop when the worker was told to stop and its grace time ran out."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int | None
    max_new_tokens: int
    seed: int


@dataclass(frozen=True)
class SampleRequest:
    prefix_ids: list[int]
    key: int  # identifies the prefix in the noise hash (stable across workers and retries)
    sample_indices: tuple[int, ...]


@dataclass
class Sample:
    token_ids: list[int]  # generated tokens, the EOS included when it came
    finish_reason: str  # "eos" or "length"


@dataclass
class _Unit:
    request: int  # index into the request list
    sample_indices: tuple[int, ...]


class Sampler:
    """Shared-prefill batched sampler over a Hugging Face causal LM."""

    def __init__(
        self,
        model,
        tokenizer=None,
        max_rows: int | None = None,
        prefilter: int = DEFAULT_PREFILTER,
        decode: str = "hf",
        compile: str = "off",
    ):
        from .fast_decode import check_compile_mode

        if decode not in DECODE_PATHS:
            raise ValueError(f"decode must be one of {DECODE_PATHS}, got {decode!r}")
        self.model = model
        if decode == "fast" and model.config.model_type != "gemma2":
            log.warning(
                "--decode fast is a Gemma 2 decode step and this model is %s: sampling with the hf path",
                model.config.model_type,
            )
            decode = "hf"
        self.decode_path = decode
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        check_compile_mode(compile, self.device)
        if compile != "off" and decode != "fast":
            raise ValueError(f"compile {compile!r} applies to decode 'fast' only")
        self.compile = compile  # how fast_decode runs its step: off, inductor or cuda-graph
        self.prefilter = prefilter
        self.max_rows = max_rows
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        eos = model.config.eos_token_id
        self.eos_ids = torch.tensor(sorted(eos if isinstance(eos, (list, tuple)) else [eos]), device=self.device)
        self._cache_kwarg = cache_kwarg(model)
        self.oom_splits = 0  # times a batch was halved after running out of memory

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def describe(self) -> dict:
        """What decides the samples besides the seed: recorded per worker (workers.sampler)."""
        import transformers

        param = next(self.model.parameters())
        return {
            "decode": self.decode_path,
            "compile": self.compile,
            "dtype": str(param.dtype).removeprefix("torch."),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "attn": self.model.config._attn_implementation,
            "prefilter": self.prefilter,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }

    def sample(
        self, requests: list[SampleRequest], params: SamplingParams, should_abort=lambda: False
    ) -> list[list[Sample]]:
        """Return, per request, one Sample per sample index (in the order given)."""
        results: list[dict[int, Sample]] = [{} for _ in requests]
        pending = self._plan(requests, self._row_budget(requests, params))
        while pending:
            chunk = pending.pop(0)
            try:
                samples = self._run_chunk(requests, chunk, params, should_abort)
            except torch.OutOfMemoryError:
                rows = sum(len(u.sample_indices) for u in chunk)
                if rows <= 1:
                    raise
                self.max_rows = max(1, rows // 2)
                self.oom_splits += 1
                log.warning("out of memory at %d rows: splitting, now at most %d rows", rows, self.max_rows)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                pending = self._plan_units(chunk + [u for c in pending for u in c], self.max_rows)
                continue
            for unit, unit_samples in zip(chunk, samples):
                results[unit.request].update(zip(unit.sample_indices, unit_samples))
        return [[res[i] for i in req.sample_indices] for req, res in zip(requests, results)]

    # --- planning ---

    def _row_budget(self, requests: list[SampleRequest], params: SamplingParams) -> int:
        if self.max_rows is None:
            self.max_rows = self._rows_from_memory(max(len(r.prefix_ids) for r in requests) + params.max_new_tokens)
        return self.max_rows

    def _rows_from_memory(self, seq_len: int) -> int:
        if self.device.type != "cuda":
            return CPU_MAX_ROWS
        cfg = self.model.config
        dtype_bytes = next(self.model.parameters()).element_size()
        head_dim = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * seq_len * dtype_bytes
        logits = cfg.vocab_size * (dtype_bytes + 4 * 3)  # model logits + float32 copies while sampling
        free, _total = torch.cuda.mem_get_info(self.device)
        rows = int(free * GPU_MEMORY_FRACTION // (2 * kv + logits))  # x2: the cache is copied while expanding
        return max(1, min(rows, GPU_MAX_ROWS))

    def _plan(self, requests: list[SampleRequest], max_rows: int) -> list[list[_Unit]]:
        units = [_Unit(i, r.sample_indices) for i, r in enumerate(requests)]
        return self._plan_units(units, max_rows)

    @staticmethod
    def _plan_units(units: list[_Unit], max_rows: int) -> list[list[_Unit]]:
        """Split units larger than max_rows, then pack units greedily into chunks of <= max_rows rows."""
        pieces = [
            _Unit(u.request, u.sample_indices[i : i + max_rows])
            for u in units
            for i in range(0, len(u.sample_indices), max_rows)
        ]
        chunks, current, rows = [], [], 0
        for piece in pieces:
            if current and rows + len(piece.sample_indices) > max_rows:
                chunks.append(current)
                current, rows = [], 0
            current.append(piece)
            rows += len(piece.sample_indices)
        return chunks + ([current] if current else [])

    # --- the decode loop ---

    @torch.inference_mode()
    def _run_chunk(self, requests, chunk: list[_Unit], params: SamplingParams, should_abort) -> list[list[Sample]]:
        from transformers import DynamicCache

        prefixes = [requests[u.request].prefix_ids for u in chunk]
        input_ids, attention = self._left_pad(prefixes)  # [P, L]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [P, L]
        cache = DynamicCache(config=self.model.config)
        with record_function("prefill"):
            logits = self._forward(input_ids, attention, positions, cache)  # [P, V]

        repeats = torch.tensor([len(u.sample_indices) for u in chunk], device=self.device)
        source = torch.repeat_interleave(torch.arange(len(chunk), device=self.device), repeats)  # [R]
        shared = self._shared_prefix_decoder(chunk, cache, attention, positions, params)
        if shared is None:
            with record_function("expand cache"):
                cache.reorder_cache(source)  # copy each prefix's KV into its sample rows
        logits, attention = logits[source], attention[source]
        next_pos = positions[source, -1] + 1  # [R]
        keys = torch.tensor([requests[u.request].key for u in chunk], device=self.device)[source]
        sample_idx = torch.tensor([i for u in chunk for i in u.sample_indices], device=self.device)

        rows = len(source)
        tokens = torch.full((rows, params.max_new_tokens), self.pad_id, dtype=torch.long, device=self.device)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        for step in range(params.max_new_tokens):
            hashes = row_hash(params.seed, keys, sample_idx, step)
            with record_function("sample"):
                chosen = sample_tokens(logits, hashes, params.temperature, params.top_p, params.top_k, self.prefilter)
            tokens[:, step] = torch.where(finished, self.pad_id, chosen)
            finished |= torch.isin(chosen, self.eos_ids)
            if step + 1 == params.max_new_tokens or bool(finished.all()):
                break
            if should_abort():
                raise Aborted()
            if shared is not None:
                with record_function("decode step (fast)"):
                    logits = shared.forward(tokens[:, step])
                continue
            attention = torch.cat([attention, attention.new_ones(rows, 1)], dim=-1)
            with record_function("decode step (hf)"):
                logits = self._forward(tokens[:, step : step + 1], attention, next_pos[:, None], cache)
            next_pos = next_pos + 1
        return self._split_rows(tokens.cpu(), chunk)

    def _shared_prefix_decoder(self, chunk, cache, attention, positions, params):
        """fast_decode's step for this chunk, or None where the HF path must run."""
        from . import fast_decode

        sizes = {len(u.sample_indices) for u in chunk}
        if (
            self.decode_path != "fast"
            or len(sizes) != 1
            or not fast_decode.supports(self.model, attention.shape[1], params.max_new_tokens)
        ):
            return None
        return fast_decode.SharedPrefixDecoder(
            self.model, cache, attention, positions, sizes.pop(), params.max_new_tokens - 1, compile=self.compile
        )

    def _forward(self, input_ids, attention, positions, cache) -> torch.Tensor:
        # The last position by index, not logits_to_keep=1: the model's head then sees a contiguous
        # [B, 1, D] copy, where a slice of a prefill's hidden states sent a bf16 head on the CPU
        # through a batched matmul that copies its weights once per prefix (100x slower).
        last = torch.tensor([input_ids.shape[1] - 1], device=self.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=last,
            **{self._cache_kwarg: cache},
        )
        return out.logits[:, -1]  # [B, V]

    def _left_pad(self, prefixes: list[list[int]]):
        ids, mask = pad_batch(prefixes, self.pad_id, side="left")
        return ids.to(self.device), mask.to(self.device)

    def _split_rows(self, tokens: torch.Tensor, chunk: list[_Unit]) -> list[list[Sample]]:
        eos = set(self.eos_ids.tolist())
        out, row = [], 0
        for unit in chunk:
            samples = []
            for _ in unit.sample_indices:
                ids = tokens[row].tolist()
                end = next((i + 1 for i, t in enumerate(ids) if t in eos), None)
                samples.append(Sample(ids[:end], "eos") if end else Sample(ids, "length"))
                row += 1
            out.append(samples)
        return out
