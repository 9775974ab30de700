"""ADQL semantics on DuckDB: the `ADQL:` function nodes lowered to DuckDB functions and the
`adql_*` macros, integer division, and geometry values written as DALI text.

What differs from DuckDB and how it is bridged: LOG is the natural log (`ln`); `/` between two
integers truncates (`//`: integer literals, integer casts, COUNT, and columns the TableMap types
as integers; a column of unknown type divides as DuckDB does); RAND(seed) ignores the seed;
TRUNCATE(x, n) is `trunc(x, n)`; NULLs sort as in PostgreSQL (the parser marks every ORDER BY
item, the DuckDB generator writes NULLS FIRST where needed). CONTAINS and INTERSECTS are 0/1
integers in ADQL: compared with 1 or 0 they become the plain condition (what the prefilter and
DuckDB's optimizer want), elsewhere CAST(... AS INTEGER).
"""

from __future__ import annotations

import math

from sqlglot import exp

from .checks import kind
from .dialect import adql_name, call
from .geometry import unit_vector
from .prefilter import constant, shape_values
from .tables import Binding

_MATH = {"ABS": "abs", "ACOS": "acos", "ASIN": "asin", "ATAN": "atan", "ATAN2": "atan2",
         "CEILING": "ceiling", "COS": "cos", "COT": "cot", "DEGREES": "degrees", "EXP": "exp",
         "FLOOR": "floor", "LOG": "ln", "LOG10": "log10", "MOD": "mod", "PI": "pi",
         "POWER": "power", "RADIANS": "radians", "ROUND": "round", "SIN": "sin",
         "SQRT": "sqrt", "TAN": "tan", "TRUNCATE": "trunc"}
_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT",
                  "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "INT1", "INT2", "INT4",
                  "INT8", "SHORT", "LONG"}
_T = exp.DataType.Type
_DOUBLE_LIST = exp.DataType.build("DOUBLE[]", dialect="duckdb")
# every DuckDB function the lowering may call (besides the adql_* macros)
DUCKDB_CALLS = frozenset({*_MATH.values(), "random", "list_value", "flatten", "string_agg",
                          "list_contains", "string_split_regex", "lower"})


def lower(node: exp.Expr, binding: Binding) -> exp.Expr:
    """The DuckDB form of `node` (children first; geometry functions own their arguments)."""
    name = adql_name(node)
    if name is not None:
        return _lower_function(node, name, binding)
    if isinstance(node, (exp.EQ, exp.NEQ)):
        condition = _as_condition(node, binding)
        if condition is not None:
            return condition
    if isinstance(node, exp.Cast) and node.to.this == _T.USERDEFINED:
        return _geometry_value(node, binding)
    for key, value in list(node.args.items()):
        if isinstance(value, exp.Expr):
            node.set(key, lower(value, binding))
        elif isinstance(value, list):
            node.set(key, [lower(v, binding) if isinstance(v, exp.Expr) else v for v in value])
    if isinstance(node, exp.Div) and _is_integer(node.this, binding) \
            and _is_integer(node.expression, binding):
        return exp.IntDiv(this=node.this, expression=node.expression)
    return node


def _lower_function(node: exp.Expr, name: str, binding: Binding) -> exp.Expr:
    args = list(node.expressions)
    if name in ("POINT", "CIRCLE", "BOX", "POLYGON", "REGION", "CENTROID"):
        return _geometry_value(node, binding)
    if name == "IN_UNIT":
        from .units import in_unit_factor  # astropy.units: loaded by IN_UNIT alone

        factor = in_unit_factor(args[0], args[1].this, binding)
        return exp.Paren(this=exp.Mul(this=exp.Paren(this=lower(args[0], binding)),
                                      expression=exp.Literal.number(repr(factor))))
    if name in ("CONTAINS", "INTERSECTS"):
        return exp.Cast(this=_geometry_condition(name, args, binding),
                        to=exp.DataType.build("INTEGER"))
    low = [lower(a, binding) for a in args]
    if name == "RAND":
        return call("random")
    if name in _MATH:
        return call(_MATH[name], *low)
    if name == "DISTANCE":
        if len(low) == 4:
            return call("adql_distance", *low)
        return _distance(args, binding)
    if name in ("COORD1", "COORD2"):
        i = 1 if name == "COORD1" else 2
        if adql_name(args[0]) == "POINT":
            coord = lower(args[0].expressions[i - 1], binding)
            return exp.Cast(this=coord, to=exp.DataType.build("DOUBLE"))
        return call("adql_coord", geometry_list(args[0], binding), exp.Literal.number(i))
    if name == "COORDSYS":
        return exp.Literal.string("ICRS")
    if name == "AREA":
        return call("adql_area", geometry_list(args[0], binding))
    return _lower_udf(name, low)


def _lower_udf(name: str, low: list[exp.Expr]) -> exp.Expr:
    if name == "IVO_HEALPIX_INDEX":
        return call("adql_healpix", *low)
    if name == "IVO_INTERVAL_OVERLAPS":
        lo1, hi1, lo2, hi2 = low
        both = exp.And(this=exp.GTE(this=hi1, expression=lo2),
                       expression=exp.GTE(this=hi2, expression=lo1))
        return exp.Cast(this=exp.Paren(this=both), to=exp.DataType.build("INTEGER"))
    if name == "IVO_NOCASEMATCH":
        return exp.Cast(this=exp.Paren(this=exp.ILike(this=low[0], expression=low[1])),
                        to=exp.DataType.build("INTEGER"))
    if name == "IVO_HASWORD":
        words = call("string_split_regex", call("lower", low[0]),
                     exp.Literal.string("[^[:alnum:]]+"))
        return exp.Cast(this=call("list_contains", words, call("lower", low[1])),
                        to=exp.DataType.build("INTEGER"))
    assert name == "IVO_STRING_AGG"
    return call("string_agg", *low)


def _as_condition(node: exp.EQ | exp.NEQ, binding: Binding) -> exp.Expr | None:
    """CONTAINS(...) = 1 as the condition itself (and = 0, != 1 as its negation)."""
    for func, other in ((node.this, node.expression), (node.expression, node.this)):
        name = adql_name(func)
        value = constant(other)
        if name in ("CONTAINS", "INTERSECTS") and value in (0.0, 1.0):
            cond = _geometry_condition(name, list(func.expressions), binding)
            wanted = (value == 1.0) == isinstance(node, exp.EQ)
            return cond if wanted else exp.Not(this=exp.Paren(this=cond))
    return None


def _geometry_condition(name: str, args: list[exp.Expr], binding: Binding) -> exp.Expr:
    a, b = args
    if name == "INTERSECTS" and adql_name(a) != "POINT" and adql_name(b) == "POINT":
        a, b = b, a
    if adql_name(a) == "POINT":
        fast = _point_in_shape(a, b, binding)
        if fast is not None:
            return fast
        return call("adql_point_in_g", geometry_list(a, binding), geometry_list(b, binding))
    # one side a known circle: a dispatch on the other side only (binds far faster)
    if name == "INTERSECTS" and not _is_circle(a) and _is_circle(b):
        a, b = b, a
    if name == "INTERSECTS" and _is_circle(a):
        return call("adql_circle_meets", geometry_list(a, binding), geometry_list(b, binding))
    if name == "CONTAINS" and _is_circle(b):
        return call("adql_within_circle", geometry_list(a, binding), geometry_list(b, binding))
    macro = "adql_contains" if name == "CONTAINS" else "adql_intersects"
    return call(macro, geometry_list(a, binding), geometry_list(b, binding))


def _is_circle(node: exp.Expr) -> bool:
    if adql_name(node) == "CIRCLE":
        return True
    values = shape_values(node) if adql_name(node) == "REGION" else None
    return values is not None and len(values) == 3


def _point_in_shape(point: exp.Expr, shape: exp.Expr,
                    binding: Binding) -> exp.Expr | None:
    ra, dec = (lower(x, binding) for x in point.expressions)
    values = shape_values(shape)
    if values is not None and len(values) == 3:
        return call("adql_in_circle", ra, dec, *(_number(v) for v in values))
    if values is not None and len(values) >= 6:
        vertices = [unit_vector(values[i], values[i + 1]) for i in range(0, len(values), 2)]
        return call("adql_in_vertices", ra, dec, exp.Array(expressions=[
            exp.Array(expressions=[_number(c) for c in v]) for v in vertices]))
    if adql_name(shape) == "CIRCLE" and len(shape.expressions) == 3:
        return call("adql_in_circle", ra, dec, *(lower(x, binding) for x in shape.expressions))
    if adql_name(shape) == "POLYGON" and not of_points(shape):
        return call("adql_in_polygon", ra, dec, geometry_list(shape, binding))
    return None


def _distance(args: list[exp.Expr], binding: Binding) -> exp.Expr:
    if all(adql_name(a) == "POINT" for a in args):
        coords = [lower(x, binding) for a in args for x in a.expressions]
        return call("adql_distance", *coords)
    return call("adql_point_distance", *(geometry_list(a, binding) for a in args))


def geometry_list(node: exp.Expr, binding: Binding) -> exp.Expr:
    """SQL for a geometry as the macros' DOUBLE[] (constructors built, text parsed)."""
    name = adql_name(node)
    args = list(node.expressions) if name else []
    if name in ("CIRCLE", "BOX", "POLYGON") and of_points(node):
        rest = [exp.Cast(this=lower(a, binding), to=exp.DataType.build("DOUBLE")) for a in
                args[1:]]
        if name == "POLYGON":
            parts = [geometry_list(a, binding) for a in args]
            return call("flatten", call("list_value", *parts))
        corner = geometry_list(args[0], binding)
        if name == "CIRCLE":
            return exp.DPipe(this=corner, expression=exp.Array(expressions=rest))
        return call("adql_box", exp.Bracket(this=corner, expressions=[exp.Literal.number(1)]),
                    exp.Bracket(this=corner.copy(), expressions=[exp.Literal.number(2)]), *rest)
    if name in ("POINT", "CIRCLE", "BOX"):
        return call(f"adql_{name.lower()}", *(lower(a, binding) for a in args))
    if name == "POLYGON":
        return exp.Cast(this=exp.Array(expressions=[lower(a, binding) for a in args]),
                        to=_DOUBLE_LIST.copy())
    if name == "CENTROID":
        return call("adql_centroid", geometry_list(args[0], binding))
    if name == "REGION":
        values = shape_values(node)
        if values is not None:
            return exp.Cast(this=exp.Array(expressions=[_number(v) for v in values]),
                            to=_DOUBLE_LIST.copy())
        return call("adql_region", lower(args[0], binding))
    if isinstance(node, exp.Paren):
        return geometry_list(node.this, binding)
    if isinstance(node, exp.Cast) and node.to.this == _T.USERDEFINED:
        return call("adql_region", lower(node.this, binding))
    return call("adql_region", lower(node, binding))


def of_points(node: exp.Expr) -> bool:
    """Whether a CIRCLE/BOX/POLYGON is written with POINTs rather than coordinates."""
    args = node.expressions
    name = adql_name(node)
    if name == "POLYGON":
        return len(args) < 6 or len(args) % 2 == 1 or all(kind(a) == "point" for a in args)
    return len(args) == (2 if name == "CIRCLE" else 3)


def _geometry_value(node: exp.Expr, binding: Binding) -> exp.Expr:
    """A geometry where a value is wanted: DALI text, as services return it."""
    return call("adql_dali", geometry_list(node, binding))


def _number(value: float) -> exp.Expr:
    if math.isnan(value) or math.isinf(value):
        return exp.Cast(this=exp.Literal.string(repr(value)), to=exp.DataType.build("DOUBLE"))
    text = repr(float(value))
    if "e" not in text:
        text += "e0"  # a DOUBLE literal: DuckDB reads 0.925... as a DECIMAL (overflows in macros)
    literal = exp.Literal.number(text.lstrip("-"))
    return exp.Neg(this=literal) if text.startswith("-") else literal


def _is_integer(node: exp.Expr, binding: Binding) -> bool:
    """Whether `node` is integer-typed, as far as can be known without running it."""
    if isinstance(node, exp.Paren):
        return _is_integer(node.this, binding)
    if isinstance(node, exp.Literal):
        return not node.is_string and node.this.isdigit()
    if isinstance(node, exp.Neg):
        return _is_integer(node.this, binding)
    if isinstance(node, exp.Cast):
        return node.to.this in (_T.SMALLINT, _T.INT, _T.BIGINT)
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.IntDiv)):
        return _is_integer(node.this, binding) and _is_integer(node.expression, binding)
    if isinstance(node, exp.Count):
        return True
    if isinstance(node, exp.Column):
        src = binding.source_of(node)
        if src is not None and src.local is not None:
            typ = binding.extra("types", src.local).get(node.name.lower(), "")
            return typ.upper() in _INTEGER_TYPES
    return False
