"""How fast `label` tags completions, against a plain loop over the same spaCy pipeline.

    python cli.py demo                      # a database with 160 candidates x 96 completions
    python bench/label_speed.py --tagger spacy:taggers/ewt --db demo_out/posresample.db

Side by side in one run, on copies of the database: the label stage with 1 and 2 processes
(nlp.pipe batching, only the tok2vec + morphologizer pipes, each distinct text tagged once), and a
plain loop that calls the same pipeline once per completion text (`nlp(text)`, then the same span
lookup). Reports completions/s and the share of the label stage's time spent writing to the database.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posresample import db, label_store  # noqa: E402
from posresample.label import Labeller, LabelOptions, run_label, target_span  # noqa: E402
from posresample.tagger import load_tagger, token_at  # noqa: E402


def timed_label(url: str, tagger: str, processes: int) -> tuple[float, int, float]:
    """(seconds, completions labelled, seconds inside write_labels) for one label run."""
    engine = db.make_engine(url)
    real, spent = label_store.write_labels, [0.0]

    def write(*args, **kw):
        start = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            spent[0] += time.perf_counter() - start

    label_store.write_labels = write
    try:
        start = time.perf_counter()
        result = run_label(engine, url, LabelOptions(tagger=tagger, processes=processes, progress=False))
        return time.perf_counter() - start, result.summary["labels"], spent[0]
    finally:
        label_store.write_labels = real
        engine.dispose()


def plain_loop(url: str, tagger_spec: str, limit: int) -> tuple[float, int]:
    """The same pipeline called once per completion text, no batching, no dedupe."""
    engine = db.make_engine(url)
    tagger = load_tagger(tagger_spec)
    labeller = Labeller(engine, tagger, 0, LabelOptions(tagger=tagger_spec), None)
    with db.read(engine) as conn:
        job_ids = list(conn.exec_driver_sql("select id from jobs where state = 'done' order by id").scalars())
    inputs = label_store.label_inputs(engine, job_ids)[:limit]
    start = time.perf_counter()
    for item in inputs:
        tok = labeller.tokenizer(item.model)
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        text, span = target_span(decode, item.prefix_token_ids, item.token_ids)
        if span is not None:
            token_at(tagger.nlp(text), *span)
    return time.perf_counter() - start, len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tagger", required=True)
    parser.add_argument("--db", required=True, help="a sampled SQLite database file (copied, never changed)")
    parser.add_argument("--loop-limit", type=int, default=3000, help="completions for the plain loop")
    args = parser.parse_args()
    print(
        f"# {platform.node()}, {os.cpu_count()} cpus, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    print("| variant | completions | seconds | completions/s | database writes |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for processes in (1, 2):
            copy = os.path.join(work, f"p{processes}.db")
            shutil.copy(args.db, copy)
            seconds, n, writing = timed_label(f"sqlite:///{copy}", args.tagger, processes)
            share = f"{writing / seconds:.1%}" if processes == 1 else "(in the children)"
            print(
                f"| label, {processes} process{'es' if processes > 1 else ''} | {n} | {seconds:.1f} | "
                f"{n / seconds:.0f} | {share} |"
            )
        seconds, n = plain_loop(f"sqlite:///{args.db}", args.tagger, args.loop_limit)
        print(f"| plain loop, nlp(text) per completion | {n} | {seconds:.1f} | {n / seconds:.0f} | - |")


if __name__ == "__main__":
    main()
