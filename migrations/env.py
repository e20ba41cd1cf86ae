"""Alembic environment: our engine (pragmas, BEGIN IMMEDIATE), batch mode for SQLite, one migrator at a time."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from posresample.config import default_db_url
from posresample.db import MIGRATION_LOCK_KEY, make_engine
from posresample.schema import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
        transactional_ddl=True,  # SQLite supports it: a migration is all or nothing, and serialised
    )
    with context.begin_transaction():
        # On SQLite the transaction is BEGIN IMMEDIATE already; on PostgreSQL take a lock so two
        # processes that both find an old schema do not both migrate it.
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or default_db_url()
    engine = make_engine(url)
    with engine.connect() as conn:
        run_migrations(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()
