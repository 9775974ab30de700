"""`mirror server`: the local TAP service (`mirror serve`) (registered by `mirror.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Command = Callable[[str, str], argparse.ArgumentParser]


def register(command: Command) -> None:
    """Add this module's subcommands; each parser sets `handler` (mirror, args) -> exit code."""
