"""Exact, batch-independent token sampling: temperature -> top-k (if set) -> top-p, HF semantics.

Noise is a counter-based hash of (seed, key, sample_index, step, token_id), so a sample draws the
same randomness alone, batched with others, or re-run on another worker. A token is drawn by an
exponential race, argmax(p / Exp), over the kept tokens: an exact draw from the renormalised
nucleus that, unlike an inverse CDF, only flips when two tokens' perturbed scores tie, so the
last-bit differences between batch shapes almost never change a sample. For speed the race runs
on the top-`prefilter` tokens; a row whose nucleus does not fit there is redone on its top
`wide_prefilter` tokens, and a row whose nucleus does not fit those either on the whole
vocabulary (both in row chunks, to bound memory). The noise is keyed by token id, not by rank, so
the result is the same whichever tier a row ends in, and the tier depends on the row's own logits
only.

Ties are defined: candidates are ordered by score descending, then token id ascending, in every
tier, and a tier is used only when the tie group at the top-p cut lies wholly inside it. So the kept
set is a function of the row's logits alone (bf16 logits tie constantly). HF's TopPLogitsWarper
sorts ascending with an unspecified order among ties and sums the mass in that order: where a tie
group straddles the cut, or the cumulative sum rounds differently, its kept set can differ from ours
by members of that tie group (or the one token at the cut); elsewhere the two are the same.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
NEG_INF = float("-inf")
DEFAULT_PREFILTER = 256  # candidates per row for the fast path; exact fallback beyond it
WIDE_PREFILTER = 4096  # second tier, for rows whose nucleus is wider than the first
FALLBACK_ELEMENTS = 1 << 25  # rows x vocabulary handled at once beyond the first tier


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
    """Uniform (0, 1) float64 noise for each (row, token): rows [R], token_ids [R, C] -> [R, C].

    Two hashes of (row, token) that are not functions of each other (the second mixes the row
    before the token), so the 53 bits are 53 bits, not 32 stretched.
    """
    h1 = mix32(rows[:, None] ^ token_ids)  # [R, C]
    h2 = mix32(mix32(rows ^ 0x5BD1E995)[:, None] ^ token_ids)  # [R, C]
    bits53 = (h1 << 21) | (h2 >> 11)
    return (bits53.to(torch.float64) + 0.5) / 2.0**53


def apply_temperature_top_k(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """HF TemperatureLogitsWarper then TopKLogitsWarper (ties with the k-th score are kept)."""
    scores = logits.float() / temperature  # [R, V]
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # [R, 1]
        scores = scores.masked_fill(scores < kth, NEG_INF)
    return scores


def order_candidates(scores: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder [R, C] candidates by score descending, then token id ascending (the defined tie order)."""
    by_id = ids.argsort(dim=-1)
    scores, ids = scores.gather(-1, by_id), ids.gather(-1, by_id)
    by_score = scores.argsort(dim=-1, descending=True, stable=True)  # stable: ties stay in id order
    return scores.gather(-1, by_score), ids.gather(-1, by_score)


def nucleus(sorted_scores: torch.Tensor, lse: torch.Tensor, top_p: float,
            complete: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p on candidates in the defined order: (kept probabilities [R, C], fits [R]).

    HF's TopPLogitsWarper drops a token when the ascending cumulative mass up to it is <= 1 - top_p,
    that is, when the mass ranked strictly above it is >= top_p; the top token is always kept; at
    top_p >= 1 there is no top-p step. `fits` is False where the nucleus may reach beyond the
    candidates (`complete`: they are the whole vocabulary): their mass is below top_p, or the tie
    group at the cut reaches the candidates' lowest score, so tokens outside tie with kept ones.
    """
    probs = (sorted_scores - lse).exp()  # [R, C] under the full softmax
    lowest = sorted_scores[:, -1]
    if top_p >= 1.0:
        keep = torch.ones_like(probs, dtype=torch.bool)
        fits = torch.full_like(lowest, complete, dtype=torch.bool) | (lowest == NEG_INF)
        return probs, fits
    above = probs.cumsum(dim=-1) - probs
    keep = above < top_p
    keep[:, 0] = True
    cut_score = sorted_scores.masked_fill(~keep, float("inf")).min(dim=-1).values  # [R] last kept score
    fits = (probs.sum(dim=-1) >= top_p) & (cut_score > lowest)
    if complete:
        fits = torch.ones_like(fits)
    return probs * keep, fits


def race(probs: torch.Tensor, token_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """argmax of p / Exp(1) over kept tokens (p > 0): an exact draw from the renormalised probs. -> [R]"""
    exp_noise = -torch.log(uniform(rows, token_ids))  # [R, C]
    score = probs.double() / exp_noise
    return token_ids.gather(-1, score.argmax(dim=-1, keepdim=True)).squeeze(-1)


def _candidates(scores: torch.Tensor, top_p: float, top_k: int | None, prefilter: int, wide_prefilter: int):
    """Yield (row index or None for all rows, token ids [r, C], kept probs [r, C]), fast rows first.

    Tiers: the top `prefilter` tokens for every row; for the rows whose nucleus is wider, their top
    `wide_prefilter` tokens; for the rest, the whole vocabulary sorted.
    """
    vocab = scores.shape[-1]
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # [R, 1]
    k = min(max(prefilter, top_k or 0), vocab)
    top_scores, top_ids = order_candidates(*scores.topk(k, dim=-1))
    probs, fits = nucleus(top_scores, lse, top_p, complete=k == vocab)
    if bool(fits.all()):
        yield None, top_ids, probs
        return
    fast = fits.nonzero().squeeze(-1)
    if len(fast):
        yield fast, top_ids[fast], probs[fast]
    wide = min(max(wide_prefilter, top_k or 0), vocab)
    for part in (~fits).nonzero().squeeze(-1).split(max(1, FALLBACK_ELEMENTS // vocab)):
        part_scores, part_lse = scores[part], lse[part]
        if k < wide < vocab:
            top_scores, top_ids = order_candidates(*part_scores.topk(wide, dim=-1))
            probs, fits = nucleus(top_scores, part_lse, top_p)
            if bool(fits.any()):
                yield part[fits], top_ids[fits], probs[fits]
            if bool(fits.all()):
                continue
            part, part_scores, part_lse = part[~fits], part_scores[~fits], part_lse[~fits]
        # ids are already ascending along the vocabulary: a stable sort keeps ties in id order
        all_scores, all_ids = part_scores.sort(dim=-1, descending=True, stable=True)
        all_probs, _ = nucleus(all_scores, part_lse, top_p, complete=True)
        yield part, all_ids, all_probs


def sample_tokens(logits: torch.Tensor, rows: torch.Tensor, temperature: float, top_p: float,
                  top_k: int | None = None, prefilter: int = DEFAULT_PREFILTER,
                  wide_prefilter: int = WIDE_PREFILTER) -> torch.Tensor:
    """Draw one token per row from logits [R, V] with per-row noise hashes `rows` [R] -> [R]."""
    scores = apply_temperature_top_k(logits, temperature, top_k)
    chosen = torch.empty(len(scores), dtype=torch.long, device=scores.device)
    for which, ids, probs in _candidates(scores, top_p, top_k, prefilter, wide_prefilter):
        if which is None:
            return race(probs, ids, rows)
        chosen[which] = race(probs, ids, rows[which])
    return chosen


def processed_probs(logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None = None,
                    prefilter: int = DEFAULT_PREFILTER, wide_prefilter: int = WIDE_PREFILTER) -> torch.Tensor:
    """The distribution sample_tokens draws from, dense [R, V]: for tests against HF's warpers."""
    scores = apply_temperature_top_k(logits, temperature, top_k)
    dense = torch.zeros_like(scores)
    for which, ids, probs in _candidates(scores, top_p, top_k, prefilter, wide_prefilter):
        probs = probs / probs.sum(dim=-1, keepdim=True)
        if which is None:
            return dense.scatter(-1, ids, probs)
        dense[which] = torch.zeros_like(dense[which]).scatter(-1, ids, probs)
    return dense
