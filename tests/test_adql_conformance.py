"""The IVOA ADQL validation queries (lyonetia sets) through `mirror.adql.translate`.

The query files stay in the shared folder (`$ADQL_CONFORMANCE_DIR`, else
`<project>/../shared/adql-conformance`). Every query marked invalid must be refused with an
`AdqlError`; at least 95% of the valid ones must translate. The translated valid queries are
also run on DuckDB against empty tables shaped like the ones the queries use. A per-file table
is printed and written to artifacts/adql-conformance.json.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from mirror.adql import MACROS, StaticTableMap, TableInfo, translate
from mirror.errors import AdqlError

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "artifacts" / "adql-conformance.json"
NUMBER, TEXT = "DOUBLE", "VARCHAR"
# The tables the queries read, with plausible columns (name -> DuckDB type).
MODEL: dict[str, dict[str, str]] = {
    "y": {"x": TEXT, "a": NUMBER}, "z": {"a": NUMBER}, "x": {"a": NUMBER, "b": NUMBER},
    "u": {"a": NUMBER},
    "foo": {"x": NUMBER, "y": NUMBER},
    "spatial": {"ra1": NUMBER, "ra2": NUMBER, "dist": NUMBER, "width": NUMBER,
                "height": NUMBER},
    "spatial2": {"ra1": NUMBER, "dec": NUMBER, "dist": NUMBER},
    "misc": {"mass": NUMBER, "mag": NUMBER},
    "crazy": {"version": TEXT, "flag": TEXT, "ct": NUMBER, "wot": NUMBER},
    "tap_upload.abc": {"c": NUMBER}, "tap_upload.adql": {"alpha": NUMBER, "rv": NUMBER},
    "tap_upload.user_table": {"ra": NUMBER, "ra2000": NUMBER},
    "tap_upload.my_stars": {"ra": NUMBER, "dec": NUMBER, "mag": NUMBER},
    "t1": {"oid": NUMBER, "name": TEXT, "id": NUMBER, "something": NUMBER, "x": NUMBER,
           "y": NUMBER, "z": NUMBER},
    "t2": {"oid": NUMBER, "name": TEXT, "x": NUMBER, "y": NUMBER},
    "t3": {"x": NUMBER},
    "t": {"ra": NUMBER, "dec": NUMBER},
    "most": {"a": NUMBER, "b": NUMBER}, "anything": {"c": NUMBER},
    "else3": {"and7": NUMBER}, "amanda.nucand": {"id": NUMBER}, "bar": {"foo": NUMBER},
    "a": {"d": NUMBER},
    "stars": {"name": TEXT, "ra": NUMBER, "dec": NUMBER, "type": TEXT, "radius": NUMBER,
              "long": NUMBER, "des": TEXT, "_weird_name": NUMBER, "distance": NUMBER,
              "mag": NUMBER, "ra_error": NUMBER, "id": "INTEGER", "star_name": TEXT,
              "favorite_name": TEXT, "pm_ra": NUMBER, "pm_dec": NUMBER},
    "atable": {"id": "INTEGER", "ra": NUMBER, "dec": NUMBER},
    "table1": {"id": "INTEGER", "ra": NUMBER, "dec": NUMBER},
    "table2": {"id": "INTEGER", "ra": NUMBER, "dec": NUMBER},
    "table3": {"id": "INTEGER", "ra": NUMBER, "dec": NUMBER},
    "ppmx.data": {"alphaFloat": NUMBER, "deltaFloat": NUMBER},
    "atlassource": {"ra": NUMBER, "dec": NUMBER, "rAperMag3": NUMBER, "cx": NUMBER,
                    "cy": NUMBER, "cz": NUMBER},
    "atlasmergelog": {"ra": NUMBER, "dec": NUMBER, "mjdObs": NUMBER, "gmfID": NUMBER},
    "multiframe": {"multiframeID": NUMBER},
    "source": {"ident": TEXT},
}
UNITS = {"stars": {"ra": "deg", "dec": "deg", "pm_ra": "mas/yr", "pm_dec": "mas/yr"}}


def local_name(adql_name: str) -> str:
    return '"conf_' + adql_name.replace(".", "__") + '"'


TABLES = StaticTableMap({
    name: TableInfo(local_name(name), tuple(cols), units=UNITS.get(name, {}),
                    types={c: t for c, t in cols.items()})
    for name, cols in MODEL.items()})


def conformance_dir() -> Path:
    given = os.environ.get("ADQL_CONFORMANCE_DIR")
    return Path(given) if given else (ROOT.parent / "shared" / "adql-conformance").resolve()


@dataclass
class Case:
    file: str
    uuid: str
    adql: str
    valid: bool


def load_cases(folder: Path) -> list[Case]:
    cases = []
    for path in sorted(folder.glob("*/*.xml")):
        root = ET.parse(path).getroot()
        for query in root.iter("query"):
            body = query.find("adql")
            assert body is not None, f"{path.name}: a query without <adql>"
            cases.append(Case(f"{path.parent.name}/{path.name}", query.get("uuid", ""),
                              body.text or "", body.get("valid", "false").lower() == "true"))
    return cases


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    folder = conformance_dir()
    if not folder.is_dir():
        where = "in CI" if os.environ.get("CI") == "true" else "here"
        pytest.fail(f"the ADQL conformance queries are missing {where}: no folder {folder}. "
                    "Point ADQL_CONFORMANCE_DIR at the lyonetia query sets (ivoa/, roe/), "
                    "or put them at ../shared/adql-conformance beside the project.")
    found = load_cases(folder)
    assert len(found) > 100, f"only {len(found)} queries found under {folder}"
    return found


@pytest.fixture(scope="module")
def empty_db() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"enable_external_access": False})
    for macro in MACROS:
        con.execute(macro)
    for name, cols in MODEL.items():
        body = ", ".join(f'"{c}" {t}' for c, t in cols.items())
        con.execute(f"CREATE TABLE {local_name(name)} ({body})")
    return con


def test_conformance(cases: list[Case], empty_db: duckdb.DuckDBPyConnection,
                     capsys: pytest.CaptureFixture[str]) -> None:
    per_file: dict[str, dict[str, int]] = {}
    wrongly_accepted, wrongly_refused, ran, failures = [], [], 0, []
    for case in cases:
        counts = per_file.setdefault(case.file, dict.fromkeys(
            ("valid", "translated", "executed", "invalid", "rejected"), 0))
        counts["valid" if case.valid else "invalid"] += 1
        try:
            sql = translate(case.adql, TABLES).sql
        except AdqlError as exc:
            if case.valid:
                wrongly_refused.append((case.file, case.uuid, str(exc).splitlines()[0]))
            else:
                counts["rejected"] += 1
            continue
        if not case.valid:
            wrongly_accepted.append((case.file, case.uuid, case.adql.strip()))
            continue
        counts["translated"] += 1
        try:
            empty_db.execute(sql).fetchall()
            counts["executed"] += 1
            ran += 1
        except duckdb.Error as exc:
            failures.append((case.file, case.uuid, str(exc).splitlines()[0]))
    report(per_file, wrongly_refused, failures, capsys)
    valid = sum(c["valid"] for c in per_file.values())
    translated = sum(c["translated"] for c in per_file.values())
    assert not wrongly_accepted, f"invalid ADQL accepted: {wrongly_accepted}"
    assert translated >= 0.95 * valid, f"only {translated}/{valid} valid queries translated: " \
                                       f"{wrongly_refused}"
    assert ran >= 0.8 * translated, f"only {ran}/{translated} ran on DuckDB: {failures}"


def report(per_file: dict[str, dict[str, int]], refused: list, failures: list,
           capsys: pytest.CaptureFixture[str]) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps({"files": per_file, "valid_refused": refused,
                                    "execution_failures": failures}, indent=2))
    lines = [f"{'file':<38} {'valid':>5} {'transl':>6} {'ran':>4} {'invalid':>7} {'reject':>6}"]
    for name, c in per_file.items():
        lines.append(f"{name:<38} {c['valid']:>5} {c['translated']:>6} {c['executed']:>4} "
                     f"{c['invalid']:>7} {c['rejected']:>6}")
    total = {k: sum(c[k] for c in per_file.values()) for k in next(iter(per_file.values()))}
    lines.append(f"{'total':<38} {total['valid']:>5} {total['translated']:>6} "
                 f"{total['executed']:>4} {total['invalid']:>7} {total['rejected']:>6}")
    with capsys.disabled():
        print("\nADQL conformance (artifacts/adql-conformance.json)\n" + "\n".join(lines))
