"""Test helpers: a fake TAP service, a fake sleep, and config files for a temp directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fakes.tapserver import FakeTap, Fault, Received, dachs_error

__all__ = ["FakeSleep", "FakeTap", "Fault", "Received", "dachs_error", "toml_value",
           "write_config"]


class FakeSleep:
    """Records the delays a RetryPolicy asks for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def write_config(directory: Path, *sources: dict[str, Any], catalogue: str = "cat/mirror.duckdb",
                 store: str = "store", name: str = "mirror.toml", layout: str | None = None,
                 fetch: dict[str, Any] | None = None) -> Path:
    """Write a config file with the given [[source]] tables (and, if given, a [store] layout
    and [fetch] settings); returns its path."""
    lines = ["[catalogue]", f"path = {toml_value(catalogue)}", "", "[store]",
             f"root = {toml_value(store)}"]
    if layout is not None:
        lines.append(f"layout = {toml_value(layout)}")
    lines.append("")
    if fetch:
        lines.append("[fetch]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in fetch.items())
        lines.append("")
    for src in sources:
        lines.append("[[source]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in src.items())
        lines.append("")
    path = directory / name
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
