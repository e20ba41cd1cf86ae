"""Gemma 3 past its sliding window: a tiny random Gemma 3 whose local layers see 6 tokens, so that
prefixes of 10-30 tokens and the steps after them run past the window, as the real model's 512-token
window is passed by a long sentence. The sampler's batched, left-padded prefill and its shared-prefix
decode steps must give each row the logits a plain forward pass over that row alone gives."""

import pytest
import torch

from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

WINDOW = 6


@pytest.fixture(scope="module")
def gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def prefixes():
    g = torch.Generator().manual_seed(1)
    return [[2] + torch.randint(3, 300, (n,), generator=g).tolist() for n in (29, 9, 17)]


def alone(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


@torch.inference_mode()
def test_prefill_and_steps_past_the_window_match_a_forward_pass_per_row(gemma3, prefixes):
    from transformers import DynamicCache, Gemma3ForCausalLM

    unwindowed = Gemma3ForCausalLM(type(gemma3.config)(**{**gemma3.config.to_dict(), "sliding_window": 256})).eval()
    unwindowed.load_state_dict(gemma3.state_dict())
    assert not torch.allclose(alone(unwindowed, prefixes[0]), alone(gemma3, prefixes[0]), atol=1e-3)  # the window bites

    sampler = Sampler(gemma3)
    ids, mask = sampler._left_pad(prefixes)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=gemma3.config)
    first = sampler._forward(ids, mask, positions, cache)
    for row, prefix in enumerate(prefixes):
        assert torch.allclose(first[row], alone(gemma3, prefix), atol=1e-4)
    source = torch.tensor([0, 0, 1, 2, 2])  # rows expanded as the sampler expands a prefix into samples
    cache.reorder_cache(source)
    mask, pos = mask[source], positions[source, -1:]
    grown = [list(prefixes[s]) for s in source.tolist()]
    g = torch.Generator().manual_seed(2)
    for _ in range(WINDOW + 3):  # more steps than the window holds
        step_tokens = torch.randint(3, 300, (len(source), 1), generator=g)
        mask = torch.cat([mask, torch.ones(len(source), 1, dtype=torch.long)], -1)
        pos = pos + 1
        logits = sampler._forward(step_tokens, mask, pos, cache)
        for row, tok in enumerate(step_tokens[:, 0].tolist()):
            grown[row].append(tok)
            assert torch.allclose(logits[row], alone(gemma3, grown[row]), atol=1e-4), (row, len(grown[row]))


def test_samples_past_the_window_do_not_depend_on_batching(gemma3, prefixes):
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=10, seed=5)
    sampler = Sampler(gemma3)

    def run(order):
        requests = [SampleRequest(prefixes[i], key=10 + i, sample_indices=tuple(range(4))) for i in order]
        return {i: [s.token_ids for s in out] for i, out in zip(order, sampler.sample(requests, params))}

    together = run([0, 1, 2])
    for i in range(3):
        assert run([i])[i] == together[i]
