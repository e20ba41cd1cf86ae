"""A compact Gemma 2 decode step for many samples of few prefixes, on the HF model's own weights.

The HF loop copies each prefix's KV cache into every one of its sample rows and attends to the
copies. Here a chunk is G prefixes x S samples each; every decode step attends
  - to the shared prefix keys once per group (the S sample queries act as S query rows), and
  - to each row's own generated keys, kept in a preallocated cache written in place,
and takes one softmax over both score blocks (the soft-cap is applied per score, so this is exact),
with grouped-query attention done by reshaping queries to [.., kv_heads, group, D] instead of
repeating keys. Checked against the HF forward on the tiny model (tests/unit/test_fast_decode.py).

Every step has the same shapes: the step number is a device tensor, the new keys go into their
slot with index_copy_, and the generated block is read whole with the slots after the step masked.
So one chunk's steps can be compiled (torch.compile, any device) or captured once as a CUDA graph
and replayed (`compile` below; `worker --compile`), with no host sync inside a step.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# off: eager PyTorch; inductor: torch.compile of the step; cuda-graph: the eager step captured once
# per chunk as a CUDA graph and replayed for the remaining steps (CUDA only).
COMPILE_MODES = ("off", "inductor", "cuda-graph")


def supports(model, prefix_len: int, max_new_tokens: int) -> bool:
    """Gemma 2 only, and only while no sliding window can cut into the sequence."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None) or math.inf
    return cfg.model_type == "gemma2" and prefix_len + max_new_tokens <= window


def check_compile_mode(mode: str, device: torch.device) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "cuda-graph" and device.type != "cuda":
        raise ValueError(f"compile 'cuda-graph' needs a CUDA device, not {device}")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@functools.cache
def _inductor_step():
    """One compiled function for all decoders: chunks of new shapes recompile with dynamic sizes."""
    return torch.compile(_step, fullgraph=True)


class SharedPrefixDecoder:
    """Decode state for one chunk: prefix KV [G, KV, L, D] per layer, generated KV [G, S, KV, T, D]."""

    def __init__(
        self,
        model,
        prefix_cache,
        prefix_mask: torch.Tensor,
        prefix_positions: torch.Tensor,
        samples_per_group: int,
        max_steps: int,
        compile: str = "off",
    ):
        check_compile_mode(compile, prefix_mask.device)
        if not supports(model, prefix_mask.shape[1], max_steps + 1):
            raise ValueError(
                f"the shared-prefix step takes Gemma 2 only, with prefix + new tokens "
                f"({prefix_mask.shape[1]} + {max_steps + 1}) inside the sliding window "
                f"({getattr(model.config, 'sliding_window', None)})"
            )
        cfg = model.config
        self.model = model
        self.compile = compile
        self.groups, self.samples = prefix_mask.shape[0], samples_per_group
        self.prefix_k = [layer.keys for layer in prefix_cache.layers]  # each [G, KV, L, D]
        self.prefix_v = [layer.values for layer in prefix_cache.layers]
        self.prefix_pad = (prefix_mask == 0)[:, None, None, None, :]  # [G, 1, 1, 1, L]
        self.row_pos = (prefix_positions[:, -1] + 1).repeat_interleave(samples_per_group)  # [R] at step 0
        dtype, device = self.prefix_k[0].dtype, self.prefix_k[0].device
        self.slots = max(max_steps, 1)
        shape = (
            self.groups,
            samples_per_group,
            cfg.num_key_value_heads,
            self.slots,
            getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
        )
        self.gen_k = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.prefix_k]
        self.gen_v = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.prefix_k]
        self.step = torch.zeros(1, dtype=torch.long, device=device)  # advanced in place, never read on the host
        self.steps_taken = 0
        self._graph = None
        self._state = dict(
            prefix_k=self.prefix_k,
            prefix_v=self.prefix_v,
            prefix_pad=self.prefix_pad,
            gen_k=self.gen_k,
            gen_v=self.gen_v,
            row_pos=self.row_pos,
            slot_ids=torch.arange(self.slots, device=device),
            groups=self.groups,
            samples=self.samples,
        )

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (rows grouped: [G * S]) and return next-token logits [G * S, V].

        With compile="cuda-graph" the returned tensor is the graph's output buffer: it is
        overwritten by the next call, so use it before calling again.
        """
        if self.steps_taken >= self.slots:
            raise IndexError(f"decoder was sized for {self.slots} steps")
        if self.compile == "cuda-graph":
            logits = self._replay(tokens)
        else:
            step = _inductor_step() if self.compile == "inductor" else _step
            logits = step(self.model, tokens, self.step, self._state)
        self.step += 1
        self.steps_taken += 1
        return logits

    def _replay(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._graph is not None:
            self._tokens.copy_(tokens)
            self._graph.replay()
            return self._logits
        # First step: run it for real on a side stream (this also warms up the kernels), then capture
        # the same step; capturing records kernels without running them, so no state moves twice.
        self._tokens = tokens.clone()
        side = torch.cuda.Stream(device=tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):
            logits = _step(self.model, self._tokens, self.step, self._state)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = _step(self.model, self._tokens, self.step, self._state)
        self._graph = graph
        return logits


def _step(model, tokens: torch.Tensor, step: torch.Tensor, state: dict) -> torch.Tensor:
    """One decode step with fixed shapes: embed, every layer (writing slot `step` of the generated
    KV), final norm, lm_head and the final soft-cap. `step` is a 1-element long tensor."""
    cfg, base = model.config, model.model
    G, S = state["groups"], state["samples"]
    head_dim = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    h = base.embed_tokens(tokens)  # [R, Dm]
    if not hasattr(base.embed_tokens, "embed_scale"):  # transformers 4.x scaled in the model's forward
        h = h * torch.tensor(cfg.hidden_size**0.5, dtype=h.dtype)
    positions = state["row_pos"] + step  # [R]
    cos, sin = base.rotary_emb(h, positions[:, None])  # [R, 1, D]
    cos, sin = cos.view(G, S, 1, head_dim), sin.view(G, S, 1, head_dim)
    gen_pad = (state["slot_ids"] > step)[None, None, None, None, :]  # [1, 1, 1, 1, T]: slots not written yet
    for i, layer in enumerate(base.layers):
        residual = h
        attn = _attention(
            cfg,
            layer.self_attn,
            layer.input_layernorm(h),
            cos,
            sin,
            step,
            gen_pad,
            state["prefix_k"][i],
            state["prefix_v"][i],
            state["prefix_pad"],
            state["gen_k"][i],
            state["gen_v"][i],
        )
        h = residual + layer.post_attention_layernorm(attn)
        residual = h
        h = residual + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    logits = model.lm_head(base.norm(h))  # [R, V]
    if cfg.final_logit_softcapping is not None:
        logits = torch.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
    return logits


def _attention(cfg, attn, x, cos, sin, step, gen_pad, prefix_k, prefix_v, prefix_pad, gen_k, gen_v) -> torch.Tensor:
    G, S, KV, T, D = gen_k.shape
    heads = cfg.num_attention_heads
    scaling, cap = cfg.query_pre_attn_scalar**-0.5, cfg.attn_logit_softcapping
    q = attn.q_proj(x).view(G, S, heads, D)
    k = attn.k_proj(x).view(G, S, KV, 1, D)
    v = attn.v_proj(x).view(G, S, KV, 1, D)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos[:, :, :, None] + _rotate_half(k) * sin[:, :, :, None]
    gen_k.index_copy_(3, step, k)  # written in place into slot `step`, no torch.cat
    gen_v.index_copy_(3, step, v)
    q = q.view(G, S, KV, heads // KV, D)  # GQA: query heads j*group..(j+1)*group-1 read kv head j
    scores_pre = torch.einsum("gsjhd,gjld->gsjhl", q, prefix_k) * scaling  # [G, S, KV, h, L]
    scores_gen = torch.einsum("gsjhd,gsjtd->gsjht", q, gen_k) * scaling  # [G, S, KV, h, T]
    if cap is not None:
        scores_pre = torch.tanh(scores_pre / cap) * cap
        scores_gen = torch.tanh(scores_gen / cap) * cap
    scores_pre = scores_pre.masked_fill(prefix_pad, float("-inf"))
    scores_gen = scores_gen.masked_fill(gen_pad, float("-inf"))
    weights = F.softmax(torch.cat([scores_pre, scores_gen], dim=-1), dim=-1, dtype=torch.float32).to(q.dtype)
    w_pre, w_gen = weights.split([scores_pre.shape[-1], T], dim=-1)
    out = torch.einsum("gsjhl,gjld->gsjhd", w_pre, prefix_v) + torch.einsum("gsjht,gsjtd->gsjhd", w_gen, gen_v)
    return attn.o_proj(out.reshape(G * S, heads * D))
