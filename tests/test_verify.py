"""Content checks: HTML pages, short files and broken FITS never pass as products."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from mirror.errors import StoreError
from mirror.store import verify
from mirror.store.verify import FITS_BLOCK, verify_file

FITS = "application/fits"


def make_fits(path: Path, checksum: bool = True) -> Path:
    """A small multi-extension FITS file: an image, another image and a table."""
    image = np.arange(100 * 100, dtype="float32").reshape(100, 100)
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E",
                                                       array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(image), fits.ImageHDU(image * 2, name="SCI"), table]) \
        .writeto(path, checksum=checksum)
    return path


def flip(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    return make_fits(tmp_path / "good.fits")


def test_a_good_fits_file_passes_with_checksums(good: Path) -> None:
    v = verify_file(good, expected_size=good.stat().st_size, access_format=FITS)
    assert v.ok and v.kind == "fits" and "3 HDUs" in v.reason and "verified" in v.reason
    assert v.size == good.stat().st_size
    assert v.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()


def test_fits_without_checksums_passes_and_says_so(tmp_path: Path) -> None:
    v = verify_file(make_fits(tmp_path / "n.fits", checksum=False), access_format="image/fits")
    assert v.ok and v.kind == "fits" and "no CHECKSUM" in v.reason


def test_a_flipped_data_byte_fails_the_checksum(good: Path) -> None:
    v = verify_file(flip(good, 2 * FITS_BLOCK + 100), access_format=FITS)
    assert not v.ok and v.kind == "checksum" and "Datasum" in v.reason


def test_an_edited_header_fails_the_checksum(good: Path) -> None:
    data = good.read_bytes()
    at = data.index(b"array data type")  # a comment: the header still parses
    good.write_bytes(data[:at] + b"b" + data[at + 1:])
    v = verify_file(good, access_format=None)  # found to be FITS by its SIMPLE magic alone
    assert not v.ok and v.kind == "checksum" and "Checksum" in v.reason


def test_checksums_are_checked_on_the_memory_mapped_path_too(
        good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "READ_DATA_BELOW", 0)  # as if the file were big
    assert verify_file(good, access_format=FITS).ok
    assert verify_file(flip(good, 3 * FITS_BLOCK + 7), access_format=FITS).kind == "checksum"


def test_a_cut_off_fits_file_is_truncated(good: Path) -> None:
    good.write_bytes(good.read_bytes()[:5 * FITS_BLOCK + 7])
    v = verify_file(good, access_format=FITS)
    assert not v.ok and v.kind == "truncated" and "2880" in v.reason


def test_a_fits_file_cut_at_a_block_boundary_is_caught(tmp_path: Path) -> None:
    plain = make_fits(tmp_path / "plain.fits", checksum=False)
    plain.write_bytes(plain.read_bytes()[:5 * FITS_BLOCK])
    v = verify_file(plain, access_format=FITS)
    assert not v.ok and v.kind == "truncated" and "truncated" in v.reason
    summed = make_fits(tmp_path / "summed.fits")
    summed.write_bytes(summed.read_bytes()[:5 * FITS_BLOCK])
    v = verify_file(summed, access_format=FITS)
    assert not v.ok and v.kind == "corrupt"


def test_gzipped_fits_is_opened_and_checked(tmp_path: Path, good: Path) -> None:
    packed = tmp_path / "good.fits.gz"
    packed.write_bytes(gzip.compress(good.read_bytes()))
    assert verify_file(packed, access_format=FITS).kind == "fits"
    bad = tmp_path / "bad.fits.gz"
    bad.write_bytes(gzip.compress(flip(good, 2 * FITS_BLOCK + 5).read_bytes()))
    assert verify_file(bad, access_format=FITS).kind == "checksum"
    bad.write_bytes(gzip.compress(good.read_bytes())[:3000])
    assert verify_file(bad, access_format=FITS).kind == "corrupt"


def test_tile_compressed_fits_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "c.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.ones((64, 64), "int16"))]) \
        .writeto(path, checksum=True)
    assert verify_file(path, access_format=FITS).kind == "fits"


def test_a_wrong_size_is_a_size_mismatch(good: Path) -> None:
    v = verify_file(good, expected_size=good.stat().st_size + 1, access_format=FITS)
    assert not v.ok and v.kind == "size-mismatch" and str(good.stat().st_size) in v.reason


@pytest.mark.parametrize("page", [
    b"<!DOCTYPE html>\n<html><head><title>ESO  Login</title></head></html>",
    b"\xef\xbb\xbf  \n<html><body>Error 500</body></html>",
    b'<?xml version="1.0"?>\n<!DOCTYPE html PUBLIC "x"><html xmlns="x"><title>Sign in',
    b"<HEAD><TITLE>Moved</TITLE></HEAD>",
])
def test_an_html_page_is_not_data(tmp_path: Path, page: bytes) -> None:
    path = tmp_path / "p"
    path.write_bytes(page)
    for fmt in (FITS, "image/jpeg", "application/x-votable+xml;content=datalink"):
        v = verify_file(path, expected_size=len(page) + 1000, access_format=fmt)
        assert not v.ok and v.kind == "html" and "HTML page" in v.reason
    if b"ESO" in page:  # the page's title helps the user see what happened
        assert "'ESO Login'" in verify_file(path, access_format=FITS).reason


def test_an_xml_error_document_is_not_fits(tmp_path: Path) -> None:
    path = tmp_path / "err.xml"
    path.write_bytes(b'<?xml version="1.0"?><VOTABLE><INFO name="QUERY_STATUS" '
                     b'value="ERROR">no such file</INFO></VOTABLE>')
    v = verify_file(path, access_format=FITS)
    assert not v.ok and v.kind == "html" and "XML" in v.reason
    assert verify_file(path, access_format="application/x-votable+xml").kind == "other"


def test_content_type_text_html_betrays_a_page(tmp_path: Path, good: Path) -> None:
    path = tmp_path / "p.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg but not markup either")
    v = verify_file(path, content_type="text/html; charset=utf-8", access_format="image/jpeg")
    assert not v.ok and v.kind == "html"
    # some servers label everything text/html: FITS bytes still speak for themselves
    assert verify_file(good, content_type="text/html", access_format=FITS).kind == "fits"


def test_html_is_fine_when_html_was_announced(tmp_path: Path) -> None:
    path = tmp_path / "p.html"
    path.write_bytes(b"<!DOCTYPE html><html></html>")
    v = verify_file(path, content_type="text/html", access_format="text/html")
    assert v.ok and v.kind == "html"


def test_other_formats_pass_after_size_and_page_checks(tmp_path: Path) -> None:
    jpeg = tmp_path / "preview.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(500))
    v = verify_file(jpeg, expected_size=504, content_type="image/jpeg", access_format="image/jpeg")
    assert v.ok and v.kind == "other" and v.size == 504
    assert verify_file(jpeg, expected_size=600, access_format="image/jpeg").kind \
        == "size-mismatch"


def test_fits_promised_but_not_delivered_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "x.fits"
    path.write_bytes(b'{"error": "no such product"}' + bytes(2852))
    v = verify_file(path, access_format=FITS)
    assert not v.ok and v.kind == "corrupt" and "SIMPLE" in v.reason


def test_an_empty_file_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert verify_file(path, access_format="image/jpeg").kind == "truncated"


def test_a_given_sha256_is_trusted_not_recomputed(good: Path) -> None:
    assert verify_file(good, access_format=FITS, sha256="feed").sha256 == "feed"


def test_a_missing_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        verify_file(tmp_path / "absent.fits", access_format=FITS)


PAGE_AFTER_BLANKS = b" " * 40 + b"\n" * 30 + b"<html><title>Session expired</title></html>"


@pytest.mark.parametrize("body", [
    PAGE_AFTER_BLANKS,  # the first 64 bytes are blank: they settle nothing
    b"<?xml version='1.0'?>" + b" " * 60 + b"<html><title>Sign in</title></html>",
    b"\xff\xd8\xff\xe0" + bytes(5000),  # data: the first bytes suffice
    b"SIMPLE  = not really FITS" + bytes(2855),
])
def test_known_first_bytes_give_the_verdict_reading_the_file_gives(tmp_path: Path,
                                                                   body: bytes) -> None:
    """The fetcher passes the size and first 64 bytes its sealer read back; where those
    cannot settle page-or-data, the file is read as if nothing were known."""
    path = tmp_path / "f"
    path.write_bytes(body)
    for fmt in (FITS, "image/jpeg"):
        read = verify_file(path, access_format=fmt, sha256="x")
        known = verify_file(path, access_format=fmt, sha256="x", size=len(body),
                            head=body[:64])
        assert known == read


def test_known_first_bytes_spare_the_read_only_when_they_settle(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"\xff\xd8\xff\xe0" + bytes(5000))
    gone = tmp_path / "gone.bin"  # never written: opening it would fail
    v = verify_file(gone, access_format="image/jpeg", sha256="x", size=5004,
                    head=data.read_bytes()[:64])
    assert v.ok and v.kind == "other" and v.size == 5004
    with pytest.raises(StoreError):  # blank first bytes: the file must be read
        verify_file(gone, access_format="image/jpeg", sha256="x",
                    size=len(PAGE_AFTER_BLANKS), head=PAGE_AFTER_BLANKS[:64])
