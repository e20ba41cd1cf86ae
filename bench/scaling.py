"""Costs that must not grow with history: a claim, pending(), export, label's claim and annotate's
queue, at two or three sizes.

    python bench/scaling.py --db sqlite:////tmp/scale.db --what claim,pending,label,annotate
    python bench/scaling.py --db postgresql+psycopg://postgres@127.0.0.1:55439/postgres --what claim,pending,export

claim / pending: a queue of N jobs of which T are todo (the rest done), built with one INSERT ...
SELECT per table; the time of a claim of 32 jobs (given back untimed, so the backlog stays) and of
pending(), each the median of 15, next to the claim's old single-statement pick (state = 'todo' OR an
expired lease, ORDER BY priority, id) for comparison. export: C done candidates x 96 completions of
~70 characters with one label each, exported to a file; wall time, and on PostgreSQL the server
backend's CPU seconds (read from /proc, so the server must run on this machine). Each size gets a
fresh database (a new file, or a new PostgreSQL database on the given server). label: C done
candidates x 96 completions of which the first half of the jobs carry a tagger's labels; the time
of the first claim (which fills the tagger's queue), of later claims of 16 jobs (median of 15, given
back untimed) and of the backlog count. annotate: the same database with the labels, half of them
disagreeing with the probe; the time to build a queue of 300 completions and to grow it to 600.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

from common import emit, machine
from sqlalchemy import and_, create_engine, or_, select, text
from sqlalchemy.engine import make_url

from posresample import db, queue
from posresample.export import run_export
from posresample.schema import jobs

QUEUE_SIZES = ((10_000, 1_000), (1_000_000, 1_000), (100_000, 100_000), (1_000_000, 100_000))
EXPORT_SIZES = (1_000, 4_000)


def fresh(url: str):
    """A new empty database like `url`: another file for SQLite, another database on the server."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = os.path.join(tempfile.mkdtemp(prefix="scaling-"), "bench.db")
        return f"sqlite:///{path}", lambda: None
    name = f"scaling_{uuid.uuid4().hex[:8]}"
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def series(conn, n: int) -> str:
    """A FROM clause yielding g = 0 .. n-1."""
    if conn.dialect.name == "postgresql":
        return f"generate_series(0, {n - 1}) AS s(g)"
    return f"(WITH RECURSIVE s(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM s WHERE g < {n - 1}) SELECT g FROM s)"


def seed_scan(conn, candidates: int, params: int) -> None:
    conn.execute(
        text(
            "INSERT INTO scans (name, config_key, dataset, split, model, layer, probe_path, probe_sha256, "
            "probe_classes, "
            "threshold, excluded_labels, sentences_total, sentences_done, tokens_seen, tokens_skipped_unknown_label, "
            f"created_at, updated_at) VALUES ('bench', '{{}}', 'bench', 'validation', 'fake', 12, 'p', '{'0' * 64}', "
            f"'[0, 1]', 0.95, '[]', {candidates}, {candidates}, 0, 0, 0, 0)"
        )
    )
    conn.execute(
        text(
            "INSERT INTO candidates (scan_id, dataset_idx, sent_id, sentence_text, target_position, target_token_id, "
            "target_token, prefix_text, prefix_token_ids, true_label, true_label_name, probe_probs, probe_pred, "
            "probe_pred_name, probe_max_prob) "
            "SELECT 1, g, 'id' || g, 'sentence ' || g, 1, 7, 'x', 'x', '[2, 7]', 0, 'NOUN', '[0.5, 0.5]', 0, 'NOUN', "
            "0.5 "
            f"FROM {series(conn, candidates)}"
        )
    )
    conn.execute(
        text(
            "INSERT INTO generation_params (key, model, temperature, top_p, top_k, max_new_tokens, num_samples, seed) "
            f"SELECT 'k' || g, 'fake', 0.7, 0.95, NULL, 16, 96, g FROM {series(conn, params)}"
        )
    )


def seed_queue(url: str, total: int, todo: int) -> None:
    """`total` jobs over 100 generation params; the newest `todo` of them todo, the rest done."""
    engine = db.make_engine(url, check=False)
    db.upgrade(engine)
    per = total // 100
    with db.write(engine) as conn:
        seed_scan(conn, per, 100)
        conn.execute(
            text(
                "INSERT INTO jobs (candidate_id, params_id, state, priority, attempt, created_at) "
                "SELECT c.id, p.id, 'done', 0, 1, 0 FROM candidates c CROSS JOIN generation_params p"
            )
        )
        conn.execute(text(f"UPDATE jobs SET state = 'todo', attempt = 0 WHERE id > {total - todo}"))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()


def old_pick(conn, limit: int, max_attempts: int = 3):
    """The claim's pick before: one OR over todo and expired leases."""
    expired = and_(jobs.c.state == "running", jobs.c.lease_expires_at < db.db_now())
    wanted = and_(or_(jobs.c.state == "todo", expired), jobs.c.attempt < max_attempts)
    return conn.execute(select(jobs.c.id).where(wanted).order_by(jobs.c.priority, jobs.c.id).limit(limit)).all()


def median_ms(fn, repeat: int = 15, after=None) -> float:
    """Median milliseconds of fn(); `after(result)` runs untimed after each call (to undo it)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if after is not None:
            after(result)
    return statistics.median(times) * 1000


def bench_queue(url: str) -> None:
    emit("| jobs | todo | claim 32 (ms) | pick before: one OR (ms) | pending() (ms) |")
    emit("|---|---|---|---|---|")
    for total, todo in QUEUE_SIZES:
        scratch, drop = fresh(url)
        try:
            seed_queue(scratch, total, todo)
            engine = db.make_engine(scratch)
            queue.register_worker(engine, "bench:1:x", "cpu", 60)

            def give_back(claimed):  # untimed: the backlog is the same for every claim
                with db.write(engine) as conn:
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id.in_([j.id for j in claimed]))
                        .values(state="todo", attempt=0, lease_owner=None, lease_expires_at=None)
                    )

            claim = median_ms(lambda: queue.claim_jobs(engine, "bench:1:x", 32, 60, 3), after=give_back)
            with db.read(engine) as conn:
                before = median_ms(lambda: old_pick(conn, 32))
            pend = median_ms(lambda: queue.pending(engine, 3))
            emit(f"| {total:,} | {todo:,} | {claim:.1f} | {before:.1f} | {pend:.1f} |")
            engine.dispose()
        finally:
            drop()


def seed_export(url: str, candidates: int) -> None:
    engine = db.make_engine(url, check=False)
    db.upgrade(engine)
    with db.write(engine) as conn:
        seed_scan(conn, candidates, 1)
        conn.execute(
            text(
                "INSERT INTO jobs (candidate_id, params_id, state, priority, attempt, created_at, done_at) "
                "SELECT id, 1, 'done', 0, 1, 0, 0 FROM candidates"
            )
        )
        words = "'the quick brown fox ' || g || ' jumps over the lazy dog and keeps on running far away'"
        conn.execute(
            text(
                "INSERT INTO completions (job_id, sample_index, text, token_ids, num_tokens, finish_reason, attempt) "
                f"SELECT j.id, g, {words}, '[5, 9, 13, 2, 77, 31, 8, 4, 6, 1000, 12, 3, 99, 41, 7, 1]', 16, 'length', "
                "1 "
                f"FROM jobs j CROSS JOIN {series(conn, 96)}"
            )
        )
        conn.execute(
            text(
                "INSERT INTO taggers (name, spec, identity_key, library, library_version, created_at) "
                "VALUES ('bench', 'spacy:bench', 'bench', 'spacy', '3', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO labels (completion_id, tagger_id, upos, upos_name, word, status) "
                "SELECT id, 1, 0, 'NOUN', 'fox', 'ok' FROM completions"
            )
        )
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()


LABEL_SIZES = (2_500, 10_000)


def seed_labelled(url: str, candidates: int) -> None:
    """`candidates` done jobs x 96 completions; the first half of the jobs labelled by tagger 1 (every
    other label disagrees with the probe's argmax, 0)."""
    seed_export(url, candidates)
    engine = db.make_engine(url, check=False)
    with db.write(engine) as conn:
        conn.execute(text("UPDATE candidates SET probe_probs = '[0.5, 0.3, 0.2]'"))
        conn.execute(
            text(
                f"DELETE FROM labels WHERE completion_id IN (SELECT c.id FROM completions c "
                f"WHERE c.job_id > {candidates // 2})"
            )
        )
        conn.execute(text("UPDATE labels SET upos = 1, upos_name = 'PUNCT' WHERE completion_id % 2 = 0"))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()


def bench_label(url: str) -> None:
    from posresample import annotate, label_store

    emit(
        "| candidates | completions | label: first claim (s) | label: claim 16 (ms) | label: backlog (ms) | "
        "annotate: queue of 300 (s) | annotate: grown to 600 (s) |"
    )
    emit("|---|---|---|---|---|---|---|")
    for n in LABEL_SIZES:
        scratch, drop = fresh(url)
        try:
            seed_labelled(scratch, n)
            engine = db.make_engine(scratch)
            t0 = time.perf_counter()
            first = label_store.claim_label_jobs(engine, 1, "bench:1:x", 16, 600)
            first_s = time.perf_counter() - t0
            label_store.release_label_leases(engine, 1, "bench:1:x")
            assert first and min(first) > n // 2, first  # the labelled half is passed over
            claim = median_ms(
                lambda: label_store.claim_label_jobs(engine, 1, "bench:1:x", 16, 600),
                after=lambda _: label_store.release_label_leases(engine, 1, "bench:1:x"),
            )
            backlog = median_ms(lambda: label_store.label_backlog(engine, 1, None))
            t0 = time.perf_counter()
            annotate.build_queue(engine, 1, 1, sample=300, overlap=0.1)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            assert annotate.build_queue(engine, 1, 1, sample=600, overlap=0.1) == 600
            grown = time.perf_counter() - t0
            emit(f"| {n:,} | {n * 96:,} | {first_s:.2f} | {claim:.1f} | {backlog:.1f} | {built:.2f} | {grown:.2f} |")
            engine.dispose()
        finally:
            drop()


def backend_cpu_seconds(pids: set[int]) -> float | None:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def bench_export(url: str) -> None:
    from sqlalchemy import event

    emit("| candidates | completions | export wall (s) | server CPU (s) | server CPU per 1k candidates (s) |")
    emit("|---|---|---|---|---|")
    for n in EXPORT_SIZES:
        scratch, drop = fresh(url)
        try:
            seed_export(scratch, n)
            engine = db.make_engine(scratch)
            pids: set[int] = set()
            if engine.dialect.name == "postgresql":

                @event.listens_for(engine, "connect")
                def _pid(dbapi_conn, _record):
                    with dbapi_conn.cursor() as cur:
                        cur.execute("SELECT pg_backend_pid()")
                        pids.add(cur.fetchone()[0])
                    dbapi_conn.commit()

                engine.dispose()  # the check's connection predates the listener
            out = os.path.join(tempfile.mkdtemp(prefix="scaling-"), "export.jsonl")
            start_cpu = backend_cpu_seconds(pids) or 0.0
            t0 = time.perf_counter()
            run_export(engine, out, progress=False)
            wall = time.perf_counter() - t0
            cpu = backend_cpu_seconds(pids) if pids else None
            cpu_s = "-" if cpu is None else f"{cpu - start_cpu:.2f}"
            per_k = "-" if cpu is None else f"{(cpu - start_cpu) / n * 1000:.2f}"
            emit(f"| {n:,} | {n * 96:,} | {wall:.1f} | {cpu_s} | {per_k} |")
            engine.dispose()
            os.remove(out)
        finally:
            drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a SQLite URL (its folder is used) or a PostgreSQL server URL")
    parser.add_argument(
        "--what",
        default="claim,pending,export,label",
        help="claim,pending (one table), export, and/or label (label's claim and annotate's queue)",
    )
    args = parser.parse_args()
    import sqlalchemy

    dialect = make_url(args.db).get_backend_name()
    emit(f"# {dialect}, {machine('cpu')}, SQLAlchemy {sqlalchemy.__version__}, {time.strftime('%Y-%m-%d')}")
    what = set(args.what.split(","))
    if what & {"claim", "pending"}:
        bench_queue(args.db)
    if "export" in what:
        bench_export(args.db)
    if what & {"label", "annotate"}:
        bench_label(args.db)


if __name__ == "__main__":
    main()
