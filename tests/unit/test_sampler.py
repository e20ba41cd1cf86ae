"""The shared-prefill sampler on the tiny Gemma 2: padding, KV sharing, reproducibility, EOS, OOM splits."""

import pytest
import torch

from posresample.lm import cache_kwarg
from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams
from tests.helpers import assert_samples_agree

PARAMS = SamplingParams(temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=8, seed=123)


@pytest.fixture
def prefixes(tokenizer):
    texts = ["I like the book", "They book a table every Friday", "The run", "Paris is a big city and"]
    return [tokenizer(t)["input_ids"] for t in texts]


def single_logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


@torch.inference_mode()
def test_left_padded_batch_gives_each_prefix_its_own_logits(tiny_model, prefixes):
    from transformers import DynamicCache

    sampler = Sampler(tiny_model)
    ids, mask = sampler._left_pad(prefixes)
    assert (mask.sum(-1) == torch.tensor([len(p) for p in prefixes])).all()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = sampler._forward(ids, mask, positions, DynamicCache(config=tiny_model.config))
    for row, prefix in enumerate(prefixes):
        assert torch.allclose(batched[row], single_logits(tiny_model, prefix), atol=1e-4)


@torch.inference_mode()
def test_shared_prefix_kv_equals_recomputing_the_prefix(tiny_model, prefixes):
    from transformers import DynamicCache

    sampler = Sampler(tiny_model)
    ids, mask = sampler._left_pad(prefixes[:2])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=tiny_model.config)
    sampler._forward(ids, mask, positions, cache)
    source = torch.tensor([0, 0, 0, 1, 1])  # 3 samples of prefix 0, 2 of prefix 1
    cache.reorder_cache(source)
    next_tokens = torch.tensor([[5], [9], [40], [5], [77]])
    mask = torch.cat([mask[source], torch.ones(5, 1, dtype=torch.long)], -1)
    step = sampler._forward(next_tokens, mask, positions[source, -1:] + 1, cache)
    for row, (src, tok) in enumerate(zip(source.tolist(), next_tokens[:, 0].tolist())):
        assert torch.allclose(step[row], single_logits(tiny_model, prefixes[src] + [tok]), atol=1e-4)


def run(sampler, prefixes, order, n=12):
    requests = [SampleRequest(prefixes[i], key=100 + i, sample_indices=tuple(range(n))) for i in order]
    return {i: [s.token_ids for s in out] for i, out in zip(order, sampler.sample(requests, PARAMS))}


def test_a_job_draws_the_same_samples_alone_or_batched(tiny_model, prefixes):
    alone = run(Sampler(tiny_model), prefixes, [2])
    batched = run(Sampler(tiny_model), prefixes, [0, 3, 2, 1])
    small_batches = run(Sampler(tiny_model, max_rows=5), prefixes, [1, 2])
    assert_samples_agree([alone[2], batched[1]], [batched[2], small_batches[1]])
    assert_samples_agree([alone[2]], [small_batches[2]])
    assert len({tuple(t) for t in alone[2]}) > 1  # the samples differ from one another


def test_same_seed_same_samples_other_seed_other_samples(tiny_model, prefixes):
    first = run(Sampler(tiny_model), prefixes, [0, 1])
    again = run(Sampler(tiny_model), prefixes, [0, 1])
    assert first == again
    other = Sampler(tiny_model).sample(
        [SampleRequest(prefixes[0], 100, tuple(range(12)))], SamplingParams(0.7, 0.95, None, 8, seed=124)
    )
    assert [s.token_ids for s in other[0]] != first[0]


def test_a_row_stops_at_eos(tiny_model, prefixes):
    sampler = Sampler(tiny_model)
    sampler.eos_ids = torch.arange(0, tiny_model.config.vocab_size, 8)  # one token in 8 ends a row
    out = sampler.sample([SampleRequest(prefixes[0], 1, tuple(range(64)))], PARAMS)[0]
    eos = set(sampler.eos_ids.tolist())
    reasons = {s.finish_reason for s in out}
    assert reasons == {"eos", "length"}
    for s in out:
        ends = [i for i, t in enumerate(s.token_ids) if t in eos]
        if s.finish_reason == "eos":
            assert ends == [len(s.token_ids) - 1]  # the EOS is the last token, nothing after it
        else:
            assert ends == [] and len(s.token_ids) == PARAMS.max_new_tokens


def test_out_of_memory_splits_the_batch_and_remembers(tiny_model, prefixes, monkeypatch):
    expected = run(Sampler(tiny_model), prefixes, [0, 1], n=96)
    sampler = Sampler(tiny_model, max_rows=192)
    real = sampler._run_chunk
    calls = []

    def flaky(requests, chunk, params, should_abort):
        rows = sum(len(u.sample_indices) for u in chunk)
        calls.append(rows)
        if rows > 48:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(requests, chunk, params, should_abort)

    monkeypatch.setattr(sampler, "_run_chunk", flaky)
    split = run(sampler, prefixes, [0, 1], n=96)
    assert_samples_agree([split[0], split[1]], [expected[0], expected[1]])
    assert calls[:3] == [192, 96, 48] and sampler.max_rows == 48
    assert sampler.oom_splits == 2
    calls.clear()
    run(sampler, prefixes, [3], n=96)
    assert calls == [48, 48]  # the smaller size is remembered


def test_cache_kwarg_matches_the_installed_transformers(tiny_model):
    import inspect

    assert cache_kwarg(tiny_model) in inspect.signature(tiny_model.forward).parameters
