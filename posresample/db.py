"""Engines for SQLite and PostgreSQL, the database clock, write/read transactions, migrations.

SQLite: WAL, synchronous=NORMAL, busy_timeout, foreign_keys=ON, and `BEGIN IMMEDIATE` for every
write transaction (pysqlite's deferred BEGIN gets SQLITE_BUSY that ignores busy_timeout when a
reader upgrades to a writer). PostgreSQL: psycopg 3.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from sqlalchemy import Float, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .errors import DatabaseError

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
# writers queue this long for the lock before failing (then the worker's retry takes over)
SQLITE_BUSY_TIMEOUT_MS = int(float(os.environ.get("POSRESAMPLE_SQLITE_BUSY_TIMEOUT", "60")) * 1000)
RETRY_FIRST_DELAY = 0.5  # seconds before the first retry of a transient database error; doubles up to
RETRY_MAX_DELAY = 10.0
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs", "beegfs", "9p", "ceph"}
MIGRATION_LOCK_KEY = 0x706F737265  # pg_advisory_xact_lock key for `db upgrade`


class db_now(FunctionElement):
    """The database's clock as unix seconds (float): leases from every host compare on one clock."""

    type = Float()
    inherit_cache = True


@compiles(db_now, "sqlite")
def _now_sqlite(_element, _compiler, **_kw):
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _now_postgresql(_element, _compiler, **_kw):
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str, check: bool = True, retry_seconds: float = 0.0) -> Engine:
    """An engine with the pragmas and transaction mode above; `check` opens it once to fail early.

    A SQLite file that does not exist yet is not created here (only its folder is checked), so a
    command that fails on its other inputs leaves nothing behind.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"cannot open database {url!r}: not a database URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed)
    elif parsed.get_backend_name() == "postgresql":
        engine = create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=4)
    else:
        raise DatabaseError(f"unsupported database {safe_url(url)}: use sqlite:/// or postgresql+psycopg://")
    if check and file_exists_for(url):
        ping(engine, retry_seconds)
    return engine


def ping(engine: Engine, retry_seconds: float = 0.0) -> None:
    """Open a connection once (retrying a transient failure for `retry_seconds`), or say why not."""

    def select_one():
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        retrying(select_one, retry_seconds)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open database {safe_url(str(engine.url))}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def _sqlite_engine(parsed) -> Engine:
    if sqlite3.sqlite_version_info < (3, 35):
        raise DatabaseError(f"SQLite {sqlite3.sqlite_version} is too old: RETURNING needs 3.35 or newer")
    path = parsed.database
    if path and path != ":memory:":
        parent = Path(path).resolve().parent
        if not parent.is_dir():
            raise DatabaseError(f"cannot open database {parsed}: folder {parent} does not exist")
        warn_if_network_filesystem(parent)
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        # per connection only: nothing here changes the file (WAL, which persists, is set by
        # `use_wal` once the file is known to be posresample's or new)
        for pragma in (f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "synchronous=NORMAL", "foreign_keys=ON"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def warn_if_network_filesystem(folder: Path, mounts_file: str = "/proc/mounts") -> str | None:
    """SQLite locking is unreliable on network filesystems: say so instead of corrupting silently."""
    try:
        with open(mounts_file, encoding="utf-8") as handle:
            mounts = [line.split()[1:3] for line in handle if len(line.split()) > 2]
    except OSError:
        return None
    best = max(
        (m for m in mounts if str(folder).startswith(m[0].rstrip("/") + "/") or str(folder) == m[0]),
        key=lambda m: len(m[0]),
        default=None,
    )
    if best and best[1] in NETWORK_FILESYSTEMS:
        log.warning(
            "the SQLite file is on a %s filesystem (%s): SQLite is for one host; "
            "use PostgreSQL for workers on several hosts",
            best[1],
            best[0],
        )
        return best[1]
    return None


@contextlib.contextmanager
def write(engine: Engine):
    """One short write transaction (BEGIN IMMEDIATE on SQLite)."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def read(engine: Engine):
    """A read transaction that takes no write lock (deferred BEGIN on SQLite, REPEATABLE READ on PG)."""
    options = {"sqlite_begin": "DEFERRED"}
    if engine.dialect.name == "postgresql":
        options["isolation_level"] = "REPEATABLE READ"
    with engine.connect().execution_options(**options) as conn, conn.begin():
        yield conn


def is_transient(exc: BaseException) -> bool:
    """A database error that can pass: the server is down or restarting, a connection dropped, a
    lock was held past the busy timeout. Not a bad statement or a constraint violation."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retrying(call, seconds: float, what: str = "database"):
    """Run call(); on a transient database error retry with exponential back-off for up to `seconds`."""
    import time

    deadline, delay = time.monotonic() + seconds, RETRY_FIRST_DELAY
    while True:
        try:
            return call()
        except SQLAlchemyError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s unavailable (%s); retrying in %.1fs", what, _first_line(exc), delay)
            time.sleep(delay)  # back-off between reconnection attempts
            delay = min(delay * 2, RETRY_MAX_DELAY)


# --- migrations ------------------------------------------------------------------------------


def alembic_config(engine: Engine | None = None, connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with read(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


OWN_TABLES = frozenset({"scans", "candidates", "jobs", "generation_params", "completions", "workers"})


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def check_database(engine: Engine) -> str | None:
    """The posresample revision of this database (None: empty), or a one-line refusal.

    Refused: another application's tables, another application's Alembic history, and a
    posresample schema newer than this code. Reads only: nothing is created or changed.
    """
    from sqlalchemy import inspect

    with read(engine) as conn:
        names = set(inspect(conn).get_table_names()) | set(inspect(conn).get_view_names())
    current = current_revision(engine) if "alembic_version" in names else None
    ours = OWN_TABLES <= names
    where = safe_url(str(engine.url))
    if current is not None and not _known(current):
        if ours:
            raise DatabaseError(
                f"{where} was written by a newer posresample (schema revision {current}; this one "
                f"knows up to {head_revision()}): upgrade posresample"
            )
        raise DatabaseError(
            f"{where} belongs to another application (Alembic revision {current}, no posresample "
            "tables): use a new database for posresample"
        )
    # tables that are not a posresample schema's, even where one is named like ours (jobs, scans):
    # refused before anything is written (SQLite's WAL switch changes the file's header)
    foreign = sorted(names - {"alembic_version"} - _all_own_names()) or sorted(names - {"alembic_version"})
    if foreign and not ours:
        listed = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise DatabaseError(
            f"{where} holds another application's tables ({listed}): posresample uses an empty "
            "database or one of its own"
        )
    return current


def _all_own_names() -> set[str]:
    from .schema import metadata

    return set(metadata.tables) | {"empirical_labels"}


def check_known_revision(engine: Engine, current: str | None = None) -> None:
    """Refuse a database this code must not touch (see check_database)."""
    check_database(engine)


def use_wal(engine: Engine) -> None:
    """SQLite's WAL journal (it persists in the file): set on posresample's own databases only."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.connection.dbapi_connection.execute("PRAGMA journal_mode=WAL")


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Create or upgrade the schema to head, once, serialised across processes. Returns (before, after).
    Only an empty database or posresample's own is touched."""
    from alembic import command

    before = check_database(engine)
    head = head_revision()
    use_wal(engine)
    if before != head:
        with engine.connect() as conn:
            command.upgrade(alembic_config(connection=conn), "head")
            conn.commit()
    return before, head


def ensure_schema(engine: Engine, migrate: bool) -> None:
    """Upgrade a fresh or old database (scan, demo) or refuse to touch it (every other command)."""
    current = check_database(engine)
    if current == head_revision():
        return
    if migrate:
        upgrade(engine)
    elif current is None:
        raise DatabaseError(f"{safe_url(str(engine.url))} holds no posresample data yet: run `cli.py scan` first")
    else:
        raise DatabaseError(f"database schema is at {current}, not {head_revision()}: run `cli.py db upgrade`")


def sqlite_path(url: str) -> str | None:
    parsed = make_url(url)
    return parsed.database if parsed.get_backend_name() == "sqlite" else None


def open_database(url: str, create: bool = False, retry_seconds: float = 0.0) -> Engine:
    """The one way a command opens its database: an engine on `url` whose schema is checked.

    create=False (every command but scan and demo): the database must exist and hold posresample's
    current schema. create=True: it may be missing, empty or older (the first write upgrades it),
    but another application's or a newer schema is refused here, before any model loads. Both ride
    out an outage or a held lock for `retry_seconds`."""
    if not create and not file_exists_for(url):
        raise DatabaseError(f"no database at {url}: run `cli.py scan` first (or pass --db)")
    engine = make_engine(url, retry_seconds=retry_seconds)
    if not create:
        retrying(lambda: ensure_schema(engine, migrate=False), retry_seconds)
    elif file_exists_for(url):
        retrying(lambda: check_database(engine), retry_seconds)
    return engine


def file_exists_for(url: str) -> bool:
    path = sqlite_path(url)
    return path is None or path == ":memory:" or os.path.exists(path)
