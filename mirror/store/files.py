"""Product files in a folder: written once and atomically, never outside the root.

A file is downloaded to a temp file in its target folder, fsynced, renamed into place and the
folder fsynced (as restic and rclone do), so a kill -9 at any instant leaves either no product
or a complete one. Names starting with '.' are the store's own (temp files, `.quarantine`):
products never start with '.', so the two can never meet.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from mirror.errors import CollisionError, StoreError, UnsafePathError
from mirror.store.verify import CHUNK, Verdict, sha256_file, verify_file

QUARANTINE = ".quarantine"
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters and backslash
# relative, normal ('/'-separated, no empty parts) and every name safe (no leading '.', no
# control character or backslash): such a path needs no parse to be checked (4 us a file)
_NAME = r"[^./\x00-\x1f\x7f\\][^/\x00-\x1f\x7f\\]*"
_PLAIN = re.compile(f"{_NAME}(?:/{_NAME})*")
PART = ".part"


RESOLVED_CACHE = 8192  # paths remembered as safe; bounded for stores of millions of files


class Store:
    """A folder of products addressed by relative POSIX paths (as `layout.render` makes)."""

    def __init__(self, root: Path | str) -> None:
        with _os_errors("create the store folder", root):
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(root).resolve()
        self._prefix = str(self.root).rstrip("/") + "/"
        self._checked: set[str] = set()  # folders (relative) already resolved inside the root
        self._made: set[str] = set()  # folders known to exist
        self._resolved: dict[str, str] = {}

    def resolve(self, rel: PurePosixPath | str) -> Path:
        """The absolute path of `rel`; raises UnsafePathError if it would leave the root."""
        return Path(self._locate(rel if isinstance(rel, str) else str(rel)))

    def locate(self, rel: str, key: str | None = None) -> tuple[str, str]:
        """`resolve` and `temp_path` as text, for loops over thousands of products (a fetch
        asks for both per file: path objects cost more than the checks)."""
        target = self._locate(rel)
        folder, _, name = target.rpartition("/")
        if folder not in self._made:
            self._make_folders(Path(folder))
        return target, f"{folder}/.{name}{_tag(key)}{PART}"

    def _locate(self, key: str) -> str:
        hit = self._resolved.get(key)
        if hit is not None:  # checked earlier in this run (a fetch asks 3 times per file)
            return hit
        if _PLAIN.fullmatch(key):  # what layout.render makes: safe and normal as it is
            norm = key
        else:
            rel = PurePosixPath(key)
            bad = _unsafe_reason(rel)
            if bad:
                raise UnsafePathError(f"refusing store path {key!r}: {bad}", path=key,
                                      hint="store paths come from layout.render; report this name")
            norm = str(rel)
        target = self._prefix + norm
        # Resolving every component costs a syscall each; a folder once found inside the
        # root is remembered, so per file only the last component needs a look.
        parent = norm.rpartition("/")[0]
        if parent not in self._checked or os.path.islink(target):
            self._check_inside(Path(target), PurePosixPath(norm))
            self._checked.add(parent)
        if len(self._resolved) >= RESOLVED_CACHE:
            self._resolved.clear()
        self._resolved[key] = target
        return target

    def _check_inside(self, target: Path, rel: PurePosixPath) -> None:
        try:
            real = target.resolve()  # follows symlinks anywhere along the way
        except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
            raise UnsafePathError(f"store path {str(rel)!r} cannot be resolved: {exc}",
                                  path=str(rel)) from exc
        if real == self.root or not real.is_relative_to(self.root):
            raise UnsafePathError(f"store path {str(rel)!r} leads outside the store "
                                  f"(to {real}) through a symbolic link", path=str(rel),
                                  hint=f"remove the symbolic link under {self.root}")

    def temp_path(self, rel: PurePosixPath | str, key: str | None = None) -> Path:
        """The temp file for `rel`, in its folder (created); the same name again after a crash,
        so a download can resume with HTTP Range. `key` (e.g. the publisher DID) keeps two
        products that render to one path from sharing a temp file."""
        return Path(self.locate(rel if isinstance(rel, str) else str(rel), key)[1])

    def commit(self, temp: Path | str, rel: PurePosixPath | str, *, replace: bool = False,
               synced: bool = False, sha256: str | None = None,
               folders: set[str] | None = None) -> str:
        """Move a finished temp file into place atomically; returns the product's path (text).

        An identical file already there is kept (the temp is removed); a different one raises
        CollisionError unless `replace`. Pass `synced=True` if the writer fsynced already, and
        `sha256` if it hashed the temp already. With `folders`, the folder fsync is left to a
        later `sync_folders(folders)` (one fsync per folder per batch instead of per file): the
        caller must call it before it records the file as stored.
        """
        target = self._locate(rel if isinstance(rel, str) else str(rel))
        try:  # not `_os_errors`: a context manager per file costs more than the rename
            if not synced:
                _fsync_file(temp)
            if replace:
                os.replace(temp, target)
            elif not self._link_no_clobber(temp, target, sha256):
                return target  # the same bytes were there already
            folder = target.rpartition("/")[0]
            if folders is None:
                _fsync_folder(folder)
            else:
                folders.add(folder)
        except OSError as exc:
            raise _store_error("store", target, exc) from exc
        return target

    def sync_folders(self, folders: set[str]) -> None:
        """Make the renames into `folders` durable, then forget them."""
        for folder in sorted(folders):
            with _os_errors("store", folder):
                _fsync_folder(folder)
        folders.clear()

    def put(self, rel: PurePosixPath | str, data: bytes | BinaryIO, *,
            replace: bool = False) -> Path:
        """Store bytes or a readable stream under `rel` (temp file, fsync, rename)."""
        temp = self.temp_path(rel)
        with _os_errors("write", temp), open(temp, "wb") as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                shutil.copyfileobj(data, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        return Path(self.commit(temp, rel, replace=replace, synced=True))

    def open(self, rel: PurePosixPath | str) -> BinaryIO:
        """The stored product, open for reading."""
        path = self.resolve(rel)
        with _os_errors("open", path):
            return open(path, "rb")

    def exists(self, rel: PurePosixPath | str) -> bool:
        """Whether a product is stored under `rel`."""
        return self.resolve(rel).is_file()

    def size(self, rel: PurePosixPath | str) -> int:
        """Size in bytes of a stored product."""
        path = self.resolve(rel)
        with _os_errors("read", path):
            return path.stat().st_size

    def sha256(self, rel: PurePosixPath | str) -> str:
        """Hex sha256 of a stored product, streamed."""
        path = self.resolve(rel)
        with _os_errors("read", path):
            return sha256_file(path)

    def verify(self, rel: PurePosixPath | str, *, expected_size: int | None = None,
               content_type: str | None = None, access_format: str | None = None) -> Verdict:
        """Re-check a stored product, e.g. after a disk error or to audit the store."""
        return verify_file(self.resolve(rel), expected_size=expected_size,
                           content_type=content_type, access_format=access_format)

    def quarantine(self, rel: PurePosixPath | str, reason: str, *,
                   source: Path | None = None) -> Path:
        """Move a bad file (the product at `rel`, or `source`, e.g. a rejected temp file) to
        `.quarantine/<UTC time>/<rel>` with a `.reason` file beside it; returns its new path."""
        rel = PurePosixPath(rel)
        target = self.resolve(rel)  # the quarantine path reuses rel: as safe as a product's
        src = source if source is not None else target
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        folder = self.root / QUARANTINE / stamp
        dest = folder.joinpath(*rel.parts)
        with _os_errors("quarantine", src):
            self._make_folders(dest.parent)
            shutil.move(src, dest)
            note = dest.with_name(dest.name + ".reason")
            note.write_text(f"{reason}\nfrom: {rel}\nat: {stamp}\n", encoding="utf-8")
            _fsync_folder(dest.parent)
            _fsync_folder(src.parent)
        return dest

    def walk(self) -> Iterator[PurePosixPath]:
        """Every stored product, sorted; temp files and the quarantine are not products."""
        for path in self._files():
            if not path.name.startswith("."):
                yield PurePosixPath(path.relative_to(self.root).as_posix())

    def partials(self) -> Iterator[Path]:
        """Temp files left by interrupted downloads (to resume or clean up)."""
        for path in self._files():
            if path.name.startswith(".") and path.name.endswith(PART):
                yield path

    def _files(self) -> Iterator[Path]:
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder, name)
                if not path.is_symlink():
                    yield path

    def _link_no_clobber(self, temp: Path | str, target: str, sha256: str | None) -> bool:
        """Put temp at target unless a file is there; False if that file has the same bytes."""
        try:
            os.link(temp, target)  # atomic and never overwrites, even against another worker
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.EMLINK):
                raise
            if not os.path.exists(target):  # no hard links (some FUSE, SMB): check, then rename
                os.replace(temp, target)
                return True
        else:
            os.unlink(temp)
            return True
        incoming = sha256 or sha256_file(temp)
        existing = sha256_file(target)
        if existing != incoming:
            raise CollisionError(
                f"a different file is already stored at {target} (sha256 {existing[:12]}..., "
                f"new {incoming[:12]}...); the new file stays at {temp}", path=str(target),
                existing=existing, incoming=incoming,
                hint="two products render to one path: add a distinguishing field to the "
                     "layout template, or quarantine the old file")
        os.unlink(temp)
        return False

    def _make_folders(self, folder: Path) -> None:
        """mkdir -p, fsyncing each new folder's parent so the folder survives a crash."""
        if str(folder) in self._made:
            return
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        with _os_errors("create folder", folder):
            for new in reversed(missing):
                new.mkdir(exist_ok=True)
                _fsync_folder(new.parent)
        self._made.add(str(folder if not missing else missing[0]))


def _tag(key: str | None) -> str:
    """A temp file's mark of the product it belongs to (see `temp_path`)."""
    if not key:
        return ""
    return "." + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _unsafe_reason(rel: PurePosixPath) -> str | None:
    if not rel.parts or rel.is_absolute():
        return "not a relative path"
    for part in rel.parts:
        if part in (".", ".."):
            return "it has a '.' or '..' component"
        if part.startswith("."):
            return "names starting with '.' belong to the store itself"
        if _BAD_CHAR.search(part):
            return "it has a backslash or a control character"
    return None


def _fsync_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path | str) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a folder; the rename still stands
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextmanager
def _os_errors(action: str, path: Path | str) -> Iterator[None]:
    """OSError -> StoreError: disk full and permissions are permanent, never worth a retry."""
    try:
        yield
    except OSError as exc:
        raise _store_error(action, path, exc) from exc


def _store_error(action: str, path: Path | str, exc: OSError) -> StoreError:
    hint = {errno.ENOSPC: "free disk space, then run the fetch again",
            errno.EDQUOT: "the disk quota is exhausted: free space or raise the quota",
            errno.EACCES: "check the permissions of the store folder",
            errno.EROFS: "the store is on a read-only file system"}.get(exc.errno or 0)
    return StoreError(f"cannot {action} {path}: {exc.strerror or exc}", hint=hint,
                      path=str(path))
