"""Database engines and schema migration.

SQLite is the embedded default and PostgreSQL the production database. On SQLite every
write transaction starts with ``BEGIN IMMEDIATE`` so concurrent writers queue on the
database lock (with a busy timeout) instead of failing on lock upgrade; WAL mode lets
readers run beside the writer.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE_OPTION = "mreg_write"
# One arbitrary, fixed key: replicas starting together take turns migrating.
_MIGRATION_LOCK_KEY = 0x6D726567


def create_database_engine(url: str) -> Engine:
    """Creates an engine for a SQLAlchemy URL, tuned for the registry's transactions."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Name the driver we ship rather than SQLAlchemy's default (psycopg2).
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    # Last in, first out: a checkout takes the connection used most recently, whose server process
    # still has its caches warm and on which psycopg has already prepared the hot statements. First
    # in, first out (the default) rotated every checkout through all the idle connections, one
    # PostgreSQL process after another, once a burst had opened many: each resolve then cost its
    # backend about twice the CPU.
    return create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=False, pool_use_lifo=True)


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=16)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so "begin" below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Brings the schema to the newest migration; safe to run from several replicas at once.

    One replica migrates and the others wait, then find the schema at the head and do
    nothing. On PostgreSQL the turn is a session advisory lock on a connection of its own,
    so it holds across however many transactions the migrations use. On SQLite it is a
    file lock beside the database, taken before the first connection: that connection
    turns a new database to WAL, which SQLite refuses at once ("database is locked",
    without waiting) while another connection holds the write lock.
    """
    with _migration_lock(engine), engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    log.info("database schema is up to date")


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "sqlite":
        with _sqlite_migration_lock(engine.url.database):
            yield
        return
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            try:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            except DBAPIError:
                # Never return a connection that may still hold the lock to the pool.
                lock.invalidate()
                raise


@contextmanager
def _sqlite_migration_lock(database: str | None) -> Iterator[None]:
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migration-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def follow_commits(engine: Engine, channel: str, on_commit: Callable[[], None], stopping: threading.Event) -> None:
    """Calls ``on_commit`` whenever another process NOTIFYs ``channel`` (PostgreSQL), until ``stopping`` is set.

    Runs in a thread of its own on a connection of its own (not the pool's), reconnecting
    with backoff when the database goes away; does nothing on SQLite, where other
    processes' commits are found by polling.
    """
    if engine.dialect.name != "postgresql":
        return
    import psycopg

    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    delay = 0.5
    while not stopping.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as connection:
                connection.execute(f"LISTEN {channel}")
                delay = 0.5
                on_commit()  # anything committed while not listening
                while not stopping.is_set():
                    for _ in connection.notifies(timeout=1.0):
                        on_commit()
        except psycopg.Error as e:
            log.warning("listening for other replicas' commits failed (%s); retrying in %.1f s", e, delay)
            stopping.wait(delay)
            delay = min(10.0, delay * 2)
