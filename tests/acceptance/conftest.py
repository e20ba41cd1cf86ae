"""Fixtures the acceptance tests share."""

import pytest


@pytest.fixture
def scan_args(tiny_dir, tiny_probe, sample_conllu, tmp_path):
    db = tmp_path / "scan.db"

    def build(**over):
        opts = {
            "--probe": tiny_probe,
            "--dataset": sample_conllu,
            "--model": tiny_dir,
            "--layer": "2",
            "--device": "cpu",
            "--db": f"sqlite:///{db}",
            "--num-samples": "4",
            "--max-new-tokens": "4",
        }
        opts.update(over)
        return ["scan", *[x for kv in opts.items() for x in kv]]

    build.db = db
    return build
