"""label: the UPOS of the target word in every completion, by a tagger; resumable, parallel, crash-safe.

For each completion of a done job the text is the prefix and the continuation decoded together
from their token ids, and the target is the character span of the prefix's last token in it (its
leading space left out). The tagger's token covering that span is the label ("expand" alignment: a
target the continuation extends, " lead" + "ing the way", is the word "leading"). The candidate's
original sentence is tagged the same way, to measure the tagger on exactly these tokens.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from . import db, label_store
from .config import DEFAULT_DB_RETRY_SECONDS, DEFAULT_LABEL_BATCH_JOBS, DEFAULT_LABEL_LEASE_SECONDS
from .errors import DatabaseError, TaggerError
from .heartbeat import Heartbeat
from .queue import new_worker_id
from .tagger import TagResult, load_tagger

log = logging.getLogger(__name__)

HUMAN_PREFIX = "human:"  # people's labels (annotate); no machine tagger may take such a name
POLL_SECONDS = 1.0  # how often an idle label process (or the parent of several) looks again


@dataclass
class LabelOptions:
    tagger: str  # spacy:PATH_OR_PACKAGE
    tagger_name: str | None = None
    scan: str | None = None
    batch_jobs: int = DEFAULT_LABEL_BATCH_JOBS
    processes: int = 1
    lease_seconds: float = DEFAULT_LABEL_LEASE_SECONDS
    progress: bool = True
    db_retry_seconds: float = DEFAULT_DB_RETRY_SECONDS  # an outage or a held lock is ridden out this long


@dataclass
class LabelResult:
    tagger: str
    tagger_id: int
    added: int
    seconds: float
    summary: dict  # label_store.label_summary
    candidates_added: int


def detokenizer(model: str):
    """detokenize(ids) -> text with the model's tokenizer, special tokens skipped (what `target_span`
    wants); None where the tokenizer is not here (pages then show the stored texts)."""
    from .errors import ModelError
    from .lm import load_tokenizer

    try:
        tokenizer = load_tokenizer(model)
    except ModelError:
        return None
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def target_span(
    detokenize, prefix_ids: list[int], completion_ids: list[int], prefix_texts: tuple[str, str] | None = None
) -> tuple[str, tuple[int, int] | None]:
    """(prefix + continuation as text, the target token's span in it, or None where decoding the
    whole does not extend decoding the prefix). `detokenize` skips special tokens (BOS, EOS)."""
    before, prefix = prefix_texts or (detokenize(prefix_ids[:-1]), detokenize(prefix_ids))
    full = detokenize(prefix_ids + completion_ids)
    if not full.startswith(prefix) or not prefix.startswith(before):
        return full, None
    start, end = len(before), len(prefix)
    while start < end and full[start].isspace():  # " lead": the word starts after its space
        start += 1
    return full, (start, end)


def sentence_span(tokenizer, text: str, target_position: int) -> tuple[int, int] | None:
    """The target token's span in its original sentence (the scan tokenized that text)."""
    offsets = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)["offset_mapping"]
    if target_position >= len(offsets):
        return None
    start, end = offsets[target_position]
    while start < end and text[start].isspace():
        start += 1
    return start, end


def label_row(result: TagResult) -> dict:
    return {
        "upos": result.upos,
        "upos_name": result.upos_name,
        "tag": result.tag,
        "word": result.word,
        "status": result.status,
    }


class Labeller:
    """One label process: claim done jobs, tag their completions, write labels, until none is left."""

    def __init__(self, engine, tagger, tagger_id: int, opts: LabelOptions, scan_id: int | None):
        self.engine, self.tagger, self.tagger_id, self.opts, self.scan_id = engine, tagger, tagger_id, opts, scan_id
        self.owner = new_worker_id()
        self._tokenizers: dict[str, object] = {}
        self.added = 0

    def tokenizer(self, model: str):
        if model not in self._tokenizers:
            from .lm import load_tokenizer

            self._tokenizers[model] = load_tokenizer(model)
        return self._tokenizers[model]

    def _db(self, statement, *args):
        """A label_store statement, retried with back-off while the database is unreachable or locked."""
        return db.retrying(lambda: statement(self.engine, *args), self.opts.db_retry_seconds)

    def run(self, bar=None) -> int:
        try:
            with Heartbeat(
                lambda: label_store.renew_label_leases(
                    self.engine, self.tagger_id, self.owner, self.opts.lease_seconds
                ),
                self.opts.lease_seconds / 3,
                name="label lease",
            ):
                while True:
                    job_ids = self._db(
                        label_store.claim_label_jobs,
                        self.tagger_id,
                        self.owner,
                        self.opts.batch_jobs,
                        self.opts.lease_seconds,
                        self.scan_id,
                    )
                    if job_ids:
                        n = self.label_jobs(job_ids)
                        if bar is not None:
                            bar.update(n)
                        continue
                    todo, leased = self._db(label_store.label_backlog, self.tagger_id, self.scan_id)
                    if todo == 0:
                        return self.added
                    log.debug("%d job(s) leased by other label processes: waiting", leased)
                    time.sleep(POLL_SECONDS)  # their leases end in a write or expire
        finally:
            self._db(label_store.release_label_leases, self.tagger_id, self.owner)

    def label_jobs(self, job_ids: list[int]) -> int:
        targets = []
        prefix_texts: dict[int, tuple[str, str]] = {}
        for item in self._db(label_store.label_inputs, job_ids):
            tok = self.tokenizer(item.model)
            detokenize = lambda ids, tok=tok: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
            if item.job_id not in prefix_texts:  # the prefix is the same for a job's 96 completions
                prefix_texts[item.job_id] = (detokenize(item.prefix_token_ids[:-1]), detokenize(item.prefix_token_ids))
            text, span = target_span(detokenize, item.prefix_token_ids, item.token_ids, prefix_texts[item.job_id])
            targets.append(({"completion_id": item.completion_id}, text, span))
        rows = self._tag(targets)
        self.added += self._db(label_store.write_labels, self.tagger_id, self.owner, job_ids, rows)
        return len(rows)

    def label_candidates(self) -> int:
        targets = []
        for cand in self._db(label_store.unlabelled_candidates, self.tagger_id, self.scan_id):
            span = sentence_span(self.tokenizer(cand["model"]), cand["sentence_text"], cand["target_position"])
            targets.append(({"candidate_id": cand["id"]}, cand["sentence_text"], span))
        return self._db(label_store.write_candidate_labels, self.tagger_id, self._tag(targets))

    def _tag(self, targets: list[tuple[dict, str, tuple[int, int] | None]]) -> list[dict]:
        """Fill each (row, text, span) row with the tagger's result; no span is status no_span."""
        spanned = [(row, text, span) for row, text, span in targets if span is not None]
        results = self.tagger.tag([text for _, text, _ in spanned], [span for _, _, span in spanned])
        for (row, _, _), result in zip(spanned, results):
            row.update(label_row(result))
        for row, _, span in targets:
            if span is None:
                row.update(label_row(TagResult("no_span")))
        return [row for row, _, _ in targets]


def run_label(engine, db_url: str, opts: LabelOptions, verbose: bool = False) -> LabelResult:
    """Check the input, register the tagger, tag the original sentences, then the completions
    (in this process, or in `opts.processes` child processes).

    The tagger is loaded (and its sidecar read) before the database is touched; `engine` comes from
    db.open_database (label creates no schema); every statement rides out an outage
    or a held lock for `opts.db_retry_seconds`, at start-up too."""
    if (opts.tagger_name or "").startswith(HUMAN_PREFIX):
        raise TaggerError(
            f"--tagger-name {opts.tagger_name}: names starting with {HUMAN_PREFIX!r} are people's "
            "labels, written by `cli.py annotate` only"
        )
    tagger = load_tagger(opts.tagger, opts.tagger_name)
    identity = tagger.identity()
    if identity["name"].startswith(HUMAN_PREFIX):
        raise TaggerError(
            f"tagger name {identity['name']}: names starting with {HUMAN_PREFIX!r} are people's labels; "
            "pass another --tagger-name"
        )
    retry = lambda call, *args: db.retrying(lambda: call(*args), opts.db_retry_seconds)  # noqa: E731
    scan_id = retry(_check_database, engine, opts.scan)
    tagger_id = retry(label_store.register_tagger, engine, identity)
    start = time.monotonic()
    labeller = Labeller(engine, tagger, tagger_id, opts, scan_id)
    candidates_added = labeller.label_candidates()
    retry(label_store.queue_done_jobs, engine, tagger_id, scan_id)
    backlog, _ = retry(label_store.label_backlog, engine, tagger_id, scan_id)
    bar = tqdm(total=backlog, desc="label", unit="text", disable=not opts.progress)
    if opts.processes > 1:
        before = retry(label_store.label_summary, engine, tagger_id, scan_id)["labels"]
        _run_children(engine, db_url, opts, tagger_id, scan_id, bar, verbose)
        added = retry(label_store.label_summary, engine, tagger_id, scan_id)["labels"] - before
    else:
        added = labeller.run(bar)
    bar.close()
    return LabelResult(
        tagger.name,
        tagger_id,
        added,
        time.monotonic() - start,
        retry(label_store.label_summary, engine, tagger_id, scan_id),
        candidates_added,
    )


def _check_database(engine, scan_name: str | None) -> int | None:
    """The scan exists and something is sampled (the schema was checked by db.open_database). -> scan id"""
    from .scan_store import pick_scan

    scan_id = None
    if scan_name is not None:
        with db.read(engine) as conn:
            scan_id = pick_scan(conn, scan_name)["id"]
    if label_store.done_completion_count(engine, scan_id) == 0:
        raise DatabaseError("no sampled completions to label: run `cli.py scan` and `cli.py worker` first")
    return scan_id


def _run_children(engine, db_url, opts: LabelOptions, tagger_id: int, scan_id, bar, verbose: bool) -> None:
    """`processes` label processes on the same database; this one shows their progress."""
    from .supervise import die_with_parent

    args = [
        sys.executable,
        "-m",
        "posresample.cli",
        *(["-v"] if verbose else []),
        "label",
        "--db",
        db_url,
        "--tagger",
        opts.tagger,
        "--batch",
        str(opts.batch_jobs),
        "--lease-seconds",
        str(opts.lease_seconds),
        "--processes",
        "1",
        "--no-progress",
        "--db-retry-seconds",
        str(opts.db_retry_seconds),
    ]
    args += ["--tagger-name", opts.tagger_name] if opts.tagger_name else []
    args += ["--scan", opts.scan] if opts.scan else []
    parent = os.getpid()
    children = [
        subprocess.Popen(args, stdout=subprocess.DEVNULL, preexec_fn=lambda: die_with_parent(parent))
        for _ in range(opts.processes)
    ]
    total = bar.total
    while any(c.poll() is None for c in children):
        time.sleep(POLL_SECONDS)  # progress is read from the database
        left, _ = db.retrying(lambda: label_store.label_backlog(engine, tagger_id, scan_id), opts.db_retry_seconds)
        bar.update(total - left - bar.n)
    failed = [c.returncode for c in children if c.returncode != 0]
    if failed:
        raise DatabaseError(
            f"{len(failed)} of {len(children)} label processes failed (exit codes {failed}); "
            "run `cli.py label` again to finish: labelled rows are kept"
        )
