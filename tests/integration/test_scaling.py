"""Costs that must not grow with history, checked by what the databases plan, not by the clock:
claims walk the index in order, pending() counts the unfinished rows only, export reads the labels
once. (Timings at several sizes: bench/scaling.py, docs/benchmarks.md.)"""

import json

import pytest
from sqlalchemy import event, text

from posresample import db, label_store, queue
from tests.helpers import seed_jobs


def captured_selects(engine, call):
    """The SELECT statements (with their parameters) that `call()` runs on `engine`."""
    seen = []

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(_conn, _cursor, statement, parameters, _context, _many):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", _capture)
    return seen


def plan(engine, statement, parameters) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return "\n".join(row[-1] for row in rows)
        rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
        return "\n".join(row[0] for row in rows)


@pytest.fixture
def backlog(engine):
    """2,000 jobs, 1,900 of them done, statistics gathered (what a long-running queue looks like)."""
    seed_jobs(engine, 2000, num_samples=1, max_new_tokens=1)
    with db.write(engine) as conn:
        conn.execute(text("UPDATE jobs SET state = 'done', attempt = 1 WHERE id <= 1900"))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return engine


def test_a_claim_walks_the_index_in_order_and_sorts_nothing(backlog):
    engine = backlog
    queue.register_worker(engine, "h:1:w", "cpu", 60)
    picks = [
        s
        for s in captured_selects(engine, lambda: queue.claim_jobs(engine, "h:1:w", 8, 60, 3))
        if "ORDER BY jobs.priority, jobs.id" in s[0]
    ]
    assert len(picks) == 2  # todo, then expired leases: two probes, each ordered by the index
    for statement, parameters in picks:
        shown = plan(engine, statement, parameters)
        if engine.dialect.name == "sqlite":
            assert "ix_jobs_state_priority_id (state=?)" in shown and "TEMP B-TREE" not in shown, shown
            assert "MULTI-INDEX OR" not in shown, shown
        else:
            assert "ix_jobs_state_priority_id" in shown and "Sort" not in shown and "BitmapOr" not in shown, shown


def test_pending_counts_the_unfinished_rows_from_their_own_index(backlog):
    engine = backlog
    [(statement, parameters)] = captured_selects(engine, lambda: queue.pending(engine, 3))
    shown = plan(engine, statement, parameters)
    if engine.dialect.name == "sqlite":
        assert "COVERING INDEX ix_jobs_unfinished" in shown, shown
    else:  # PostgreSQL's statistics are per value: either index reads the unfinished rows only
        assert ("ix_jobs_unfinished" in shown or "ix_jobs_state_priority_id" in shown) and "Seq Scan" not in shown, (
            shown
        )
    assert queue.pending(engine, 3) == queue.Pending(todo=100, running_live=0, running_expired=0)


def test_a_label_claim_reads_the_unlabelled_rows_of_its_own_index(backlog):
    """label's claim used to walk every labelled job to find an unlabelled one; the tagger's queue
    has a partial index of the unlabelled rows, walked in order."""
    engine = backlog
    tagger = label_store.register_tagger(engine, {"name": "t", "spec": "t", "library": "x", "library_version": "1"})
    first = label_store.claim_label_jobs(engine, tagger, "h:1:l", 8, 60)  # fills the queue: 1,900 done jobs
    assert first == list(range(1, 9))
    label_store.write_labels(engine, tagger, "h:1:l", list(range(1, 1001)), [])  # 1,000 of them labelled
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    claims = []
    picks = [
        s
        for s in captured_selects(
            engine, lambda: claims.append(label_store.claim_label_jobs(engine, tagger, "h:1:l", 8, 60))
        )
        if "FROM label_jobs" in s[0] and "ORDER BY" in s[0]
    ]
    assert claims == [list(range(1001, 1009))] and len(picks) == 1  # no refill: the queue had free rows
    shown = plan(engine, *picks[0])
    if engine.dialect.name == "sqlite":
        assert "ix_label_jobs_todo" in shown and "TEMP B-TREE" not in shown, shown
    else:
        assert "ix_label_jobs_todo" in shown and "Sort" not in shown and "Seq Scan" not in shown, shown
    assert label_store.label_backlog(engine, tagger, None)[1] == 8  # the live leases, read from the same index


def test_export_reads_the_labels_in_one_pass_whatever_the_number_of_records(engine, tmp_path):
    """Labels used to be looked up per chunk of 200 records (PostgreSQL planned each lookup as a scan
    of every label); now one streamed query serves the whole export."""
    import numpy as np

    from posresample.export import run_export
    from tests.helpers import seed_labelled

    rng = np.random.default_rng(0)
    truth = np.zeros((700, 18))
    truth[:, [0, 16]] = rng.dirichlet([1, 1], size=700)
    seed_labelled(engine, truth, truth[:, [0, 16]], [0, 16], num_samples=4)
    out = tmp_path / "x.jsonl"
    label_queries = [
        s
        for s, _ in captured_selects(engine, lambda: run_export(engine, str(out), progress=False))
        if "FROM labels" in s or "JOIN labels" in s
    ]
    assert len(label_queries) == 2, label_queries  # taggers_used, and the one stream
    records = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert len(records) == 700 and all(len(r["completions"]) == 4 for r in records)
    assert all(set(c["upos"]) == {"synthetic"} for r in records for c in r["completions"])
    assert all(sum(r["label_counts"]["synthetic"].values()) == 4 for r in records)
