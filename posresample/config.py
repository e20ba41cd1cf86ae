"""Defaults, one per line, and the generation settings object shared by scan, worker and export."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields

DEFAULT_MODEL = "google/gemma-2-2b"  # the model the probe was trained on
DEFAULT_LAYER = 12  # hidden_states[12]: residual stream after 12 of Gemma 2 2B's 26 layers
DEFAULT_THRESHOLD = 0.95  # a token is a candidate when the probe's max probability is below this
DEFAULT_EXCLUDE = ("_", "SYM", "INTJ")  # labels the research probe was not trained on
DEFAULT_SPLIT = "validation"
DEFAULT_SCAN_NAME = "default"
DEFAULT_DB_URL = "sqlite:///posresample.db"
DB_ENV_VAR = "POSRESAMPLE_DB"

DEFAULT_NUM_SAMPLES = 96  # continuations per prefix
DEFAULT_MAX_NEW_TOKENS = 16  # tokens per continuation (fewer when EOS comes first)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = None  # off: HF generate would silently add top_k=50, we do not
DEFAULT_SEED = 123
DEFAULT_ORDER_SEED = 123  # scan: the seed of the random order in which its jobs drain
MAX_NUM_SAMPLES = 65_536  # continuations per prefix (96 is the study's)
MAX_NEW_TOKENS = 4_096  # Gemma 2's context is 8,192 tokens
INT32_MAX = 2**31 - 1  # integer columns (top_k, counts) are 32-bit
SEED_MAX = 2**63 - 1  # the seed column is 64-bit

DEFAULT_LEASE_SECONDS = 60.0  # a claimed job is reclaimable this long after the last heartbeat
DEFAULT_MAX_ATTEMPTS = 3  # claims before a job that keeps failing ends `failed`
DEFAULT_STOP_GRACE = 30.0  # seconds a signalled worker may spend finishing its batch
DEFAULT_LABEL_BATCH_JOBS = 16  # done jobs (x 96 completions) a label process claims and tags together
DEFAULT_LABEL_LEASE_SECONDS = 30.0  # a killed label process's jobs are taken over after this
DEFAULT_TAGGER_MAX_STEPS = 6000  # train-tagger: about 25 minutes on 2 CPU cores for EWT train
DEFAULT_TAGGER_MAX_EPOCHS = 20
DEFAULT_MIN_LABELLED = 20  # analyze: candidates with fewer labelled completions are left out
DEFAULT_REFITS = 10  # analyze: replicate studies of the parametric bootstrap behind the study's intervals
SAMPLING_DTYPES = ("auto", "float32", "bfloat16")  # worker --dtype; auto: bfloat16 on a GPU, float32 on a CPU
DEFAULT_DB_RETRY_SECONDS = 300.0  # a worker rides out a database outage (restart, lock) this long


def default_db_url() -> str:
    return os.environ.get(DB_ENV_VAR, DEFAULT_DB_URL)


@dataclass(frozen=True)
class GenerationParams:
    """How continuations are sampled: temperature -> top-k (if set) -> top-p, HF semantics."""

    model: str = DEFAULT_MODEL
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int | None = DEFAULT_TOP_K
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    num_samples: int = DEFAULT_NUM_SAMPLES
    seed: int = DEFAULT_SEED

    def validate(self) -> GenerationParams:
        from .errors import ConfigError

        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and not 1 <= self.top_k <= INT32_MAX:
            raise ConfigError(f"--top-k must be in [1, {INT32_MAX}], got {self.top_k}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ConfigError(f"--max-new-tokens must be in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens}")
        if not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise ConfigError(f"--num-samples must be in [1, {MAX_NUM_SAMPLES}], got {self.num_samples}")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"--seed must be in [0, 2**63), got {self.seed}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


PARAM_FIELDS = tuple(f.name for f in fields(GenerationParams))  # the generation_params columns
