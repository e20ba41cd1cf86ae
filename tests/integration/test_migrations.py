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
    check = subprocess.run([sys.executable, "-m", "alembic", "-x", f"db={db_url}", "check"],
                           cwd=REPO, capture_output=True, text=True)
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
