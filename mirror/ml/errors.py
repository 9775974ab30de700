"""The ML exports' user errors, in mirror's one exception tree."""

from __future__ import annotations

from mirror.errors import MirrorError


class ExportError(MirrorError):
    """An export, cutout or embedding cannot run as asked (bad grid, folder, column, ...)."""
