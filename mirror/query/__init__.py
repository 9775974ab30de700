"""Local ADQL queries: translated by `mirror.adql`, run read-only on the catalogue with a row cap
and a time limit, answered as Arrow and astropy tables with the columns' units and UCDs.

ADQL sees `ivoa.obscore` (every source's current rows), `ivoa.obscore_withdrawn`, one
`<source>.obscore` per source, and a local `TAP_SCHEMA` describing exactly these.
"""

from mirror.query.result import QueryResult
from mirror.query.runner import QueryError, QueryTimeoutError, Runner
from mirror.query.tables import CatalogueTables

__all__ = ["CatalogueTables", "QueryError", "QueryResult", "QueryTimeoutError",
           "Runner"]
