"""Opening the DuckDB catalogue: one engine per process, migrations, and who holds the lock.

DuckDB admits one read-write process per file and locks out every other process, readers included.
The writer leaves a small lock note beside the file (pid, command, start time) so that another
`mirror` command can say *what* is running instead of showing DuckDB's lock error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import sqlalchemy as sa

from mirror.errors import CatalogueBusyError, CatalogueError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
HEAD = "0004"  # the newest revision in migrations/versions (a test keeps the two in step)

# The same config for every connection of the process: user queries must not reach files or the
# network, and DuckDB requires one config per file and process, so the writer is restricted too.
# A large checkpoint threshold: with DuckDB's 16 MB default, bulk ingest checkpoints (and
# recompresses the table) every few pages, and gets slower as the table grows.
DUCKDB_CONFIG: dict[str, Any] = {"enable_external_access": False,
                                 "checkpoint_threshold": "256MB", "lock_configuration": True}


SCHEMA_CHANGED = "mirror.schema_changed"  # set in a connection's info by who rebuilt TAP_SCHEMA


def utcnow() -> datetime:
    """Naive UTC now: the catalogue stores UTC timestamps without zone, like the services."""
    return datetime.now(UTC).replace(tzinfo=None)


class Catalogue:
    """The local catalogue file: an SQLAlchemy engine over one shared DuckDB connection."""

    def __init__(self, path: Path, engine: sa.Engine, read_only: bool,
                 duck: duckdb.DuckDBPyConnection | None = None) -> None:
        self.path = path
        self.engine = engine
        self.read_only = read_only
        self._duck = duck
        self._reader: sa.Engine | None = None
        # bumped when a committed transaction rebuilt the local TAP_SCHEMA: readers of this
        # process (the service's query runners) then reload their table lists
        self.generation = 0

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False, migrate: bool = True,
             memory_limit: str | None = None, threads: int | None = None) -> Catalogue:
        """Open (creating and migrating when writable) the catalogue at `path`; DuckDB uses at
        most `memory_limit` (its own default, 80% of RAM, when None) and `threads` worker
        threads (its default, one per core, when None or 0)."""
        path = Path(path)
        if read_only and not path.exists():
            raise CatalogueError(f"no catalogue at {path}",
                                 "run `mirror init` (or `mirror sync`) to create it")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            f"duckdb:///{path}", poolclass=sa.pool.StaticPool,
            connect_args={"read_only": read_only, "config": {
                **DUCKDB_CONFIG, **({"memory_limit": memory_limit} if memory_limit else {}),
                **({"threads": threads} if threads else {})}})
        try:
            with engine.connect() as conn:
                duck = _unwrap(raw(conn))
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            raise _translate_open_error(path, exc) from exc
        catalogue = cls(path, engine, read_only, duck)
        if not read_only:
            _write_lock_note(path)
            if migrate:
                catalogue.migrate()
        elif not catalogue.is_current():
            catalogue.close()
            raise CatalogueError(f"the catalogue {path} is from another version of mirror",
                                 "run `mirror init` to migrate it")
        return catalogue

    def migrate(self) -> None:
        """Bring the mirror's own tables to the newest alembic revision (alembic is loaded
        only when there is something to do: it costs ~0.15 s of every command's start-up)."""
        if self.is_current():
            return
        from alembic import command

        with self.engine.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The alembic revision the catalogue is at (None before the first migration)."""
        cur = self._duck.cursor() if self._duck is not None else None
        if cur is None:
            return None
        try:
            if not cur.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = "
                               "'alembic_version' AND schema_name = 'main'").fetchone():
                return None
            row = cur.execute("SELECT version_num FROM alembic_version").fetchone()
            return None if row is None else str(row[0])
        finally:
            cur.close()

    def is_current(self) -> bool:
        return self.revision() == HEAD

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """One transaction: everything in it is committed together or not at all."""
        with self.engine.begin() as conn:
            info = conn.info
            info.pop(SCHEMA_CHANGED, None)  # a rolled-back rebuild changed nothing
            yield conn
        if info.pop(SCHEMA_CHANGED, False):  # committed: now other cursors see it
            self.generation += 1

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection of its own on this database, for a reader in another thread.

        Never through `engine.connect()`: the pool's check-in rolls back the one shared
        connection, which would silently end a writer's transaction in another thread."""
        if self._duck is None:
            raise CatalogueError(f"the catalogue {self.path} was opened without its connection")
        return self._duck.cursor()

    @contextlib.contextmanager
    def reader(self) -> Iterator[sa.Connection]:
        """An SQLAlchemy connection on a cursor of its own: a consistent snapshot that reads
        beside the writer (another thread of this process) without touching its transaction."""
        if self._reader is None:
            from duckdb_engine import ConnectionWrapper

            self._reader = sa.create_engine("duckdb://", poolclass=sa.pool.NullPool,
                                            creator=lambda: ConnectionWrapper(self.cursor()))
        with self._reader.connect() as conn:
            try:
                yield conn
            finally:
                conn.rollback()  # only read: nothing to keep

    def close(self) -> None:
        if self._reader is not None:
            self._reader.dispose()
        self.engine.dispose()
        if not self.read_only:
            _remove_lock_note(self.path)

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw(conn: sa.Connection) -> duckdb.DuckDBPyConnection:
    """The DuckDB connection under an SQLAlchemy one (for Arrow registration and bulk SQL)."""
    return conn.connection.dbapi_connection  # type: ignore[return-value]


@contextlib.contextmanager
def arrow_view(conn: sa.Connection, name: str, table: Any) -> Iterator[None]:
    """`table` (Arrow) readable by SQL on `conn` as `name` while the block runs."""
    duck = raw(conn)
    duck.register(name, table)
    try:
        yield
    finally:
        duck.unregister(name)


def _unwrap(wrapper: Any) -> duckdb.DuckDBPyConnection:
    """The DuckDB connection inside duckdb-engine's wrapper (whose cursor() is itself)."""
    return getattr(wrapper, "_ConnectionWrapper__c", wrapper)  # type: ignore[no-any-return]


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _lock_note(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _write_lock_note(path: Path) -> None:
    note = {"pid": os.getpid(), "command": " ".join(["mirror", *sys.argv[1:]]),
            "started": utcnow().isoformat(timespec="seconds") + "Z"}
    _write_note(path, note)


def _write_note(path: Path, note: dict[str, Any]) -> None:
    """Replace the note atomically, readable by its owner only (it may carry a token)."""
    target = _lock_note(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(note))
    os.replace(temp, target)


def advertise(path: Path, endpoint: str | None, token: str | None = None) -> None:
    """Tell other processes where this holder of the catalogue answers readers (its local
    service), or with `endpoint=None` that it no longer does; only in this process's note."""
    with contextlib.suppress(OSError, ValueError):
        note = json.loads(_lock_note(path).read_text(encoding="utf-8"))
        if note.get("pid") != os.getpid():
            return
        note.pop("endpoint", None)
        note.pop("token", None)
        if endpoint:
            note["endpoint"] = endpoint
            if token:
                note["token"] = token
        _write_note(path, note)


def _remove_lock_note(path: Path) -> None:
    with contextlib.suppress(OSError):
        note = json.loads(_lock_note(path).read_text(encoding="utf-8"))
        if note.get("pid") == os.getpid():
            _lock_note(path).unlink()


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds the catalogue, from the lock note, if that process still lives."""
    try:
        note = json.loads(_lock_note(path).read_text(encoding="utf-8"))
        os.kill(int(note["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return note  # type: ignore[no-any-return]


def _translate_open_error(path: Path, exc: sa.exc.DBAPIError) -> CatalogueError:
    text = str(exc.orig)
    if "lock" in text.lower():
        note = holder(path)
        if note:
            what = f"`{note['command']}` (pid {note['pid']}, since {note['started']})"
        else:
            what = "another process"
        return CatalogueBusyError(
            f"the catalogue {path} is in use by {what}",
            "wait for it to finish, or stop it; DuckDB lets only one process open the file")
    return CatalogueError(f"cannot open the catalogue {path}: {text.splitlines()[0]}",
                          "check the path in [catalogue] path, and that the file is a DuckDB file")
