"""Which standard defines a column: ObsCore 1.1 (its table 6 and optional columns) and TAP 1.1."""

from __future__ import annotations

OBSCORE = "ObsCore 1.1"
TAP = "TAP 1.1"
MIRROR = "mirror"
OBSCORE_UTYPE = "ivo://ivoa.net/std/ObsCore#table-1.1"

# ObsCore 1.1 (REC-ObsCore-v1.1, 2017), section 3 and table 6: mandatory columns
OBSCORE_MANDATORY = (
    "dataproduct_type", "calib_level", "obs_collection", "obs_id", "obs_publisher_did",
    "access_url", "access_format", "access_estsize", "target_name", "s_ra", "s_dec", "s_fov",
    "s_region", "s_resolution", "s_xel1", "s_xel2", "t_xel", "t_min", "t_max", "t_exptime",
    "t_resolution", "em_xel", "em_min", "em_max", "em_res_power", "o_ucd", "pol_xel",
    "pol_states", "facility_name", "instrument_name",
)
# ObsCore 1.1 optional columns (table 7)
OBSCORE_OPTIONAL = (
    "dataproduct_subtype", "target_class", "obs_creation_date", "obs_creator_name",
    "obs_creator_did", "obs_title", "publisher_id", "bib_reference", "data_rights",
    "obs_release_date", "s_ucd", "s_unit", "s_resolution_min", "s_resolution_max",
    "s_calib_status", "s_stat_error", "s_pixel_scale", "t_calib_status", "t_stat_error",
    "em_ucd", "em_unit", "em_calib_status", "em_res_power_min", "em_res_power_max",
    "em_resolution", "em_stat_error", "o_unit", "o_calib_status", "o_stat_error", "proposal_id",
)
OBSCORE_COLUMNS = frozenset(OBSCORE_MANDATORY + OBSCORE_OPTIONAL)
# columns mirror adds to the ObsCore views
MIRROR_HELPERS = frozenset({"mirror_source", "_hpx", "withdrawn_at"})


def defining_standard(table: str, table_utype: str | None, column: str) -> str | None:
    """The standard that defines `column` of `table`, or None for a service's own column."""
    schema = table.partition(".")[0].lower()
    name = column.lower()
    if schema == "tap_schema":
        return TAP
    if schema == "mirror" or (name in MIRROR_HELPERS and _is_obscore(table_utype)):
        return MIRROR
    if _is_obscore(table_utype) and name in OBSCORE_COLUMNS:
        return OBSCORE
    return None


def obscore_mandatory(column: str) -> bool:
    return column.lower() in OBSCORE_MANDATORY


def _is_obscore(utype: str | None) -> bool:
    return (utype or "").lower().startswith("ivo://ivoa.net/std/obscore")
