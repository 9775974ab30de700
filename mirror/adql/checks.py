"""The ADQL 2.1 rules sqlglot's generic parser lets through, checked on the tree.

Regular identifiers and reserved words, a FROM in every SELECT, TOP/OFFSET as non-negative
integers, join conditions, WITH only at the top, conditions that are predicates, ADQL's CAST
types, and the arguments of ADQL's functions. The geometry constructors are normalised on the
way (their deprecated coordinate-system argument is dropped), so later passes see one form.
"""

from __future__ import annotations

import re

from sqlglot import exp

from mirror.errors import AdqlSyntaxError, AdqlTypeError, AdqlUnsupportedError

from .dialect import FUNCTIONS, GEOMETRY, PREFIX, adql_name
from .geometry import region_values

# ADQL 2.1 §2.1.3: the SQL-92 reserved words and ADQL's own names (unquoted use is an error)
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
COT DEGREES DISTANCE EXP FLOOR ILIKE INTERSECTS IN_UNIT LOG LOG10 MOD PI POINT POLYGON POWER
RADIANS REGION RAND ROUND SIN SQRT TOP TAN TRUNCATE
""".split())
_REGULAR = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_PREDICATES = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between, exp.Like,
               exp.ILike, exp.In, exp.Is, exp.Exists)
_T = exp.DataType.Type
CAST_TYPES = {_T.SMALLINT, _T.INT, _T.BIGINT, _T.FLOAT, _T.DOUBLE, _T.CHAR, _T.VARCHAR,
              _T.TIMESTAMP}
GEOMETRY_TYPES = {"POINT", "CIRCLE", "POLYGON"}
_JOIN_KINDS = {"", "INNER", "OUTER", "CROSS"}
_SHAPE_KINDS = {"POINT": "point", "CIRCLE": "circle", "BOX": "polygon", "POLYGON": "polygon",
                "CENTROID": "point"}
_NUMERIC = {"CONTAINS", "INTERSECTS", "DISTANCE", "AREA", "COORD1", "COORD2", "IN_UNIT",
            *(set(FUNCTIONS) - set(GEOMETRY))}


def check_query(root: exp.Expr, text: str, conditional_joins: int = 0) -> None:
    """Raise on the first ADQL rule the tree breaks; normalise geometry constructors.
    `conditional_joins`: how many JOIN keywords in the text need an ON or USING."""
    with_condition = 0
    for node in list(root.walk()):
        if isinstance(node, exp.Join) and (node.args.get("on") or node.args.get("using")):
            with_condition += 1
        if isinstance(node, exp.Identifier):
            _check_identifier(node, text)
        elif isinstance(node, exp.Select):
            _check_select(node)
        elif isinstance(node, exp.Join):
            _check_join(node)
        elif isinstance(node, exp.With):
            if node.parent is not root:
                raise AdqlSyntaxError("WITH is only allowed at the start of the whole query",
                                      "move the common table expression to the top")
            if node.args.get("recursive"):
                raise AdqlUnsupportedError("WITH RECURSIVE is not ADQL", construct="RECURSIVE")
        elif isinstance(node, (exp.Where, exp.Having)):
            _check_condition(node.this, node.key.upper())
        elif isinstance(node, exp.If):
            _check_condition(node.this, "WHEN")
        elif isinstance(node, exp.Cast):
            _check_cast(node)
        elif isinstance(node, (exp.Min, exp.Max, exp.Avg, exp.Sum, exp.Count)):
            if node.expressions:
                raise AdqlSyntaxError(f"{node.key.upper()} takes one argument",
                                      "aggregate one column or expression")
        else:
            name = adql_name(node)
            if name is not None:
                _check_function(node, name)
    if with_condition < conditional_joins:
        raise AdqlSyntaxError("a JOIN has no join condition",
                              "add ON <condition> or USING (<columns>), or use CROSS JOIN")


def _check_identifier(node: exp.Identifier, text: str) -> None:
    if node.quoted:
        return
    name = node.name
    meta = node.meta or {}
    line = int(meta.get("line", 0))
    column = int(meta.get("col", 0)) - len(name) + 1 if meta.get("col") else 0
    if not _REGULAR.match(name):
        raise AdqlSyntaxError(f"{name!r} is not a regular ADQL identifier",
                              f'names start with a letter; quote others: "{name}"',
                              query=text, line=line, column=column, text=name)
    if name.lower() in RESERVED:
        raise AdqlSyntaxError(f"{name!r} is an ADQL reserved word",
                              f'to use it as a name, quote it: "{name}"',
                              query=text, line=line, column=column, text=name)


def _check_select(node: exp.Select) -> None:
    if not node.expressions:
        raise AdqlSyntaxError("SELECT lists no columns", "write SELECT * or name the columns")
    if not node.args.get("from_"):
        raise AdqlSyntaxError("a SELECT needs a FROM clause", "add FROM <table>")
    limit = node.args.get("limit")
    if limit is not None:
        _non_negative_int(limit.expression, "TOP")
    offset = node.args.get("offset")
    if offset is not None:
        _non_negative_int(offset.expression, "OFFSET")


def _non_negative_int(value: exp.Expr | None, what: str) -> None:
    if not (isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit()):
        shown = value.sql() if value is not None else ""
        raise AdqlSyntaxError(f"{what} needs a non-negative integer, not {shown}",
                              f"e.g. {what} 100")


def _check_join(node: exp.Join) -> None:
    kind = node.kind.upper()
    method = (node.method or "").upper()
    if kind not in _JOIN_KINDS or method not in ("", "NATURAL"):
        what = kind or method
        raise AdqlUnsupportedError(f"{what} JOIN is not ADQL", construct=f"{what} JOIN",
                                   hint="ADQL has [NATURAL] INNER, LEFT, RIGHT, FULL [OUTER] "
                                        "and CROSS joins, and comma joins")
    has_condition = bool(node.args.get("on") or node.args.get("using"))
    if method == "NATURAL" or kind == "CROSS":
        if has_condition:
            raise AdqlSyntaxError(f"{method or kind} JOIN takes no ON or USING")
        return
    if (kind or node.side) and not has_condition:
        raise AdqlSyntaxError("this JOIN has no join condition",
                              "add ON <condition> or USING (<columns>), or use CROSS JOIN")
    on = node.args.get("on")
    if on is not None:
        _check_condition(on, "ON")


def _check_condition(cond: exp.Expr, where: str) -> None:
    if not is_predicate(cond):
        name = adql_name(cond) if not isinstance(cond, exp.Paren) else adql_name(cond.this)
        hint = (f"{name} gives 0 or 1: write {name}(...) = 1" if name in _NUMERIC
                else "a condition compares values, e.g. x = 1, x BETWEEN 1 AND 2, x LIKE 'a%'")
        raise AdqlSyntaxError(f"{where} needs a condition, not the value {_shown(cond)}", hint)


def is_predicate(node: exp.Expr) -> bool:
    """Whether `node` is an ADQL search condition (ADQL has no boolean values)."""
    if isinstance(node, exp.Paren):
        return is_predicate(node.this)
    if isinstance(node, (exp.And, exp.Or)):
        return is_predicate(node.this) and is_predicate(node.expression)
    if isinstance(node, exp.Not):
        return is_predicate(node.this)
    return isinstance(node, _PREDICATES)


def _check_cast(node: exp.Cast) -> None:
    to = node.to
    if to.this in CAST_TYPES:
        return
    if to.this == _T.USERDEFINED and str(to.args.get("kind", "")).upper() in GEOMETRY_TYPES:
        return
    shown = to.args.get("kind") or to.sql()
    raise AdqlSyntaxError(f"CAST to {shown} is not ADQL",
                          "ADQL casts to SMALLINT, INTEGER, BIGINT, REAL, DOUBLE PRECISION, "
                          "CHAR(n), VARCHAR(n), TIMESTAMP, POINT, CIRCLE or POLYGON")


def kind(node: exp.Expr) -> str:
    """What a node statically is: number, string, null, point, circle, polygon, region or
    unknown (a column: its value is only known when the query runs)."""
    if isinstance(node, exp.Paren):
        return kind(node.this)
    if isinstance(node, exp.Literal):
        return "string" if node.is_string else "number"
    if isinstance(node, exp.Null):
        return "null"
    name = adql_name(node)
    if name in _SHAPE_KINDS:
        return _SHAPE_KINDS[name]
    if name == "REGION":
        return "region"
    if name == "COORDSYS":
        return "string"
    if name is not None:
        return "number"
    if isinstance(node, exp.Cast):
        to = node.to
        if to.this == _T.USERDEFINED:
            return str(to.args.get("kind")).lower()
        return "string" if to.this in (_T.CHAR, _T.VARCHAR) else "number"
    if isinstance(node, (exp.Neg, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Count, exp.Avg,
                         exp.Sum)):
        return "number"
    if isinstance(node, (exp.DPipe, exp.Lower, exp.Upper)):
        return "string"
    return "unknown"


def is_geometry(node: exp.Expr) -> bool:
    return kind(node) in ("point", "circle", "polygon", "region", "unknown", "null")


def _is_scalar(node: exp.Expr) -> bool:
    return kind(node) in ("number", "unknown", "null")


def _check_function(node: exp.Expr, name: str) -> None:
    args = list(node.expressions)
    if name in ("POINT", "CIRCLE", "BOX", "POLYGON") and args \
            and kind(args[0]) in ("string", "null") and len(args) > 2:
        args = args[1:]  # the coordinate system: accepted, ignored (all coordinates are ICRS)
        node.set("expressions", args)
    low, high = FUNCTIONS[name]
    n = len(args)
    if n < low or (high is not None and n > high):
        most = "" if high == low else (" or more" if high is None else f" to {high}")
        raise AdqlSyntaxError(f"{name} takes {low}{most} arguments, not {n}",
                              _SIGNATURES.get(name, "check the ADQL 2.1 function list"))
    shape = _SHAPES.get(name)
    if shape is not None and not shape(args):
        raise AdqlSyntaxError(f"{name}({', '.join(_shown(a) for a in args)}): wrong arguments",
                              _SIGNATURES[name])
    if name == "REGION":
        _check_region(args[0])
    if name == "IN_UNIT" and kind(args[1]) != "string":
        raise AdqlSyntaxError("IN_UNIT's second argument is a unit string",
                              "e.g. IN_UNIT(em_min, 'nm')")


def _check_region(arg: exp.Expr) -> None:
    if isinstance(arg, exp.Literal) and arg.is_string and region_values(arg.this) is None:
        raise AdqlUnsupportedError(
            f"REGION('{arg.this}') is not supported", construct="REGION",
            hint="REGION reads one Position, Circle, Box or Polygon (STC-S) or a DALI list; "
                 "Union, Intersection and Not are not supported")
    if kind(arg) not in ("string", "unknown", "null"):
        raise AdqlTypeError("REGION takes a string", "e.g. REGION('Circle ICRS 10 20 1')")


def _polygon_ok(args: list[exp.Expr]) -> bool:
    if all(kind(a) in ("point",) for a in args):
        return len(args) >= 3
    if all(_is_scalar(a) for a in args) and len(args) >= 6 and len(args) % 2 == 0:
        return True
    return 3 <= len(args) < 6 and all(kind(a) in ("point", "unknown") for a in args)


_SHAPES = {
    "POINT": lambda a: len(a) == 2 and all(_is_scalar(x) for x in a),
    "CIRCLE": lambda a: (len(a) == 3 and all(_is_scalar(x) for x in a))
    or (len(a) == 2 and kind(a[0]) in ("point", "unknown") and _is_scalar(a[1])),
    "BOX": lambda a: (len(a) == 4 and all(_is_scalar(x) for x in a))
    or (len(a) == 3 and kind(a[0]) in ("point", "unknown") and all(_is_scalar(x) for x in a[1:])),
    "POLYGON": _polygon_ok,
    "CONTAINS": lambda a: all(is_geometry(x) for x in a),
    "INTERSECTS": lambda a: all(is_geometry(x) for x in a),
    "DISTANCE": lambda a: (len(a) == 2 and all(kind(x) in ("point", "unknown", "null")
                                                for x in a))
    or (len(a) == 4 and all(_is_scalar(x) for x in a)),
    "AREA": lambda a: is_geometry(a[0]), "CENTROID": lambda a: is_geometry(a[0]),
    "COORD1": lambda a: kind(a[0]) in ("point", "unknown", "null"),
    "COORD2": lambda a: kind(a[0]) in ("point", "unknown", "null"),
    "COORDSYS": lambda a: is_geometry(a[0]),
}
_SIGNATURES = {
    "POINT": "POINT([coordsys,] ra, dec)",
    "CIRCLE": "CIRCLE([coordsys,] ra, dec, radius) or CIRCLE([coordsys,] point, radius)",
    "BOX": "BOX([coordsys,] ra, dec, width, height)",
    "POLYGON": "POLYGON([coordsys,] ra1, dec1, ra2, dec2, ra3, dec3, ...) (3+ vertices) "
               "or POLYGON(point1, point2, point3, ...)",
    "CONTAINS": "CONTAINS(geometry, geometry) = 1", "INTERSECTS": "INTERSECTS(geometry, "
    "geometry) = 1", "DISTANCE": "DISTANCE(point, point) or DISTANCE(ra1, dec1, ra2, dec2)",
    "AREA": "AREA(geometry)", "CENTROID": "CENTROID(geometry)", "COORD1": "COORD1(point)",
    "COORD2": "COORD2(point)", "COORDSYS": "COORDSYS(geometry)",
}


def _shown(node: exp.Expr) -> str:
    return node.sql().replace(PREFIX, "")
