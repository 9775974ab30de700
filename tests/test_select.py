"""Selection: store paths rendered from the layout, collisions reported and never queued."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from mirror.catalogue import products
from mirror.catalogue.engine import Catalogue, raw
from mirror.catalogue.obscore import data_table, ensure_table
from mirror.catalogue.types import ColumnSpec
from mirror.config import Config, load_config
from mirror.fetch.select import select

LAYOUT = "{obs_collection}/{target_name}{ext}"  # targets observed twice share a path


def config(tmp_path: Path) -> Config:
    cfg = tmp_path / "mirror.toml"
    cfg.write_text(f'[catalogue]\npath = "m.duckdb"\n[store]\nroot = "store"\nlayout = "{LAYOUT}"\n'
                   '[[source]]\nname = "a"\nurl = "http://127.0.0.1:9/tap"\n'
                   '[[source]]\nname = "b"\nurl = "http://127.0.0.1:9/tap"\n')
    return load_config(cfg)


def mirror_rows(cat: Catalogue, source: str, targets: dict[str, str]) -> None:
    """ObsCore rows of `source`: product id -> target name, one FITS file each."""
    names = ("obs_publisher_did", "access_url", "access_format", "obs_collection",
             "target_name")
    ids = list(targets)
    rows = pa.table({"obs_publisher_did": ids,
                     "access_url": [f"http://127.0.0.1:9/{i}.fits" for i in ids],
                     "access_format": ["application/fits"] * len(ids),
                     "obs_collection": ["HARPS"] * len(ids),
                     "target_name": [targets[i] for i in ids]})
    with cat.begin() as conn:
        ensure_table(conn, source, [ColumnSpec(n) for n in names])
        raw(conn).register("rows", rows)
        conn.exec_driver_sql(f"INSERT INTO {data_table(source)} ({', '.join(names)}, _run_id, "
                             "_updated_at) SELECT *, 0, now() FROM rows")
        raw(conn).unregister("rows")


@pytest.fixture()
def cat(tmp_path: Path):
    with Catalogue.open(tmp_path / "m.duckdb") as c:
        yield c


def queued(cat: Catalogue, source: str) -> dict[str, str]:
    with cat.begin() as conn:
        return {r.product_id: r.path for r in products.in_state(conn, source, "pending")}


def test_two_products_rendering_to_one_path_queue_the_first_and_report_the_second(tmp_path,
                                                                                   cat):
    cfg = config(tmp_path)
    mirror_rows(cat, "a", {"ivo://a?1": "HD 1", "ivo://a?2": "HD 1", "ivo://a?3": "HD 3"})
    with cat.begin() as conn:
        sel = select(conn, cfg, cfg.sources[0])
    assert sel.queued == 2
    assert queued(cat, "a") == {"ivo://a?1": "HARPS/HD_1.fits", "ivo://a?3": "HARPS/HD_3.fits"}
    [error] = sel.errors
    assert "ivo://a?2" in error and "HARPS/HD_1.fits" in error and "ivo://a?1" in error


def test_a_path_another_source_holds_is_reported_and_a_product_keeps_its_own(tmp_path, cat):
    cfg = config(tmp_path)
    mirror_rows(cat, "a", {"ivo://a?1": "HD 1"})
    mirror_rows(cat, "b", {"ivo://b?1": "HD 1", "ivo://b?2": "HD 2"})
    with cat.begin() as conn:
        assert select(conn, cfg, cfg.sources[0]).queued == 1
    with cat.begin() as conn:
        sel = select(conn, cfg, cfg.sources[1])
    assert sel.queued == 1 and queued(cat, "b") == {"ivo://b?2": "HARPS/HD_2.fits"}
    assert len(sel.errors) == 1 and "already used by ivo://a?1" in sel.errors[0]
    with cat.begin() as conn:  # selecting again: a's product is not in its own way
        again = select(conn, cfg, cfg.sources[0], retry_failed=True)
    assert again.errors == [] and queued(cat, "a") == {"ivo://a?1": "HARPS/HD_1.fits"}


def test_path_owners_reads_only_the_paths_asked_for(cat):
    with cat.begin() as conn:
        products.queue(conn, "a", [{"product_id": f"p{i}", "url": "u", "path": f"x/{i}"}
                                   for i in range(50)])
        products.queue(conn, "b", [{"product_id": "q", "url": "u", "path": "y/q"}])
    with cat.begin() as conn:
        owners = products.path_owners(conn, {"x/3", "y/q", "x/none"})
        assert products.path_owners(conn, set()) == {}
    assert owners == {"x/3": ("a", "p3"), "y/q": ("b", "q")}
