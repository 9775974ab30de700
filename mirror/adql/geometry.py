"""ADQL geometry on the sphere as DuckDB macros (no extension, no Python UDF), in degrees.

A geometry value inside SQL is a DOUBLE[] in DALI order: a point is [ra, dec], a circle
[ra, dec, r], a polygon [ra1, dec1, ra2, dec2, ...] (3 or more vertices, edges are great-circle
arcs, the polygon is the part smaller than a hemisphere). `adql_region` reads the text services
publish in s_region, STC-S ('Polygon ICRS 10 20 ...', 'Circle', 'Box', 'Position') or DALI
number lists, into that form; anything else (Union, Not, several shapes) becomes NULL. A geometry
in a query's result is written back as DALI text (`adql_dali`).

Conventions that keep the macros exact and fast: a macro parameter that is used more than once
and may be expensive is bound once with `list_transform([value], lambda v: ...)[1]`, and every
lambda parameter has a name unique across all macros (macro expansion is textual).
"""

from __future__ import annotations

import math
import re

_SQL = r"""
adql_hav(ra1, dec1, ra2, dec2) AS
    pow(sin(radians(dec2 - dec1) / 2), 2)
    + cos(radians(dec1)) * cos(radians(dec2)) * pow(sin(radians(ra2 - ra1) / 2), 2)
;
adql_distance(ra1, dec1, ra2, dec2) AS
    degrees(2 * asin(sqrt(least(greatest(adql_hav(ra1, dec1, ra2, dec2), 0.0), 1.0))))
;
adql_in_circle(ra, dec, cra, cdec, r) AS
    adql_hav(ra, dec, cra, cdec) <= CASE WHEN r >= 180 THEN 2.0 WHEN r < 0 THEN -1.0
                                         ELSE pow(sin(radians(r) / 2), 2) END
;
adql_xyz(ra, dec) AS
    [cos(radians(dec)) * cos(radians(ra)), cos(radians(dec)) * sin(radians(ra)),
     sin(radians(dec))]
;
adql_dot(a, b) AS a[1] * b[1] + a[2] * b[2] + a[3] * b[3]
;
adql_cross(a, b) AS [a[2] * b[3] - a[3] * b[2], a[3] * b[1] - a[1] * b[3],
                     a[1] * b[2] - a[2] * b[1]]
;
adql_neg(a) AS [-a[1], -a[2], -a[3]]
;
adql_vertices(g) AS
    list_transform(range(len(g) // 2), lambda _vi: adql_xyz(g[2 * _vi + 1], g[2 * _vi + 2]))
;
adql_vsum(v) AS [list_sum(list_transform(v, lambda _s1: _s1[1])),
                 list_sum(list_transform(v, lambda _s2: _s2[2])),
                 list_sum(list_transform(v, lambda _s3: _s3[3]))]
;
adql_edges(v) AS
    list_transform(range(len(v)), lambda _ei: {'a': v[_ei + 1], 'b': v[(_ei + 1) % len(v) + 1],
                                               'n': adql_cross(v[_ei + 1],
                                                               v[(_ei + 1) % len(v) + 1])})
;
adql_prep_v(v) AS {'v': v, 'e': adql_edges(v), 'c': adql_vsum(v)}
;
adql_prep(g) AS list_transform([adql_vertices(g)], lambda _pv: adql_prep_v(_pv))[1]
;
adql_pip(p, q) AS
    abs(list_sum(list_transform(q.e, lambda _we: atan2(adql_dot(p, _we.n),
        adql_dot(_we.a, _we.b) - adql_dot(p, _we.a) * adql_dot(p, _we.b))))) > pi()
    AND adql_dot(p, q.c) > 0
;
adql_in_vertices(ra, dec, v) AS
    list_transform([{'p': adql_xyz(ra, dec), 'q': adql_prep_v(v)}],
                   lambda _iv: adql_pip(_iv.p, _iv.q))[1]
;
adql_in_polygon(ra, dec, g) AS
    list_transform([adql_vertices(g)], lambda _vg: adql_in_vertices(ra, dec, _vg))[1]
;
adql_point_in(p, g) AS CASE
    WHEN len(g) = 2 THEN adql_hav(p[1], p[2], g[1], g[2]) = 0
    WHEN len(g) = 3 THEN adql_in_circle(p[1], p[2], g[1], g[2], g[3])
    WHEN len(g) >= 6 THEN adql_in_polygon(p[1], p[2], g)
    END
;
adql_circle_q(c3) AS
    {'c': adql_xyz(c3[1], c3[2]), 'cr': cos(radians(c3[3])), 'sr': sin(radians(c3[3]))}
;
adql_near(c, cr, sr, e) AS
    (adql_dot(adql_cross(e.a, c), e.n) >= 0 AND adql_dot(adql_cross(c, e.b), e.n) >= 0
     AND abs(adql_dot(c, e.n)) <= sr * sqrt(adql_dot(e.n, e.n)))
    OR adql_dot(c, e.a) >= cr OR adql_dot(c, e.b) >= cr
;
adql_near_any(k, q) AS
    list_bool_or(list_transform(q.e, lambda _ne: adql_near(k.c, k.cr, k.sr, _ne)))
;
adql_cross_pair(e, f) AS
    adql_dot(adql_cross(e.n, f.n), adql_cross(e.n, f.n)) > 0
    AND ((adql_dot(e.a, f.n) >= 0 AND adql_dot(e.b, f.n) <= 0
          AND adql_dot(f.a, e.n) <= 0 AND adql_dot(f.b, e.n) >= 0)
         OR (adql_dot(e.a, f.n) <= 0 AND adql_dot(e.b, f.n) >= 0
             AND adql_dot(f.a, e.n) >= 0 AND adql_dot(f.b, e.n) <= 0))
;
adql_edges_cross(p, q) AS
    list_bool_or(list_transform(p.e, lambda _x1: list_bool_or(
        list_transform(q.e, lambda _x2: adql_cross_pair(_x1, _x2)))))
;
adql_contains_l(a, b) AS CASE
    WHEN len(a) = 2 THEN adql_point_in(a, b)
    WHEN len(a) = 3 AND len(b) = 2 THEN a[3] = 0 AND adql_hav(a[1], a[2], b[1], b[2]) = 0
    WHEN len(a) = 3 AND len(b) = 3 THEN adql_distance(a[1], a[2], b[1], b[2]) + a[3] <= b[3]
    WHEN len(a) = 3 AND len(b) >= 6 THEN
        list_transform([{'k': adql_circle_q(a), 'q': adql_prep(b)}], lambda _c1:
            adql_pip(_c1.k.c, _c1.q) AND NOT adql_near_any(_c1.k, _c1.q))[1]
    WHEN len(a) >= 6 AND len(b) = 2 THEN false
    WHEN len(a) >= 6 AND len(b) = 3 THEN
        list_transform([{'k': adql_circle_q(b), 'v': adql_vertices(a)}], lambda _c2:
            list_bool_and(list_transform(_c2.v, lambda _c3: adql_dot(_c3, _c2.k.c) >= _c2.k.cr)))[1]
    WHEN len(a) >= 6 AND len(b) >= 6 THEN
        list_transform([{'p': adql_prep(a), 'q': adql_prep(b)}], lambda _c4:
            list_bool_and(list_transform(_c4.p.v, lambda _c5: adql_pip(_c5, _c4.q)))
            AND NOT adql_edges_cross(_c4.p, _c4.q))[1]
    END
;
adql_intersects_l(a, b) AS CASE
    WHEN len(a) = 2 THEN adql_point_in(a, b)
    WHEN len(b) = 2 THEN adql_point_in(b, a)
    WHEN len(a) = 3 AND len(b) = 3 THEN adql_distance(a[1], a[2], b[1], b[2]) <= a[3] + b[3]
    WHEN len(a) + len(b) >= 9 AND least(len(a), len(b)) = 3 THEN
        list_transform([{'k': adql_circle_q(CASE WHEN len(a) = 3 THEN a ELSE b END),
                         'q': adql_prep(CASE WHEN len(a) = 3 THEN b ELSE a END)}], lambda _i1:
            adql_pip(_i1.k.c, _i1.q) OR adql_near_any(_i1.k, _i1.q))[1]
    WHEN len(a) >= 6 AND len(b) >= 6 THEN
        list_transform([{'p': adql_prep(a), 'q': adql_prep(b)}], lambda _i2:
            list_bool_or(list_transform(_i2.p.v, lambda _i3: adql_pip(_i3, _i2.q)))
            OR list_bool_or(list_transform(_i2.q.v, lambda _i4: adql_pip(_i4, _i2.p)))
            OR adql_edges_cross(_i2.p, _i2.q))[1]
    END
;
adql_point_in_g(p, g) AS list_transform([g], lambda _pg: adql_point_in(p, _pg))[1]
;
adql_circle_meets(c3, g) AS
    list_transform([g], lambda _mg: CASE
        WHEN len(_mg) = 2 THEN adql_in_circle(_mg[1], _mg[2], c3[1], c3[2], c3[3])
        WHEN len(_mg) = 3 THEN adql_distance(_mg[1], _mg[2], c3[1], c3[2]) <= c3[3] + _mg[3]
        WHEN len(_mg) >= 6 THEN
            list_transform([{'k': adql_circle_q(c3), 'q': adql_prep(_mg)}], lambda _mq:
                adql_pip(_mq.k.c, _mq.q) OR adql_near_any(_mq.k, _mq.q))[1]
        END)[1]
;
adql_within_circle(g, c3) AS
    list_transform([g], lambda _wg: CASE
        WHEN len(_wg) = 2 THEN adql_in_circle(_wg[1], _wg[2], c3[1], c3[2], c3[3])
        WHEN len(_wg) = 3 THEN adql_distance(_wg[1], _wg[2], c3[1], c3[2]) + _wg[3] <= c3[3]
        WHEN len(_wg) >= 6 THEN
            list_transform([adql_circle_q(c3)], lambda _wk: list_bool_and(list_transform(
                adql_vertices(_wg), lambda _wv: adql_dot(_wv, _wk.c) >= _wk.cr)))[1]
        END)[1]
;
adql_contains(a, b) AS
    list_transform([{'a': a, 'b': b}], lambda _cg: adql_contains_l(_cg.a, _cg.b))[1]
;
adql_intersects(a, b) AS
    list_transform([{'a': a, 'b': b}], lambda _ig: adql_intersects_l(_ig.a, _ig.b))[1]
;
adql_point(ra, dec) AS CAST([ra, dec] AS DOUBLE[])
;
adql_circle(ra, dec, r) AS CAST([ra, dec, r] AS DOUBLE[])
;
adql_box(ra, dec, w, h) AS
    CAST([ra - w / 2, dec - h / 2, ra + w / 2, dec - h / 2,
          ra + w / 2, dec + h / 2, ra - w / 2, dec + h / 2] AS DOUBLE[])
;
adql_close(n) AS CASE WHEN len(n) >= 8 AND n[1] = n[-2] AND n[2] = n[-1]
                      THEN list_slice(n, 1, len(n) - 2) ELSE n END
;
adql_shape(w, n) AS CASE
    WHEN len(list_filter(w, lambda _sw: _sw IN ('polygon', 'circle', 'box', 'position',
         'union', 'intersection', 'not', 'difference', 'convex', 'ellipse'))) > 1 THEN NULL
    WHEN len(w) = 0 AND len(n) IN (2, 3) THEN n
    WHEN len(w) = 0 AND len(n) >= 6 AND len(n) % 2 = 0 THEN adql_close(n)
    WHEN w[1] = 'position' AND len(n) = 2 THEN n
    WHEN w[1] = 'circle' AND len(n) = 3 THEN n
    WHEN w[1] = 'polygon' AND len(n) >= 6 AND len(n) % 2 = 0 THEN adql_close(n)
    WHEN w[1] = 'box' AND len(n) = 4 THEN adql_box(n[1], n[2], n[3], n[4])
    END
;
adql_region(s) AS
    list_transform([string_split(trim(regexp_replace(lower(CAST(s AS VARCHAR)),
                                                     '[\s,()\[\]]+', ' ', 'g')), ' ')],
        lambda _rt: list_transform([{
            'w': list_filter(_rt, lambda _rw: TRY_CAST(_rw AS DOUBLE) IS NULL AND _rw <> ''),
            'n': list_transform(list_filter(_rt, lambda _rn: TRY_CAST(_rn AS DOUBLE) IS NOT NULL),
                                lambda _rv: CAST(_rv AS DOUBLE))}],
            lambda _rs: adql_shape(_rs.w, _rs.n))[1])[1]
;
adql_dali(g) AS list_transform([g], lambda _dg:
    CASE WHEN len(list_filter(_dg, lambda _dn: _dn IS NULL)) > 0 THEN NULL
         ELSE array_to_string(_dg, ' ') END)[1]
;
adql_coord(g, i) AS list_transform([g], lambda _og: CASE WHEN len(_og) = 2 THEN _og[i] END)[1]
;
adql_point_distance(a, b) AS list_transform([{'a': a, 'b': b}], lambda _pd:
    CASE WHEN len(_pd.a) = 2 AND len(_pd.b) = 2
         THEN adql_distance(_pd.a[1], _pd.a[2], _pd.b[1], _pd.b[2]) END)[1]
;
adql_poly_area(v) AS abs(list_sum(list_transform(range(1, len(v) - 1), lambda _ak:
    2 * atan2(adql_dot(v[1], adql_cross(v[_ak + 1], v[_ak + 2])),
              1 + adql_dot(v[1], v[_ak + 1]) + adql_dot(v[_ak + 1], v[_ak + 2])
              + adql_dot(v[_ak + 2], v[1])))))
;
adql_area(g) AS list_transform([g], lambda _ag: CASE
    WHEN len(_ag) = 2 THEN 0.0
    WHEN len(_ag) = 3 THEN pow(degrees(1), 2) * 2 * pi() * (1 - cos(radians(least(_ag[3], 180))))
    WHEN len(_ag) >= 6 THEN pow(degrees(1), 2)
        * list_transform([adql_vertices(_ag)], lambda _av: adql_poly_area(_av))[1]
    END)[1]
;
adql_lonlat(c) AS [(degrees(atan2(c[2], c[1])) + 360) % 360,
                   degrees(atan2(c[3], sqrt(c[1] * c[1] + c[2] * c[2])))]
;
adql_centroid(g) AS list_transform([g], lambda _eg: CASE
    WHEN len(_eg) = 2 THEN _eg
    WHEN len(_eg) = 3 THEN [_eg[1], _eg[2]]
    WHEN len(_eg) >= 6 THEN list_transform([adql_vertices(_eg)], lambda _cv:
        list_transform([adql_vsum(_cv)], lambda _cs: adql_lonlat(_cs))[1])[1]
    END)[1]
;
adql_hpx_xy(o, ra, dec) AS
    list_transform([{'n': CAST(1 AS BIGINT) << o, 'z': sin(radians(dec)),
                     'tt': (((ra % 360) + 360) % 360) / 90, 'c': cos(radians(dec))}], lambda _h:
        CASE WHEN abs(_h.z) <= 2 / 3 THEN list_transform(
                 [[CAST(floor(_h.n * (0.5 + _h.tt) - _h.n * _h.z * 0.75) AS BIGINT),
                   CAST(floor(_h.n * (0.5 + _h.tt) + _h.n * _h.z * 0.75) AS BIGINT)]],
                 lambda _e: [CASE WHEN _e[1] >> o = _e[2] >> o THEN (_e[1] >> o) | 4
                                  WHEN _e[1] >> o < _e[2] >> o THEN _e[1] >> o
                                  ELSE (_e[2] >> o) + 8 END,
                             _e[2] & (_h.n - 1), _h.n - (_e[1] & (_h.n - 1)) - 1])[1]
             ELSE list_transform(
                 [{'f': least(3, CAST(floor(_h.tt) AS BIGINT)),
                   't': _h.n * _h.c * sqrt(3 / (1 + abs(_h.z)))}], lambda _q:
                 list_transform(
                     [[least(_h.n - 1, CAST(floor((_h.tt - _q.f) * _q.t) AS BIGINT)),
                       least(_h.n - 1, CAST(floor((1 - (_h.tt - _q.f)) * _q.t) AS BIGINT))]],
                     lambda _j: CASE WHEN _h.z >= 0
                                     THEN [_q.f, _h.n - _j[2] - 1, _h.n - _j[1] - 1]
                                     ELSE [_q.f + 8, _j[1], _j[2]] END)[1])[1]
        END)[1]
;
adql_healpix(o, ra, dec) AS
    list_transform([adql_hpx_xy(o, ra, dec)], lambda _f:
        (_f[1] << (2 * o)) + CAST(coalesce(list_sum(list_transform(range(o), lambda _b:
            (((_f[2] >> _b) & 1) << (2 * _b)) | (((_f[3] >> _b) & 1) << (2 * _b + 1)))), 0)
            AS BIGINT))[1]
"""

MACROS: tuple[str, ...] = tuple(
    "CREATE OR REPLACE TEMP MACRO " + " ".join(part.split())
    for part in _SQL.split("\n;\n") if part.strip())
MACRO_NAMES = frozenset(m.split()[5].split("(")[0] for m in MACROS)

_SHAPES = ("polygon", "circle", "box", "position")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def region_values(text: str) -> list[float] | None:
    """A literal STC-S or DALI region as the DALI list the macros use; None if unsupported."""
    toks = [t for t in re.split(r"[\s,()\[\]]+", text.strip().lower()) if t]
    words = [t for t in toks if not _NUMBER.match(t)]
    nums = [float(t) for t in toks if _NUMBER.match(t)]
    if any(w in ("union", "intersection", "not", "difference", "convex") for w in words) \
            or sum(w in _SHAPES for w in words) > 1:
        return None
    kind = words[0] if words else ""
    if kind not in ("", *_SHAPES):
        return None
    n = len(nums)
    if kind == "position" and n == 2 or kind == "circle" and n == 3:
        return nums
    if kind == "box" and n == 4:
        return box_corners(*nums)
    if kind in ("", "polygon") and n >= 6 and n % 2 == 0:
        if n >= 8 and nums[:2] == nums[-2:]:
            nums = nums[:-2]
        return nums
    if kind == "" and n in (2, 3):
        return nums
    return None


def box_corners(ra: float, dec: float, width: float, height: float) -> list[float]:
    """The four corners of an ADQL BOX (centre +- half width/height), as a polygon."""
    w, h = width / 2, height / 2
    return [ra - w, dec - h, ra + w, dec - h, ra + w, dec + h, ra - w, dec + h]


def cone_of(values: list[float]) -> tuple[float, float, float]:
    """A cone (ra, dec, radius) enclosing a DALI point, circle or polygon."""
    if len(values) == 2:
        return values[0], values[1], 0.0
    if len(values) == 3:
        return values[0], values[1], values[2]
    xyz = [unit_vector(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    cx, cy, cz = (sum(v[k] for v in xyz) for k in range(3))
    norm = math.sqrt(cx * cx + cy * cy + cz * cz) or 1.0
    ra = math.degrees(math.atan2(cy, cx)) % 360
    dec = math.degrees(math.asin(max(-1.0, min(1.0, cz / norm))))
    centre = unit_vector(ra, dec)
    radius = max(math.degrees(math.acos(max(-1.0, min(1.0, sum(a * b for a, b in
                                                               zip(centre, v, strict=True))))))
                 for v in xyz)
    return ra, dec, radius


def unit_vector(ra: float, dec: float) -> tuple[float, float, float]:
    """The unit vector of a position given in degrees."""
    r, d = math.radians(ra), math.radians(dec)
    return math.cos(d) * math.cos(r), math.cos(d) * math.sin(r), math.sin(d)
