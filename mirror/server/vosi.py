"""VOSI: what the service can do (TAPRegExt capabilities), whether it is up, and its tables
(a VODataService tableset read from the local TAP_SCHEMA, so it lists exactly what ADQL sees)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from mirror.server.context import ServiceContext
from mirror.server.formats import FORMATS

XSI = "http://www.w3.org/2001/XMLSchema-instance"
TRX = "ivo://ivoa.net/std/TAPRegExt#"
# Optional ADQL 2.1 features mirror.adql implements, each with a query proving it (run by tests).
FEATURES: dict[str, list[tuple[str, str]]] = {
    "features-adqlgeo": [(f, q) for f, q in (
        ("POINT", "SELECT TOP 1 POINT(s_ra, s_dec) AS p FROM ivoa.obscore"),
        ("CIRCLE", "SELECT TOP 1 CIRCLE(s_ra, s_dec, 1) AS c FROM ivoa.obscore"),
        ("BOX", "SELECT TOP 1 AREA(BOX(10, 10, 2, 2)) AS a FROM ivoa.obscore"),
        ("POLYGON", "SELECT TOP 1 POLYGON(10, 10, 12, 10, 11, 12) AS p FROM ivoa.obscore"),
        ("REGION", "SELECT TOP 1 REGION('Circle ICRS 10 10 1') AS r FROM ivoa.obscore"),
        ("CENTROID", "SELECT TOP 1 CENTROID(CIRCLE(10, 10, 1)) AS c FROM ivoa.obscore"),
        ("AREA", "SELECT TOP 1 AREA(CIRCLE(10, 10, 1)) AS a FROM ivoa.obscore"),
        ("COORD1", "SELECT TOP 1 COORD1(POINT(s_ra, s_dec)) AS c FROM ivoa.obscore"),
        ("COORD2", "SELECT TOP 1 COORD2(POINT(s_ra, s_dec)) AS c FROM ivoa.obscore"),
        ("COORDSYS", "SELECT TOP 1 COORDSYS(POINT(s_ra, s_dec)) AS c FROM ivoa.obscore"),
        ("DISTANCE", "SELECT TOP 1 DISTANCE(s_ra, s_dec, 10, 10) AS d FROM ivoa.obscore"),
        ("CONTAINS", "SELECT TOP 1 * FROM ivoa.obscore "
                     "WHERE 1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE(10, 10, 5))"),
        ("INTERSECTS", "SELECT TOP 1 * FROM ivoa.obscore "
                       "WHERE 1 = INTERSECTS(CIRCLE(s_ra, s_dec, 1), CIRCLE(10, 10, 5))"))],
    "features-adql-sets": [
        ("UNION", "SELECT obs_id FROM ivoa.obscore UNION SELECT obs_id FROM ivoa.obscore"),
        ("EXCEPT", "SELECT obs_id FROM ivoa.obscore EXCEPT SELECT obs_id FROM ivoa.obscore"),
        ("INTERSECT",
         "SELECT obs_id FROM ivoa.obscore INTERSECT SELECT obs_id FROM ivoa.obscore")],
    "features-adql-common-table": [
        ("WITH", "WITH t AS (SELECT obs_id FROM ivoa.obscore) SELECT TOP 1 * FROM t")],
    "features-adql-string": [
        ("LOWER", "SELECT TOP 1 LOWER(obs_id) AS l FROM ivoa.obscore"),
        ("ILIKE", "SELECT TOP 1 obs_id FROM ivoa.obscore WHERE obs_id ILIKE '%a%'")],
    "features-adql-offset": [("OFFSET", "SELECT obs_id FROM ivoa.obscore ORDER BY 1 OFFSET 1")],
    "features-adql-type": [("CAST", "SELECT TOP 1 CAST(s_ra AS INTEGER) AS i FROM ivoa.obscore")],
    "features-adql-unit": [
        ("IN_UNIT", "SELECT TOP 1 IN_UNIT(s_ra, 'arcsec') AS a FROM ivoa.obscore")],
}
# Implemented but not advertised: COALESCE (ADQL 2.1 features-adql-conditional), which taplint
# 3.4.7 reports as an unknown feature key (an error); the README says so.
UNADVERTISED = [("COALESCE", "SELECT TOP 1 COALESCE(obs_id, 'x') AS c FROM ivoa.obscore")]
UDFS = [  # (form, description, a query using it)
    ("ivo_healpix_index(hpxOrder INTEGER, ra DOUBLE, dec DOUBLE) -> BIGINT",
     "the nested HEALPix index of a position at an order",
     "SELECT TOP 1 ivo_healpix_index(8, s_ra, s_dec) AS h FROM ivoa.obscore"),
    ("ivo_interval_overlaps(l1 DOUBLE, h1 DOUBLE, l2 DOUBLE, h2 DOUBLE) -> INTEGER",
     "1 if the intervals [l1, h1] and [l2, h2] overlap, else 0",
     "SELECT TOP 1 * FROM ivoa.obscore WHERE 1 = ivo_interval_overlaps(t_min, t_max, 0, 1e6)"),
    ("ivo_nocasematch(value TEXT, pattern TEXT) -> INTEGER",
     "1 if value matches the LIKE pattern ignoring case, else 0",
     "SELECT TOP 1 * FROM ivoa.obscore WHERE 1 = ivo_nocasematch(obs_id, '%a%')"),
    ("ivo_hasword(haystack TEXT, needle TEXT) -> INTEGER",
     "1 if needle occurs in haystack as a whole word, ignoring case, else 0",
     "SELECT TOP 1 * FROM ivoa.obscore WHERE 1 = ivo_hasword(obs_title, 'spectrum')"),
    ("ivo_string_agg(expr TEXT, deli TEXT) -> TEXT",
     "the values of a group joined by deli",
     "SELECT ivo_string_agg(obs_id, ',') AS s FROM ivoa.obscore"),
]


def capabilities(ctx: ServiceContext, base: str) -> str:
    """The TAPRegExt capabilities document of this service at `base`."""
    timeout = int(ctx.runners.timeout)
    maxrec = ctx.runners.maxrec
    keep = int(ctx.config.serve.job_hours * 3600)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
           f'xmlns:xsi="{XSI}" xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
           'xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">',
           '<capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">',
           '<interface role="std" version="1.1" xsi:type="vs:ParamHTTP">',
           f'<accessURL use="base">{escape(base)}</accessURL></interface>',
           "<language><name>ADQL</name>",
           '<version ivo-id="ivo://ivoa.net/std/ADQL#v2.1">2.1</version>',
           '<version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version>',
           "<description>ADQL 2.1, translated to DuckDB on the local catalogue</description>"]
    out.append(f'<languageFeatures type="{TRX}features-udf">')
    for form, description, _ in UDFS:
        out.append(f"<feature><form>{escape(form)}</form>"
                   f"<description>{escape(description)}</description></feature>")
    out.append("</languageFeatures>")
    for kind, feats in FEATURES.items():
        out.append(f'<languageFeatures type="{TRX}{kind}">')
        out += [f"<feature><form>{form}</form></feature>" for form, _ in feats]
        out.append("</languageFeatures>")
    out.append("</language>")
    for f in FORMATS:
        ivo = {"votable": "output-votable-binary2", "votable/td": "output-votable-td"}.get(f.key)
        attr = f' ivo-id="{TRX}{ivo}"' if ivo else ""
        out.append(f"<outputFormat{attr}><mime>{escape(f.mime)}</mime>"
                   + "".join(f"<alias>{escape(a)}</alias>" for a in f.aliases[:1])
                   + "</outputFormat>")
    out += [f"<retentionPeriod><default>{keep}</default><hard>{keep}</hard></retentionPeriod>",
            f"<executionDuration><default>{timeout}</default><hard>{timeout}</hard>"
            "</executionDuration>",
            f'<outputLimit><default unit="row">{maxrec}</default>'
            f'<hard unit="row">{maxrec}</hard></outputLimit>',
            "</capability>"]
    for std, path in (("VOSI#capabilities", "capabilities"), ("VOSI#availability",
                      "availability"), ("VOSI#tables-1.1", "tables"),
                      ("DALI#examples", "examples")):
        out.append(f'<capability standardID="ivo://ivoa.net/std/{std}">'
                   f'<interface xsi:type="vs:ParamHTTP"><accessURL use="full">'
                   f"{escape(base)}/{path}</accessURL></interface></capability>")
    out.append("</vosi:capabilities>")
    return "\n".join(out)


def availability(up: bool, since: dt.datetime, note: str) -> str:
    """The VOSI availability document."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">'
            f"<vosi:available>{'true' if up else 'false'}</vosi:available>"
            f"<vosi:upSince>{since.strftime('%Y-%m-%dT%H:%M:%SZ')}</vosi:upSince>"
            f"<vosi:note>{escape(note)}</vosi:note></vosi:availability>")


def tableset(schemas: list[dict[str, Any]], tables: list[dict[str, Any]],
             columns: list[dict[str, Any]], keys: list[dict[str, Any]],
             key_columns: list[dict[str, Any]], only: str | None = None) -> str | None:
    """A VOSI 1.1 tableset from the rows of TAP_SCHEMA.schemas, .tables, .columns, .keys and
    .key_columns; with `only`, the single-table document of that table (None if unknown)."""
    fks: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        pairs = "".join(f"<fkColumn><fromColumn>{escape(c['from_column'])}</fromColumn>"
                        f"<targetColumn>{escape(c['target_column'])}</targetColumn></fkColumn>"
                        for c in key_columns if c["key_id"] == k["key_id"])
        fks[k["from_table"]].append(f"<foreignKey><targetTable>{escape(k['target_table'])}"
                                    f"</targetTable>{pairs}"
                                    + _opt("description", k.get("description"))
                                    + _opt("utype", k.get("utype")) + "</foreignKey>")
    cols: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in sorted(columns, key=lambda c: (c.get("column_index") or 0)):
        cols[c["table_name"]].append(c)
    if only is not None:
        match = [t for t in tables if t["table_name"].lower() == only.lower()]
        if not match:
            return None
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                + _table(match[0], cols, fks, f'vosi:table {_TABLE_NS}'))
    by_schema: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in sorted(tables, key=lambda t: (t.get("table_index") or 0)):
        by_schema[t["schema_name"]].append(t)
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f"<vosi:tableset {_TABLE_NS}>"]
    for s in schemas:
        out.append(f"<schema><name>{escape(s['schema_name'])}</name>"
                   + _opt("description", s.get("description")) + _opt("utype", s.get("utype")))
        out += [_table(t, cols, fks, "table") for t in by_schema.get(s["schema_name"], [])]
        out.append("</schema>")
    out.append("</vosi:tableset>")
    return "\n".join(out)


_TABLE_NS = ('xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
             f'xmlns:xsi="{XSI}" xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"')


def _table(t: dict[str, Any], cols: dict[str, list[dict[str, Any]]],
           fks: dict[str, list[str]], tag: str) -> str:
    name = tag.split()[0]
    return "\n".join([
        f"<{tag} type={quoteattr(t.get('table_type') or 'table')}>"
        f"<name>{escape(t['table_name'])}</name>" + _opt("description", t.get("description"))
        + _opt("utype", t.get("utype")),
        *(_column(c) for c in cols.get(t["table_name"], [])), *fks.get(t["table_name"], []),
        f"</{name}>"])


def _column(c: dict[str, Any]) -> str:
    size = c.get("arraysize") or ""
    attrs = f" arraysize={quoteattr(size)}" if size else ""
    if c.get("xtype"):
        attrs += f" extendedType={quoteattr(c['xtype'])}"
    flags = "".join(f"<flag>{f}</flag>" for f, key in (("indexed", "indexed"),
                    ("principal", "principal"), ("std", "std")) if c.get(key))
    return ("<column>" + f"<name>{escape(c['column_name'])}</name>"
            + _opt("description", c.get("description")) + _opt("unit", c.get("unit"))
            + _opt("ucd", c.get("ucd")) + _opt("utype", c.get("utype"))
            + f'<dataType xsi:type="vs:VOTableType"{attrs}>'
            f"{escape(c.get('datatype') or 'char')}</dataType>" + flags + "</column>")


def _opt(tag: str, value: Any) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>" if value else ""
