"""Layout templates: ObsCore rows -> relative store paths that can never leave the store."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from mirror.errors import ConfigError
from mirror.store.files import Store
from mirror.store.layout import (
    DEFAULT_TEMPLATE,
    MAX_COMPONENT,
    extension_for,
    is_safe_component,
    render,
    sanitise_component,
    validate_template,
)

ESO_DID = "ivo://eso-sim.test/ID?ADP.2014-09-25T03:38:28.268"
ROW = {"obs_collection": "HARPS", "dataproduct_type": "spectrum", "instrument_name": "HARPS",
       "obs_publisher_did": ESO_DID, "t_min": 56925.1597, "t_max": 56925.2, "calib_level": 2}
DATED = "{obs_collection}/{instrument_name}/{t_min:%Y/%m/%d}/{obs_publisher_did|basename}.fits"
WINDOWS = {"con", "prn", "aux", "nul", *(f"{p}{i}" for p in ("com", "lpt") for i in range(10))}

HOSTILE = [
    "ivo://x/../../etc/passwd", "../../../../etc/passwd", "/abs/path", "/", "//",
    "..\\..\\windows\\system32", "C:\\Windows\\evil", "\\\\server\\share\\x", "a/%2e%2e/b",
    "%2e%2e%2f%2e%2e%2fetc", "ivo://x/ID?../../../x#../..", "file:///etc/passwd",
    "a/./b//c/.", "a\nb\rc", "nul\x00byte", "\x1b[31mred\x7f", "x" * 1000, "\u00df" * 150,
    "\uff0e\uff0e\uff0fetc\uff0fpasswd", "\u2024\u2024/\u2024\u2024/x", "\u2215etc\u2215passwd",
    "\u202egnp.stif", "e\u0301\u0301", "\udcff\udc2e\udc2e", "CON", "con.fits", "LPT1",
    "aux.tar.gz", "COM9", "..", ".", "...", ".....", "-rf", "--", ".hidden", "~root", " ",
    "\t\n", "ivo://x/", "#", "?", ".. ", " ..",
]


def check_safe(rel: PurePosixPath) -> None:
    """The invariants every rendered path keeps, whatever the row said."""
    assert not rel.is_absolute() and rel.parts
    for part in rel.parts:
        assert part not in (".", "..") and not part.startswith((".", "-")), rel
        assert len(part.encode()) <= MAX_COMPONENT, rel
        assert part.isascii() and is_safe_component(part), rel
        assert part.split(".")[0].lower() not in WINDOWS, rel
        assert not part.endswith("."), rel


def check_inside(store: Store, rel: PurePosixPath) -> None:
    real = store.resolve(rel).resolve()
    assert real.is_relative_to(store.root) and real != store.root


def test_default_template_gives_eso_like_names() -> None:
    assert render(DEFAULT_TEMPLATE, ROW, ".fits") == PurePosixPath(
        "HARPS/spectrum/ADP.2014-09-25T03_38_28.268.fits")


def test_date_spec_makes_folders_from_mjd() -> None:
    assert str(render(DATED, ROW)) == "HARPS/HARPS/2014/09/25/ADP.2014-09-25T03_38_28.268.fits"


def test_date_spec_accepts_datetimes_and_iso_strings() -> None:
    row = {"t_min": datetime(2021, 3, 4, 5, 6), "t_max": "2020-01-02T03:04:05", "x": "p"}
    assert str(render("{t_min:%Y-%m-%d}/{t_max:%Y/%j}/{x}", row)) == "2021-03-04/2020/002/p"


def test_missing_date_keeps_the_number_of_folders() -> None:
    rel = render(DATED, {**ROW, "t_min": None})
    assert rel.parts[2:5] == ("unknown", "unknown", "unknown")


@pytest.mark.parametrize("value", [None, float("nan"), np.float32("nan"), "", "  ",
                                   np.ma.masked, "absent"])
def test_null_fields_render_as_placeholder(value: object) -> None:
    row = {"obs_publisher_did": "ivo://a/b?c"}
    if value != "absent":
        row["obs_collection"] = value  # type: ignore[assignment]
    assert render(DEFAULT_TEMPLATE, row).parts[:2] == ("unknown", "unknown")
    assert render(DEFAULT_TEMPLATE, row, missing="none").parts[0] == "none"


def test_number_specs_and_integral_floats() -> None:
    assert str(render("{calib_level:02d}/{s:.2f}/{x}", {"calib_level": 2, "s": 1.234, "x": 1}))\
        == "02/1.23/1"
    assert render("{calib_level:03d}/{x}", {"calib_level": 2.0, "x": 1}).parts[0] == "002"
    with pytest.raises(ConfigError, match="cannot format"):
        render("{calib_level:d}/{x}", {"calib_level": 2.5, "x": 1})


@pytest.mark.parametrize(("did", "expected"), [
    (ESO_DID, "ADP.2014-09-25T03_38_28.268"),
    ("ivo://org/coll/file.fits", "file.fits"),
    ("ivo://org/coll#part7", "part7"),
    ("ivo://org/coll/dir/", "dir"),
])
def test_basename_takes_the_last_part_of_an_id(did: str, expected: str) -> None:
    assert render("{d|basename}", {"d": did}) == PurePosixPath(expected)


def test_filters_chain_left_to_right() -> None:
    row = {"d": "ivo://X/Y?AbC", "c": "Hst"}
    assert str(render("{c|upper}/{d|basename|lower}{ext}", row, ".fits")) == "HST/abc.fits"
    shard = render("{d|shard}/{d|basename}", row).parts[0]
    assert len(shard) == 2 and int(shard, 16) >= 0
    assert render("{d|shard}/{d|basename}", row).parts[0] == shard  # deterministic


def test_a_value_never_makes_folders_but_the_template_does() -> None:
    rel = render("data/{a}/{b}", {"a": "x/y/z", "b": "p\\q"})
    assert rel.parts == ("data", "x_y_z", "p_q")


def test_literal_braces_are_escaped() -> None:
    assert render("{{x}}{a}", {"a": "v"}) == PurePosixPath("_x_v")


def test_long_components_are_capped_with_a_hash_and_keep_the_extension() -> None:
    a = render("{d}{ext}", {"d": "x" * 500 + "a"}, ".fits").name
    b = render("{d}{ext}", {"d": "x" * 500 + "b"}, ".fits").name
    assert len(a) == MAX_COMPONENT and a.endswith(".fits") and a != b


@pytest.mark.parametrize("template", [
    "{obs_collection", "obs_collection}", "{a{b}}", "{}", "{a b}", "{a|nope}",
    "{a|basename|shout}", "/{a}", "{a}//{b}", "{a}/", "..\\{a}", "../{a}", "./{a}",
    "data/file.fits", "{ext}", "{a:zz}", "{a:>5/3}", "   ",
])
def test_bad_templates_are_refused_with_a_valid_example(template: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_template(template)
    assert DEFAULT_TEMPLATE in str(err.value)


@pytest.mark.parametrize("template", [
    DEFAULT_TEMPLATE, DATED, "{obs_collection}/{calib_level:02d}/{obs_id|lower}{ext}",
    "{obs_publisher_did|shard}/{obs_publisher_did|basename|safe}{ext}", "{t_min:%Y}_{obs_id}",
])
def test_good_templates_pass(template: str) -> None:
    validate_template(template)


def test_unknown_fields_are_refused_when_the_columns_are_known() -> None:
    validate_template(DEFAULT_TEMPLATE, ["obs_collection", "dataproduct_type",
                                         "obs_publisher_did"])
    with pytest.raises(ConfigError, match="obs_colection"):
        validate_template("{obs_colection}/{obs_id}", ["obs_collection", "obs_id"])


@pytest.mark.parametrize(("fmt", "ctype", "url", "ext"), [
    ("application/fits", None, "http://x/get?id=1", ".fits"),
    ("image/fits", None, None, ".fits"),
    ("application/x-fits-bintable", None, None, ".fits"),
    ("application/fits", None, "http://x/a/b.fits.fz", ".fits.fz"),
    ("image/fits", None, "http://x/a/b.fits.gz?x=1", ".fits.gz"),
    ("application/x-votable+xml;content=datalink", "image/fits", None, ".fits"),
    ("application/x-votable+xml;content=datalink", None, "http://x/links?ID=a", ""),
    ("application/x-votable+xml", None, None, ".xml"),
    ("image/jpeg", None, "http://x/p.fits", ".jpg"),
    (None, "application/octet-stream", "http://x/y/file.tar.gz?x=1", ".tar.gz"),
    (None, None, "http://x/y/preview.PNG", ".png"),
    (None, None, "http://x/getData?ID=ivo://a/b", ""),
    (None, None, "http://x/y/weird.na me", ""),
])
def test_extension_comes_from_format_then_type_then_url(fmt: str | None, ctype: str | None,
                                                        url: str | None, ext: str) -> None:
    assert extension_for(fmt, ctype, url) == ext


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_inside_the_store(value: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    rows = [{**ROW, "obs_publisher_did": value}, {**ROW, "obs_collection": value},
            {**ROW, "t_min": value, "instrument_name": value}]
    for template in (DEFAULT_TEMPLATE, DATED, "{obs_publisher_did}", "{obs_collection}{ext}"):
        for row in rows:
            rel = render(template, row, ".fits")
            check_safe(rel)
            check_inside(store, rel)
    store.put(render("{obs_publisher_did}", {"obs_publisher_did": value}), b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    assert len(list(store.walk())) == 1


def test_random_strings_stay_inside_the_store(tmp_path: Path) -> None:
    rng = random.Random(20240925)
    alphabet = ("/\\.:%?#~-_ \x00\n\r\t\x7f" "\uff0e\uff0f\uff3c\u2024\u2215\u202e\u200b\u0301"
                "aZ09\u00e9\u00df\u4e2d\U0001f600")
    store = Store(tmp_path / "store")
    seen: set[PurePosixPath] = set()
    for _ in range(400):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 260)))
        for template in (DEFAULT_TEMPLATE, "{a}/{obs_publisher_did|basename|upper}{ext}"):
            rel = render(template, {"obs_publisher_did": value, "a": value[::-1]}, ".fits")
            assert rel == render(template, {"obs_publisher_did": value, "a": value[::-1]},
                                 ".fits")
            check_safe(rel)
            check_inside(store, rel)
            seen.add(rel)
    assert len(seen) > 300  # sanitising must not collapse everything into a few names


def test_sanitise_is_idempotent_on_its_own_output() -> None:
    for text in HOSTILE:
        once = sanitise_component(text)
        assert sanitise_component(once) == once


def test_rendered_folders_cached_by_value_and_type() -> None:
    """Components are cached by value: 1, 1.0 and True are equal keys but render differently."""
    template = "{a}/{b}{ext}"
    assert str(render(template, {"a": 1, "b": "x"}, ".fits")) == "1/x.fits"
    assert str(render(template, {"a": 1.0, "b": "x"}, ".fits")) == "1.0/x.fits"
    assert str(render(template, {"a": True, "b": "x"}, ".fits")) == "True/x.fits"
    assert str(render(template, {"a": 1, "b": "x"}, ".xml")) == "1/x.xml"
    assert str(render(template, {"a": [1], "b": "x"})) == "_1_/x"  # unhashable: not cached


@pytest.mark.parametrize("did", ["ivo://eso/ADP.2014-09-25T03:38:28.268", "../../etc/passwd",
                                 "ivo://x/.hidden", "ivo://x/a/b?c#d", "", "ivo://x/..", "é/／"])
def test_render_text_is_the_rendered_path_as_text(did):
    from mirror.store.layout import render_text

    template = "{obs_collection}/{t_min:%Y/%m}/{obs_publisher_did|basename}{ext}"
    row = {"obs_collection": "a/b", "t_min": 56000.5, "obs_publisher_did": did}
    assert render_text(template, row, ".fits") == str(render(template, row, ".fits"))
    assert render_text(DEFAULT_TEMPLATE, row) == str(render(DEFAULT_TEMPLATE, row))


def test_a_component_new_for_every_product_renders_the_same_once_it_is_not_cached() -> None:
    """The selection renders one path per product: a file-name component stops being cached
    after UNIQUE_AFTER renders, folders stay cached, and every path is as rendered alone."""
    from mirror.store import layout

    template = "{obs_collection}/{obs_publisher_did|basename}{ext}"
    rows = [{"obs_collection": f"C{i % 3}", "obs_publisher_did": f"ivo://x/y?ADP.{i:06d}"}
            for i in range(layout.UNIQUE_AFTER + 200)]
    paths = [layout.render_text(template, row, ".fits") for row in rows]
    folders, names = layout._plan(template)
    assert names.unique and not folders.unique
    for row, path in zip(rows[-300:], paths[-300:], strict=True):
        layout._plan.cache_clear()
        layout._RENDERED.clear()
        assert layout.render_text(template, row, ".fits") == path
    assert paths[7] == "C1/ADP.000007.fits"
