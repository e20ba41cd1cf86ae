"""The package's two self-contained parts stay so: the statistics import neither torch nor
SQLAlchemy, and the sampling code imports no database code."""

import subprocess
import sys

STATS = ["confusion", "corrected_view", "deconvolution", "metrics", "raw_view", "verdict"]
SAMPLING = ["draw", "fake_sampler", "fast_decode", "sampler"]


def imported_after(statement: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after `statement`."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(run.stdout.split())


def test_the_statistics_import_neither_torch_nor_sqlalchemy():
    loaded = imported_after("; ".join(f"import posresample.stats.{name}" for name in STATS))
    assert "posresample" in loaded and "numpy" in loaded and "scipy" in loaded  # the check can see an import
    assert not {"torch", "sqlalchemy", "transformers"} & loaded, loaded


def test_the_sampling_code_imports_no_database_code():
    loaded = imported_after("; ".join(f"import posresample.sampling.{name}" for name in SAMPLING))
    assert "torch" in loaded
    assert not {"sqlalchemy", "alembic", "psycopg"} & loaded, loaded
