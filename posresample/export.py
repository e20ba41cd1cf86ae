"""export: one JSONL record per done candidate with its completions, after a metadata header.

Streams from the database (two cursors merged on job id) into the output, so memory stays flat.
`.jsonl.zst` compresses with zstandard; `-` writes to stdout. A file is written to a temporary
name and renamed at the end, so an interrupted export leaves no half file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import stat
import sys
import time
from importlib import metadata as importlib_metadata

from tqdm import tqdm

from . import __version__, db, scan_store
from .config import PARAM_FIELDS
from .data import UPOS_NAMES
from .errors import ExportError

# /2: prefix.probe_pred is the tag name (as in the seed's schema), its id moved to probe_pred_id;
#     excluded_labels keep the order the user gave.
EXPORT_FORMAT = "posresample.export/2"
PACKAGES = ("torch", "transformers", "scikit-learn", "sqlalchemy", "alembic", "datasets", "tokenizers")


LABEL_CHUNK = 200  # records written per progress update (and per step of the label stream)


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def package_versions() -> dict:
    versions = {"posresample": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[name] = importlib_metadata.version(name)
    return versions


def header(
    scan: dict, params: dict, counts: dict, candidates: int, samplers: list[dict], taggers: list[dict] | None = None
) -> dict:
    return {
        "metadata": {
            "format": EXPORT_FORMAT,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scan": scan["name"],
            "model": scan["model"],
            "layer": scan["layer"],
            "dataset": scan["dataset"],
            "split": scan["split"],
            "probe_path": scan["probe_path"],
            "probe_sha256": scan["probe_sha256"],
            "probe_classes": list(scan["probe_classes"]),
            "probe_class_names": [UPOS_NAMES[i] for i in scan["probe_classes"]],
            "threshold": scan["threshold"],
            "excluded_labels": [UPOS_NAMES[i] for i in scan["excluded_labels"]],
            "label_names": list(UPOS_NAMES),
            "generation_params": _params(params, scan["layer"]) | {"id": params["id"]},
            "package_versions": package_versions(),
            "samplers": samplers,  # [{"jobs": n, "sampler": {decode, compile, dtype, device, versions}}]
            "taggers": taggers or [],  # the taggers whose labels the records carry (label stage)
            "counts": {
                "sentences_scanned": scan["sentences_done"],
                "sentences_total": scan["sentences_total"],
                "candidates": candidates,
                "jobs": counts,
                "records": counts.get("done", 0),
            },
        }
    }


def _params(params: dict, layer: int) -> dict:
    return {"model": params["model"], "layer": layer} | {k: params[k] for k in PARAM_FIELDS if k != "model"}


def record(head: dict, rows: list[dict], gen: dict, labels: tuple[dict, dict] | None = None) -> dict:
    """One candidate with its completions; with labels, each completion's `upos` per tagger, the
    record's empirical `label_counts` per tagger, and the tagger's label on the original sentence."""
    out = _record(head, rows, gen)
    if labels:
        per_completion, per_candidate = labels
        counts: dict[str, dict[str, int]] = {}
        for row, completion in zip(rows, out["completions"]):
            completion["upos"] = per_completion.get(row["id"], {})
            for tagger, upos in completion["upos"].items():
                if upos is not None:
                    counts.setdefault(tagger, {})[upos] = counts.setdefault(tagger, {}).get(upos, 0) + 1
        out["label_counts"] = {t: dict(sorted(c.items(), key=lambda kv: -kv[1])) for t, c in counts.items()}
        out["original_upos"] = per_candidate.get(head["id"], {})
    return out


def _record(head: dict, rows: list[dict], gen: dict) -> dict:
    return {
        "dataset_idx": head["dataset_idx"],
        "sent_id": head["sent_id"],
        "candidate_id": head["id"],
        "job_id": head["job_id"],
        "prefix": {
            "text": head["prefix_text"],
            "token_ids": list(head["prefix_token_ids"]),
            "target_position": head["target_position"],
            "target_token": head["target_token"],
            "target_token_id": head["target_token_id"],
            "true_label": head["true_label"],
            "true_label_name": head["true_label_name"],
            "probe_probs": list(head["probe_probs"]),
            "probe_pred": head["probe_pred_name"],
            "probe_pred_id": head["probe_pred"],
            "probe_max_prob": head["probe_max_prob"],
        },
        "sentence_text": head["sentence_text"],
        "generation_params": gen,
        "completions": [
            {
                "text": r["text"],
                "token_ids": list(r["token_ids"]),
                "num_tokens": r["num_tokens"],
                "finish_reason": r["finish_reason"],
            }
            for r in rows
        ],
    }


OUTPUT_SUFFIXES = (".jsonl", ".zst")  # JSONL, or JSONL compressed with zstandard (.jsonl.zst)


def is_stream(path: str) -> bool:
    """'-', a pipe, a device or a socket: written straight into, never replaced by a file."""
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there yet: a new regular file
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextlib.contextmanager
def open_output(path: str):
    """A text stream for '-', a pipe or device, a .jsonl or a .jsonl.zst path; files appear only when
    complete (written beside and renamed), while a pipe or device is written in place."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    if is_stream(path):
        with open(path, "wb") as raw:
            yield from _text_streams(raw, path)
        return
    tmp = f"{path}.partial"
    try:
        with open(tmp, "wb") as raw:
            yield from _text_streams(raw, path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _text_streams(raw, path: str):
    if path.endswith(".zst"):
        import zstandard

        with (
            zstandard.ZstdCompressor(level=10).stream_writer(raw, closefd=False) as zst,
            io.TextIOWrapper(zst, encoding="utf-8") as text,
        ):
            yield text
    else:
        with io.TextIOWrapper(raw, encoding="utf-8") as text:
            yield text


def run_export(
    engine, out: str, scan_name: str | None = None, params_id: int | None = None, progress: bool = True
) -> dict:
    """Write the header and every done record; returns the header's metadata."""
    check_output(out)
    try:
        return _export(engine, out, scan_name, params_id, progress)
    except OSError as exc:  # a full disk or a vanished folder while writing: the partial file is gone
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None


def check_output(out: str) -> None:
    """Refuse an output that cannot be a file before reading anything."""
    if is_stream(out):
        return
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ExportError(
            f"cannot write {out}: it is a folder; give a file name such as {os.path.join(out, 'export.jsonl')}"
        )
    if not os.path.isdir(folder):
        raise ExportError(f"cannot write {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ExportError(f"cannot write {out}: folder {folder} is not writable")
    if not out.lower().endswith(OUTPUT_SUFFIXES):
        raise ExportError(
            f"cannot write {out}: export writes .jsonl or .jsonl.zst (or - for stdout), "
            f"not {os.path.splitext(out)[1] or 'a file without a suffix'}"
        )


def _export(engine, out: str, scan_name: str | None, params_id: int | None, progress: bool) -> dict:
    with db.read(engine) as conn:
        scan = scan_store.pick_scan(conn, scan_name)
        params = scan_store.pick_params(conn, scan["id"], params_id)
        counts = scan_store.job_counts(conn, scan["id"], params["id"])
        n_candidates = sum(counts.values())
        taggers = scan_store.taggers_used(conn, scan["id"], params)
        meta = header(scan, params, counts, n_candidates, scan_store.samplers_used(conn, scan["id"], params), taggers)
        gen = _params(params, scan["layer"])
        with open_output(out) as stream:
            stream.write(json.dumps(meta, ensure_ascii=False) + "\n")
            bar = tqdm(total=counts.get("done", 0), desc="export", unit="rec", disable=not progress)
            written = 0
            label_stream = scan_store.LabelStream(conn, scan["id"], params) if taggers else None
            for chunk in _chunks(scan_store.iter_done(conn, scan["id"], params), LABEL_CHUNK):
                labels = (
                    (label_stream.upto(chunk[-1][0]["job_id"]), label_stream.per_candidate) if label_stream else None
                )
                for head, rows in chunk:
                    stream.write(json.dumps(record(head, rows, gen, labels), ensure_ascii=False) + "\n")
                written += len(chunk)
                bar.update(len(chunk))
            bar.close()
    meta["metadata"]["counts"]["records"] = written
    return meta["metadata"]
