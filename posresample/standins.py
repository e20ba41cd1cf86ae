"""Offline stand-ins for the real assets: a tokenizer trained here, a random tiny Gemma 2, a probe.

Used by `cli.py demo`, the tests and the CPU benchmark. `gemma2_2b_config()` gives gemma-2-2b's
exact shapes for GPU benchmarks with random weights (same FLOPs and bytes, no download).
"""

from __future__ import annotations

import os
from importlib import resources

import torch

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0, 1, 2, 3 as in Gemma


def sample_conllu_path() -> str:
    return str(resources.files("posresample.fixtures").joinpath("sample.conllu"))


def _corpus() -> list[str]:
    from .data import read_conllu

    texts = [s.text for s in read_conllu(sample_conllu_path())]
    return texts * 4 + [t.lower() for t in texts]


def build_tokenizer(out_dir: str, vocab_size: int = 300, texts: list[str] | None = None):
    """A BPE tokenizer with Gemma's special ids, a leading BOS and offsets, saved as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"), pre_tokenizers.Punctuation("isolated")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts if texts is not None else _corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out_dir)
    return fast


def tiny_gemma2_config(vocab_size: int, **overrides):
    from transformers import Gemma2Config

    args = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=128,
        query_pre_attn_scalar=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    args.update(overrides)
    return Gemma2Config(**args)


def gemma2_2b_config():
    """google/gemma-2-2b's config.json, for random-weight benchmarks with the real shapes."""
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=8192,
        sliding_window=4096,
        query_pre_attn_scalar=256,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
        rope_theta=10000.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def build_model(config, seed: int = 0, out_dir: str | None = None, dtype=torch.float32, device=None):
    """A randomly initialised Gemma2ForCausalLM (eager attention keeps the soft-cap).

    `device` builds (and initialises) it there: gemma-2-2b's shapes take seconds on a GPU.
    """
    from transformers import Gemma2ForCausalLM

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    with torch.device(device or "cpu"):
        model = Gemma2ForCausalLM(config)
    model = model.to(dtype).eval()
    if out_dir:
        model.save_pretrained(out_dir)
    return model


def build_assets(out_dir: str, seed: int = 0) -> str:
    """Tokenizer + tiny model saved together in `out_dir` (loadable like a hub id). Returns the dir."""
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    build_model(tiny_gemma2_config(len(tokenizer)), seed=seed, out_dir=out_dir)
    return out_dir
