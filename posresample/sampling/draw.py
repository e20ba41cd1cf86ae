"""Exact, batch-independent token sampling: temperature -> top-k (if set) -> top-p, HF semantics.

Noise is a counter-based hash of (seed, key, sample_index, step) per row and of a token or bucket id
per draw, so a sample draws the same randomness alone, batched with others, or re-run on another
worker. A token is drawn by an exponential race, argmax(p / Exp), in two levels: first a bucket of
256 consecutive token ids with probability its kept mass (a race over bucket masses), then a token
inside it (a race over its kept tokens). Both races are exact draws, so the product is an exact
draw from the renormalised nucleus; unlike an inverse CDF, a race only flips when two perturbed
scores nearly tie, so the last-bit differences between batch shapes almost never change a sample;
and a draw needs noise for about 2 x 256 ids whatever the nucleus's size, not one per kept token.

The kept set is found in tiers, each used for the rows it can decide: the top `prefilter` tokens,
the top `wide_prefilter` tokens (both cut top-down), then the whole vocabulary cut bottom-up (the
dropped tail is found among the lowest-scored tokens with a partial sort) or, where the tail is too
long for that, a full sort. Which tier decides a row depends on its own logits only, and the noise
is keyed by id, not rank, so tiers change speed, never samples.

Ties are defined: tokens are ordered by score descending, then token id ascending, and a token is
kept when the probability mass ranked strictly above it is < top_p (the top token always). The
masses are float64; a top-down and a bottom-up cut agree unless a token's mass above lies within
float64 rounding (1e-12) of top_p. HF's TopPLogitsWarper sorts ascending with an unspecified order
among ties and sums in float32: where a tie group straddles the cut, or its float32 sum rounds the
other way, its kept set can differ from ours by members of that tie group (or the token at the cut).

Cost at a real vocabulary (262,144 tokens): the first tiers never divide or copy the whole row.
Temperature keeps the order of the logits, so the top candidates are found on the raw logits (a
maximum per bucket of 64 ids, then the top buckets only: the top `size` tokens lie in the `size`
buckets of highest maximum) and only they are divided by the temperature, bit for bit as HF divides.
The normaliser is the one pass over the row that cannot be avoided: log sum exp((l - max) / T),
fused into one loop by torch.compile on the CPU (torch's own logsumexp makes four passes there).
Rows no early tier decides (flat ones, or with top-k) are divided in full, as before.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import torch

MASK32 = 0xFFFFFFFF
NEG_INF = float("-inf")
DEFAULT_PREFILTER = 256  # candidates per row for the fast path; exact tiers beyond it
WIDE_PREFILTER = 4096  # second tier, for rows whose nucleus is wider than the first
FALLBACK_ELEMENTS = 1 << 25  # rows x vocabulary handled at once beyond the first tiers
BUCKET_BITS = 8  # the race's first level picks a bucket of 2**8 consecutive token ids
TAIL_FRACTION = 8  # bottom-up cut: the dropped tail is looked for among the lowest vocab/8 tokens
SALT_BUCKET, SALT_TOKEN = 0x68E31DA4, 0xB5297A4D  # the two levels' noise streams
MASS_SCALE = 2.0**52  # the cut adds masses as exact integer multiples of 2**-52: every tier cuts alike


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


def to_int32(x: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the same 32 bits as int32."""
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def mix32_int32(x: torch.Tensor) -> torch.Tensor:
    """mix32 on int32 bit patterns: the same bits, 4x cheaper. Multiplication wraps modulo 2**32 and
    `& mask` makes the right shifts logical (checked against mix32 by a unit test)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * (0x846CA68B - (1 << 32))
    return x ^ ((x >> 16) & 0xFFFF)


def row_hash(seed: int, keys: torch.Tensor, sample_index: torch.Tensor, step: int) -> torch.Tensor:
    """One 32-bit hash per row from (seed, key, sample_index, step): [R] int64."""
    h = torch.full_like(keys, 0x243F6A88)
    for part in (seed & MASK32, seed >> 32, keys & MASK32, keys >> 32, sample_index, step):
        h = mix32(h ^ part)
    return h


def exponential(rows: torch.Tensor, ids: torch.Tensor, salt: int) -> torch.Tensor:
    """Exp(1) noise for each (row, id) of one stream: rows [R] uint32-in-int64, ids [R, C] -> [R, C] float64."""
    stream = to_int32(mix32(rows ^ salt))  # [R]
    bits = mix32_int32(stream[:, None] ^ ids.to(torch.int32)).to(torch.int64) & MASK32  # [R, C]
    return -torch.log((bits.to(torch.float64) + 0.5) * 2.0**-32)


def apply_temperature_top_k(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """HF TemperatureLogitsWarper then TopKLogitsWarper (ties with the k-th score are kept)."""
    scores = logits.float() / temperature  # [R, V]
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # [R, 1]
        scores = scores.masked_fill(scores < kth, NEG_INF)
    return scores


def probabilities(scores: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Each token's float64 probability under the row's full softmax: the same value in every tier."""
    return (scores.double() - lse).exp()


def quantized(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities as int64 multiples of 2**-52. Their sums are exact, so a cut made top-down over
    the top candidates and one made bottom-up over the tail see the same masses to the last bit."""
    return torch.round(probs * MASS_SCALE).to(torch.int64)


def order_candidates(scores: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder [R, C] candidates by score descending, then token id ascending (the defined tie order)."""
    by_id = ids.argsort(dim=-1)
    scores, ids = scores.gather(-1, by_id), ids.gather(-1, by_id)
    by_score = scores.argsort(dim=-1, descending=True, stable=True)  # stable: ties stay in id order
    return scores.gather(-1, by_score), ids.gather(-1, by_score)


def nucleus(
    sorted_scores: torch.Tensor,
    lse: torch.Tensor,
    top_p: float,
    complete: bool = False,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p, top-down, on candidates in the defined order: (kept probabilities [R, C] float64, fits [R]).

    A token is dropped when the mass ranked strictly above it is >= top_p (HF's rule); the top token
    is always kept; at top_p >= 1 there is no top-p step. `fits` is False where the nucleus may reach
    beyond the candidates (`complete`: they are the whole vocabulary): their mass is below top_p, or
    the tie group at the cut reaches the candidates' lowest score, so tokens outside tie with kept ones;
    and, with a `margin` [R] (a bound on the normaliser's error, lse_margin), where a mass above a
    candidate or above all of them lies within it of top_p, so that the exact normaliser might cut
    elsewhere.
    """
    probs = probabilities(sorted_scores, lse)  # [R, C]
    lowest = sorted_scores[:, -1]
    if top_p >= 1.0:
        fits = torch.full_like(lowest, complete, dtype=torch.bool) | (lowest == NEG_INF)
        return probs, fits
    mass = quantized(probs)
    above = mass.cumsum(dim=-1) - mass  # exact
    keep = above < top_p * MASS_SCALE
    keep[:, 0] = True
    cut_score = sorted_scores.masked_fill(~keep, float("inf")).min(dim=-1).values  # [R] last kept score
    fits = (mass.sum(dim=-1) >= top_p * MASS_SCALE) & (cut_score > lowest)
    if complete:
        fits = torch.ones_like(fits)
    if margin is not None:
        slack = margin.double()[:, None] * MASS_SCALE  # [R, 1]
        near = ((above - top_p * MASS_SCALE).abs() <= slack).any(dim=-1)
        fits &= ~near & ((mass.sum(dim=-1, keepdim=True) - top_p * MASS_SCALE).abs() > slack)[:, 0]
    return probs * keep, fits


def bottom_up(scores: torch.Tensor, lse: torch.Tensor, top_p: float, tail: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p over the whole vocabulary from the bottom: (kept probabilities [R, V] float64, fits [R]).

    Walking up from the lowest token (score ascending, id descending: the defined order reversed), a
    token is dropped while the mass at and below it is <= total - top_p: the top-down rule, on the
    same exact integer masses, so the same tokens. The walk looks at the `tail` lowest tokens only
    (a partial sort); `fits` is False where the dropped tail is longer than that.
    """
    probs = probabilities(scores, lse)  # [R, V]
    mass = quantized(probs)
    total = mass.sum(dim=-1)  # [R] exact
    low_scores, low_ids = scores.topk(tail, dim=-1, largest=False)  # [R, tail] ascending
    walked = mass.gather(-1, low_ids).cumsum(dim=-1)  # equal scores have equal masses: order inside ties is moot
    n_drop = (walked <= (total - top_p * MASS_SCALE)[:, None]).sum(dim=-1)  # [R]
    fits = n_drop < tail
    n_drop = n_drop.clamp(max=scores.shape[-1] - 1)  # the top token is always kept
    boundary = low_scores.gather(-1, (n_drop - 1).clamp(min=0)[:, None])  # [R, 1] the highest dropped score
    below = scores < boundary  # strictly lower: all dropped
    ties = scores == boundary
    rank_from_top_id = ties.flip(-1).cumsum(dim=-1).flip(-1)  # 1 for the highest tied id: it goes first
    dropped = below | (ties & (rank_from_top_id <= n_drop[:, None] - below.sum(-1, keepdim=True)))
    dropped &= (n_drop > 0)[:, None]
    return probs * ~dropped, fits


def race(probs: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, vocab: int) -> torch.Tensor:
    """An exact draw from kept probabilities probs [R, C] (0 = not kept) over token ids [R, C]. -> [R]

    Level one races the buckets by their kept mass, level two the kept tokens of the winning bucket.
    Both races use noise keyed by bucket or token id, so the winner does not depend on which
    candidates a tier looked at, only on the kept set.
    """
    buckets = ids >> BUCKET_BITS  # [R, C]
    n_buckets = (vocab >> BUCKET_BITS) + 1
    mass = torch.zeros(len(ids), n_buckets, dtype=torch.float64, device=ids.device).scatter_add_(1, buckets, probs)
    bucket_mass = mass.gather(1, buckets)  # [R, C]
    first = torch.where(bucket_mass > 0, bucket_mass / exponential(rows, buckets, SALT_BUCKET), -1.0)
    winner = buckets.gather(1, first.argmax(dim=1, keepdim=True))  # [R, 1]
    second = torch.where((buckets == winner) & (probs > 0), probs / exponential(rows, ids, SALT_TOKEN), -1.0)
    return ids.gather(1, second.argmax(dim=1, keepdim=True)).squeeze(1)


def race_vocabulary(probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """race() over the whole vocabulary, probs [R, V]: bucket masses by a reshape, noise for the
    buckets and for the 256 tokens of the winning one only. -> [R]"""
    n_rows, vocab = probs.shape
    size = 1 << BUCKET_BITS
    n_buckets = (vocab >> BUCKET_BITS) + 1
    padded = torch.nn.functional.pad(probs, (0, n_buckets * size - vocab))  # [R, n_buckets * size]
    mass = padded.view(n_rows, n_buckets, size).sum(-1)  # [R, n_buckets]
    buckets = torch.arange(n_buckets, device=probs.device).expand(n_rows, -1)
    first = torch.where(mass > 0, mass / exponential(rows, buckets, SALT_BUCKET), -1.0)
    winner = first.argmax(dim=1, keepdim=True)  # [R, 1]
    ids = winner * size + torch.arange(size, device=probs.device)  # [R, size]
    inside = padded.gather(1, ids)
    second = torch.where(inside > 0, inside / exponential(rows, ids, SALT_TOKEN), -1.0)
    return ids.gather(1, second.argmax(dim=1, keepdim=True)).squeeze(1)


def race_tempered(logits: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """race_vocabulary() where every token is kept (top-p 1, no top-k), from the raw logits [R, V]:
    a race is scale-free, so the weights need no normaliser: exp((l - max) / T), float32 terms,
    each bucket's mass summed in float64. The same buckets, ids and noise as race_vocabulary on the
    normalised probabilities, so the same token but where two perturbed scores tie to float32
    rounding; about five passes over the row where the general path makes a dozen in float64. -> [R]"""
    n_rows, vocab = logits.shape
    size = 1 << BUCKET_BITS
    n_buckets = -(-vocab // size)  # race_vocabulary's last bucket is empty when size divides vocab
    top = logits.amax(dim=-1, keepdim=True)
    weights = torch.exp((logits.float() - top.float()) / temperature)
    padded = torch.nn.functional.pad(weights, (0, n_buckets * size - vocab)) if vocab % size else weights
    mass = padded.view(n_rows, n_buckets, size).sum(-1, dtype=torch.float64)  # [R, n_buckets]
    buckets = torch.arange(n_buckets, device=logits.device).expand(n_rows, -1)
    first = torch.where(mass > 0, mass / exponential(rows, buckets, SALT_BUCKET), -1.0)
    winner = first.argmax(dim=1, keepdim=True)  # [R, 1]
    ids = winner * size + torch.arange(size, device=logits.device)  # [R, size]
    inside = padded.gather(1, ids).double()
    second = torch.where(inside > 0, inside / exponential(rows, ids, SALT_TOKEN), -1.0)
    return ids.gather(1, second.argmax(dim=1, keepdim=True)).squeeze(1)


BUCKET = 64  # ids per bucket when the top candidates are found through bucket maxima
BUCKETED_FROM = 32_768  # vocabularies at least this large (and a multiple of BUCKET) take that path
UNIT_ROUNDOFF = 2.0**-24  # float32's


def lse_margin(top: torch.Tensor, temperature: float, vocab: int) -> torch.Tensor:
    """[R] float64: twice a bound on |log_normaliser - the exact log sum exp of the float32 divided
    scores| (HF's scores, whose probabilities the nucleus adds), for rows whose maximum logit is top [R].

    With u = 2**-24 and s = l / T: HF's division rounds each score by u |s|, and the mean |s| under the
    row's softmax is at most |s_max| + ln V (E[s_max - s] <= the entropy <= ln V); the shifted terms
    (l - top) / T round by at most 2u |s_max - s|, 2u ln V on average; exp rounds each term by about
    2u, and BUCKET - 1 float32 additions by (BUCKET - 1) u. The fast tier leaves a row whose cut lies
    within this of top_p to the float64 normaliser."""
    bound = UNIT_ROUNDOFF * ((top.double() / temperature).abs() + 3 * math.log(vocab) + BUCKET + 1)
    return 2 * bound


def top_candidates(logits: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `size` largest values of each row and their ids, [R, size] each (in no defined order).

    At a large vocabulary, through bucket maxima: every value above the size-th largest lies in a
    bucket whose maximum is above it, and there are fewer than `size` such buckets, so the top
    `size` buckets hold them all; only their size x 64 values are searched. Which of several
    values equal to the size-th largest is returned is unspecified, as with topk."""
    n_rows, vocab = logits.shape
    n_buckets = vocab // BUCKET
    if vocab < BUCKETED_FROM or vocab % BUCKET or size * 4 > n_buckets:
        return logits.topk(size, dim=-1)
    maxima = _fused_on_cpu(_bucket_maxima, logits)  # [R, buckets]: one pass over the row
    buckets = maxima.topk(size, dim=-1).indices  # [R, size]
    inside = logits.view(n_rows, n_buckets, BUCKET).gather(1, buckets[:, :, None].expand(-1, -1, BUCKET))
    values, where = inside.view(n_rows, -1).topk(size, dim=-1)  # where: into [R, size * BUCKET]
    return values, buckets.gather(1, where // BUCKET) * BUCKET + where % BUCKET


def _bucket_maxima(logits: torch.Tensor) -> torch.Tensor:
    """The maximum of each bucket of BUCKET consecutive ids: [R, V // BUCKET], in the logits' dtype."""
    return logits.view(logits.shape[0], -1, BUCKET).amax(dim=-1)


def _shifted_lse(logits: torch.Tensor, top: torch.Tensor, temperature: float) -> torch.Tensor:
    """log sum exp((l - top) / T) per row, [R, 1]: float32 terms (bf16 logits upcast exactly), summed
    BUCKET at a time in float32 and the bucket sums in float64, in one loop where compiled. Its error
    is bounded by lse_margin (about 1e-7 in practice): nucleus() sends rows whose cut lies that close
    to top_p to a tier with the float64 normaliser."""
    n_rows, vocab = logits.shape
    terms = torch.exp((logits.float() - top) / temperature)
    if vocab % BUCKET:
        return torch.log(terms.double().sum(dim=-1, keepdim=True))
    return torch.log(terms.view(n_rows, -1, BUCKET).sum(dim=-1).double().sum(dim=-1, keepdim=True))


def exact_lse(scores: torch.Tensor) -> torch.Tensor:
    """log sum exp of divided scores [R, V] in float64, a block of rows at a time: [R, 1] float64."""
    chunk = max(1, FALLBACK_ELEMENTS // scores.shape[-1])
    return torch.cat([torch.logsumexp(part.double(), dim=-1, keepdim=True) for part in scores.split(chunk)])


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


def _fused_on_cpu(fn, logits: torch.Tensor, *args) -> torch.Tensor:
    """fn(logits, *args), compiled into one loop over the row on the CPU at a large vocabulary (eager
    reductions there take several passes, and bf16 ones about 3x a float32 one's time); eager
    elsewhere or where compiling fails. Compiled and eager give the same maxima, and normalisers within
    lse_margin."""
    if logits.device.type == "cpu" and logits.shape[-1] >= BUCKETED_FROM and FUSED_ON_CPU:
        try:
            return _compiled(fn)(logits, *args)
        except Exception as exc:  # no C++ compiler, an unsupported platform: the eager ops give the same value
            _disable_fused(exc)
    return fn(logits, *args)


def log_normaliser(logits: torch.Tensor, top: torch.Tensor, temperature: float) -> torch.Tensor:
    """log sum exp(l / T) over each row of logits [R, V] whose maxima are `top` [R, 1]: [R, 1] float64.

    Computed as top / T + log sum exp((l - top) / T), the same value within lse_margin, from one read of
    the row (torch's logsumexp takes four passes on the CPU, a third of a decode step on a real model)."""
    return top.double() / temperature + _fused_on_cpu(_shifted_lse, logits, top, temperature)


FUSED_ON_CPU = os.environ.get("POSRESAMPLE_FUSED_LSE", "1") != "0"  # 0: torch's eager ops only


def _disable_fused(exc: Exception) -> None:
    global FUSED_ON_CPU
    FUSED_ON_CPU = False
    logging.getLogger(__name__).warning(
        "torch.compile of the sampler's normaliser failed (%s): using eager ops",
        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
    )


def _kept(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None, prefilter: int, wide_prefilter: int
):
    """Yield (row indices, or None for all rows; token ids [r, C] or None for the whole vocabulary;
    kept probabilities [r, C or V]), deciding each row in the first tier that can."""
    if top_k is not None:  # top-k's k-th score needs the divided row: the full path
        yield from _kept_scores(
            apply_temperature_top_k(logits, temperature, top_k), top_p, top_k, prefilter, wide_prefilter
        )
        return
    # The row stays in the model's dtype (bf16 upcasts exactly to float32): the candidates and the
    # normaliser's fused loop read it as float32, and no float32 copy of the whole row is made.
    n_rows, vocab = logits.shape
    size = min(prefilter, vocab)
    values, ids = top_candidates(logits, size)  # [R, size] raw logits: dividing by T > 0 keeps their order
    values = values.float()
    top = values.max(dim=-1, keepdim=True).values  # [R, 1] each row's maximum
    lse = log_normaliser(logits, top, temperature)  # [R, 1] float64
    top_prob = (top[:, 0].double() / temperature - lse[:, 0]).exp()  # [R]: the top score is top / T bit for bit
    hopeful = size * top_prob >= min(top_p, 1.0)
    top_scores, top_ids = order_candidates(values / temperature, ids)  # HF's division, on the candidates only
    margin = lse_margin(top[:, 0], temperature, vocab)
    probs, fits = nucleus(top_scores, lse, top_p, complete=size == vocab, margin=margin)
    fits &= hopeful  # `size` tokens cannot hold top_p of the mass when size * p_max < top_p
    if bool(fits.all()):
        yield None, top_ids, probs
        return
    if bool(fits.any()):
        yield torch.nonzero(fits)[:, 0], top_ids[fits], probs[fits]
    rest = torch.nonzero(~fits)[:, 0]
    if len(rest):  # the wider tiers see the divided rows of the undecided ones only, normalised in float64
        scores = logits[rest].float() / temperature
        for which, tier_ids, probs in _kept_scores(scores, top_p, None, wide_prefilter, wide_prefilter):
            yield rest if which is None else rest[which], tier_ids, probs


def _kept_scores(
    scores: torch.Tensor,
    top_p: float,
    top_k: int | None,
    prefilter: int,
    wide_prefilter: int,
    lse: torch.Tensor | None = None,
):
    """_kept on divided scores [R, V] (top-k applied): the tiers by topk, then bottom-up, then a full sort."""
    n_rows, vocab = scores.shape
    chunk = max(1, FALLBACK_ELEMENTS // vocab)
    if lse is None:
        lse = exact_lse(scores)  # [R, 1]
    top_prob = (scores.max(dim=-1).values.double() - lse[:, 0]).exp()  # [R]
    pending = torch.arange(n_rows, device=scores.device)
    sizes = dict.fromkeys(min(max(size, top_k or 0), vocab) for size in (prefilter, wide_prefilter))
    for size in [s for s in sizes if s < vocab] or [vocab]:  # the whole vocabulary: the bottom-up tier below
        # `size` tokens cannot hold top_p of the mass when size * p_max < top_p: such rows skip the tier
        hopeful = size * top_prob[pending] >= min(top_p, 1.0)
        undecided = [pending[~hopeful]]
        for part in pending[hopeful].split(chunk if size > prefilter else n_rows):
            if not len(part):  # no row hopeful at this size: split() still gives one empty part
                continue
            top_scores, top_ids = order_candidates(*top_candidates(scores[part], size))
            probs, fits = nucleus(top_scores, lse[part], top_p, complete=size == vocab)  # complete: a tiny vocabulary
            if bool(fits.all()):
                yield (None if len(part) == n_rows else part), top_ids, probs  # n_rows rows: 0..n-1 in order
            elif bool(fits.any()):
                yield part[fits], top_ids[fits], probs[fits]
            undecided.append(part[~fits])
        pending = torch.cat(undecided).sort().values  # ascending: all rows again is the identity
        if not len(pending):
            return
    tail = max(1, vocab // TAIL_FRACTION)
    for part in pending.split(chunk):
        if top_p >= 1.0:
            yield part, None, probabilities(scores[part], lse[part])
            continue
        probs, fits = bottom_up(scores[part], lse[part], top_p, tail)
        if bool(fits.any()):
            yield part[fits], None, probs[fits]
        if bool((~fits).any()):  # a dropped tail longer than vocab/8: the full sort, top-down
            rest = part[~fits]
            all_scores, all_ids = scores[rest].sort(dim=-1, descending=True, stable=True)
            yield rest, all_ids, nucleus(all_scores, lse[rest], top_p, complete=True)[0]


def sample_tokens(
    logits: torch.Tensor,
    rows: torch.Tensor,
    temperature: float,
    top_p: float,
    top_k: int | None = None,
    prefilter: int = DEFAULT_PREFILTER,
    wide_prefilter: int = WIDE_PREFILTER,
) -> torch.Tensor:
    """Draw one token per row from logits [R, V] with per-row noise hashes `rows` [R] -> [R]."""
    vocab = logits.shape[-1]
    if top_k is None and top_p >= 1.0:  # every token kept: one race over the tempered row, no nucleus
        chunk = max(1, FALLBACK_ELEMENTS // vocab)
        return torch.cat(
            [race_tempered(part, picks, temperature) for part, picks in zip(logits.split(chunk), rows.split(chunk))]
        )
    chosen = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    for which, ids, probs in _kept(logits, temperature, top_p, top_k, prefilter, wide_prefilter):
        picks = rows if which is None else rows[which]
        drawn = race_vocabulary(probs, picks) if ids is None else race(probs, ids, picks, vocab)
        if which is None:
            return drawn
        chosen[which] = drawn
    return chosen


def processed_probs(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    top_k: int | None = None,
    prefilter: int = DEFAULT_PREFILTER,
    wide_prefilter: int = WIDE_PREFILTER,
) -> torch.Tensor:
    """The distribution sample_tokens draws from, dense [R, V]: for tests against HF's warpers."""
    dense = torch.zeros(logits.shape, dtype=torch.float64, device=logits.device)
    for which, ids, probs in _kept(logits, temperature, top_p, top_k, prefilter, wide_prefilter):
        probs = probs / probs.sum(dim=-1, keepdim=True)
        rows = torch.zeros(len(probs), logits.shape[-1], dtype=torch.float64, device=logits.device)
        rows = probs if ids is None else rows.scatter(-1, ids, probs)
        if which is None:
            return rows.float()
        dense[which] = rows
    return dense.float()
