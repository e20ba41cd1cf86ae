"""How long `analyze` takes on the study's size: 4,000 candidates x 96 labelled completions (issue 11).

    python bench/analyze_speed.py --candidates 4000

Builds a synthetic SQLite database (tests.helpers.seed_labelled: labels drawn from known
distributions, a probe over 15 classes), then times the analysis (SQL reads, per-candidate metrics,
noise floors, bootstrap intervals, the fitted temperature) and the report (CSV, JSON, four PNGs, the
HTML page) separately.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posresample import db  # noqa: E402
from posresample.analyze import analyze  # noqa: E402
from posresample.report import write_report  # noqa: E402
from tests.helpers import seed_labelled  # noqa: E402

CLASSES = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17]  # the research probe's classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=96)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    small = rng.dirichlet(np.full(len(CLASSES), 0.15), size=args.candidates)
    truth = np.zeros((args.candidates, 18))
    truth[:, CLASSES] = small
    with tempfile.TemporaryDirectory() as work:
        engine = db.make_engine(f"sqlite:///{os.path.join(work, 'bench.db')}")
        db.upgrade(engine)
        start = time.perf_counter()
        seed_labelled(engine, truth, np.sqrt(small) / np.sqrt(small).sum(1, keepdims=True), CLASSES, args.samples)
        seeded = time.perf_counter() - start
        start = time.perf_counter()
        result = analyze(engine, min_labelled=20)
        analysed = time.perf_counter() - start
        start = time.perf_counter()
        paths = write_report(result, os.path.join(work, "report"))
        reported = time.perf_counter() - start
        size = os.path.getsize(paths["html"]) / 1e6
    print(f"# {platform.node()}, {os.cpu_count()} cpus, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print("| candidates x labelled completions | seed the database | analyze | report | total (analyze + report) | index.html |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.candidates} x {args.samples} | {seeded:.1f} s | {analysed:.1f} s | {reported:.1f} s | "
          f"{analysed + reported:.1f} s | {size:.1f} MB |")


if __name__ == "__main__":
    main()
