"""Fixtures the integration tests share."""

import pytest


@pytest.fixture
def sampled(engine, tiny_dir, tiny_probe, sample_conllu, tiny_model, tokenizer):
    """6 candidates x 8 completions of the tiny model, sampled."""
    from posresample.scan import run_scan
    from tests.helpers import run_tiny_worker, scan_options

    run_scan(engine, scan_options(tiny_dir, tiny_probe, sample_conllu, max_prefixes=6), progress=False)
    run_tiny_worker(engine, tiny_model, tokenizer)
    return engine
