"""HEALPix prefilter: a cone or polygon search on positions reads only the pixels it needs.

Every `obscore_<source>` table keeps `_hpx`, the NESTED HEALPix index of (s_ra, s_dec) at depth
29. When a WHERE conjunct asks for positions inside a constant shape,

    CONTAINS(POINT(s_ra, s_dec), CIRCLE|POLYGON|BOX|REGION(<constants>)) = 1   (or INTERSECTS)
    DISTANCE(POINT(s_ra, s_dec), POINT(<constants>)) < r                       (or <=, 4-arg)

this module ANDs in `_hpx BETWEEN lo AND hi OR ...`: the pixel ranges that cover the shape,
from cdshealpix at a depth chosen so that there are few ranges. The ranges cover every pixel
that touches the shape (the cone is widened by a hair against rounding), so the original
predicate, which stays, decides exactly: the result is the same with or without the prefilter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from sqlglot import exp

from .checks import kind
from .dialect import adql_name
from .geometry import box_corners, cone_of, region_values
from .tables import HPX_COLUMN, HPX_DEPTH, Binding, Source


@functools.cache
def _native_cone_search() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """cdshealpix's extension function itself: its public wrapper builds astropy objects
    (~100 us a cone). Imported on first use: cdshealpix imports astropy.coordinates (0.2 s of
    every command's start-up)."""
    try:
        from cdshealpix.cdshealpix import cone_search
    except ImportError:  # another cdshealpix layout: the public API in _cone (tested)
        return None
    return cone_search  # type: ignore[no-any-return]

MAX_RANGES = 24
_DELTA_DEPTH = 2  # the cone search's cells go this much deeper than the depth asked
_CELL_DEG = 58.6  # side of a depth-0 HEALPix cell, roughly
_POSITION = ("s_ra", "s_dec")


def apply(root: exp.Expr, binding: Binding) -> None:
    """AND pixel-range conditions into every WHERE with a constant position search."""
    for sel in list(root.find_all(exp.Select)):
        where = sel.args.get("where")
        if where is None:
            continue
        sources = binding.scopes.get(id(sel), [])
        extra = [cond for conj in _conjuncts(where.this)
                 if (cond := _prefilter(conj, sources, binding)) is not None]
        for cond in extra:
            where.set("this", exp.And(this=cond, expression=where.this))


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    return [node]


def _prefilter(conj: exp.Expr, sources: list[Source], binding: Binding) -> exp.Expr | None:
    match = _search(conj)
    if match is None:
        return None
    point, shape = match
    src = _position_source(point, sources, binding)
    if src is None:
        return None
    ranges = shape_ranges(shape)
    if not ranges:
        return None
    column = exp.column(HPX_COLUMN, table=exp.to_identifier(src.alias))
    terms = [exp.Between(this=column.copy(), low=exp.Literal.number(lo),
                         high=exp.Literal.number(hi)) for lo, hi in ranges]
    cond: exp.Expr = terms[0]
    for term in terms[1:]:
        cond = exp.Or(this=cond, expression=term)
    return exp.Paren(this=cond)


def _search(conj: exp.Expr) -> tuple[list[exp.Expr], list[float]] | None:
    """(the point's two coordinate nodes, the constant shape as a DALI list) or None."""
    if isinstance(conj, exp.EQ):
        for func, other in ((conj.this, conj.expression), (conj.expression, conj.this)):
            name = adql_name(func)
            if name in ("CONTAINS", "INTERSECTS") and constant(other) == 1:
                a, b = func.expressions
                found = _point_in(a, b)
                if found is None and name == "INTERSECTS":
                    found = _point_in(b, a)
                return found
        return None
    if isinstance(conj, (exp.LT, exp.LTE)):
        dist, limit = conj.this, conj.expression
    elif isinstance(conj, (exp.GT, exp.GTE)):
        dist, limit = conj.expression, conj.this
    else:
        return None
    radius = constant(limit)
    if adql_name(dist) != "DISTANCE" or radius is None:
        return None
    args = list(dist.expressions)
    pairs = [args[0:2], args[2:4]] if len(args) == 4 else \
        [p.expressions if adql_name(p) == "POINT" else [] for p in args]
    for mine, theirs in (pairs, pairs[::-1]):
        centre = [constant(x) for x in theirs]
        if len(mine) == 2 and len(centre) == 2 and None not in centre:
            return list(mine), [centre[0], centre[1], radius]  # type: ignore[list-item]
    return None


def _point_in(point: exp.Expr, shape: exp.Expr) -> tuple[list[exp.Expr], list[float]] | None:
    if adql_name(point) != "POINT":
        return None
    values = shape_values(shape)
    if values is None or len(values) < 3:
        return None
    return list(point.expressions), values


def shape_values(node: exp.Expr) -> list[float] | None:
    """A constant CIRCLE/POLYGON/BOX/REGION as a DALI list, or None if not constant."""
    name = adql_name(node)
    if name == "REGION":
        arg = node.expressions[0]
        return region_values(arg.this) if isinstance(arg, exp.Literal) and arg.is_string \
            else None
    if name not in ("CIRCLE", "POLYGON", "BOX") or any(kind(a) == "point"
                                                      for a in node.expressions):
        return None
    values = [constant(a) for a in node.expressions]
    if None in values:
        return None
    nums: list[float] = values  # type: ignore[assignment]
    return box_corners(*nums) if name == "BOX" else nums


def constant(node: exp.Expr) -> float | None:
    """The value of a constant arithmetic expression (1./60, -2.5), else None."""
    if isinstance(node, exp.Literal) and not node.is_string:
        return float(node.this)
    if isinstance(node, exp.Paren):
        return constant(node.this)
    if isinstance(node, exp.Neg):
        inner = constant(node.this)
        return None if inner is None else -inner
    ops: dict[type, Callable[[float, float], float]] = {
        exp.Add: float.__add__, exp.Sub: float.__sub__, exp.Mul: float.__mul__,
        exp.Div: float.__truediv__}
    op = ops.get(type(node))
    if op is None:
        return None
    left, right = constant(node.this), constant(node.expression)
    if left is None or right is None or (op is float.__truediv__ and right == 0):
        return None
    return op(left, right)


def _position_source(point: list[exp.Expr], sources: list[Source],
                     binding: Binding) -> Source | None:
    """The table whose (s_ra, s_dec) the point is, if that table has the HEALPix column."""
    if not all(isinstance(c, exp.Column) for c in point):
        return None
    if [c.name.lower() for c in point] != list(_POSITION):
        return None
    found = {id(binding.source_of(c)) for c in point}
    src = binding.source_of(point[0])  # type: ignore[arg-type]
    if len(found) != 1 or src is None or src.local is None or src not in sources:
        return None
    return src if src.find(HPX_COLUMN) else None


def shape_ranges(values: list[float]) -> list[tuple[int, int]] | None:
    """Merged depth-29 pixel ranges covering a circle or polygon; None when not worth it."""
    ra, dec, radius = cone_of(values)
    if not (0 <= radius < 90) or abs(dec) > 90 or any(math.isnan(v) for v in values):
        return None
    # the cone search reaches _DELTA_DEPTH deeper than `depth`, and never past HPX_DEPTH (a
    # radius under ~1e-7 degree, 0 included, made cdshealpix panic)
    depth = min(HPX_DEPTH - _DELTA_DEPTH,
                max(0, int(math.log2(_CELL_DEG / max(radius, 1e-9)))))
    while True:
        ranges = _merge(_cone(ra, dec, radius, depth))
        if len(ranges) <= MAX_RANGES or depth == 0:
            return ranges
        depth -= 1


def _cone(ra: float, dec: float, radius: float, depth: int) -> tuple[np.ndarray, np.ndarray]:
    lon = math.radians(ra % 360.0)
    lat = math.radians(dec)
    rad = math.radians(radius) * (1 + 1e-9) + 1e-12  # never lose a pixel to rounding
    native = _native_cone_search()
    if native is not None:
        ipix, depths, _ = native(np.uint8(depth), np.uint8(_DELTA_DEPTH), np.float64(lon),
                                       np.float64(lat), np.float64(rad), False)
        return ipix, depths
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix.nested import cone_search

    ipix, depths, _ = cone_search(Longitude(lon, u.rad), Latitude(lat, u.rad), rad * u.rad,
                                  depth, flat=False)
    return ipix, depths


def _merge(cells: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, int]]:
    ipix, depths = cells
    shift = (2 * (HPX_DEPTH - depths.astype(np.int64))).astype(np.uint64)
    lo = ipix.astype(np.uint64) << shift
    hi = ((ipix.astype(np.uint64) + np.uint64(1)) << shift) - np.uint64(1)
    order = np.argsort(lo)
    merged: list[tuple[int, int]] = []
    for a, b in zip(lo[order].tolist(), hi[order].tolist(), strict=True):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged
