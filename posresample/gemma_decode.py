"""A compact Gemma 2 decode step for many samples of few prefixes, on the HF model's own weights.

The HF loop copies each prefix's KV cache into every one of its sample rows and attends to the
copies. Here a chunk is G prefixes x S samples each; every decode step attends
  - to the shared prefix keys once per group (the S sample queries act as S query rows), and
  - to each row's own generated keys, kept in a preallocated cache written in place,
and takes one softmax over both score blocks (the soft-cap is applied per score, so this is exact),
with grouped-query attention done by reshaping queries to [.., kv_heads, group, D] instead of
repeating keys. Checked against the HF forward on the tiny model (tests/unit/test_gemma_decode.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def supports(model, prefix_len: int, max_new_tokens: int) -> bool:
    """Gemma 2 only, and only while no sliding window can cut into the sequence."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None) or math.inf
    return cfg.model_type == "gemma2" and prefix_len + max_new_tokens <= window


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class SharedPrefixDecoder:
    """Decode state for one chunk: prefix KV [G, KV, L, D] per layer, generated KV [G, S, KV, T, D]."""

    def __init__(self, model, prefix_cache, prefix_mask: torch.Tensor, prefix_positions: torch.Tensor,
                 samples_per_group: int, max_steps: int):
        self.model = model
        base = model.model
        cfg = model.config
        self.layers = list(base.layers)
        self.embed, self.norm, self.rotary = base.embed_tokens, base.norm, base.rotary_emb
        # transformers 5 scales inside the embedding module; 4.x scaled in the model's forward.
        self.embed_scale = None if hasattr(self.embed, "embed_scale") else cfg.hidden_size ** 0.5
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        self.scaling = cfg.query_pre_attn_scalar ** -0.5
        self.attn_cap, self.final_cap = cfg.attn_logit_softcapping, cfg.final_logit_softcapping
        self.groups, self.samples = prefix_mask.shape[0], samples_per_group
        self.prefix_k = [layer.keys for layer in prefix_cache.layers]  # each [G, KV, L, D]
        self.prefix_v = [layer.values for layer in prefix_cache.layers]
        self.prefix_pad = (prefix_mask == 0)[:, None, None, None, :]  # [G, 1, 1, 1, L]
        self.next_pos = prefix_positions[:, -1] + 1  # [G]
        dtype, device = self.prefix_k[0].dtype, self.prefix_k[0].device
        shape = (self.groups, samples_per_group, self.kv_heads, max(max_steps, 1), self.head_dim)
        self.gen_k = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.gen_v = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.step = 0

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (rows grouped: [G * S]) and return next-token logits [G * S, V]."""
        G, S = self.groups, self.samples
        h = self.embed(tokens)  # [R, Dm]
        if self.embed_scale is not None:
            h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        positions = self.next_pos.repeat_interleave(S) + self.step  # [R]
        cos, sin = self.rotary(h, positions[:, None])  # [R, 1, D]
        cos, sin = cos.view(G, S, 1, self.head_dim), sin.view(G, S, 1, self.head_dim)
        for i, layer in enumerate(self.layers):
            residual = h
            attn = self._attention(i, layer.self_attn, layer.input_layernorm(h), cos, sin)
            h = residual + layer.post_attention_layernorm(attn)
            residual = h
            h = residual + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
        logits = self.model.lm_head(self.norm(h))  # [R, V]
        if self.final_cap is not None:
            logits = torch.tanh(logits / self.final_cap) * self.final_cap
        self.step += 1
        return logits

    def _attention(self, i: int, attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        G, S, KV, D, t = self.groups, self.samples, self.kv_heads, self.head_dim, self.step
        group = self.heads // KV
        q = attn.q_proj(x).view(G, S, self.heads, D)
        k = attn.k_proj(x).view(G, S, KV, D)
        v = attn.v_proj(x).view(G, S, KV, D)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        self.gen_k[i][:, :, :, t] = k  # written in place, no torch.cat
        self.gen_v[i][:, :, :, t] = v
        q = q.view(G, S, KV, group, D)  # GQA: query heads j*group..(j+1)*group-1 read kv head j
        scores_pre = torch.einsum("gsjhd,gjld->gsjhl", q, self.prefix_k[i]) * self.scaling  # [G, S, KV, h, L]
        gen_k, gen_v = self.gen_k[i][:, :, :, : t + 1], self.gen_v[i][:, :, :, : t + 1]
        scores_gen = torch.einsum("gsjhd,gsjtd->gsjht", q, gen_k) * self.scaling  # [G, S, KV, h, t+1]
        if self.attn_cap is not None:
            scores_pre = torch.tanh(scores_pre / self.attn_cap) * self.attn_cap
            scores_gen = torch.tanh(scores_gen / self.attn_cap) * self.attn_cap
        scores_pre = scores_pre.masked_fill(self.prefix_pad, float("-inf"))
        weights = F.softmax(torch.cat([scores_pre, scores_gen], dim=-1), dim=-1, dtype=torch.float32).to(q.dtype)
        w_pre, w_gen = weights.split([scores_pre.shape[-1], t + 1], dim=-1)
        out = torch.einsum("gsjhl,gjld->gsjhd", w_pre, self.prefix_v[i]) + torch.einsum("gsjht,gsjtd->gsjhd", w_gen, gen_v)
        return attn.o_proj(out.reshape(G * S, self.heads * D))
