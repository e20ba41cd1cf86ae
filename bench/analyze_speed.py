"""How long `analyze` takes, and how much memory, at the study's size and beyond.

    python bench/analyze_speed.py --candidates 4000
    python bench/analyze_speed.py --candidates 1000,4000,16000
    python bench/analyze_speed.py --candidates 4000 --per-word

Builds a known-truth SQLite database (tests/known_truth.py: a scan of N candidates x 96 completions
of ~70 characters, each labelled, written through the project's own statements), then, in a fresh
process per size, times the analysis (SQL reads, the corrected view: EM, the Gibbs posterior, the
probe test, the deconvolution and its bootstrap; the raw view) and the report (CSV, JSON, six PNGs,
the HTML page) and reads the peak resident memory and the CPU seconds. --per-word: the tagger's
stored confusion carries per-word counts (tests/known_truth.py's draw_word_study), so the headline
corrects each candidate with its own word's confusion.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from common import REPO, emit, machine


def build(path: str, n: int, per_word: bool = False) -> float:
    import numpy as np

    from posresample import db
    from tests.known_truth import as_study, draw_study, draw_word_study, write_study

    start = time.perf_counter()
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    rng = np.random.default_rng(0)
    if per_word:
        words = draw_word_study(n, rng)
        write_study(engine, as_study(words, rng), words.measured, words=words.words)
    else:
        study = draw_study(n, rng)
        write_study(engine, study, study.measured)
    engine.dispose()
    return time.perf_counter() - start


def measure(path: str, out: str) -> dict:
    """In this (fresh) process: analyze and report, with time, CPU and peak memory."""
    from posresample import db
    from posresample.analyze import run_analyze
    from posresample.report import write_report

    engine = db.make_engine(f"sqlite:///{path}")
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = run_analyze(engine, min_labelled=20)
    analysed = time.perf_counter() - t0
    t1 = time.perf_counter()
    paths = write_report(result, out)
    reported = time.perf_counter() - t1
    return {
        "analyze": analysed,
        "report": reported,
        "cpu": time.process_time() - cpu0,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "html_mb": paths["html_bytes"] / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default="4000", help="sizes, comma-separated")
    parser.add_argument("--per-word", action="store_true", help="a confusion per word type (the headline's then)")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # internal: DB OUT, in a fresh process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    emit(
        f"# {machine('cpu')}, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}; known-truth SQLite, "
        "96 completions of ~70 characters per candidate, each labelled"
        + ("; per-word confusion" if args.per_word else "")
    )
    emit(
        "| candidates x labelled completions | build the database | analyze | report | analyze + report | CPU | peak "
        "RSS | index.html |"
    )
    emit("|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.candidates.split(",")):
        with tempfile.TemporaryDirectory() as work:
            path = os.path.join(work, "bench.db")
            built = build(path, n, args.per_word)
            run = subprocess.run(
                [sys.executable, __file__, "--measure", path, os.path.join(work, "report")],
                capture_output=True,
                text=True,
                cwd=REPO,
                check=True,
            )
            m = json.loads(run.stdout.strip().splitlines()[-1])
        emit(
            f"| {n:,} x 96 | {built:.0f} s | {m['analyze']:.1f} s | {m['report']:.1f} s | "
            f"{m['analyze'] + m['report']:.1f} s | "
            f"{m['cpu']:.1f} s | {m['rss_mib']:.0f} MiB | {m['html_mb']:.1f} MB |"
        )


if __name__ == "__main__":
    main()
