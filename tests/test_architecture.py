"""Layering of the package, read from the import statements of mirror/ (ast, nothing imported).

    mirror.errors, mirror.config, mirror.retry, mirror.catalogue   (the foundation)
    mirror.adql (pure: errors only), mirror.store (files: no database)
    mirror.harvest, mirror.fetch, mirror.query                      (services, independent)
    mirror.api                                                      (the Python API)
    mirror.cli                                                      (imported by nobody)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mirror"
FOUNDATION = ("mirror.errors", "mirror.config", "mirror.retry", "mirror.catalogue")
UPPER = ("mirror.harvest", "mirror.fetch", "mirror.query", "mirror.api", "mirror.cli")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False,
               root: Path = PACKAGE) -> set[str]:
    """Every module `source` imports, anywhere in it (functions and TYPE_CHECKING included),
    with relative imports resolved and `from pkg import sub` counted as importing pkg.sub."""
    found: set[str] = set()
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                rel = Path(*candidate.split("."))
                if (root.parent / rel).is_dir() or (root.parent / rel).with_suffix(".py").is_file():
                    found.add(candidate)
    return found


def package_imports() -> dict[str, set[str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        out[name] = {m for m in imports_of(path.read_text(encoding="utf-8"), name,
                                           is_package=path.name == "__init__.py")
                     if m == "mirror" or m.startswith("mirror.")}
    return out


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(graph: dict[str, set[str]], sources: tuple[str, ...],
               forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{mod} imports {imp}" for mod, imps in graph.items() if within(mod, sources)
                  for imp in imps if within(imp, forbidden))


GRAPH = package_imports()


def test_the_package_is_seen() -> None:
    assert {"mirror.config", "mirror.errors", "mirror.api", "mirror.cli",
            "mirror.harvest.harvester", "mirror.catalogue.obscore"} <= set(GRAPH)
    assert "mirror.catalogue.engine" in GRAPH["mirror.catalogue.obscore"]


def test_foundation_never_imports_harvest_api_or_cli() -> None:
    assert violations(GRAPH, FOUNDATION, UPPER) == []


def test_harvest_never_imports_api_or_cli() -> None:
    assert violations(GRAPH, ("mirror.harvest",), ("mirror.api", "mirror.cli")) == []


def test_nothing_imports_the_cli() -> None:
    assert sorted(m for m, imps in GRAPH.items() if not within(m, ("mirror.cli",))
                  and any(within(i, ("mirror.cli",)) for i in imps)) == []


def test_errors_import_nothing_of_mirror() -> None:
    assert GRAPH["mirror.errors"] == set()


# -- the checker itself finds what it should ---------------------------------------------------


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("import mirror.cli", "mirror.catalogue.x", "mirror.cli"),
    ("from mirror.harvest import plan", "mirror.catalogue.x", "mirror.harvest.plan"),
    ("from ..harvest import plan", "mirror.catalogue.x", "mirror.harvest.plan"),
    ("from .. import api", "mirror.catalogue.x", "mirror.api"),
    ("def f():\n    from mirror.api import Mirror\n", "mirror.config", "mirror.api"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mirror.cli\n",
     "mirror.errors", "mirror.cli"),
])
def test_checker_sees_every_form_of_import(source: str, module: str, expected: str) -> None:
    assert expected in imports_of(source, module)
    graph = {module: {m for m in imports_of(source, module) if m.startswith("mirror")}}
    assert violations(graph, FOUNDATION, UPPER)


def test_adql_is_pure() -> None:
    allowed = ("mirror.errors", "mirror.adql")
    assert sorted(f"{m} imports {i}" for m, imps in GRAPH.items() if within(m, ("mirror.adql",))
                  for i in imps if not within(i, allowed)) == []


def test_store_never_touches_the_catalogue_or_services() -> None:
    assert violations(GRAPH, ("mirror.store",),
                      ("mirror.catalogue", *UPPER, "mirror.adql")) == []


@pytest.mark.parametrize("service", ["mirror.harvest", "mirror.fetch", "mirror.query"])
def test_services_do_not_import_each_other(service: str) -> None:
    others = tuple(s for s in ("mirror.harvest", "mirror.fetch", "mirror.query") if s != service)
    assert violations(GRAPH, (service,), (*others, "mirror.api", "mirror.cli")) == []


def test_only_the_cli_imports_the_daemon() -> None:
    assert sorted(f"{m} imports {i}" for m, imps in GRAPH.items()
                  if not within(m, ("mirror.cli", "mirror.daemon"))
                  for i in imps if within(i, ("mirror.daemon",))) == []


def test_the_daemon_never_imports_the_cli() -> None:
    assert violations(GRAPH, ("mirror.daemon",), ("mirror.cli",)) == []


def test_schema_reads_through_query_and_never_drives_services() -> None:
    """The schema catalogue loads through ADQL and profiles through the catalogue; it never
    harvests, fetches, serves, or reaches back into the API or the command line."""
    assert violations(GRAPH, ("mirror.schema",),
                      ("mirror.harvest", "mirror.fetch", "mirror.server", "mirror.daemon",
                       "mirror.ml", "mirror.api", "mirror.cli")) == []
    assert "mirror.schema.profiles" in GRAPH


def test_ml_selects_with_query_and_reads_the_store_never_harvests_or_fetches() -> None:
    assert violations(GRAPH, ("mirror.ml",),
                      ("mirror.harvest", "mirror.fetch", "mirror.api", "mirror.cli",
                       "mirror.server", "mirror.daemon", "mirror.schema")) == []
    assert {"mirror.query", "mirror.store.files"} <= set().union(
        *(imps for mod, imps in GRAPH.items() if within(mod, ("mirror.ml",))))


def test_the_server_reads_and_never_harvests_fetches_or_reaches_up() -> None:
    """The service answers from the catalogue, the query layer and the store; it never drives
    a harvest or a fetch, nor imports the API, the command line or the reader-side client."""
    assert violations(GRAPH, ("mirror.server",),
                      ("mirror.harvest", "mirror.fetch", "mirror.api", "mirror.cli",
                       "mirror.daemon", "mirror.remote", "mirror.ml")) == []
    assert "mirror.store.files" in GRAPH["mirror.server.products"]


def test_the_remote_reader_talks_http_only() -> None:
    """`mirror.remote` reaches another process's catalogue over HTTP: it imports no service
    of its own (no server, harvest, fetch) and nothing above the API."""
    assert violations(GRAPH, ("mirror.remote",),
                      ("mirror.server", "mirror.harvest", "mirror.fetch", "mirror.api",
                       "mirror.cli", "mirror.daemon")) == []
