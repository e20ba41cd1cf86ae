"""Queue overhead per job: claim + write 96 completions + mark done, no model.

    python bench/queue_overhead.py --db sqlite:////tmp/bench.db --jobs 2000 --workers 1,2,4,8
    python bench/queue_overhead.py --db postgresql+psycopg://postgres@127.0.0.1:55432/postgres

Each worker is a process running the real queue calls (claim_jobs, complete_job) in a loop with
prebuilt completion rows (96 samples x 16 token ids), so the number is the database's share of a
job. Run against a scratch database: every run drops and recreates the schema's tables.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posresample import db, queue  # noqa: E402
from posresample.schema import metadata  # noqa: E402
from tests.helpers import seed_jobs  # noqa: E402

ROWS = [
    dict(
        sample_index=i,
        text=" ".join(f"tok{t}" for t in range(16)),
        token_ids=list(range(1000, 1016)),
        num_tokens=16,
        finish_reason="length",
    )
    for i in range(96)
]


def reset(url: str, jobs: int) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    db.upgrade(engine)
    seed_jobs(engine, jobs)
    engine.dispose()


def work(url: str, batch: int, start, done_counter) -> None:
    engine = db.make_engine(url)
    wid = queue.new_worker_id()
    queue.register_worker(engine, wid, "bench", 60)
    start.wait()
    while True:
        claimed = queue.claim_jobs(engine, wid, batch, 60, 3)
        if not claimed:
            break
        for job in claimed:
            queue.complete_job(engine, job, wid, ROWS)
        with done_counter.get_lock():
            done_counter.value += len(claimed)
    engine.dispose()


def run(url: str, jobs: int, workers: int, batch: int) -> float:
    reset(url, jobs)
    start = mp.Event()
    counter = mp.Value("i", 0)
    procs = [mp.Process(target=work, args=(url, batch, start, counter)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every process connect and register before the clock starts
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    assert counter.value == jobs, (counter.value, jobs)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--batch", default="1,8", help="jobs claimed per transaction")
    args = parser.parse_args()
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus, "
        f"{time.strftime('%Y-%m-%d')}, {db.safe_url(args.db)}"
    )
    print("| workers | claim batch | jobs | seconds | jobs/s | ms/job (wall) | ms/job per worker |")
    print("|---|---|---|---|---|---|---|")
    for batch in map(int, args.batch.split(",")):
        for n in map(int, args.workers.split(",")):
            seconds = run(args.db, args.jobs, n, batch)
            print(
                f"| {n} | {batch} | {args.jobs} | {seconds:.2f} | {args.jobs / seconds:.0f} | "
                f"{1000 * seconds / args.jobs:.2f} | {1000 * seconds * n / args.jobs:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
