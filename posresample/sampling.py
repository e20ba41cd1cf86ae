"""Exact, batch-independent token sampling: temperature -> top-k (if set) -> top-p, HF semantics.

Noise is a counter-based hash of (seed, key, sample_index, step, token_id), so a sample draws the
same randomness alone, batched with others, or re-run on another worker. A token is drawn by an
exponential race, argmax(p / Exp) over the kept tokens, which samples exactly from the
renormalised nucleus. For speed the race runs on a top-`prefilter` set; rows whose nucleus does
not fit in it fall back to the full vocabulary, so the result is the same either way.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
NEG_INF = float("-inf")
DEFAULT_PREFILTER = 256  # candidates per row for the fast path; exact fallback beyond it


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """Low 32 bits of x * c for x in [0, 2**32), without int64 overflow (16-bit halves of c)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a bijective 32-bit integer hash on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_hash(seed: int, keys: torch.Tensor, sample_index: torch.Tensor, step: int) -> torch.Tensor:
    """One 32-bit hash per row from (seed, key, sample_index, step): [R] int64."""
    h = torch.full_like(keys, 0x243F6A88)
    for part in (seed & MASK32, seed >> 32, keys & MASK32, keys >> 32, sample_index, step):
        h = mix32(h ^ part)
    return h


def uniform(rows: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform(0, 1) float64 noise for each (row, token): rows [R], token_ids [R, C] -> [R, C]."""
    h1 = mix32(rows[:, None] ^ token_ids)  # [R, C]
    h2 = mix32(h1 ^ 0x5BD1E995)
    bits53 = (h1 << 21) | (h2 >> 11)  # 53 random bits
    return (bits53.to(torch.float64) + 0.5) / 2.0**53


def apply_temperature_top_k(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """HF TemperatureLogitsWarper then TopKLogitsWarper (ties with the k-th score are kept)."""
    scores = logits.float() / temperature  # [R, V]
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # [R, 1]
        scores = scores.masked_fill(scores < kth, NEG_INF)
    return scores


def top_p_full(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """HF TopPLogitsWarper on the whole vocabulary, returning log-probabilities ([R, V], -inf removed)."""
    if top_p < 1.0:
        sorted_scores, sorted_ids = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False  # min_tokens_to_keep=1
        remove = remove_sorted.scatter(-1, sorted_ids, remove_sorted)
        scores = scores.masked_fill(remove, NEG_INF)
    return scores.log_softmax(dim=-1)


def top_p_prefiltered(scores: torch.Tensor, top_p: float, k: int):
    """Top-p on the top-k candidates: (token_ids [R, k], logprobs [R, k], fits [R]).

    `fits` says the nucleus ends inside the k candidates; rows where it does not must use top_p_full.
    """
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # [R, 1]
    top_scores, top_ids = scores.topk(k, dim=-1)  # [R, k], descending
    logp = top_scores - lse
    probs = logp.exp()
    above = probs.cumsum(dim=-1) - probs  # probability mass ranked strictly above each candidate
    keep = above < top_p
    keep[:, 0] = True
    fits = probs.sum(dim=-1) >= top_p if top_p < 1.0 else torch.zeros_like(keep[:, 0])
    if k == scores.shape[-1]:
        fits = torch.ones_like(fits)
    logp = logp.masked_fill(~keep, NEG_INF)
    logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)  # renormalise over the nucleus
    return top_ids, logp, fits


def race(logp: torch.Tensor, token_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """argmax over kept tokens of log p - log Exp: an exact draw from softmax(logp). -> [R] token ids."""
    noise = -torch.log(-torch.log(uniform(rows, token_ids)))  # Gumbel(0, 1) from Exp(1)
    winner = (logp.double() + noise).argmax(dim=-1, keepdim=True)
    return token_ids.gather(-1, winner).squeeze(-1)


def sample_tokens(logits: torch.Tensor, rows: torch.Tensor, temperature: float, top_p: float,
                  top_k: int | None = None, prefilter: int = DEFAULT_PREFILTER) -> torch.Tensor:
    """Draw one token per row from logits [R, V] with per-row noise hashes `rows` [R] -> [R]."""
    scores = apply_temperature_top_k(logits, temperature, top_k)
    vocab = scores.shape[-1]
    k = min(max(prefilter, top_k or 0), vocab)
    token_ids, logp, fits = top_p_prefiltered(scores, top_p, k)
    chosen = race(logp, token_ids, rows)
    if not bool(fits.all()):
        slow = (~fits).nonzero().squeeze(-1)
        full_logp = top_p_full(scores[slow], top_p)
        all_ids = torch.arange(vocab, device=scores.device).expand(len(slow), vocab)
        chosen[slow] = race(full_logp, all_ids, rows[slow])
    return chosen


def processed_probs(logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None = None,
                    prefilter: int = DEFAULT_PREFILTER) -> torch.Tensor:
    """The distribution sample_tokens draws from, dense [R, V]: for tests against HF's warpers."""
    scores = apply_temperature_top_k(logits, temperature, top_k)
    k = min(max(prefilter, top_k or 0), scores.shape[-1])
    token_ids, logp, fits = top_p_prefiltered(scores, top_p, k)
    dense = torch.zeros_like(scores).scatter(-1, token_ids, logp.exp())
    if not bool(fits.all()):
        slow = (~fits).nonzero().squeeze(-1)
        dense[slow] = top_p_full(scores[slow], top_p).exp()
    return dense
