"""The store: atomic commits, collisions, quarantine, and paths that cannot leave the root."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest

from mirror.errors import CollisionError, StoreError, UnsafePathError
from mirror.store.files import QUARANTINE, Store

REL = PurePosixPath("HARPS/spectrum/ADP.2014-09-25T03_38_28.268.fits")


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def write_temp(store: Store, rel: PurePosixPath, data: bytes, key: str | None = None) -> Path:
    """What a downloader does before commit: write the temp file the store names."""
    temp = store.temp_path(rel, key)
    temp.write_bytes(data)
    return temp


def test_put_then_read_back(store: Store) -> None:
    path = store.put(REL, b"product bytes")
    assert path == store.root / REL and path.read_bytes() == b"product bytes"
    assert store.exists(REL) and store.size(REL) == 13
    assert store.sha256(REL) == hashlib.sha256(b"product bytes").hexdigest()
    with store.open(REL) as f:
        assert f.read() == b"product bytes"
    assert list(store.walk()) == [REL]


def test_temp_file_sits_in_the_target_folder_and_is_deterministic(store: Store) -> None:
    temp = store.temp_path(REL)
    assert temp.parent == store.root / REL.parent and temp.parent.is_dir()
    assert temp.name == f".{REL.name}.part"
    assert Store(store.root).temp_path(REL) == temp  # after a restart: resume the same file
    keyed = store.temp_path(REL, "ivo://a/b?1")
    assert keyed != temp and keyed == store.temp_path(REL, "ivo://a/b?1")
    assert keyed != store.temp_path(REL, "ivo://a/b?2") and keyed.name.endswith(".part")


def test_a_crash_before_commit_leaves_only_a_partial(store: Store) -> None:
    temp = write_temp(store, REL, b"half a prod")  # ... and then kill -9
    assert list(store.walk()) == [] and not store.exists(REL)
    assert list(store.partials()) == [temp]
    with temp.open("ab") as f:  # resume where it stopped
        f.write(b"uct")
    assert store.commit(temp, REL) == str(store.root / REL)
    assert list(store.walk()) == [REL] and list(store.partials()) == []
    assert store.root.joinpath(REL).read_bytes() == b"half a product"


def test_a_different_file_at_the_target_is_a_collision(store: Store) -> None:
    store.put(REL, b"first product")
    temp = write_temp(store, REL, b"another product")
    with pytest.raises(CollisionError) as err:
        store.commit(temp, REL)
    assert err.value.existing == hashlib.sha256(b"first product").hexdigest()
    assert err.value.incoming == hashlib.sha256(b"another product").hexdigest()
    assert store.root.joinpath(REL).read_bytes() == b"first product"
    assert temp.read_bytes() == b"another product"  # kept for the caller to decide


def test_the_same_file_again_is_not_a_collision(store: Store) -> None:
    store.put(REL, b"same bytes")
    temp = write_temp(store, REL, b"same bytes")
    store.commit(temp, REL, sha256=hashlib.sha256(b"same bytes").hexdigest())
    assert not temp.exists() and list(store.walk()) == [REL]


def test_replace_overwrites_on_request(store: Store) -> None:
    store.put(REL, b"old")
    store.put(REL, b"new", replace=True)
    assert store.root.joinpath(REL).read_bytes() == b"new" and list(store.partials()) == []


def test_collisions_are_caught_without_hard_links(store: Store,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store.put(REL, b"one")
    assert store.root.joinpath(REL).read_bytes() == b"one"
    with pytest.raises(CollisionError):
        store.put(REL, b"two")
    store.put(REL, b"one")
    assert store.root.joinpath(REL).read_bytes() == b"one"


def test_a_missing_temp_file_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError) as err:
        store.commit(store.root / "nowhere.part", REL)
    assert not isinstance(err.value, CollisionError) and err.value.path


@pytest.mark.parametrize("rel", [
    "../x", "a/../../x", "/etc/passwd", "", ".", "./", f"{QUARANTINE}/x", "a/.x.fits.part",
    "a\\..\\b", "a\nb", "a\x00b", "..",
])
def test_resolve_refuses_paths_that_are_not_products(store: Store, rel: str) -> None:
    with pytest.raises(UnsafePathError):
        store.resolve(rel)


def test_symbolic_links_cannot_lead_out(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "evil").symlink_to(outside)
    (store.root / "loop").symlink_to(store.root)
    (store.root / "file.fits").symlink_to(outside / "secret")
    (store.root / "cycle").symlink_to(store.root / "cycle")
    for rel in ("evil/x.fits", "evil", "loop", "file.fits", "cycle/x.fits"):
        with pytest.raises(UnsafePathError):
            store.resolve(rel)
    with pytest.raises(UnsafePathError):
        store.put("evil/x.fits", b"data")
    assert list(outside.iterdir()) == []
    (store.root / "inner").mkdir()
    (store.root / "alias").symlink_to(store.root / "inner")
    assert store.resolve("alias/x.fits") == store.root / "alias/x.fits"  # inside: allowed


def test_quarantine_moves_the_file_and_says_why(store: Store) -> None:
    store.put(REL, b"bad")
    dest = store.quarantine(REL, "checksum: astropy says no")
    assert not store.exists(REL) and list(store.walk()) == []
    assert dest.read_bytes() == b"bad"
    assert dest.relative_to(store.root).parts[0] == QUARANTINE
    assert dest.relative_to(store.root).parts[2:] == REL.parts
    note = dest.with_name(dest.name + ".reason").read_text()
    assert note.startswith("checksum: astropy says no") and str(REL) in note


def test_quarantine_takes_a_rejected_temp_file(store: Store) -> None:
    temp = write_temp(store, REL, b"<html>login</html>")
    dest = store.quarantine(REL, "html", source=temp)
    assert not temp.exists() and dest.read_bytes() == b"<html>login</html>"
    assert list(store.partials()) == [] and list(store.walk()) == []


def test_walk_lists_products_only_in_order(store: Store) -> None:
    for rel in ("b/2.fits", "a/1.fits", "b/1.fits"):
        store.put(rel, rel.encode())
    write_temp(store, PurePosixPath("a/3.fits"), b"partial")
    store.quarantine("b/2.fits", "test")
    (store.root / "a" / "link.fits").symlink_to(store.root / "a" / "1.fits")
    assert [str(p) for p in store.walk()] == ["a/1.fits", "b/1.fits"]
    assert [p.name for p in store.partials()] == [".3.fits.part"]


def test_verify_delegates_to_the_content_checks(store: Store) -> None:
    store.put(REL, b"<!DOCTYPE html><html>")
    verdict = store.verify(REL, access_format="application/fits")
    assert not verdict.ok and verdict.kind == "html" and verdict.size == 21
