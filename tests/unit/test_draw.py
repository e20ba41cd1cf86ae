"""Sampling semantics: HF's warper chain, exact fallback beyond the prefilter, batch-independent noise."""

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from posresample.sampling.draw import (
    DEFAULT_PREFILTER,
    SALT_BUCKET,
    SALT_TOKEN,
    exponential,
    mix32,
    mix32_int32,
    processed_probs,
    row_hash,
    sample_tokens,
    to_int32,
)


def hf_probs(logits, temperature, top_p, top_k=None):
    chain = [TemperatureLogitsWarper(temperature)]
    if top_k is not None:
        chain.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList(chain)(None, logits.clone()).softmax(-1)


@pytest.mark.parametrize(
    "vocab,scale,temperature,top_p,top_k,prefilter",
    [
        (1000, 3.0, 0.7, 0.95, None, 256),  # peaked: the nucleus fits the prefilter
        (1000, 0.3, 0.7, 0.95, None, 16),  # flat: the nucleus exceeds the prefilter -> exact fallback
        (500, 2.0, 1.3, 0.9, 20, 64),  # top-k inside the prefilter
        (300, 1.0, 0.5, 0.99, 100, 8),  # top-k larger than the prefilter
        (64, 1.0, 0.7, 1.0, None, 8),  # no top-p: the full vocabulary
    ],
)
def test_probabilities_equal_hf_warpers(vocab, scale, temperature, top_p, top_k, prefilter):
    torch.manual_seed(vocab)
    logits = torch.randn(32, vocab) * scale
    ours = processed_probs(logits, temperature, top_p, top_k, prefilter=prefilter)
    assert torch.allclose(ours, hf_probs(logits, temperature, top_p, top_k), atol=1e-6)


def test_fallback_case_really_exceeds_the_prefilter():
    torch.manual_seed(0)
    logits = torch.randn(8, 1000) * 0.3
    kept = (hf_probs(logits, 0.7, 0.95) > 0).sum(-1)
    assert (kept > 16).all()  # so the test above exercised the fallback path


def tiered_logits():
    """Rows whose nucleus (t=0.7, p=0.95) fits 16 tokens, fits 128, or needs more, interleaved."""
    torch.manual_seed(3)
    scales = torch.tensor([6.0, 3.0, 0.2] * 8)[:, None]
    return torch.randn(24, 1000) * scales


def test_three_tiers_each_taken_and_equal_to_hf(monkeypatch):
    import posresample.sampling.draw as sampling

    logits = tiered_logits()
    kept = (hf_probs(logits, 0.7, 0.95) > 0).sum(-1)
    assert (kept <= 16).any() and ((kept > 16) & (kept <= 128)).any() and (kept > 128).any()
    monkeypatch.setattr(sampling, "FALLBACK_ELEMENTS", 5 * 1000)  # 5 rows per chunk beyond the first tier
    ours = processed_probs(logits, 0.7, 0.95, None, prefilter=16, wide_prefilter=128)
    assert torch.allclose(ours, hf_probs(logits, 0.7, 0.95), atol=1e-6)


def test_the_tier_a_row_ends_in_does_not_change_its_token(monkeypatch):
    import posresample.sampling.draw as sampling

    logits = tiered_logits()
    monkeypatch.setattr(sampling, "FALLBACK_ELEMENTS", 5 * 1000)
    for step in range(20):
        rows = row_hash(9, torch.arange(24), torch.zeros(24, dtype=torch.long), step)
        tiered = sample_tokens(logits, rows, 0.7, 0.95, None, prefilter=16, wide_prefilter=128)
        assert torch.equal(tiered, sample_tokens(logits, rows, 0.7, 0.95, None, prefilter=16, wide_prefilter=16))
        assert torch.equal(tiered, sample_tokens(logits, rows, 0.7, 0.95, None, prefilter=1000))


def test_samples_follow_the_distribution_chi_square():
    from scipy.stats import chisquare

    torch.manual_seed(1)
    logits = torch.randn(1, 12) * 1.5
    probs = processed_probs(logits, 0.7, 0.9, None, prefilter=4)[0]  # nucleus bigger than 4: fallback
    n = 20000
    rows = row_hash(123, torch.zeros(n, dtype=torch.long), torch.arange(n), 0)
    draws = sample_tokens(logits.expand(n, -1), rows, 0.7, 0.9, None, prefilter=4)
    observed = torch.bincount(draws, minlength=12).double()
    support = probs > 0
    assert observed[~support].sum() == 0  # nothing drawn outside the nucleus
    expected = probs[support].double() / probs[support].double().sum() * n
    assert chisquare(observed[support].numpy(), expected.numpy()).pvalue > 1e-3


def test_noise_depends_only_on_its_key():
    keys, idx = torch.tensor([5, 5, 9]), torch.tensor([0, 1, 0])
    h = row_hash(123, keys, idx, step=3)
    assert h[0] != h[1] and h[0] != h[2]
    assert torch.equal(row_hash(123, keys[[2, 0]], idx[[2, 0]], 3), h[[2, 0]])  # order and batch do not matter
    assert not torch.equal(row_hash(124, keys, idx, 3), h)
    e = exponential(
        row_hash(123, torch.arange(20), torch.zeros(20, dtype=torch.long), 0),
        torch.arange(1000).expand(20, -1),
        SALT_TOKEN,
    )
    u = torch.exp(-e)  # Exp(1) noise -> uniform (0, 1)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.002


def test_mix32_is_a_bijection_on_a_sample():
    x = torch.arange(0, 1 << 16, dtype=torch.long) * 65537
    assert mix32(x).unique().numel() == x.numel()
    assert int(mix32(x).max()) < 2**32 and int(mix32(x).min()) >= 0


def test_same_row_hash_same_token_whatever_the_batch():
    torch.manual_seed(2)
    logits = torch.randn(6, 400)
    rows = row_hash(7, torch.arange(6), torch.zeros(6, dtype=torch.long), 0)
    together = sample_tokens(logits, rows, 0.7, 0.95)
    alone = torch.stack([sample_tokens(logits[i : i + 1], rows[i : i + 1], 0.7, 0.95)[0] for i in range(6)])
    assert torch.equal(together, alone)


def reference_kept(logits_row: torch.Tensor, temperature: float, top_p: float) -> set[int]:
    """The kept set by definition: order by (score desc, id asc), keep while the mass above < top_p."""
    import numpy as np

    scores = (logits_row.float() / temperature).double().numpy()
    order = np.lexsort((np.arange(len(scores)), -scores))  # last key first: score desc, then id asc
    probs = np.exp(scores[order] - np.logaddexp.reduce(scores))
    above = np.cumsum(probs) - probs
    keep = above < top_p
    keep[0] = True
    return set(order[keep].tolist())


def bf16_softcapped(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Gemma-like final logits: soft-capped at 30 and rounded to bf16, so equal scores are common."""
    torch.manual_seed(seed)
    scales = torch.linspace(2.0, 12.0, rows)[:, None]
    raw = torch.randn(rows, vocab) * scales
    return (30 * torch.tanh(raw / 30)).to(torch.bfloat16).float()


def test_a_tie_straddling_the_cut_keeps_the_lowest_token_ids():
    # 10 tokens share the top score: top_p 0.35 keeps exactly the 4 lowest ids of them (mass above < 0.35)
    logits = torch.full((1, 300), -20.0)
    tied = torch.tensor([250, 7, 180, 33, 99, 2, 140, 61, 210, 5])
    logits[0, tied] = 5.0
    for prefilter in (4, 8, 16, 300):
        kept = processed_probs(logits, 1.0, 0.35, None, prefilter=prefilter, wide_prefilter=32)[0].nonzero().flatten()
        assert set(kept.tolist()) == {2, 5, 7, 33}, prefilter


def test_bf16_ties_give_the_same_kept_set_and_draws_in_every_tier():
    logits = bf16_softcapped(48, 20000, seed=4)
    straddles = 0
    for row in logits:
        kept = reference_kept(row, 0.7, 0.95)
        cut = (row / 0.7)[list(kept)].min()
        straddles += int(((row / 0.7) == cut).sum()) > sum(float(row[i] / 0.7) == float(cut) for i in kept)
    assert straddles >= 5  # the case the tie order exists for is really exercised
    tiers = {
        p: processed_probs(logits, 0.7, 0.95, None, prefilter=p, wide_prefilter=max(p, 512)) for p in (16, 256, 20000)
    }
    for row_index, row in enumerate(logits):
        expected = reference_kept(row, 0.7, 0.95)
        for p, probs in tiers.items():
            assert set(probs[row_index].nonzero().flatten().tolist()) == expected, (row_index, p)
    for step in range(10):
        hashes = row_hash(5, torch.arange(48), torch.zeros(48, dtype=torch.long), step)
        draws = [
            sample_tokens(logits, hashes, 0.7, 0.95, None, prefilter=p, wide_prefilter=max(p, 512))
            for p in (16, 256, 20000)
        ]
        assert torch.equal(draws[0], draws[1]) and torch.equal(draws[1], draws[2])


def test_top_p_one_keeps_the_whole_tail_as_hf_does():
    logits = torch.zeros(2, 5000)
    logits[:, 0] = 30.0  # the tail's mass rounds to nothing in a float32 cumulative sum
    for prefilter in (16, 5000):
        probs = processed_probs(logits, 0.7, 1.0, None, prefilter=prefilter)
        assert bool((probs > 0).all()), prefilter
        assert torch.allclose(probs, hf_probs(logits, 0.7, 1.0), rtol=1e-5, atol=0)


def test_the_bucket_and_token_streams_are_independent():
    """The race's two levels draw from two streams: the same id must not get the same noise in both."""
    rows = row_hash(1, torch.arange(512), torch.zeros(512, dtype=torch.long), 0)
    ids = torch.arange(64).expand(512, -1)
    a, b = exponential(rows, ids, SALT_BUCKET).flatten(), exponential(rows, ids, SALT_TOKEN).flatten()
    assert int((a == b).sum()) == 0 and abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.01


def test_the_int32_hash_is_bit_for_bit_the_reference_one():
    x = torch.cat(
        [
            torch.randint(0, 2**32, (100_000,), generator=torch.Generator().manual_seed(0)),
            torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1]),
        ]
    )
    assert torch.equal(mix32_int32(to_int32(x)).to(torch.int64) & 0xFFFFFFFF, mix32(x))


def test_a_flat_row_is_cut_bottom_up_exactly_as_top_down(monkeypatch):
    """Flat rows skip the prefilters and are cut from the bottom: the kept set and the draws equal the
    full sort's, ties at the boundary included."""
    import posresample.sampling.draw as sampling

    logits = torch.cat([bf16_softcapped(8, 3000, seed=6) * 0.05, torch.zeros(2, 3000)])  # flat, and wholly tied
    sorted_only = dict(prefilter=3000, wide_prefilter=3000)
    assert torch.equal(processed_probs(logits, 0.7, 0.95) > 0, processed_probs(logits, 0.7, 0.95, **sorted_only) > 0)
    tied = processed_probs(logits, 0.7, 0.95)[9].nonzero().flatten().tolist()
    assert tied == list(range(len(tied))) and 2840 < len(tied) < 2860  # the lowest ids of the tie group
    for step in range(5):
        rows = row_hash(2, torch.arange(10), torch.zeros(10, dtype=torch.long), step)
        assert torch.equal(
            sample_tokens(logits, rows, 0.7, 0.95), sample_tokens(logits, rows, 0.7, 0.95, **sorted_only)
        )
    monkeypatch.setattr(sampling, "TAIL_FRACTION", 1000)  # a tail too short to hold the cut: the full sort
    assert torch.equal(processed_probs(logits, 0.7, 0.95) > 0, processed_probs(logits, 0.7, 0.95, **sorted_only) > 0)


# --- a real vocabulary (262,144 ids): candidates through bucket maxima, a fused normaliser ----


def real_vocabulary_logits(rows: int = 12, seed: int = 5) -> torch.Tensor:
    """Gemma 3-sized rows, peaked to flat, rounded to bf16 so that equal logits are common."""
    torch.manual_seed(seed)
    scales = torch.linspace(0.3, 8.0, rows)[:, None]
    return (torch.randn(rows, 262_144) * scales).to(torch.bfloat16).float()


def test_bucketed_top_candidates_are_the_top_values():
    from posresample.sampling.draw import top_candidates

    logits = real_vocabulary_logits()
    for size in (16, 256, 4096):
        values, ids = top_candidates(logits, size)
        expected = logits.topk(size, dim=-1).values
        assert torch.equal(values.sort(-1).values, expected.sort(-1).values)  # the same values, ties included
        assert torch.equal(logits.gather(1, ids), values) and all(len(set(r.tolist())) == size for r in ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_normaliser_equals_torch_logsumexp(dtype):
    """Within the margin the fast tier leaves to the float64 normaliser, in the model's own dtype."""
    from posresample.sampling.draw import log_normaliser, lse_margin

    logits = real_vocabulary_logits().to(dtype)  # exact: the values are bf16 already
    for temperature in (0.7, 1.0, 1.7):
        top = logits.amax(-1, keepdim=True).float()
        ours = log_normaliser(logits, top, temperature)
        reference = torch.logsumexp((logits.float() / temperature).double(), dim=-1, keepdim=True)  # HF's scores
        margin = lse_margin(top[:, 0], temperature, logits.shape[-1])
        assert bool(((ours - reference)[:, 0].abs() < margin / 2).all())  # within the bound itself
        assert float(margin.max()) < 1e-4  # and the bound is tight enough to leave the fast tier its rows


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.95), (1.3, 0.9), (0.7, 1.0)])
def test_bf16_logits_draw_what_their_float32_values_draw(temperature, top_p):
    """A bf16 model's row is read in its own dtype (no float32 copy of it): the kept set and every
    draw are those of the same values in float32, in every tier and in any batch."""
    logits = real_vocabulary_logits(rows=6)
    low = logits.to(torch.bfloat16)
    assert torch.equal(processed_probs(low, temperature, top_p), processed_probs(logits, temperature, top_p))
    for step in range(4):
        rows = row_hash(3, torch.arange(6), torch.arange(6), step)
        expected = sample_tokens(logits, rows, temperature, top_p)
        assert torch.equal(sample_tokens(low, rows, temperature, top_p), expected)
        assert torch.equal(sample_tokens(low, rows, temperature, top_p, prefilter=16, wide_prefilter=16), expected)
        alone = [sample_tokens(low[i : i + 1], rows[i : i + 1], temperature, top_p)[0] for i in range(6)]
        assert torch.equal(torch.stack(alone), expected)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.95), (1.3, 0.9), (0.7, 1.0)])
def test_a_real_vocabulary_keeps_the_defined_set_and_draws_alike_in_any_batch(temperature, top_p):
    logits = real_vocabulary_logits(rows=6)
    dense = processed_probs(logits, temperature, top_p)
    for i, row in enumerate(logits):
        if top_p >= 1:  # every token kept (a float32 row underflows in the far tail: compare the values)
            expected = torch.softmax((row / temperature).double(), dim=-1).float()  # HF's float32 division
            assert torch.allclose(dense[i], expected, rtol=1e-5, atol=1e-9)
            continue
        assert set(torch.nonzero(dense[i])[:, 0].tolist()) == reference_kept(row, temperature, top_p)
    rows = row_hash(3, torch.arange(6), torch.arange(6), 1)
    together = sample_tokens(logits, rows, temperature, top_p)
    alone = torch.stack([sample_tokens(logits[i : i + 1], rows[i : i + 1], temperature, top_p)[0] for i in range(6)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("vocab", [1000, 4096, 262_144])
def test_top_p_one_draws_the_general_path_s_tokens_from_one_race_over_the_raw_logits(vocab):
    """At top-p 1 without top-k every token is kept: the race over exp((l - max) / T) picks the token
    the general path's race over the normalised float64 probabilities picks, row by row and step
    by step (the noise is the same; only float32 rounding of near ties could differ)."""
    from posresample.sampling.draw import exact_lse, probabilities, race_vocabulary

    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(16, vocab, generator=generator) * 3
    for temperature in (0.7, 1.0):
        for step in range(8):
            rows = row_hash(5, torch.arange(16), torch.arange(16), step)
            scores = logits / temperature
            general = race_vocabulary(probabilities(scores, exact_lse(scores)), rows)
            assert torch.equal(sample_tokens(logits, rows, temperature, 1.0), general)


def test_flat_rows_at_a_large_vocabulary_skip_a_tier_none_of_them_can_use():
    """Rows so flat that no `size` tokens can hold top-p of the mass skip that tier; at a vocabulary
    large enough for the bucketed search that left one empty part to search, which failed."""
    logits = torch.randn(4, 65_536, generator=torch.Generator().manual_seed(1)) * 0.3
    rows = row_hash(2, torch.arange(4), torch.arange(4), 0)
    one_tier = sample_tokens(logits, rows, 0.7, 0.95, wide_prefilter=DEFAULT_PREFILTER)
    assert torch.equal(one_tier, sample_tokens(logits, rows, 0.7, 0.95))
