"""Where a product lives in the store: a path template over the ObsCore fields of its row.

A template is text with fields `{name[:spec][|filter]...}`, e.g.
``{obs_collection}/{instrument_name}/{t_min:%Y/%m/%d}/{obs_publisher_did|basename}{ext}``.
Only the template's own text (and a date spec) may create folders: a value never does, and
every component is sanitised, so no publisher DID can point outside the store.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import PurePosixPath

from mirror.errors import ConfigError

DEFAULT_TEMPLATE = "{obs_collection}/{dataproduct_type}/{obs_publisher_did|basename}{ext}"
MISSING = "unknown"
MAX_COMPONENT = 200  # bytes; below the 255 of common file systems, leaving room for `.part`

_HINT = f'a valid template is "{DEFAULT_TEMPLATE}"'
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_FIELD = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?::([^|]*))?((?:\|\s*\w+\s*)*)$", re.ASCII)
_STRFTIME = re.compile(r"%[A-Za-z]")
_UNSAFE = re.compile(r"[^A-Za-z0-9\-_.+=@,]")
_WINDOWS = {"con", "prn", "aux", "nul", *(f"{p}{i}" for p in ("com", "lpt") for i in range(10))}
_COMPRESSION = (".gz", ".fz", ".bz2", ".xz", ".z")


def _basename(text: str) -> str:
    return _SEPARATORS.split(text.rstrip("/?#"))[-1]


_SEPARATORS = re.compile(r"[/?#]")


FILTERS: dict[str, Callable[[str], str]] = {
    "basename": _basename,  # ivo://auth/path?ADP.2014-09-25T03:38:28.268 -> ADP.2014-09-...
    "lower": str.lower,
    "upper": str.upper,
    "safe": lambda text: text,  # every component is sanitised anyway; kept for explicitness
    "shard": lambda text: hashlib.sha256(text.encode()).hexdigest()[:2],  # 256 folders
}


@dataclass(frozen=True)
class _Field:
    name: str
    spec: str
    filters: tuple[str, ...]


# A template compiles to components, each a sequence of literal text and fields.
_Component = tuple["str | _Field", ...]


def render(template: str, row: Mapping[str, object], ext: str = "", *,
           missing: str = MISSING) -> PurePosixPath:
    """The relative, sanitised store path of `row`; `{ext}` is `ext`, NULL fields `missing`."""
    return PurePosixPath(render_text(template, row, ext, missing=missing))


def render_text(template: str, row: Mapping[str, object], ext: str = "", *,
                missing: str = MISSING) -> str:
    """`render` as text, without the path object (the fetcher's selection renders one per
    product): sanitised components never hold '/' and are never '', '.' or '..', so joining
    them is what PurePosixPath would make."""
    dirs: list[str] = []
    for step in _plan(template):
        names = step.names
        if step.unique:  # a new value nearly every time (the product's own name)
            dirs.extend(_render_component(step.component, row, ext, missing))
            continue
        if len(names) == 1:
            v = ext if names[0] == "ext" else row.get(names[0])
            key: tuple[object, ...] = (step, missing, type(v), v)
        else:
            values = [ext if n == "ext" else row.get(n) for n in names]
            key = (step, missing, *((type(v), v) for v in values))
        try:
            done = _RENDERED.get(key)
        except TypeError:  # an unhashable value (an array): rendered without the cache
            dirs.extend(_render_component(step.component, row, ext, missing))
            continue
        if done is None:
            done = _render_component(step.component, row, ext, missing)
            if len(_RENDERED) >= RENDER_CACHE:
                _RENDERED.clear()
            _RENDERED[key] = done
            step.misses += 1
        step.seen += 1
        if step.seen == UNIQUE_AFTER and step.misses > UNIQUE_AFTER * 0.9:
            step.unique = True
        dirs.extend(done)
    return "/".join(dirs)


# Folders repeat across thousands of products (collection, instrument, date): each distinct
# component is rendered and sanitised once, keyed by its fields' values and their types (1 and
# 1.0 are equal keys but format differently). Bounded for long runs. A component that is new
# for nearly every product (its file name) stops being cached after UNIQUE_AFTER renders.
RENDER_CACHE = 4096
UNIQUE_AFTER = 512
_RENDERED: dict[tuple[object, ...], tuple[str, ...]] = {}


class _Step:
    """One component of a compiled template, with what its cache has seen (hashed by
    identity: a cache key starts with its step)."""

    __slots__ = ("component", "names", "seen", "misses", "unique")

    def __init__(self, component: _Component) -> None:
        self.component = component
        self.names = tuple(p.name for p in component if isinstance(p, _Field))
        self.seen = self.misses = 0
        self.unique = False


@lru_cache(maxsize=64)
def _plan(template: str) -> tuple[_Step, ...]:
    return tuple(_Step(c) for c in _compile(template))


def _render_component(component: _Component, row: Mapping[str, object], ext: str,
                      missing: str) -> tuple[str, ...]:
    """One template component as sanitised folder names (several only for a date spec)."""
    pieces = [""]
    for part in component:
        if isinstance(part, str):
            pieces[-1] += part
            continue
        values = _values(part, row, ext, missing)
        pieces[-1] += values[0]
        pieces.extend(values[1:])  # only a date spec's own '/' makes folders
    return tuple(sanitise_component(p) for p in pieces)


def template_fields(template: str) -> set[str]:
    """The row fields `template` reads (`ext` is not one: the caller supplies it)."""
    return {p.name for c in _compile(template) for p in c
            if isinstance(p, _Field) and p.name != "ext"}


def validate_template(template: str, fields: Collection[str] | None = None) -> None:
    """Raise ConfigError unless `template` is usable (and, given `fields`, names only those)."""
    used = template_fields(template)  # parses and checks the template
    if fields is not None:
        unknown = sorted(used - set(fields))
        if unknown:
            raise ConfigError(f"layout template {template!r} names unknown fields: "
                              f"{', '.join(unknown)}", hint=_HINT)


def sanitise_component(text: str) -> str:
    """One safe, portable path component: ASCII letters, digits and `-_.+=@,`, never special."""
    ascii_text = text if text.isascii() else "".join(  # ASCII has nothing to decompose
        c for c in unicodedata.normalize("NFKD", text)
        if not unicodedata.combining(c))  # fullwidth '／' -> '/', 'é' -> 'e'
    out = _UNSAFE.sub("_", ascii_text).rstrip(".") or "_"
    lead = len(out) - len(out.lstrip(".-"))
    out = "_" * lead + out[lead:]  # '..', '.hidden' and '-option' lose their meaning
    if out.split(".")[0].lower() in _WINDOWS:
        out = "_" + out
    if len(out) > MAX_COMPONENT:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        stem, dot, suffix = out.rpartition(".")
        suffix = f".{suffix}" if dot and stem and len(suffix) <= 16 else ""
        keep = MAX_COMPONENT - len(suffix) - len(digest) - 1
        out = f"{out[:keep] if not suffix else stem[:keep]}_{digest}{suffix}"
    return out


def is_safe_component(name: str) -> bool:
    """Whether `name` is a component `sanitise_component` could have produced."""
    return bool(name) and sanitise_component(name) == name


def extension_for(access_format: str | None, content_type: str | None = None,
                  url: str | None = None) -> str:
    """File suffix for a product: from access_format, else the response's type, else the URL."""
    name = _url_name(url or "")
    packed = next((c for c in _COMPRESSION if name.endswith(c)), "")
    suffixes = name.lstrip(".").partition(".")[1:]
    tail = "".join(suffixes)  # from the first dot; only the last two suffixes count
    if tail.count(".") > 2:  # ADP.2014-09-25T03:38:28.268.fits: keep the cache small
        tail = "." + ".".join(tail.rsplit(".", 2)[-2:])
    return _extension(access_format, content_type, tail, packed)


@lru_cache(maxsize=1024)
def _extension(access_format: str | None, content_type: str | None, suffixes: str,
               packed: str) -> str:
    """The choice for a URL whose last name ends in `suffixes` (at most its last two) and the
    compression suffix `packed`: names differ per product, their endings rarely."""
    for mime in (access_format, content_type):
        ext = _mime_ext(mime)
        if ext == ".fits":  # keep a compression suffix the URL shows: .fits.fz, .fits.gz
            return ext + packed
        if ext:
            return ext
    if not suffixes or suffixes.endswith("."):
        return ""
    parts = ["." + part for part in suffixes[1:].split(".")]
    url_ext = "".join(parts[-2:] if parts[-1] in _COMPRESSION else parts[-1:])
    return url_ext if _URL_EXT.fullmatch(url_ext) else ""


_URL_EXT = re.compile(r"(\.[a-z0-9]{1,8}){1,2}")


def _url_name(url: str) -> str:
    """The last name of a URL's path, lower-cased, as `urlsplit(url).path` would give it (with
    string operations: the selection asks once per product)."""
    path = url.partition("#")[0].partition("?")[0]
    scheme, sep, rest = path.partition("://")
    if sep and "/" not in scheme:
        path = rest.partition("/")[2]  # what follows the host
    elif path.startswith("//"):  # a network-path reference: //host/path
        path = path[2:].partition("/")[2]
    for name in reversed(path.lower().split("/")):
        if name not in ("", "."):
            return name
    return ""


@lru_cache(maxsize=256)
def _mime_ext(mime: str | None) -> str | None:
    if "content=datalink" in (mime or "").lower():
        return None  # the store holds what the DataLink document points to, not the document
    return _MIME_EXT.get(_family(mime))


def _family(mime: str | None) -> str:
    base = (mime or "").split(";")[0].strip().lower()
    if "fits" in base:
        return "fits"
    if "votable" in base:
        return "votable"
    return base


_MIME_EXT = {
    "fits": ".fits", "votable": ".xml", "text/xml": ".xml", "application/xml": ".xml",
    "text/html": ".html", "text/plain": ".txt", "text/csv": ".csv", "application/json": ".json",
    "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/tiff": ".tif",
    "application/pdf": ".pdf", "application/x-tar": ".tar", "application/zip": ".zip",
    "application/gzip": ".gz", "application/x-gzip": ".gz", "application/x-hdf5": ".h5",
    "application/x-hdf": ".hdf", "application/x-parquet": ".parquet",
}


def _values(field: _Field, row: Mapping[str, object], ext: str, missing: str) -> list[str]:
    """The rendered text of a field: one string, or several when a date spec has folders."""
    if field.name == "ext":
        return [ext]
    value = row.get(field.name)
    if _is_null(value):
        return [missing] * (field.spec.count("/") + 1 if _is_date(field.spec) else 1)
    if _is_date(field.spec):
        dates = [_strftime(value, piece) for piece in field.spec.split("/")]
        texts = [d for d in dates if d is not None]
        if len(texts) < len(dates):
            return [missing] * len(dates)
    else:
        texts = [_format(field, value)]
    out = []
    for text in texts:
        for name in field.filters:
            text = FILTERS[name](text)
        out.append(text or missing)
    return out


def _is_null(value: object) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        if math.isnan(value):  # type: ignore[arg-type]  # float, numpy floats, ...
            return True
    except (TypeError, ValueError, OverflowError):
        pass
    return type(value).__name__ == "MaskedConstant"  # numpy.ma.masked, without importing numpy


def _is_date(spec: str) -> bool:
    return bool(_STRFTIME.search(spec))


def _strftime(value: object, spec: str) -> str | None:
    """A date as text: MJD numbers (ObsCore's t_min/t_max), datetimes or ISO strings."""
    if isinstance(value, (datetime, date)):
        return value.strftime(spec)
    from astropy.time import Time  # import here: astropy is slow to import, needed only here

    try:
        mjd = float(value)  # type: ignore[arg-type]
        when = Time(mjd, format="mjd") if math.isfinite(mjd) else None
    except (TypeError, ValueError):
        try:
            when = Time(str(value))
        except ValueError:
            return None
    try:
        return when.strftime(spec) if when is not None else None
    except (ValueError, OverflowError):
        return None


def _format(field: _Field, value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not field.spec:
        return str(value)
    try:
        return format(value, field.spec)
    except (TypeError, ValueError) as exc:
        if isinstance(value, float) and value.is_integer():  # 2.0 from a VOTable for `:02d`
            return format(int(value), field.spec)
        raise ConfigError(f"layout field {{{field.name}:{field.spec}}} cannot format "
                          f"{value!r}: {exc}", hint=_HINT) from exc


@lru_cache(maxsize=64)
def _compile(template: str) -> tuple[_Component, ...]:
    """Parse and check a template once; every error names the problem and shows a valid one."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"layout template {template!r}: {why}", hint=_HINT)

    if not template.strip():
        raise bad("it is empty")
    if template.startswith("/") or "\\" in template:
        raise bad("it must be a relative path with '/' between folders")
    components: list[list[str | _Field]] = [[]]
    position = 0
    for match in _TOKEN.finditer(template):
        _literal(components, template[position:match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            _literal(components, token[0])
        elif match.group(1) is None:
            raise bad(f"unbalanced {token!r} at character {match.start() + 1} "
                      "(write '{{' or '}}' for a literal brace)")
        else:
            components[-1].append(_parse_field(match.group(1), bad))
    _literal(components, template[position:])
    for component in components:
        if not component:
            raise bad("it has an empty folder name ('//' or a trailing '/')")
        if "".join(p for p in component if isinstance(p, str)) in (".", "..") \
                and len(component) == 1:
            raise bad("'.' and '..' cannot be folder names")
    if not any(isinstance(p, _Field) and p.name != "ext" for c in components for p in c):
        raise bad("it names no field, so every product would get the same path")
    return tuple(tuple(c) for c in components)


def _literal(components: list[list[str | _Field]], text: str) -> None:
    first, *rest = text.split("/")
    if first:
        components[-1].append(first)
    for name in rest:
        components.append([name] if name else [])


def _parse_field(body: str, bad: Callable[[str], ConfigError]) -> _Field:
    match = _FIELD.match(body)
    if not match:
        raise bad(f"cannot read field {{{body}}}; write {{name}}, {{name:spec}} or "
                  "{name|filter}")
    name, spec = match.group(1), match.group(2) or ""
    filters = tuple(f.strip() for f in match.group(3).split("|")[1:])
    unknown = [f for f in filters if f not in FILTERS]
    if unknown:
        raise bad(f"unknown filter {unknown[0]!r} in {{{body}}}; known filters: "
                  f"{', '.join(FILTERS)}")
    if "/" in spec and not _is_date(spec):
        raise bad(f"only a date spec may contain '/', in {{{body}}}")
    if spec and not _is_date(spec) and not _formats_something(spec):
        raise bad(f"format spec {spec!r} in {{{body}}} formats neither numbers nor text")
    return _Field(name, spec, filters)


def _formats_something(spec: str) -> bool:
    for sample in (1, 1.5, "x"):
        try:
            format(sample, spec)
            return True
        except (TypeError, ValueError):
            pass
    return False
