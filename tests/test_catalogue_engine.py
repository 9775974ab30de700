"""The catalogue's DuckDB settings: a memory cap from the config, nothing changeable by SQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from mirror.catalogue.engine import Catalogue


def setting(cat: Catalogue, name: str) -> str:
    with cat.begin() as conn:
        return str(conn.exec_driver_sql(f"SELECT current_setting('{name}')").scalar_one())


def test_memory_limit_from_the_config_caps_duckdb(tmp_path: Path) -> None:
    with Catalogue.open(tmp_path / "m.duckdb", memory_limit="100MB") as cat:
        capped = setting(cat, "memory_limit")
    with Catalogue.open(tmp_path / "n.duckdb") as cat:
        default = setting(cat, "memory_limit")
    assert capped.endswith("MiB") and 90 <= float(capped.split()[0]) <= 100
    assert capped != default


def test_threads_one_for_the_service_else_one_per_core(tmp_path: Path) -> None:
    with Catalogue.open(tmp_path / "m.duckdb", threads=1) as cat:
        assert setting(cat, "threads") == "1"
    with Catalogue.open(tmp_path / "n.duckdb", threads=0) as cat:  # 0: DuckDB's default
        assert setting(cat, "threads") == str(os.cpu_count())


def test_mirror_serve_opens_the_catalogue_with_the_configured_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fakes import write_config

    from mirror.cli import main
    from mirror.server.service import LocalService

    seen: list[str] = []
    monkeypatch.setattr(LocalService, "serve_forever",
                        lambda self: seen.append(setting(self.ctx.catalogue, "threads")))
    cfg = write_config(tmp_path, {"name": "s", "url": "http://127.0.0.1:9/tap"})
    assert main(["--config", str(cfg), "--quiet", "serve", "--port", "0"]) == 0
    with open(cfg, "a", encoding="utf-8") as f:
        f.write("\n[serve]\nthreads = 0\n")
    assert main(["--config", str(cfg), "--quiet", "serve", "--port", "0"]) == 0
    assert seen == ["1", str(os.cpu_count())]


def test_settings_cannot_be_changed_by_sql(tmp_path: Path) -> None:
    with Catalogue.open(tmp_path / "m.duckdb", memory_limit="100MB") as cat:
        with pytest.raises(sa.exc.DBAPIError, match="(?i)configuration.*locked|lock"):
            with cat.begin() as conn:
                conn.exec_driver_sql("SET memory_limit = '10GB'")
        assert "MiB" in setting(cat, "memory_limit")


def test_head_constant_is_alembics_newest_revision() -> None:
    """`migrate()` skips alembic when the catalogue is at HEAD: HEAD must be the real head."""
    from alembic.script import ScriptDirectory

    from mirror.catalogue.engine import HEAD, _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == HEAD


def test_an_older_catalogue_is_migrated_on_open(tmp_path: Path) -> None:
    from alembic import command

    from mirror.catalogue.engine import HEAD, _alembic_config

    path = tmp_path / "m.duckdb"
    with Catalogue.open(path) as cat:
        with cat.engine.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        assert cat.revision() == "0002" and not cat.is_current()
    with pytest.raises(Exception, match="another version of mirror"):
        Catalogue.open(path, read_only=True)
    with Catalogue.open(path) as cat:
        assert cat.revision() == HEAD
        with cat.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM column_profiles"
                                        ).scalar_one() == 0
            # 0004: no index on the products' state (DuckDB re-inserts rows to update one)
            assert conn.exec_driver_sql("SELECT count(*) FROM duckdb_indexes() "
                                        "WHERE table_name = 'products'").scalar_one() == 0
