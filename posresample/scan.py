"""scan: run the model once per sentence, apply the probe to every labelled token, store candidates.

Everything that can be wrong with the input (dataset, probe, model, layer) is checked before the
database is touched. Progress is saved with each batch of sentences, so a re-run resumes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from . import db, scan_store
from .config import DEFAULT_LEASE_SECONDS, DEFAULT_ORDER_SEED, GenerationParams
from .data import UPOS_NAMES, Sentence, TokenizedSentence, load_sentences, tokenize_with_labels
from .heartbeat import Heartbeat
from .lm import (
    check_layer,
    layer_activations,
    load_model,
    load_tokenizer,
    model_dtype,
    model_ref,
    pad_batch,
    pick_device,
)
from .probe import check_readout, check_sidecar, load_probe, validate_probe
from .queue import new_worker_id

log = logging.getLogger(__name__)
SENTENCE_BATCH = 32  # sentences per forward pass
MAX_BATCH_TOKENS = 8192  # cap on padded tokens per forward pass


@dataclass
class ScanOptions:
    probe: str
    dataset: str
    split: str
    model: str
    layer: int
    threshold: float
    exclude: tuple[int, ...]
    params: GenerationParams
    name: str
    max_prefixes: int | None = None
    device: str | None = None
    attn: str = "auto"
    batch_size: int = SENTENCE_BATCH
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # a second process of this scan is refused while the lease is live
    trust_probe: bool = False  # unpickle the probe as it is (runs any code it names), not only linear classifiers
    stop_after_seconds: float | None = None  # stop (resumably) after the batch that crosses this much time
    order: str | None = (
        None  # random or dataset (scan_store.JOB_ORDERS); None: random when new, as stored when resuming
    )
    order_seed: int = DEFAULT_ORDER_SEED  # the random order's seed


@dataclass
class ScanResult:
    scan: dict
    candidates: int
    added: int
    params_id: int


def run_scan(engine, opts: ScanOptions, progress: bool = True, loaded: tuple | None = None) -> ScanResult:
    """`loaded`: (model, tokenizer) already in memory (benchmarks, demo); otherwise opts.model is loaded."""
    sentences = load_sentences(opts.dataset, opts.split)
    probe = load_probe(opts.probe, trust=opts.trust_probe)
    device = pick_device(opts.device)
    ref = model_ref(opts.model)  # a .gguf file is recorded by its sha256, so any host's copy serves the jobs
    opts = replace(opts, model=ref, params=replace(opts.params, model=ref))
    model, tokenizer = loaded or (load_model(ref, device, opts.attn), load_tokenizer(ref))
    check_layer(model, opts.layer)
    validate_probe(probe, model.config.hidden_size)
    check_sidecar(probe, ref, opts.layer, model_dtype(model))

    db.ensure_schema(engine, migrate=True)
    identity = dict(
        dataset=os.path.abspath(opts.dataset) if os.path.exists(opts.dataset) else opts.dataset,
        split=opts.split,
        model=opts.model,
        layer=opts.layer,
        probe_sha256=probe.sha256,
        threshold=opts.threshold,
        excluded_labels=list(opts.exclude),
        dtype=model_dtype(model),
        attn=model.config._attn_implementation,
    )
    extra = dict(
        probe_path=os.path.abspath(opts.probe), probe_classes=list(probe.class_ids), sentences_total=len(sentences)
    )
    owner = new_worker_id()
    scan, pid = scan_store.open_scan(
        engine, opts.name, identity, extra, opts.params, owner, opts.lease_seconds, opts.order, opts.order_seed
    )
    try:
        with Heartbeat(
            lambda: scan_store.renew_scan_lease(engine, scan["id"], owner, opts.lease_seconds),
            opts.lease_seconds / 3,
            name="scan lease",
        ):
            added, total = _scan_sentences(
                engine, scan, pid, owner, sentences, _Scorer(model, tokenizer, probe, opts, device), opts, progress
            )
            scan = scan_store.finish_scan(engine, scan["id"])
    finally:
        scan_store.release_scan_lease(engine, scan["id"], owner)
    _log_summary(scan, total, added)
    return ScanResult(scan=scan, candidates=total, added=added, params_id=pid)


def _scan_sentences(
    engine,
    scan: dict,
    pid: int,
    owner: str,
    sentences: list[Sentence],
    scorer: _Scorer,
    opts: ScanOptions,
    progress: bool,
) -> tuple[int, int]:
    """Score batches from where the scan stopped until the end or --max-prefixes. -> (added, total).

    Candidates already stored (a run stopped inside a sentence, a reset counter) are left out of the
    rows, so the limit counts only new ones; each pass either moves past a sentence or stores a new
    candidate, so the loop always ends.
    """
    total = scan_store.count_candidates(engine, scan["id"])
    added, pos, limit = 0, scan["sentences_done"], opts.max_prefixes
    if pos:
        log.info("resuming scan %r at sentence %d of %d (%d candidates so far)", opts.name, pos, len(sentences), total)
    bar = _progress_bar(limit, total, pos, len(sentences), progress)
    deadline = None if opts.stop_after_seconds is None else time.monotonic() + opts.stop_after_seconds
    while pos < len(sentences) and (limit is None or total < limit):
        batch = sentences[pos : pos + opts.batch_size]
        stored = scan_store.candidate_positions(engine, scan["id"], batch[0].idx, batch[-1].idx)
        rows, seen, skipped, next_pos = scorer.score(batch, None if limit is None else limit - total, stored)
        new = scan_store.save_scan_batch(engine, scan["id"], pid, rows, next_pos, seen, skipped, owner=owner)
        if next_pos == pos and new == 0:
            raise RuntimeError(f"scan made no progress at sentence {pos}")  # a bug, never a user error
        total, added, pos = total + new, added + new, next_pos
        bar.update(new if limit else pos - bar.n)
        bar.set_postfix_str(f"sentences {pos}/{len(sentences)}" if limit else f"candidates {total}")
        if deadline is not None and time.monotonic() >= deadline:  # after the batch that crossed it: resumable
            break
    bar.close()
    return added, total


def _progress_bar(limit: int | None, total: int, pos: int, n_sentences: int, progress: bool):
    """Sentences against the split; under --max-prefixes, candidates against the limit."""
    if limit is not None:
        return tqdm(total=limit, initial=min(total, limit), desc="scan", unit="cand", disable=not progress)
    return tqdm(total=n_sentences, initial=pos, desc="scan", unit="sent", disable=not progress)


def _log_summary(scan: dict, total: int, added: int) -> None:
    log.info(
        "scan %r: %d/%d sentences, %d labelled tokens seen, %d skipped (true label not in the probe's classes)",
        scan["name"],
        scan["sentences_done"],
        scan["sentences_total"],
        scan["tokens_seen"],
        scan["tokens_skipped_unknown_label"],
    )
    log.info("%d candidates (%d new) under threshold %.3g", total, added, scan["threshold"])
    if total == 0:
        log.warning("no token has a max probability under %.3g: nothing to sample", scan["threshold"])


class _Scorer:
    """Tokenize, run the first `layer` layers on a right-padded batch, apply the probe on the device."""

    def __init__(self, model, tokenizer, probe, opts: ScanOptions, device):
        self.model, self.tokenizer, self.probe, self.opts, self.device = model, tokenizer, probe, opts, device
        self.torch_probe = probe.to_torch(device)
        self.class_ids = set(probe.class_ids)
        self.readout_checked = False

    def score(self, batch: list[Sentence], limit: int | None, stored: set = frozenset()):
        """-> (new candidate rows, labelled tokens seen, skipped, index of the next sentence to scan).

        `stored` holds (dataset_idx, position) pairs already in the database, left out of the rows.
        """
        encoded = [tokenize_with_labels(self.tokenizer, s) for s in batch]
        probs = self._probe_probs(encoded)
        rows, seen, skipped = [], 0, 0
        for sentence, enc, p in zip(batch, encoded, probs):
            sentence_rows, s_seen, s_skipped = self._sentence_candidates(sentence, enc, p)
            sentence_rows = [r for r in sentence_rows if (r["dataset_idx"], r["target_position"]) not in stored]
            if limit is not None and len(rows) + len(sentence_rows) >= limit:
                # Stop inside this sentence; record it as not done so a larger --max-prefixes redoes it
                # (duplicates are ignored by the unique key).
                return rows + sentence_rows[: limit - len(rows)], seen, skipped, sentence.idx
            rows += sentence_rows
            seen, skipped = seen + s_seen, skipped + s_skipped
        return rows, seen, skipped, batch[-1].idx + 1

    @torch.inference_mode()
    def _probe_probs(self, encoded: list[TokenizedSentence]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for group in _token_groups(encoded, MAX_BATCH_TOKENS):
            ids, mask = pad_batch([e.input_ids for e in group], self.tokenizer.pad_token_id or 0)
            hidden = layer_activations(
                self.model, ids.to(self.device), mask.to(self.device), self.opts.layer
            )  # [B, T, D]
            features = hidden[mask.to(self.device).bool()]  # [N, D]
            if not self.readout_checked:  # once, on real activations, before any candidate is stored
                check_readout(self.probe, features)
                self.readout_checked = True
            probs = self.torch_probe.predict_proba(features)  # [N, C]
            out += list(probs.cpu().split([len(e.input_ids) for e in group]))
        return out

    def _sentence_candidates(self, sentence: Sentence, enc: TokenizedSentence, probs: torch.Tensor):
        rows, seen, skipped = [], 0, 0
        for pos in range(1, len(enc.input_ids)):
            label = enc.labels[pos]
            if label is None:
                continue
            seen += 1
            if label in self.opts.exclude:
                continue
            if label not in self.class_ids:
                skipped += 1
                continue
            p = probs[pos]
            max_prob, arg = float(p.max()), int(p.argmax())
            if max_prob >= self.opts.threshold:
                continue
            rows.append(self._row(sentence, enc, pos, label, p, max_prob, self.probe.class_ids[arg]))
        return rows, seen, skipped

    def _row(self, sentence, enc, pos, label, probs, max_prob, pred) -> dict:
        prefix = enc.input_ids[: pos + 1]
        return dict(
            dataset_idx=sentence.idx,
            sent_id=sentence.sent_id,
            sentence_text=sentence.text,
            target_position=pos,
            target_token_id=prefix[-1],
            target_token=self.tokenizer.decode([prefix[-1]]),
            prefix_text=self.tokenizer.decode(prefix, skip_special_tokens=True),
            prefix_token_ids=prefix,
            true_label=label,
            true_label_name=UPOS_NAMES[label],
            probe_probs=[float(x) for x in probs],
            probe_pred=pred,
            probe_pred_name=UPOS_NAMES[pred],
            probe_max_prob=max_prob,
        )


def _token_groups(encoded: list[TokenizedSentence], max_tokens: int):
    group: list[TokenizedSentence] = []
    for e in encoded:
        width = max([len(x.input_ids) for x in group] + [len(e.input_ids)])
        if group and width * (len(group) + 1) > max_tokens:
            yield group
            group = []
        group.append(e)
    if group:
        yield group
