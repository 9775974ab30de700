"""What every command prints with: the two consoles and the JSON-or-text switch."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

err = Console(stderr=True)
out = Console()


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """`data` as JSON with --json, else `text` unless --quiet."""
    if args.json:
        out.print_json(json.dumps(data, default=str))
    elif not args.quiet:
        out.print(text, highlight=False)
