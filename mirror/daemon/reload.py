"""Applying an edited config file while the daemon runs.

An edit is validated with `load_config`: a bad one is refused (the caller logs why and keeps the
old config). A good one applies at once, except the catalogue and store locations, which the
running process holds open: those need a restart and are kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mirror.config import Config, load_config
from mirror.errors import ConfigError


@dataclass
class Reload:
    """The outcome of reading the config file again."""

    config: Config | None = None  # None: refused, keep the old one
    error: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # settings that need a restart

    @property
    def summary(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in (
            ("added", self.added), ("removed", self.removed), ("changed", self.changed))
            if names]
        return "; ".join(parts) or "no source changed"


def reload(path: Path, old: Config) -> Reload:
    """Read and validate the config at `path` and compare its sources with `old`."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        hint = f" ({exc.hint.splitlines()[0]})" if exc.hint else ""
        return Reload(error=f"{exc.message}{hint}")
    out = Reload()
    if new.catalogue_path != old.catalogue_path:
        out.kept.append("[catalogue] path")
    if new.store_root != old.store_root:
        out.kept.append("[store] root")
    new = dataclasses.replace(new, catalogue_path=old.catalogue_path, store_root=old.store_root)
    before = {s.name: s for s in old.sources}
    after = {s.name: s for s in new.sources}
    out.added = [n for n in after if n not in before]
    out.removed = [n for n in before if n not in after]
    out.changed = [n for n in after if n in before and after[n] != before[n]]
    out.config = new
    return out
