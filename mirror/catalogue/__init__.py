"""The local DuckDB catalogue: the mirror's own tables and each source's ObsCore rows."""

from mirror.catalogue.engine import Catalogue

__all__ = ["Catalogue"]
