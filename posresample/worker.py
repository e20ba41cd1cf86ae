"""worker: claim jobs, sample, write completions; heartbeats in a thread; clean stop on signals.

The loop reads top-down: register, start the heartbeat, claim-and-process until no job is left
(waiting while another worker's lease is pending), mark the worker stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from itertools import groupby

from tqdm import tqdm

from . import queue
from .config import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, DEFAULT_STOP_GRACE
from .queue import ClaimedJob, LeaseLost
from .sampler import Aborted, SampleRequest, SamplingParams

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often an idle worker looks for work while others hold leases


@dataclass
class WorkerOptions:
    device: str = "cpu"
    batch_jobs: int = 8  # jobs claimed per transaction (prefixes sampled together)
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    stop_grace: float = DEFAULT_STOP_GRACE
    wait: bool = True  # wait for other workers' leases instead of exiting
    progress: bool = True


def noise_key(job: ClaimedJob) -> int:
    """The sample noise depends on the prefix's place in the dataset, not on row ids of one database."""
    return job.dataset_idx * 65536 + job.target_position


class Worker:
    def __init__(self, engine, sampler_factory, opts: WorkerOptions):
        self.engine = engine
        self.sampler_factory = sampler_factory  # model name -> sampler (loaded lazily, kept)
        self.opts = opts
        self.id = queue.new_worker_id()
        self.stop_requested = threading.Event()
        self.stop_deadline: float | None = None
        self._heartbeat_stop = threading.Event()
        self._samplers: dict[str, object] = {}
        self.jobs_done = self.lost = self.failed = 0
        self.samples = self.tokens = self.eos = 0

    def run(self) -> int:
        queue.register_worker(self.engine, self.id, self.opts.device, self.opts.lease_seconds)
        log.info("worker %s on %s", self.id, self.opts.device)
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        bar = tqdm(desc="jobs", unit="job", disable=not self.opts.progress)
        try:
            self._loop(bar)
        finally:
            bar.close()
            self._heartbeat_stop.set()
            beat.join(timeout=5)
            queue.stop_worker(self.engine, self.id)
            self._log_summary()
        return 0

    def _loop(self, bar) -> None:
        while not self.stop_requested.is_set():
            claimed = queue.claim_jobs(self.engine, self.id, self.opts.batch_jobs, self.opts.lease_seconds, self.opts.max_attempts)
            if claimed:
                self._process(claimed, bar)
                continue
            pending = queue.pending(self.engine, self.opts.max_attempts)
            if pending.todo + pending.running_live + pending.running_expired == 0:
                log.info("no job left")
                return
            if not self.opts.wait:
                log.info("no claimable job (%d held by other workers); exiting (--no-wait)", pending.running_live)
                return
            bar.set_postfix_str(f"waiting on {pending.running_live} leased job(s)")
            self.stop_requested.wait(POLL_SECONDS)

    def _process(self, claimed: list[ClaimedJob], bar) -> None:
        by_params = [list(g) for _, g in groupby(claimed, key=lambda j: j.params["params_id"])]
        for i, group in enumerate(by_params):
            if self.stop_requested.is_set() and self._past_deadline():
                released = queue.release_jobs(self.engine, [j for g in by_params[i:] for j in g], self.id)
                log.info("stopping: released %d job(s)", released)
                return
            self._process_group(group, bar)

    def _process_group(self, group: list[ClaimedJob], bar) -> None:
        p = group[0].params
        params = SamplingParams(p["temperature"], p["top_p"], p["top_k"], p["max_new_tokens"], p["seed"])
        requests = [SampleRequest(j.prefix_token_ids, noise_key(j), tuple(range(p["num_samples"]))) for j in group]
        try:
            sampler = self._sampler(p["model"])
            results = sampler.sample(requests, params, should_abort=self._past_deadline)
        except Aborted:
            released = queue.release_jobs(self.engine, group, self.id)
            log.info("stopping: grace time over, released %d job(s)", released)
            return
        except Exception as exc:  # a job must not kill the worker: record the error on each job
            log.exception("sampling failed for jobs %s", [j.id for j in group])
            for job in group:
                state = queue.fail_job(self.engine, job, self.id, f"{type(exc).__name__}: {exc}", self.opts.max_attempts)
                self.failed += state == "failed"
            return
        for job, samples in zip(group, results):
            self._write(sampler, job, samples)
            bar.update(1)

    def _write(self, sampler, job: ClaimedJob, samples) -> None:
        rows = [
            dict(sample_index=i, text=sampler.decode(s.token_ids), token_ids=s.token_ids,
                 num_tokens=len(s.token_ids), finish_reason=s.finish_reason)
            for i, s in enumerate(samples)
        ]
        try:
            queue.complete_job(self.engine, job, self.id, rows)
        except LeaseLost as exc:
            self.lost += 1
            log.warning("%s", exc)
            return
        self.jobs_done += 1
        self.samples += len(rows)
        self.tokens += sum(r["num_tokens"] for r in rows)
        self.eos += sum(r["finish_reason"] == "eos" for r in rows)

    def _sampler(self, model: str):
        if model not in self._samplers:
            self._samplers[model] = sampler = self.sampler_factory(model)
            queue.record_sampler(self.engine, self.id, model, sampler.describe())
        return self._samplers[model]

    def _past_deadline(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline

    def _heartbeat_loop(self) -> None:
        interval = self.opts.lease_seconds / 3
        while not self._heartbeat_stop.wait(interval):
            try:
                queue.heartbeat(self.engine, self.id, self.opts.lease_seconds)
            except Exception:  # a database hiccup must not kill the heartbeat; the lease has slack
                log.warning("heartbeat failed", exc_info=True)

    def request_stop(self) -> None:
        if not self.stop_requested.is_set():
            self.stop_deadline = time.monotonic() + self.opts.stop_grace
            self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        def handle(signum, _frame):
            if self.stop_requested.is_set():
                os._exit(128 + signum)  # second signal: leave now; the leases expire on their own
            log.warning("%s: finishing the current batch (up to %.0fs), then stopping; signal again to quit now",
                        signal.Signals(signum).name, self.opts.stop_grace)
            self.request_stop()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    def _log_summary(self) -> None:
        avg = self.tokens / self.samples if self.samples else 0.0
        eos = self.eos / self.samples if self.samples else 0.0
        log.info("worker %s: %d job(s) done, %d lost lease, %d failed; %d completions, "
                 "average length %.2f tokens, EOS share %.1f%%", self.id, self.jobs_done, self.lost, self.failed,
                 self.samples, avg, 100 * eos)
