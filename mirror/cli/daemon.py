"""`mirror daemon`: keep every source's metadata and products up to date (registered by
`mirror.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mirror.api import Mirror
from mirror.cli.output import out

Command = Callable[..., argparse.ArgumentParser]  # command(name, help=...)


def register(command: Command) -> None:
    """Add this module's subcommands; each parser sets `handler` (mirror, args) -> exit code."""
    parser = command("daemon", "keep the sources in sync: scheduled syncs and fetches, "
                               "config and store watched, the catalogue served meanwhile")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="log lines for people (text) or one JSON object per line")
    parser.add_argument("--once", action="store_true",
                        help="run every source once (sync, then fetch), then exit")
    parser.set_defaults(handler=cmd_daemon)


def cmd_daemon(mirror: Mirror, args: argparse.Namespace) -> int:
    from mirror.daemon import Daemon

    return Daemon(mirror, once=args.once, log_format=args.log_format, debug=args.debug).main()


def service_state(mirror: Mirror) -> dict[str, Any] | None:
    """The running daemon's live state (through its service), or None when no daemon runs."""
    ask = getattr(mirror, "service_state", None)
    return ask() if ask is not None else None


def print_state(state: dict[str, Any]) -> None:
    """The daemon part of `mirror status`."""
    out.print(f"[bold]daemon[/]     pid {state.get('pid')}, running since "
              f"{state.get('running_since')}, serving {state.get('endpoint') or '-'}",
              highlight=False)
    out.print(f"  now        {state.get('activity')} (since {state.get('activity_since')})",
              highlight=False)
    if state.get("reload_error"):
        out.print(f"  [red]config[/]     edit refused: {state['reload_error']}", highlight=False)
    for name, s in sorted(state.get("sources", {}).items()):
        queue = ", ".join(f"{n:,} {k}" for k, n in s.get("queue", {}).items())
        out.print(f"  [bold]{name}[/]  next run {s.get('next_run') or '-'}, last "
                  f"{s.get('last_result') or '-'} at {s.get('last_run') or '-'}; queue {queue}",
                  highlight=False)
        if s.get("failures"):
            out.print(f"    [red]backing off[/] {s.get('backoff_seconds')} s after "
                      f"{s['failures']} failures: {s.get('last_error')}", highlight=False)
