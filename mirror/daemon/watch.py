"""Watch the config file and the product store (watchdog: inotify on Linux).

The watchers only take notes and wake the daemon; its worker thread, the one catalogue writer,
acts on them. What the daemon writes itself never counts: downloads go to hidden `.part` files
and reach their place by rename or hard link (events on the `.part` name, or a creation), and
the quarantine is a hidden folder. What counts is a product file deleted, moved away or
modified in place, which only a person (or another program) does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from watchdog.events import (
    DirDeletedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer


def store_path(root: Path, path: str | bytes) -> str | None:
    """The store-relative path of a product file, or None for the store's own files (names
    starting with '.': `.part` downloads, the `.quarantine` folder) and paths outside it."""
    text = path.decode() if isinstance(path, bytes) else path
    try:
        rel = PurePosixPath(Path(text).relative_to(root).as_posix())
    except ValueError:
        return None
    if not rel.parts or any(part.startswith(".") for part in rel.parts):
        return None
    return str(rel)


class StoreNotes(FileSystemEventHandler):
    """Collects product paths deleted, moved away or modified by hand; `take` empties it."""

    def __init__(self, root: Path, wake: Callable[[], None]) -> None:
        self.root = root.resolve()
        self.wake = wake
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._folders: set[str] = set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileDeletedEvent, FileModifiedEvent)):
            self._note(store_path(self.root, event.src_path))
        elif isinstance(event, FileMovedEvent):
            # the daemon's own commits move `.part` files (ignored by name) into place;
            # a product moved away is as good as deleted
            self._note(store_path(self.root, event.src_path))
        elif isinstance(event, DirDeletedEvent):
            folder = store_path(self.root, event.src_path)
            if folder:
                with self._lock:
                    self._folders.add(folder)
                self.wake()

    def _note(self, rel: str | None) -> None:
        if rel is None:
            return
        with self._lock:
            self._paths.add(rel)
        self.wake()

    def take(self) -> tuple[set[str], set[str]]:
        """(paths, folders) noted since the last call."""
        with self._lock:
            paths, folders = self._paths, self._folders
            self._paths, self._folders = set(), set()
        return paths, folders


class ConfigNotes(FileSystemEventHandler):
    """Notices writes to one file (editors often write a new file and rename it over)."""

    def __init__(self, file: Path, changed: Callable[[], None]) -> None:
        self.file = file.resolve()
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(p and Path(_text(p)).resolve() == self.file for p in paths):
            self.changed()


def _text(path: str | bytes) -> str:
    return path.decode() if isinstance(path, bytes) else path


class Watchers:
    """One watchdog observer for the config file's folder and (optionally) the store."""

    def __init__(self) -> None:
        self.observer = Observer()
        self.observer.daemon = True

    def config(self, file: Path, changed: Callable[[], None]) -> None:
        self.observer.schedule(ConfigNotes(file, changed), str(file.resolve().parent),
                               recursive=False)

    def store(self, notes: StoreNotes) -> None:
        notes.root.mkdir(parents=True, exist_ok=True)
        self.observer.schedule(notes, str(notes.root), recursive=True)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
