"""posresample: resample continuations where a POS probe on Gemma 2 is unsure."""

__version__ = "0.1.0"
