"""A deterministic synthetic ObsCore table modelled on the ESO archive (HARPS spectra, VHS images).

The columns follow the test upstream's `ivoa.obscore` (DaCHS' ObsCore 1.1 columns plus ESO's
extras and the `last_modified` watermark); the values are drawn with numpy from a seed, so every
run serves the same bytes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _tapreplay import FieldInfo

AUTHORITY = "eso-sim.test"
PORTAL = "https://dataportal.eso-sim.test"
_C, _D, _L, _S, _I, _F = "char", "double", "long", "short", "int", "float"
# name, datatype, unit, ucd, xtype ("-1": integers use VALUES null="-1", as DaCHS sends them)
COLUMNS: tuple[tuple[str, str, str, str, str], ...] = (
    ("dataproduct_type", _C, "", "meta.code.class", ""),
    ("dataproduct_subtype", _C, "", "meta.code.class", ""),
    ("calib_level", _S, "", "meta.code;obs.calib", ""),
    ("obs_collection", _C, "", "meta.id", ""),
    ("obs_id", _C, "", "meta.id", ""),
    ("obs_title", _C, "", "meta.title;obs", ""),
    ("obs_publisher_did", _C, "", "meta.ref.ivoid", ""),
    ("obs_creator_did", _C, "", "meta.id", ""),
    ("access_url", _C, "", "meta.ref.url", ""),
    ("access_format", _C, "", "meta.code.mime", ""),
    ("access_estsize", _L, "kbyte", "phys.size;meta.file", "-1"),
    ("target_name", _C, "", "meta.id;src", ""),
    ("s_ra", _D, "deg", "pos.eq.ra", ""),
    ("s_dec", _D, "deg", "pos.eq.dec", ""),
    ("s_fov", _D, "deg", "phys.angSize;instr.fov", ""),
    ("s_region", _C, "deg", "pos.outline;obs.field", "adql:REGION"),
    ("s_resolution", _D, "arcsec", "pos.angResolution", ""),
    ("s_xel1", _L, "", "meta.number", "-1"),
    ("s_xel2", _L, "", "meta.number", "-1"),
    ("s_pixel_scale", _D, "arcsec", "phys.angSize;instr.pixel", ""),
    ("t_min", _D, "d", "time.start;obs.exposure", ""),
    ("t_max", _D, "d", "time.end;obs.exposure", ""),
    ("t_exptime", _D, "s", "time.duration;obs.exposure", ""),
    ("t_resolution", _D, "s", "time.resolution", ""),
    ("t_xel", _L, "", "meta.number", "-1"),
    ("em_min", _D, "m", "em.wl;stat.min", ""),
    ("em_max", _D, "m", "em.wl;stat.max", ""),
    ("em_res_power", _D, "", "spect.resolution", ""),
    ("em_xel", _L, "", "meta.number", "-1"),
    ("em_ucd", _C, "", "meta.ucd", ""),
    ("o_ucd", _C, "", "meta.ucd", ""),
    ("pol_states", _C, "", "meta.code;phys.polarization", ""),
    ("pol_xel", _L, "", "meta.number", "-1"),
    ("facility_name", _C, "", "meta.id;instr.tel", ""),
    ("instrument_name", _C, "", "meta.id;instr", ""),
    ("preview", _C, "", "meta.ref.url;meta.preview", ""),
    ("source_table", _C, "", "meta.id;meta.table", ""),
    ("obs_release_date", _C, "", "time.release", "timestamp"),
    ("obs_creator_name", _C, "", "meta.id", ""),
    ("proposal_id", _C, "", "meta.id;obs.proposal", ""),
    ("dp_id", _C, "", "meta.id", ""),
    ("snr", _F, "", "stat.snr", ""),
    ("abmaglim", _F, "mag", "phot.mag;stat.max", ""),
    ("filter", _C, "", "meta.id;instr.filter", ""),
    ("gal_lat", _D, "deg", "pos.galactic.lat", ""),
    ("gal_lon", _D, "deg", "pos.galactic.lon", ""),
    ("n_obs", _I, "", "meta.number;obs", "-1"),
    ("last_modified", _C, "", "time.processing", "timestamp"),
    ("version", _I, "", "meta.version", ""),
)
SURNAMES = np.array(["Almeida", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia",
                     "Hansen", "Ivanova", "Jansen", "Kowalski", "Lopez", "Moreau", "Nielsen"])


def fields() -> list[FieldInfo]:
    """VOTable/TAP_SCHEMA descriptions of the columns, in table order."""
    out = []
    for name, datatype, unit, ucd, xtype in COLUMNS:
        null = "-1" if xtype == "-1" else None
        out.append(FieldInfo(name, datatype, "*" if datatype == _C else None,
                             xtype if xtype not in ("", "-1") else None, unit or None,
                             ucd, f"ObsCore column {name}", null))
    return out


def _iso(ms: np.ndarray) -> pa.Array:
    """Epoch milliseconds -> ISO 8601 text with microseconds, UTC, no zone (as DaCHS sends)."""
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    return pc.binary_join_element_wise(pa.array(text), pa.scalar("000"), "")


def _num(values: np.ndarray, decimals: int) -> pa.Array:
    return pc.cast(pa.array(np.round(values, decimals)), pa.string())


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _masked(values: np.ndarray, keep: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.array(values, type=typ, mask=~keep)


def make_table(rows: int, seed: int = 42) -> pa.Table:
    """`rows` ObsCore records: 75 % HARPS spectra, 25 % VHS images; same seed, same table."""
    rng = np.random.default_rng(seed)
    img = rng.random(rows) < 0.25
    ingest = np.int64(1_325_376_000_000) + np.cumsum(rng.integers(1, 2_000_000, rows))
    modified = np.where(rng.random(rows) < 0.1, ingest + rng.integers(1, 10**10, rows), ingest)
    bulk = rng.random(rows) < 0.05  # a reprocessing campaign: many rows share one timestamp
    modified = np.where(bulk, np.int64(1_700_000_000_000), modified)
    adp = _join("ADP.", pa.array(np.datetime_as_string(ingest.astype("datetime64[ms]"), "ms")))
    fname = pc.replace_substring(adp, ":", "_")
    ra, dec = rng.uniform(0, 360, rows), np.degrees(np.arcsin(rng.uniform(-1, 0.5, rows)))
    half = np.where(img, rng.uniform(0.006, 0.009, rows), 0.0003)
    corners = [(ra + sx * half / np.cos(np.radians(dec)), dec + sy * half)
               for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    region = _join("Polygon ICRS", *[p for x, y in corners
                                     for p in (" ", _num(x % 360, 6), " ", _num(y, 6))])
    exptime = rng.choice([60.0, 120, 300, 600, 900, 1200, 1800, 2700, 3600], rows)
    t_min = rng.uniform(52730.0, 60600.0, rows)
    filt = rng.choice(np.array(["J", "H", "Ks"]), rows)
    em_lo = np.where(img, np.select([filt == "J", filt == "H"], [1.17e-6, 1.49e-6], 1.99e-6),
                     3.781e-7)
    em_hi = np.where(img, np.select([filt == "J", filt == "H"], [1.33e-6, 1.78e-6], 2.30e-6),
                     6.912e-7)
    xel = rng.integers(64, 97, rows)
    target = _join(pa.array(np.where(img, "VHS field ", "HD ")),
                   pc.cast(pa.array(rng.integers(1, 359084, rows)), pa.string()))
    proposal = _join(pc.cast(pa.array(rng.integers(60, 115, rows)), pa.string()), ".C-",
                     pc.cast(pa.array(rng.integers(1000, 9999, rows)), pa.string()), "(A)")
    coll = pa.array(np.where(img, "VHS", "HARPS"))
    spec, none = pa.array(~img), pa.nulls(rows, pa.string())
    data = {
        "dataproduct_type": pa.array(np.where(img, "image", "spectrum")),
        "dataproduct_subtype": none,
        "calib_level": pa.array(np.where(img, 3, 2).astype(np.int16)),
        "obs_collection": coll,
        "obs_id": pc.cast(pa.array(rng.integers(200_000_000, 300_000_000, rows)), pa.string()),
        "obs_title": _join(target, " ", coll, " product"),
        "obs_publisher_did": _join(f"ivo://{AUTHORITY}/ID?", adp),
        "obs_creator_did": pc.if_else(spec, _join(f"ivo://{AUTHORITY}/origfile?HARPS.", adp,
                                                  "_s1d_A.fits"), none),
        "access_url": _join(f"{PORTAL}/dataPortal/file/", fname, ".fits"),
        "access_format": pa.array(np.where(img, "application/x-votable+xml;content=datalink",
                                           "application/fits")),
        "access_estsize": pa.array(rng.integers(23, 53, rows)),
        "target_name": target,
        "s_ra": pa.array(ra), "s_dec": pa.array(dec), "s_fov": pa.array(2 * half),
        "s_region": region,
        "s_resolution": pa.array(rng.uniform(0.6, 1.4, rows)),
        "s_xel1": _masked(xel, img, pa.int64()), "s_xel2": _masked(xel[::-1], img, pa.int64()),
        "s_pixel_scale": pa.array(np.where(img, 0.339, np.nan), from_pandas=True),
        "t_min": pa.array(t_min), "t_max": pa.array(t_min + exptime / 86400.0),
        "t_exptime": pa.array(exptime), "t_resolution": pa.array(exptime),
        "t_xel": pa.nulls(rows, pa.int64()),
        "em_min": pa.array(em_lo), "em_max": pa.array(em_hi),
        "em_res_power": pa.array(np.where(img, np.nan, 115000.0), from_pandas=True),
        "em_xel": _masked(rng.integers(1500, 2601, rows), ~img, pa.int64()),
        "em_ucd": pa.array(np.where(img, "em.wl", "em.wl;obs.atmos")),
        "o_ucd": pa.array(np.where(img, "phot.flux.density", "phot.flux.density;em.wl")),
        "pol_states": none, "pol_xel": pa.nulls(rows, pa.int64()),
        "facility_name": pa.array(np.where(img, "ESO-VISTA", "ESO-3.6")),
        "instrument_name": pa.array(np.where(img, "VIRCAM", "HARPS")),
        "preview": pc.if_else(pa.array(img), _join(f"{PORTAL}/preview/", fname, ".jpg"), none),
        "source_table": pa.array(np.where(img, "sdp.vhs", "sdp.harps")),
        "obs_release_date": _iso(((t_min - 40587.0 + 365.0) * 86_400_000).astype(np.int64)),
        "obs_creator_name": pa.array(rng.choice(SURNAMES, rows)),
        "proposal_id": proposal,
        "dp_id": adp,
        "snr": pa.array(np.where(img, np.nan, rng.uniform(3, 450, rows)).astype(np.float32),
                        from_pandas=True),
        "abmaglim": pa.array(np.where(img, rng.uniform(19.5, 21.5, rows), np.nan)
                             .astype(np.float32), from_pandas=True),
        "filter": pc.if_else(pa.array(img), pa.array(filt), none),
        "gal_lat": pa.array(rng.uniform(-90, 90, rows)),
        "gal_lon": pa.array(rng.uniform(0, 360, rows)),
        "n_obs": _masked(rng.choice([6, 12], rows).astype(np.int32), img, pa.int32()),
        "last_modified": _iso(modified),
        "version": pa.array(rng.integers(1, 4, rows).astype(np.int32)),
    }
    return pa.table(data)
