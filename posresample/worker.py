"""worker: claim jobs, sample, write completions; heartbeats in a thread; clean stop on signals.

The loop reads top-down: register, start the heartbeat, claim-and-process until no job is left
(waiting while another worker's lease is pending), mark the worker stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from itertools import groupby

from tqdm import tqdm

from . import queue
from .config import DEFAULT_DB_RETRY_SECONDS, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, DEFAULT_STOP_GRACE
from .db import retrying
from .heartbeat import Heartbeat
from .queue import ClaimedJob, LeaseLost
from .sampling.sampler import Aborted, SampleRequest, SamplingParams

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often an idle worker looks for work while others hold leases


@dataclass
class WorkerOptions:
    device: str = "cpu"
    batch_jobs: int | None = None  # jobs claimed per transaction [default: default_batch_jobs(device)]
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    stop_grace: float = DEFAULT_STOP_GRACE
    wait: bool = True  # wait for other workers' leases instead of exiting
    progress: bool = True
    db_retry_seconds: float = DEFAULT_DB_RETRY_SECONDS  # how long a transient database error is retried
    max_jobs: int | None = None  # stop after claiming this many jobs (None: until the queue is empty)
    budget_file: str | None = None  # a --max-jobs budget shared with sibling workers (worker --devices)


class JobBudget:
    """How many more jobs this worker may claim under --max-jobs. With `path`, the budget is a
    number in a file that every worker of one `worker --devices` takes from under an exclusive
    lock, so N is N in all; jobs handed back unclaimed (or released on a stop) return to it."""

    def __init__(self, total: int | None, path: str | None = None):
        self.left, self.path = total, path

    def take(self, wanted: int) -> int:
        if self.path is not None:
            return self._update(lambda left: min(wanted, left), -1)
        if self.left is None:
            return wanted
        got = min(wanted, self.left)
        self.left -= got
        return got

    def give_back(self, count: int) -> None:
        if count <= 0:
            return
        if self.path is not None:
            self._update(lambda _left: count, +1)
        elif self.left is not None:
            self.left += count

    def _update(self, amount, sign: int) -> int:
        import fcntl

        with open(self.path, "r+", encoding="ascii") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            left = int(handle.read().strip() or 0)
            moved = amount(left)
            handle.seek(0)
            handle.truncate()
            handle.write(str(left + sign * moved))
            handle.flush()
        return moved


def noise_key(job: ClaimedJob) -> int:
    """A 63-bit key for the job's sample noise: a hash of (split, sentence index, target position,
    sentence text). Content, not row ids or paths, so the same scan reproduces its samples in any
    database on any host; the split and text keep scans of other splits or datasets apart."""
    identity = json.dumps([job.split, job.dataset_idx, job.target_position, job.sentence_text], ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(identity.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class Worker:
    def __init__(self, engine, sampler_factory, opts: WorkerOptions):
        self.engine = engine
        self.sampler_factory = sampler_factory  # model name -> sampler (loaded lazily, kept)
        self.opts = opts
        self.id = queue.new_worker_id()
        self.stop_requested = threading.Event()
        self.stop_deadline: float | None = None
        self._samplers: dict[str, object] = {}
        self.budget = JobBudget(opts.max_jobs, opts.budget_file)
        self.jobs_done = self.lost = self.failed = 0
        self.samples = self.tokens = self.eos = 0

    def run(self) -> int:
        self._db(queue.register_worker, self.engine, self.id, self.opts.device, self.opts.lease_seconds)
        log.info("worker %s on %s", self.id, self.opts.device)
        bar = tqdm(desc="jobs", unit="job", disable=not self.opts.progress)
        try:
            with Heartbeat(self._beat, self.opts.lease_seconds / 3):
                self._loop(bar)
        finally:
            bar.close()
            self._db(queue.stop_worker, self.engine, self.id)
            self._log_summary()
        return 0

    def _db(self, statement, *args):
        """A queue statement, retried with back-off while the database is unreachable or locked."""
        return retrying(lambda: statement(*args), self.opts.db_retry_seconds)

    def _beat(self) -> None:
        queue.heartbeat(self.engine, self.id, self.opts.lease_seconds)

    def _loop(self, bar) -> None:
        while not self.stop_requested.is_set():
            self._load_claimable_models()  # before claiming: a model that will not load costs no attempt
            allowed = self.budget.take(self.opts.batch_jobs)
            if allowed == 0:
                log.info("--max-jobs reached: stopping")
                return
            claimed = self._db(
                queue.claim_jobs,
                self.engine,
                self.id,
                allowed,
                self.opts.lease_seconds,
                self.opts.max_attempts,
                list(self._samplers),
            )
            self.budget.give_back(allowed - len(claimed))
            pending = self._db(queue.pending, self.engine, self.opts.max_attempts)
            left = pending.todo + pending.running_live + pending.running_expired
            bar.total = bar.n + left  # others drain the queue too: the total shrinks as they do
            bar.refresh()
            if claimed:
                self._process(claimed, bar)
                continue
            if left == 0:
                log.info("no job left")
                return
            if not self.opts.wait:
                log.info("no claimable job (%d held by other workers); exiting (--no-wait)", pending.running_live)
                return
            bar.set_postfix_str(f"waiting on {pending.running_live} leased job(s)")
            self.stop_requested.wait(POLL_SECONDS)

    def _load_claimable_models(self) -> None:
        for model in self._db(queue.claimable_models, self.engine, self.opts.max_attempts):
            self._sampler(model)

    def _process(self, claimed: list[ClaimedJob], bar) -> None:
        by_params = [list(g) for _, g in groupby(claimed, key=lambda j: j.params["params_id"])]
        for i, group in enumerate(by_params):
            if self.stop_requested.is_set() and self._past_deadline():
                released = self._db(queue.release_jobs, self.engine, [j for g in by_params[i:] for j in g], self.id)
                self.budget.give_back(released)
                log.info("stopping: released %d job(s)", released)
                return
            self._process_group(group, bar)

    def _process_group(self, group: list[ClaimedJob], bar) -> None:
        p = group[0].params
        params = SamplingParams(p["temperature"], p["top_p"], p["top_k"], p["max_new_tokens"], p["seed"])
        requests = [SampleRequest(j.prefix_token_ids, noise_key(j), tuple(range(p["num_samples"]))) for j in group]
        sampler = self._samplers[p["model"]]
        try:
            results = sampler.sample(requests, params, should_abort=self._past_deadline)
        except Aborted:
            released = self._db(queue.release_jobs, self.engine, group, self.id)
            self.budget.give_back(released)
            log.info("stopping: grace time over, released %d job(s)", released)
            return
        except Exception as exc:  # a job must not kill the worker: record the error on each job
            log.exception("sampling failed for jobs %s", [j.id for j in group])
            for job in group:
                state = self._db(
                    queue.fail_job, self.engine, job, self.id, f"{type(exc).__name__}: {exc}", self.opts.max_attempts
                )
                self.failed += state == "failed"
            return
        for job, samples in zip(group, results):
            self._write(sampler, job, samples)
            bar.update(1)

    def _write(self, sampler, job: ClaimedJob, samples) -> None:
        rows = [
            dict(
                sample_index=i,
                text=sampler.decode(s.token_ids),
                token_ids=s.token_ids,
                num_tokens=len(s.token_ids),
                finish_reason=s.finish_reason,
            )
            for i, s in enumerate(samples)
        ]
        try:
            self._db(queue.complete_job, self.engine, job, self.id, rows)
        except LeaseLost as exc:
            self.lost += 1
            log.warning("%s", exc)
            return
        self.jobs_done += 1
        self.samples += len(rows)
        self.tokens += sum(r["num_tokens"] for r in rows)
        self.eos += sum(r["finish_reason"] == "eos" for r in rows)

    def _sampler(self, model: str):
        """Load `model` once; a load error stops the worker (exit 1) with every job untouched."""
        if model not in self._samplers:
            self._samplers[model] = sampler = self.sampler_factory(model)
            self._db(queue.record_sampler, self.engine, self.id, model, sampler.describe())
        return self._samplers[model]

    def _past_deadline(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline

    def request_stop(self) -> None:
        if not self.stop_requested.is_set():
            self.stop_deadline = time.monotonic() + self.opts.stop_grace
            self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        def handle(signum, _frame):
            if self.stop_requested.is_set():
                os._exit(128 + signum)  # second signal: leave now; the leases expire on their own
            log.warning(
                "%s: finishing the current batch (up to %.0fs), then stopping; signal again to quit now",
                signal.Signals(signum).name,
                self.opts.stop_grace,
            )
            self.request_stop()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    def _log_summary(self) -> None:
        avg = self.tokens / self.samples if self.samples else 0.0
        eos = self.eos / self.samples if self.samples else 0.0
        log.info(
            "worker %s: %d job(s) done, %d lost lease, %d failed; %d completions, "
            "average length %.2f tokens, EOS share %.1f%%",
            self.id,
            self.jobs_done,
            self.lost,
            self.failed,
            self.samples,
            avg,
            100 * eos,
        )


def default_batch_jobs(device: str) -> int:
    """Jobs claimed and sampled together: 32 on a GPU, 4 on a CPU (a CPU step is slow; a small batch
    keeps its leases short and its share of the queue fair)."""
    return 32 if device.startswith("cuda") else 4


@dataclass
class SamplerChoice:
    """Which sampler a worker builds for each model the queue names."""

    device: str = "cpu"
    max_rows: int | None = None  # rows per decode batch (None: from free GPU memory)
    attn: str = "auto"
    decode: str = "hf"  # hf: the model's forward on copied KV; fast: the shared-prefix Gemma 2 step
    compile: str = "off"  # with decode fast: off, inductor or cuda-graph
    dtype: str = "auto"  # auto (bf16 on GPU, float32 on CPU), float32 or bfloat16
    fake: bool = False  # the model-free FakeSampler (queue tests and benchmarks)
    fake_delay: float = 0.0
    fake_poison_token: int | None = None

    def build(self, model_name: str):
        if self.fake:
            from .sampling.fake_sampler import FakeSampler

            return FakeSampler(delay=self.fake_delay, poison_token=self.fake_poison_token)
        import torch

        from .lm import dtype_name, load_model, load_tokenizer, sampling_dtype
        from .sampling.sampler import Sampler

        device = torch.device(self.device)
        dtype = sampling_dtype(self.dtype, device)
        log.info("loading %s on %s in %s", model_name, self.device, dtype_name(dtype))
        model = load_model(model_name, device, self.attn, dtype)
        return Sampler(
            model, load_tokenizer(model_name), max_rows=self.max_rows, decode=self.decode, compile=self.compile
        )


def worker_device(device: str, fake: bool = False) -> str:
    """cpu, cuda:N ...: `auto` resolved (the fake sampler needs no GPU: cpu)."""
    from .lm import pick_device

    return "cpu" if fake and device == "auto" else str(pick_device(device))


def run_worker(engine, opts: WorkerOptions, sampler: SamplerChoice) -> int:
    """Sample until the queue is empty (or --max-jobs, or a signal): the exit status."""
    if opts.batch_jobs is None:
        opts = replace(opts, batch_jobs=default_batch_jobs(opts.device))
    worker = Worker(engine, sampler.build, opts)
    worker.install_signal_handlers()
    return worker.run()
