"""Alembic owns the schema: upgrade on an empty database, then no drift from the models."""

import subprocess
import sys

from posresample import db
from tests.helpers import REPO


def test_upgrade_then_check_finds_no_drift(db_url):
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) is None
    before, after = db.upgrade(engine)
    assert before is None and after == db.head_revision() == db.current_revision(engine)
    assert db.upgrade(engine) == (after, after)  # idempotent
    engine.dispose()
    check = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"db={db_url}", "check"], cwd=REPO, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


def test_read_only_commands_refuse_an_old_schema(sqlite_url):
    import pytest

    from posresample.errors import DatabaseError

    engine = db.make_engine(sqlite_url)
    with pytest.raises(DatabaseError, match="no posresample data"):
        db.ensure_schema(engine, migrate=False)
    db.ensure_schema(engine, migrate=True)
    db.ensure_schema(engine, migrate=False)


def test_sqlite_pragmas(sqlite_url):
    from sqlalchemy import text

    engine = db.make_engine(sqlite_url)
    with engine.connect() as conn:  # opening a file changes nothing in it: WAL comes with the schema
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "delete"
    db.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.SQLITE_BUSY_TIMEOUT_MS


def test_sqlite_on_a_network_filesystem_warns(tmp_path, caplog):
    from pathlib import Path

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\nserver:/export /mnt/shared nfs4 rw 0 0\n")
    assert db.warn_if_network_filesystem(Path("/mnt/shared/runs"), str(mounts)) == "nfs4"
    assert "SQLite is for one host" in caplog.text
    assert db.warn_if_network_filesystem(Path("/home/me"), str(mounts)) is None


def test_a_0001_database_upgrades_in_place_and_downgrades(db_url):
    import pytest
    from alembic import command
    from sqlalchemy import insert, inspect, select

    from posresample.errors import DatabaseError
    from posresample.schema import workers

    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        command.upgrade(db.alembic_config(connection=conn), "0001")
        conn.commit()
    with engine.begin() as conn:  # a worker row written before workers.sampler existed
        conn.exec_driver_sql(
            "INSERT INTO workers (id, host, pid, device, lease_seconds, started_at, heartbeat_at, "
            "jobs_done) VALUES ('h:1:abc', 'h', 1, 'cpu', 60, 0, 0, 3)"
        )
    with pytest.raises(DatabaseError, match=f"at 0001, not {db.head_revision()}: run `cli.py db upgrade`"):
        db.ensure_schema(engine, migrate=False)
    assert db.upgrade(engine) == ("0001", db.head_revision())
    with engine.begin() as conn:
        assert conn.execute(select(workers.c.jobs_done, workers.c.sampler)).one() == (3, None)
        conn.execute(
            insert(workers).values(
                id="h:2:def",
                host="h",
                pid=2,
                device="cpu",
                lease_seconds=60,
                started_at=0,
                heartbeat_at=0,
                jobs_done=0,
                sampler={"m": {"decode": "fast"}},
            )
        )
    with engine.connect() as conn:
        command.downgrade(db.alembic_config(connection=conn), "0001")
        conn.commit()
    assert "sampler" not in {c["name"] for c in inspect(engine).get_columns("workers")}
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM workers").scalar() == 2


def test_a_database_from_a_newer_posresample_is_refused_by_every_command(sqlite_url, tmp_path):
    """db upgrade, scan, worker, export and status all say to upgrade posresample, in one line."""
    from click.testing import CliRunner

    from posresample.cli import cli

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    engine.dispose()
    commands = [
        ["db", "upgrade"],
        ["status"],
        ["export", "-o", str(tmp_path / "x.jsonl")],
        ["worker", "--fake-sampler"],
        ["scan", "--probe", str(tmp_path / "p.joblib"), "--dataset", "x", "--model", "m"],
    ]
    for args in commands:
        result = CliRunner().invoke(cli, [*args, "--db", sqlite_url])
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.strip().splitlines()[-1] == (
            f"Error: {sqlite_url} was written by a newer posresample (schema revision 0099; this one knows up to "
            f"{db.head_revision()}): upgrade posresample"
        ), args
