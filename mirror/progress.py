"""Progress bars on the terminal (rich): files, bytes, rate, ETA."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def fetch_progress(console: Console, *,
                   enabled: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A callback for fetch events that drives one bar per source (files done of total)."""
    if not enabled:
        yield lambda event: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[mb]:,.1f} MB  {task.fields[rate]:,.1f} MB/s"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, tuple[Any, float]] = {}

        def update(event: dict[str, Any]) -> None:
            if event.get("phase") != "fetch":
                return
            source = event["source"]
            if source not in tasks:
                tasks[source] = (bar.add_task(source, total=event["total"], mb=0.0, rate=0.0),
                                 time.monotonic())
            task, t0 = tasks[source]
            mb = event["bytes"] / 1e6
            bar.update(task, completed=event["done"], total=event["total"], mb=mb,
                       rate=mb / max(time.monotonic() - t0, 1e-6))

        yield update
