"""Pure ADQL builders for harvesting: keyset pages, window counts, ID passes.

Paging is keyset paging on (watermark, id): each page asks for the rows strictly after the last
key it has seen, ordered by that key, with `TOP` no larger than the service's limit. Any prefix
of such a page is a valid page, so a service that silently truncates (MAXREC, a hard limit,
DaCHS' m+1 quirk) cannot make rows go missing: the next page starts where this one stopped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_REGULAR = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# ADQL 2.1 §2.1.3: the SQL-92 reserved words and ADQL's own function and geometry names
RESERVED = frozenset(w.lower() for w in """
ABSOLUTE ACTION ADD ALL ALLOCATE ALTER AND ANY ARE AS ASC ASSERTION AT AUTHORIZATION AVG BEGIN
BETWEEN BIT BIT_LENGTH BOTH BY CASCADE CASCADED CASE CAST CATALOG CHAR CHARACTER CHAR_LENGTH
CHARACTER_LENGTH CHECK CLOSE COALESCE COLLATE COLLATION COLUMN COMMIT CONNECT CONNECTION
CONSTRAINT CONSTRAINTS CONTINUE CONVERT CORRESPONDING COUNT CREATE CROSS CURRENT CURRENT_DATE
CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURSOR DATE DAY DEALLOCATE DECIMAL DECLARE DEFAULT
DEFERRABLE DEFERRED DELETE DESC DESCRIBE DESCRIPTOR DIAGNOSTICS DISCONNECT DISTINCT DOMAIN DOUBLE
DROP ELSE END ESCAPE EXCEPT EXCEPTION EXEC EXECUTE EXISTS EXTERNAL EXTRACT FALSE FETCH FIRST
FLOAT FOR FOREIGN FOUND FROM FULL GET GLOBAL GO GOTO GRANT GROUP HAVING HOUR IDENTITY IMMEDIATE
IN INDICATOR INITIALLY INNER INPUT INSENSITIVE INSERT INT INTEGER INTERSECT INTERVAL INTO IS
ISOLATION JOIN KEY LANGUAGE LAST LEADING LEFT LEVEL LIKE LOCAL LOWER MATCH MAX MIN MINUTE MODULE
MONTH NAMES NATIONAL NATURAL NCHAR NEXT NO NOT NULL NULLIF NUMERIC OCTET_LENGTH OF ON ONLY OPEN
OPTION OR ORDER OUTER OUTPUT OVERLAPS PAD PARTIAL POSITION PRECISION PREPARE PRESERVE PRIMARY
PRIOR PRIVILEGES PROCEDURE PUBLIC READ REAL REFERENCES RELATIVE RESTRICT REVOKE RIGHT ROLLBACK
ROWS SCHEMA SCROLL SECOND SECTION SELECT SESSION SESSION_USER SET SIZE SMALLINT SOME SPACE SQL
SQLCODE SQLERROR SQLSTATE SUBSTRING SUM SYSTEM_USER TABLE TEMPORARY THEN TIME TIMESTAMP
TIMEZONE_HOUR TIMEZONE_MINUTE TO TRAILING TRANSACTION TRANSLATE TRANSLATION TRIM TRUE UNION
UNIQUE UNKNOWN UPDATE UPPER USAGE USER USING VALUE VALUES VARCHAR VARYING VIEW WHEN WHENEVER
WHERE WITH WORK WRITE YEAR ZONE
ABS ACOS AREA ASIN ATAN ATAN2 BOX CEILING CENTROID CIRCLE CONTAINS COORD1 COORD2 COORDSYS COS
COT DEGREES DISTANCE EXP FLOOR INTERSECTS LOG LOG10 MOD PI POINT POLYGON POWER RADIANS REGION
RAND ROUND SIN SQRT TOP TAN TRUNCATE
""".split()) | {"filter"}  # FILTER: reserved in SQL:2003 and by some services


@dataclass(frozen=True)
class Key:
    """A position in the (watermark, id) order; watermark is None for ID-only paging."""

    watermark: str | float | None
    id: str


def ident(name: str) -> str:
    """An ADQL identifier, delimited when it is not regular or is a reserved word."""
    if _REGULAR.match(name) and name.lower() not in RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def literal(value: str | float | int) -> str:
    """An ADQL literal; strings are quoted with '' escaping, numbers written exactly."""
    if isinstance(value, bool):
        raise TypeError("booleans have no ADQL literal")
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def after(key: Key | None, watermark: str | None, id_column: str) -> str | None:
    """Condition for rows strictly after `key` in (watermark, id) order."""
    if key is None:
        return None
    idc = ident(id_column)
    if watermark is None or key.watermark is None:
        return f"{idc} > {literal(key.id)}"
    wm, w = ident(watermark), literal(key.watermark)
    return f"({wm} > {w} OR ({wm} = {w} AND {idc} > {literal(key.id)}))"


def at_or_before(key: Key, watermark: str | None, id_column: str) -> str:
    """Condition for rows at or before `key` in (watermark, id) order."""
    idc = ident(id_column)
    if watermark is None or key.watermark is None:
        return f"{idc} <= {literal(key.id)}"
    wm, w = ident(watermark), literal(key.watermark)
    return f"({wm} < {w} OR ({wm} = {w} AND {idc} <= {literal(key.id)}))"


def _where(*conditions: str | None) -> str:
    parts = [f"({c})" for c in conditions if c]
    return f" WHERE {' AND '.join(parts)}" if parts else ""


def page_query(table: str, columns: Sequence[str], where: str, watermark: str | None,
               id_column: str, start: Key | None, top: int) -> str:
    """The next page of rows after `start`, in (watermark, id) order."""
    order = [ident(c) for c in (watermark, id_column) if c]
    cols = ", ".join(ident(c) for c in columns)
    return (f"SELECT TOP {int(top)} {cols} FROM {table}"
            f"{_where(where, after(start, watermark, id_column))} ORDER BY {', '.join(order)}")


def window_count_query(table: str, where: str, watermark: str | None, id_column: str,
                       lower: Key | None, upper: Key) -> str:
    """The service's own count of the rows in the window (lower, upper]."""
    window = (after(lower, watermark, id_column), at_or_before(upper, watermark, id_column))
    return f"SELECT COUNT(*) AS n FROM {table}{_where(where, *window)}"


def count_query(table: str, where: str) -> str:
    return f"SELECT COUNT(*) AS n FROM {table}{_where(where)}"


def ids_query(table: str, where: str, id_column: str, start: str | None, top: int) -> str:
    """A page of IDs only, for finding withdrawn and missing records."""
    idc = ident(id_column)
    cond = f"{idc} > {literal(start)}" if start is not None else None
    return f"SELECT TOP {int(top)} {idc} FROM {table}{_where(where, cond)} ORDER BY {idc}"


def rows_by_id_query(table: str, columns: Sequence[str], where: str, id_column: str,
                     ids: Sequence[str]) -> str:
    """Whole rows for a batch of IDs (repairing records the keyset pass could not see)."""
    cols = ", ".join(ident(c) for c in columns)
    in_list = ", ".join(literal(i) for i in ids)
    return f"SELECT {cols} FROM {table}{_where(where, f'{ident(id_column)} IN ({in_list})')}"


def metadata_query(table: str) -> str:
    """No rows, all columns: the VOTable header describes every column the service publishes."""
    return f"SELECT TOP 0 * FROM {table}"
