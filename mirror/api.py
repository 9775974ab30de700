"""The Python API: `Mirror.open(config)`, then `.sync()`, `.status()`."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from mirror.catalogue import obscore, products, runs
from mirror.catalogue.engine import Catalogue
from mirror.config import Config, load_config
from mirror.errors import CatalogueBusyError, CatalogueError
from mirror.query import QueryResult, Runner
from mirror.remote import RemoteCatalogue, advertised, require
from mirror.retry import RetryPolicy
from mirror.store.files import Store

if TYPE_CHECKING:  # the services are imported when used: readers need not load them
    from mirror.fetch.audit import AuditReport
    from mirror.fetch.fetcher import FetchReport
    from mirror.harvest.harvester import Progress, SyncReport


@dataclass
class SourceStatus:
    """One source as `mirror status` shows it."""

    name: str
    url: str
    rows: int = 0
    withdrawn: int = 0
    last_sync: str | None = None
    watermark_column: str | None = None
    watermark: str | None = None
    runs: int = 0
    last_status: str | None = None
    last_errors: str | None = None
    products: dict[str, int] = field(default_factory=dict)
    product_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Mirror:
    """A local mirror described by a config file; opens its catalogue when first needed."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._catalogue: Catalogue | None = None
        self._runner: Runner | None = None
        self._remote: RemoteCatalogue | None = None

    @classmethod
    def open(cls, config_path: str | os.PathLike[str] | None = None) -> Mirror:
        """Load the config (`--config`, `$MIRROR_CONFIG` or `./mirror.toml`)."""
        return cls(load_config(config_path))

    def catalogue(self, *, write: bool = True, threads: int | None = None) -> Catalogue:
        """The catalogue, opened read-write (created and migrated) or read-only; `threads`
        (DuckDB's worker threads) applies when this call opens it."""
        if self._catalogue is not None and (self._catalogue.read_only is False or not write):
            return self._catalogue
        if self._catalogue is not None:
            self._close_runner()  # its connection would keep the read-only database open
            self._catalogue.close()
        self._catalogue = Catalogue.open(self.config.catalogue_path, read_only=not write,
                                         memory_limit=self.config.memory_limit, threads=threads)
        if write:
            with self._catalogue.begin() as conn:
                runs.mark_interrupted(conn)
        return self._catalogue

    def init(self) -> str | None:
        """Create or migrate the catalogue (and its views); returns its alembic revision."""
        cat = self.catalogue()
        with cat.begin() as conn:
            obscore.rebuild_views(conn)
        return cat.revision()

    def sync(self, source: str | None = None, *, dry_run: bool = False, full: bool = False,
             progress: Progress | None = None, policy: RetryPolicy | None = None,
             cancel: threading.Event | None = None) -> list[SyncReport]:
        """Harvest one source, or all of them; one report per source. Setting `cancel` stops
        at the next window boundary (`mirror daemon` on SIGTERM)."""
        from mirror.harvest.harvester import Harvester
        from mirror.harvest.tap import TapClient
        from mirror.schema.profiles import refresh_after_sync

        chosen = [self.config.source(source)] if source else list(self.config.sources)
        cat = self.catalogue()
        reports = []
        for src in chosen:
            client = TapClient(src.url, token=src.token(), timeout=src.timeout, mode=src.mode,
                               policy=policy or RetryPolicy(attempts=src.retries))
            reports.append(Harvester(cat, src, client, progress, cancel=cancel)
                           .run(dry_run=dry_run, full=full))
        self._close_runner()  # tables and columns may have changed
        stopping = cancel is not None and cancel.is_set()  # stop fast; the resumed sync
        if not dry_run and not stopping and any(r.run_id is not None for r in reports):
            refresh_after_sync(cat, reports)  # the data profiles follow the rows
        return reports

    def fetch(self, source: str | None = None, *, retry_failed: bool = False,
              progress: Progress | None = None, policy: RetryPolicy | None = None,
              cancel: threading.Event | None = None) -> list[FetchReport]:
        """Download the selected, not yet stored products of one source or all of them."""
        from mirror.fetch.fetcher import Fetcher

        chosen = [self.config.source(source)] if source else list(self.config.sources)
        cat = self.catalogue()
        return [Fetcher(cat, self.config, src, progress=progress, policy=policy, cancel=cancel)
                .run(retry_failed=retry_failed) for src in chosen]

    def verify(self, *, repair: bool = True) -> AuditReport:
        """Re-check the store against the catalogue (and repair unless told not to)."""
        from mirror.fetch.audit import audit

        return audit(self.catalogue(), Store(self.config.store_root), repair=repair)

    def status(self) -> list[SourceStatus]:
        """Per configured source: rows, withdrawals, last sync, watermark, runs, errors."""
        if not self.config.catalogue_path.exists():
            raise CatalogueError(f"no catalogue at {self.config.catalogue_path} yet",
                                 "run `mirror init` or `mirror sync` first")
        cat = self._reader()
        if isinstance(cat, RemoteCatalogue):
            return [_source_status(row) for row in cat.status()]
        out = []
        with cat.reader() as conn:  # beside a writer thread of this process, never in its way
            stored = products.counts(conn)
            for src in self.config.sources:
                st = SourceStatus(src.name, src.url)
                row = runs.get_source(conn, src.name)
                if row is not None:
                    st.last_sync = _iso(row.last_sync_at)
                    st.watermark_column, st.watermark = row.watermark_column, row.cursor_watermark
                    table = obscore.data_table(src.name)
                    st.rows, st.withdrawn = conn.execute(sa.text(
                        f"SELECT count(*) FILTER (WHERE _withdrawn_at IS NULL), "
                        f"count(*) FILTER (WHERE _withdrawn_at IS NOT NULL) FROM {table}")).one()
                history = runs.runs(conn, src.name, limit=1_000_000)
                st.runs = len(history)
                if history:
                    st.last_status, st.last_errors = history[0].status, history[0].errors
                by_state = stored.get(src.name, {})
                st.products = {state: n for state, (n, _) in by_state.items()}
                st.product_bytes = by_state.get("done", (0, 0))[1]
                out.append(st)
        return out

    def runs(self, source: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The run history, newest first."""
        cat = self._reader()
        if isinstance(cat, RemoteCatalogue):
            return cat.runs(source, limit)
        with cat.reader() as conn:
            return [dict(r._mapping) for r in runs.runs(conn, source, limit)]

    def service_state(self) -> dict[str, Any] | None:
        """The live state of the daemon that holds the catalogue; None when none does."""
        try:
            cat = self._reader()
        except CatalogueError:
            return None
        return cat.state() if isinstance(cat, RemoteCatalogue) else None

    def query(self, adql: str, *, maxrec: int | None = None,
              timeout: float | None = None) -> QueryResult:
        """Run an ADQL query on the local catalogue (read-only), at most `maxrec` rows within
        `timeout` seconds (defaults: [query] maxrec and timeout)."""
        if self._runner is None:
            cat = self._reader()
            if isinstance(cat, RemoteCatalogue):  # another process holds it: ask its service
                return cat.query(adql, maxrec=maxrec, timeout=timeout)
            self._runner = Runner(cat, timeout=self.config.query.timeout,
                                  maxrec=self.config.query.maxrec)
        return self._runner.query(adql, maxrec=maxrec, timeout=timeout)

    def _reader(self) -> Catalogue | RemoteCatalogue:
        """What reads go to: the catalogue, opened here (read-only unless this process writes
        it), or, while another process holds it, the service that process advertises; without
        one, that process's CatalogueBusyError."""
        if self._catalogue is None and self._remote is not None:
            if advertised(self.config.catalogue_path) == self._remote.endpoint:
                return self._remote
            self._remote = None  # that holder is gone, or serves elsewhere now
        try:
            return self.catalogue(write=False)
        except CatalogueBusyError as busy:
            endpoint = require(self.config.catalogue_path, busy)
            self._remote = RemoteCatalogue(endpoint, timeout=self.config.query.timeout)
            return self._remote

    def _close_runner(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def close(self) -> None:
        self._close_runner()
        if self._catalogue is not None:
            self._catalogue.close()
            self._catalogue = None

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _source_status(row: dict[str, Any]) -> SourceStatus:
    """A status row as the holder's service sent it (unknown keys ignored)."""
    known = SourceStatus.__dataclass_fields__
    return SourceStatus(**{k: v for k, v in row.items() if k in known})


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None

