"""The shared-prefix Gemma 2 decode step against the HF forward, on the tiny model (float32, CPU)."""

import pytest
import torch

from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams
from tests.helpers import assert_samples_agree


def decode_logits(model, tokenizer):
    """(decoder logits, HF forward logits) per step for 3 prefixes x 2 samples fed the same tokens."""
    from transformers import DynamicCache

    from posresample.sampling.fast_decode import SharedPrefixDecoder

    prefixes = [tokenizer(t)["input_ids"] for t in ["The back door was", "I like", "They light the fire at"]]
    sampler = Sampler(model)
    ids, mask = sampler._left_pad(prefixes)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    sampler._forward(ids, mask, positions, cache)
    decoder = SharedPrefixDecoder(model, cache, mask, positions, 2, max_steps=3)
    torch.manual_seed(0)
    fed = torch.randint(4, model.config.vocab_size, (len(prefixes) * 2, 3))
    out = []
    with torch.inference_mode():
        for step in range(3):
            ours = decoder.forward(fed[:, step]).clone()
            theirs = torch.stack(
                [
                    model(input_ids=torch.tensor([prefixes[row // 2] + fed[row, : step + 1].tolist()])).logits[0, -1]
                    for row in range(len(fed))
                ]
            )
            out.append((ours, theirs))
    return out


def test_shared_prefix_step_equals_hf_forward_where_both_soft_caps_bite(tiny_dir, tokenizer):
    from posresample import standins

    base = standins.tiny_gemma2_config(len(tokenizer))
    capped = standins.build_model(
        standins.tiny_gemma2_config(len(tokenizer), attn_logit_softcapping=0.02, final_logit_softcapping=0.05)
    )
    uncapped = standins.build_model(
        standins.tiny_gemma2_config(len(tokenizer), attn_logit_softcapping=None, final_logit_softcapping=None)
    )
    assert base.attn_logit_softcapping == 50.0
    capped_steps, free_steps = decode_logits(capped, tokenizer), decode_logits(uncapped, tokenizer)
    for (ours, theirs), (free, _) in zip(capped_steps, free_steps):
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert float(ours.abs().max()) <= 0.05 + 1e-6  # the final cap binds ...
        assert float((ours - free).abs().max()) > 0.05  # ... and changes the result


def test_decoder_refuses_a_sliding_window_it_would_cross(tokenizer):
    from transformers import DynamicCache

    from posresample import standins
    from posresample.sampling.fast_decode import SharedPrefixDecoder

    model = standins.build_model(standins.tiny_gemma2_config(len(tokenizer), sliding_window=6))
    sampler = Sampler(model)
    ids, mask = sampler._left_pad([tokenizer("They light the fire at")["input_ids"]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    sampler._forward(ids, mask, positions, cache)
    with pytest.raises(ValueError, match="inside the sliding window"):
        SharedPrefixDecoder(model, cache, mask, positions, 2, max_steps=4)


def test_shared_prefix_step_equals_hf_forward(tiny_model, tokenizer):
    for ours, theirs in decode_logits(tiny_model, tokenizer):
        assert torch.allclose(ours, theirs, atol=1e-4)


def completions(sampler, prefixes, n=16):
    params = SamplingParams(0.7, 0.95, None, 8, 123)
    requests = [SampleRequest(p, key=i, sample_indices=tuple(range(n))) for i, p in enumerate(prefixes)]
    return [[s.token_ids for s in out] for out in sampler.sample(requests, params)]


def test_fast_path_draws_the_same_samples_as_the_hf_path(tiny_model, tokenizer):
    prefixes = [tokenizer(t)["input_ids"] for t in ["Paris is a big", "The run", "You can book online or"]]
    hf = completions(Sampler(tiny_model, decode="hf"), prefixes)
    assert_samples_agree(completions(Sampler(tiny_model, decode="fast"), prefixes), hf)
    # max_rows 12 splits 16 samples into 12 + 4: unequal groups take the HF path, same samples.
    assert_samples_agree(completions(Sampler(tiny_model, decode="fast", max_rows=12), prefixes), hf)


def test_decoder_refuses_more_steps_than_its_cache_holds(tiny_model, tokenizer):
    from transformers import DynamicCache

    from posresample.sampling.fast_decode import SharedPrefixDecoder

    sampler = Sampler(tiny_model)
    ids, mask = sampler._left_pad([tokenizer("I like")["input_ids"]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=tiny_model.config)
    sampler._forward(ids, mask, positions, cache)
    decoder = SharedPrefixDecoder(tiny_model, cache, mask, positions, 2, max_steps=2)
    for _ in range(2):
        decoder.forward(torch.tensor([5, 6]))
    with pytest.raises(IndexError, match="sized for 2 steps"):
        decoder.forward(torch.tensor([5, 6]))


def test_compile_modes_are_checked(tiny_model):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Sampler(tiny_model, decode="fast", compile="cuda-graph")
    with pytest.raises(ValueError, match="decode 'fast' only"):
        Sampler(tiny_model, decode="hf", compile="inductor")
    with pytest.raises(ValueError, match="compile must be one of"):
        Sampler(tiny_model, decode="fast", compile="max")


def test_inductor_compiled_step_draws_the_same_samples(tiny_model, tokenizer):
    """torch.compile of the fixed-shape step (about 20 s of compiling on 2 CPU cores)."""
    prefixes = [tokenizer(t)["input_ids"] for t in ["Paris is a big", "The run", "You can book online or"]]
    hf = completions(Sampler(tiny_model, decode="hf"), prefixes)
    assert_samples_agree(completions(Sampler(tiny_model, decode="fast", compile="inductor"), prefixes), hf)
