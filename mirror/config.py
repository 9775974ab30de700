"""TOML configuration -> frozen dataclasses, driven by one table of settings.

`SETTINGS` is the single source of truth: validation, defaults and the documentation test
(every setting must appear in `config.example.toml`) all read it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mirror.errors import ConfigError

ENV_VAR = "MIRROR_CONFIG"
DEFAULT_FILE = "mirror.toml"


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it lives, its type, default and a line of help."""

    section: str
    name: str
    type: type
    default: Any
    help: str
    example: str
    minimum: float | None = None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


REQUIRED = object()
DEFAULT_LAYOUT = "{obs_collection}/{dataproduct_type}/{obs_publisher_did|basename}{ext}"

SETTINGS: tuple[Setting, ...] = (
    Setting("catalogue", "path", str, "data/mirror.duckdb",
            "DuckDB file of the local catalogue (relative to the config file)",
            'path = "data/mirror.duckdb"'),
    Setting("catalogue", "memory_limit", str, "1GB",
            "most memory DuckDB may use (caches, ingest buffers, sorts; beyond it, it spills "
            "to <catalogue>.tmp): keeps a sync's memory flat in the table size",
            'memory_limit = "1GB"'),
    Setting("store", "root", str, "data/store",
            "folder where fetched data products are stored (relative to the config file)",
            'root = "data/store"'),
    Setting("source", "name", str, REQUIRED,
            "short name of the source: letters, digits and '_', used in table names",
            'name = "eso"'),
    Setting("source", "url", str, REQUIRED,
            "base URL of the TAP service", 'url = "https://archive.eso.org/tap_obs"'),
    Setting("source", "table", str, "ivoa.obscore",
            "the ObsCore table to mirror, as the service names it", 'table = "ivoa.ObsCore"'),
    Setting("source", "where", str, "",
            "optional ADQL condition selecting the rows to mirror",
            "where = \"obs_collection = 'HARPS'\""),
    Setting("source", "token_env", str, "",
            "environment variable holding a bearer token; the token is never stored or logged",
            'token_env = "ESO_TOKEN"'),
    Setting("source", "id_column", str, "obs_publisher_did",
            "column that identifies a record uniquely", 'id_column = "obs_publisher_did"'),
    Setting("source", "watermark", str, "auto",
            "modification-time column for incremental syncs; 'auto' detects last_mod_date or "
            "last_modified, '' forces full passes with row hashing", 'watermark = "auto"'),
    Setting("source", "page_size", int, 10000,
            "rows per request; lowered automatically to the service's hard limit",
            "page_size = 10000", minimum=1),
    Setting("source", "mode", str, "sync",
            "'sync' TAP requests, or 'async' (UWS jobs) for services that prefer them",
            'mode = "sync"'),
    Setting("source", "max_withdrawals", int, 1000,
            "a sync refuses to withdraw more records than this in one pass",
            "max_withdrawals = 1000", minimum=0),
    Setting("source", "timeout", float, 120.0,
            "seconds to wait for one HTTP answer", "timeout = 120.0", minimum=0.1),
    Setting("source", "retries", int, 6,
            "attempts on transient failures (connection errors, timeouts, 5xx, 429)",
            "retries = 6", minimum=1),
    Setting("source", "fetch_where", str, "",
            "SQL condition over the source's mirrored rows choosing the products to fetch "
            "('' fetches every current row)", "fetch_where = \"dataproduct_type = 'spectrum'\""),
    Setting("source", "fetch_ancillary", bool, False,
            "also fetch DataLink #auxiliary links (e.g. HARPS CCF/BIS files)",
            "fetch_ancillary = false"),
    Setting("source", "max_file_mb", float, 0.0,
            "skip products whose access_estsize exceeds this many MB (0: no cap)",
            "max_file_mb = 0.0", minimum=0),
    Setting("source", "max_total_gb", float, 0.0,
            "select products of this source only up to this many GB in all (0: no cap)",
            "max_total_gb = 0.0", minimum=0),
    Setting("store", "layout", str, DEFAULT_LAYOUT,
            "path template of a product in the store, over ObsCore fields",
            'layout = "{obs_collection}/{instrument_name}/{t_min:%Y/%m/%d}/'
            '{obs_publisher_did|basename}{ext}"'),
    Setting("fetch", "concurrency", int, 16, "downloads running at once", "concurrency = 16",
            minimum=1),
    Setting("fetch", "per_host", int, 8, "downloads running at once against one host",
            "per_host = 8", minimum=1),
    Setting("fetch", "stall_seconds", float, 30.0,
            "abort (and later resume) a download that received nothing for this long",
            "stall_seconds = 30.0", minimum=0.1),
    Setting("fetch", "retries", int, 5,
            "attempts per product on transient failures before it is marked failed",
            "retries = 5", minimum=1),
    Setting("query", "timeout", float, 60.0,
            "seconds a local ADQL query may run before it is stopped", "timeout = 60.0",
            minimum=0.001),
    Setting("query", "maxrec", int, 100000,
            "rows a local query returns at most (more: the result is marked OVERFLOW)",
            "maxrec = 100000", minimum=0),
    Setting("serve", "host", str, "127.0.0.1",
            "address `mirror serve` and the daemon's service bind; anything but 127.0.0.1 "
            "requires token_env", 'host = "127.0.0.1"'),
    Setting("serve", "port", int, 8765, "TCP port of the local TAP service (0: any free port)",
            "port = 8765", minimum=0),
    Setting("serve", "token_env", str, "",
            "environment variable holding the bearer token every request must carry; "
            "required when host is not 127.0.0.1", 'token_env = "MIRROR_SERVE_TOKEN"'),
    Setting("serve", "public_url", str, "",
            "the URL clients reach the service at, when not http://HOST:PORT (behind a "
            "reverse proxy, or a wildcard bind): product, DataLink, job and capability links "
            "use it", 'public_url = "https://mirror.example.org/tap"'),
    Setting("serve", "threads", int, 1,
            "DuckDB threads of `mirror serve` (0: one per core). 1: each query runs on its own "
            "thread, so concurrent small queries spread over the cores instead of queueing "
            "for them", "threads = 1", minimum=0),
    Setting("serve", "max_queries", int, 4,
            "queries running at once (each on its own read-only cursor)", "max_queries = 4",
            minimum=1),
    Setting("serve", "queue_seconds", float, 5.0,
            "seconds a query waits for a free slot before the answer is 503 + Retry-After",
            "queue_seconds = 5.0", minimum=0.0),
    Setting("serve", "max_body_kb", int, 256,
            "largest request body accepted, in KiB (larger: 413)", "max_body_kb = 256",
            minimum=1),
    Setting("serve", "max_jobs", int, 100,
            "async (UWS) jobs kept at once; the oldest finished ones go first",
            "max_jobs = 100", minimum=1),
    Setting("serve", "job_hours", float, 24.0,
            "hours an async job and its result are kept before destruction",
            "job_hours = 24.0", minimum=0.01),
    Setting("daemon", "interval", float, 900.0,
            "seconds between two syncs of a source by `mirror daemon`", "interval = 900.0",
            minimum=0.1),
    Setting("daemon", "jitter", float, 0.1,
            "each wait is varied by up to this fraction, so sources do not run in lockstep",
            "jitter = 0.1", minimum=0.0),
    Setting("daemon", "idle_max", float, 21600.0,
            "while a source does not change, its interval doubles up to this many seconds",
            "idle_max = 21600.0", minimum=0.1),
    Setting("daemon", "backoff_max", float, 3600.0,
            "while a source fails, the wait doubles up to this many seconds",
            "backoff_max = 3600.0", minimum=0.1),
    Setting("daemon", "watch_store", bool, True,
            "notice product files deleted or changed by hand and fetch them again",
            "watch_store = true"),
    Setting("source", "interval", float, 0.0,
            "seconds between syncs of this source by the daemon (0: [daemon] interval)",
            "interval = 3600.0", minimum=0.0),
)

_BY_KEY = {s.key: s for s in SETTINGS}
_SOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,40}$")
# ADQL schemas of the local catalogue (TAP_SCHEMA, ivoa, mirror's own tables)
_RESERVED_NAMES = ("mirror", "ivoa", "tap_schema")
_EXAMPLE = """[catalogue]
path = "data/mirror.duckdb"
[store]
root = "data/store"
[[source]]
name = "eso"
url = "https://archive.eso.org/tap_obs\""""


@dataclass(frozen=True)
class SourceConfig:
    """One TAP service to mirror."""

    name: str
    url: str
    table: str = "ivoa.obscore"
    where: str = ""
    token_env: str = ""
    id_column: str = "obs_publisher_did"
    watermark: str = "auto"
    page_size: int = 10000
    mode: str = "sync"
    max_withdrawals: int = 1000
    timeout: float = 120.0
    retries: int = 6
    fetch_where: str = ""
    fetch_ancillary: bool = False
    max_file_mb: float = 0.0
    max_total_gb: float = 0.0
    interval: float = 0.0

    def token(self) -> str | None:
        """The bearer token from the environment, read at use so it never sits in config."""
        return os.environ.get(self.token_env) or None if self.token_env else None


@dataclass(frozen=True)
class FetchConfig:
    """How products are downloaded (all sources)."""

    concurrency: int = 16
    per_host: int = 8
    stall_seconds: float = 30.0
    retries: int = 5


@dataclass(frozen=True)
class QueryConfig:
    """Limits of local ADQL queries."""

    timeout: float = 60.0
    maxrec: int = 100000


@dataclass(frozen=True)
class ServeConfig:
    """The local TAP service (`mirror serve`, the daemon's endpoint)."""

    host: str = "127.0.0.1"
    port: int = 8765
    token_env: str = ""
    public_url: str = ""
    threads: int = 1
    max_queries: int = 4
    queue_seconds: float = 5.0
    max_body_kb: int = 256
    max_jobs: int = 100
    job_hours: float = 24.0

    def token(self) -> str | None:
        """The bearer token from the environment, read at use so it never sits in config."""
        return os.environ.get(self.token_env) or None if self.token_env else None


@dataclass(frozen=True)
class DaemonConfig:
    """The schedule of `mirror daemon`."""

    interval: float = 900.0
    jitter: float = 0.1
    idle_max: float = 21600.0
    backoff_max: float = 3600.0
    watch_store: bool = True


@dataclass(frozen=True)
class Config:
    """The whole configuration, paths already resolved against the config file's folder."""

    catalogue_path: Path
    store_root: Path
    memory_limit: str = "1GB"
    sources: tuple[SourceConfig, ...] = field(default_factory=tuple)
    file: Path | None = None
    layout: str = DEFAULT_LAYOUT
    fetch: FetchConfig = field(default_factory=FetchConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named {name!r} in {self.file}",
                          f"configured sources: {known}")


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--config FILE`, else `$MIRROR_CONFIG`, else `./mirror.toml`."""
    if explicit:
        path = Path(explicit)
    elif os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
    else:
        path = Path(DEFAULT_FILE)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found",
            f"pass --config FILE, set ${ENV_VAR}, or create ./{DEFAULT_FILE}; "
            "config.example.toml documents every setting")
    return path.resolve()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file; errors name the file, the key and a valid example."""
    file = find_config(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}", f"a valid file:\n{_EXAMPLE}") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read it: {exc.strerror}") from exc
    return parse_config(data, file)


def parse_config(data: dict[str, Any], file: Path) -> Config:
    """Validate parsed TOML against `SETTINGS`."""
    unknown_sections = set(data) - {"catalogue", "store", "fetch", "query", "serve", "daemon",
                                    "source"}
    if unknown_sections:
        raise ConfigError(f"{file}: unknown section [{sorted(unknown_sections)[0]}]",
                          "known sections: [catalogue], [store], [fetch], [query], [serve], "
                          "[daemon], [[source]]")
    base = file.parent
    catalogue = _section(data, "catalogue", file)
    store = _section(data, "store", file)
    raw_sources = data.get("source", [])
    if not isinstance(raw_sources, list):
        raise ConfigError(f"{file}: 'source' must be a list of tables, written [[source]]",
                          f"for example:\n{_EXAMPLE}")
    sources = tuple(SourceConfig(**_section({"source": s}, "source", file)) for s in raw_sources)
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{file}: source name {name!r} is used twice",
                              f'give every [[source]] its own name, e.g. name = "{name}_2"')
    memory = str(catalogue["memory_limit"]).strip()
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory, re.IGNORECASE):
        raise ConfigError(f"{file}: [catalogue] memory_limit = {memory!r} is not a size",
                          'give a number and a unit, e.g. memory_limit = "1GB" or "512MB"')
    return Config(catalogue_path=(base / catalogue["path"]).resolve(), memory_limit=memory,
                  store_root=(base / store["root"]).resolve(), sources=sources, file=file,
                  layout=store["layout"], fetch=FetchConfig(**_section(data, "fetch", file)),
                  query=QueryConfig(**_section(data, "query", file)),
                  serve=ServeConfig(**_section(data, "serve", file)),
                  daemon=DaemonConfig(**_section(data, "daemon", file)))


def _section(data: dict[str, Any], section: str, file: Path) -> dict[str, Any]:
    raw = data.get(section, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: [{section}] must be a table", f"for example:\n{_EXAMPLE}")
    out: dict[str, Any] = {}
    for key in raw:
        if f"{section}.{key}" not in _BY_KEY:
            known = [s for s in SETTINGS if s.section == section]
            close = difflib.get_close_matches(key, [s.name for s in known], n=1, cutoff=0)
            example = next((s.example for s in known if close and s.name == close[0]), "")
            raise ConfigError(f"{file}: unknown key {section}.{key}",
                              f"known keys: {', '.join(s.name for s in known)}; "
                              f"e.g. {example}")
    for setting in (s for s in SETTINGS if s.section == section):
        if setting.name not in raw:
            if setting.default is REQUIRED:
                raise ConfigError(f"{file}: [{section}] lacks the required key {setting.name!r}",
                                  f"add e.g. {setting.example}")
            out[setting.name] = setting.default
            continue
        out[setting.name] = _coerce(setting, raw[setting.name], file)
    if section == "source":
        _check_source(out, file)
    if section == "serve" and out["public_url"]:
        _check_public_url(out["public_url"], file)
    return out


def _coerce(setting: Setting, value: Any, file: Path) -> Any:
    if setting.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, setting.type) or isinstance(value, bool) is not (setting.type is bool):
        raise ConfigError(
            f"{file}: {setting.key} must be a {setting.type.__name__}, not {value!r}",
            f"a valid example: {setting.example}")
    if setting.minimum is not None and value < setting.minimum:  # type: ignore[operator]
        raise ConfigError(f"{file}: {setting.key} must be at least {setting.minimum}, "
                          f"not {value!r}", f"a valid example: {setting.example}")
    return value


def _check_public_url(url: str, file: Path) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{file}: serve.public_url {url!r} is not an http(s) URL without a "
                          "query or fragment",
                          'a valid example: public_url = "https://mirror.example.org/tap"')


def _check_source(src: dict[str, Any], file: Path) -> None:
    if not _SOURCE_NAME.match(src["name"]):
        raise ConfigError(f"{file}: source.name {src['name']!r} is not a usable name",
                          "use letters, digits and '_', starting with a letter, "
                          'e.g. name = "eso"')
    if src["name"].lower() in _RESERVED_NAMES:
        raise ConfigError(f"{file}: source.name {src['name']!r} is reserved: the local catalogue "
                          "has an ADQL schema of that name (mirror: its own tables)",
                          'give the source another name, e.g. name = "eso"')
    if not re.match(r"^https?://", src["url"]):
        raise ConfigError(f"{file}: source.url {src['url']!r} of source {src['name']!r} is not "
                          "an http(s) URL", 'e.g. url = "https://archive.eso.org/tap_obs"')
    if src["mode"] not in ("sync", "async"):
        raise ConfigError(f"{file}: source.mode must be 'sync' or 'async', not {src['mode']!r}",
                          'e.g. mode = "sync"')
