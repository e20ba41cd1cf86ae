"""Checks that need a CUDA device; skipped without one (run them on the GPU machine)."""

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_probe_on_gpu_equals_predict_proba():
    from sklearn.linear_model import LogisticRegression

    from posresample.probe import Probe

    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 2304)).astype(np.float32)
    est = LogisticRegression(max_iter=100).fit(X, rng.integers(0, 15, 500))
    probe = Probe("mem", "0" * 64, est, tuple(range(15)), est.coef_, est.intercept_)
    ours = probe.to_torch("cuda").predict_proba(torch.tensor(X, device="cuda")).cpu().numpy()
    assert np.allclose(ours, est.predict_proba(X), atol=1e-5)


def test_bf16_sampler_is_deterministic_for_a_fixed_batch(tiny_dir):
    from posresample.lm import load_model, load_tokenizer
    from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

    model = load_model(tiny_dir, torch.device("cuda"))
    tok = load_tokenizer(tiny_dir)
    params = SamplingParams(0.7, 0.95, None, 16, 123)
    requests = [
        SampleRequest(tok(t)["input_ids"], i, tuple(range(96))) for i, t in enumerate(["I like", "The run took"])
    ]
    first = [[s.token_ids for s in r] for r in Sampler(model, tok).sample(requests, params)]
    again = [[s.token_ids for s in r] for r in Sampler(model, tok).sample(requests, params)]
    assert first == again and all(len(r) == 96 for r in first)


def test_shared_prefix_decode_runs_in_bf16(tiny_dir):
    from posresample.lm import load_model, load_tokenizer
    from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

    model = load_model(tiny_dir, torch.device("cuda"))
    tok = load_tokenizer(tiny_dir)
    requests = [SampleRequest(tok("The back door")["input_ids"], 0, tuple(range(96)))]
    out = Sampler(model, tok, decode="fast").sample(requests, SamplingParams(0.7, 0.95, None, 16, 123))
    assert len(out[0]) == 96 and all(1 <= len(s.token_ids) <= 16 for s in out[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_draws_what_the_eager_step_draws(tiny_dir, dtype):
    from transformers import AutoModelForCausalLM

    from posresample.lm import load_tokenizer
    from posresample.sampling.sampler import Sampler, SampleRequest, SamplingParams

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=dtype, attn_implementation="eager").to("cuda").eval()
    tok = load_tokenizer(tiny_dir)
    params = SamplingParams(0.7, 0.95, None, 16, 123)
    requests = [
        SampleRequest(tok(t)["input_ids"], i, tuple(range(96))) for i, t in enumerate(["I like", "The run took"])
    ]
    eager, graphed = Sampler(model, tok, decode="fast"), Sampler(model, tok, decode="fast", compile="cuda-graph")
    for chunk in (requests, requests[:1]):  # two chunks of different shapes: each captures its own graph
        want = [[s.token_ids for s in r] for r in eager.sample(chunk, params)]
        assert [[s.token_ids for s in r] for r in graphed.sample(chunk, params)] == want
