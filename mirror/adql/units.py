"""IN_UNIT(expr, 'unit'): the unit of `expr` inferred from the columns' units, converted by
astropy into a constant factor (`expr * factor`).

The inference follows the arithmetic: a column has its TAP_SCHEMA unit, a number none, `*` and
`/` combine units, `+`/`-`/MIN/MAX/AVG/SUM/ABS/ROUND/... keep them (both sides of `+` must
agree), SQRT and POWER(x, constant) raise them, IN_UNIT has its target unit.
"""

from __future__ import annotations

import math
from functools import lru_cache

import astropy.units as u
from sqlglot import exp

from mirror.errors import AdqlTypeError

from .dialect import adql_name
from .tables import Binding

_KEEP = {"ABS", "CEILING", "FLOOR", "ROUND", "TRUNCATE"}
ONE = u.dimensionless_unscaled


@lru_cache(maxsize=256)
def parse_unit(text: str) -> u.UnitBase:
    """A VOUnit (or astropy generic) unit string as an astropy unit."""
    for fmt in ("vounit", None):
        try:
            return u.Unit(text, format=fmt) if fmt else u.Unit(text)
        except ValueError:
            continue
    raise AdqlTypeError(f"unit {text!r} is not understood",
                        "use a VOUnit string, e.g. 'deg', 'nm', 'mas/yr', 'Angstrom'")


def in_unit_factor(expr: exp.Expr, target: str, binding: Binding) -> float:
    """The factor that turns `expr` (in its inferred unit) into `target`."""
    src = unit_of(expr, binding)
    dst = parse_unit(target)
    try:
        factor = float(src.to(dst))
    except u.UnitConversionError as exc:
        raise AdqlTypeError(f"IN_UNIT cannot convert {src.to_string() or 'a number'} to {target}",
                            "the units must measure the same quantity") from exc
    return _snap(factor)


def _snap(factor: float) -> float:
    """A power of ten as exactly that (astropy gives 999999999.9999999 for m -> nm)."""
    if factor > 0:
        power = round(math.log10(factor))
        if abs(factor / 10.0 ** power - 1) < 1e-12:
            return 10.0 ** power if power >= 0 else 1 / 10.0 ** -power
    return factor


def unit_of(node: exp.Expr, binding: Binding) -> u.UnitBase:
    """The unit of an expression; AdqlTypeError when it cannot be known."""
    if isinstance(node, exp.Paren):
        return unit_of(node.this, binding)
    if isinstance(node, exp.Literal) and not node.is_string:
        return ONE
    if isinstance(node, exp.Neg):
        return unit_of(node.this, binding)
    if isinstance(node, exp.Column):
        return _column_unit(node, binding)
    if isinstance(node, exp.Mul):
        return unit_of(node.this, binding) * unit_of(node.expression, binding)
    if isinstance(node, exp.Div):
        return unit_of(node.this, binding) / unit_of(node.expression, binding)
    if isinstance(node, (exp.Add, exp.Sub)):
        left, right = unit_of(node.this, binding), unit_of(node.expression, binding)
        if left != right:
            raise AdqlTypeError(f"{node.sql()} adds {left} and {right}",
                                "convert one side with IN_UNIT first")
        return left
    if isinstance(node, (exp.Min, exp.Max, exp.Avg, exp.Sum)):
        return unit_of(node.this, binding)
    name = adql_name(node)
    args = list(node.expressions) if name else []
    if name in _KEEP:
        return unit_of(args[0], binding)
    if name == "SQRT":
        return unit_of(args[0], binding) ** 0.5
    if name == "POWER":
        from .prefilter import constant
        power = constant(args[1])
        if power is None:
            raise AdqlTypeError("IN_UNIT needs POWER with a constant exponent")
        return unit_of(args[0], binding) ** power
    if name == "IN_UNIT":
        return parse_unit(args[1].this)
    raise AdqlTypeError(f"the unit of {node.sql()} cannot be inferred",
                        "IN_UNIT works on columns with units and arithmetic on them")


def _column_unit(col: exp.Column, binding: Binding) -> u.UnitBase:
    src = binding.source_of(col)
    if src is not None and src.local is not None:
        text = binding.extra("units", src.local).get(col.name.lower())
        if text:
            return parse_unit(text)
    if src is not None and src.query is not None:
        inner = _named_select(src.query, col.name)
        if inner is not None:
            return unit_of(inner, binding)
    raise AdqlTypeError(f"column {col.name} has no unit in this catalogue",
                        "IN_UNIT needs the unit from TAP_SCHEMA.columns")


def _named_select(query: exp.Expr, name: str) -> exp.Expr | None:
    while isinstance(query, (exp.SetOperation, exp.Subquery)):
        query = query.left if isinstance(query, exp.SetOperation) else query.this
    for proj in query.expressions:
        if proj.alias_or_name.lower() == name.lower():
            return proj.this if isinstance(proj, exp.Alias) else proj
    return None
