"""Is a downloaded file the product, and whole? Checked before the file enters the store.

Archives answer a failed or unauthorised request with a friendly HTML page and status 200, cut
connections short, and serve stale caches: the size, the first bytes and, for FITS, the file's
own CHECKSUM/DATASUM keywords are what tell a product from a look-alike.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import StoreError
from mirror.store import fitscheck

CHUNK = 1 << 20  # 1 MiB: streaming reads, bounded memory
FITS_BLOCK = 2880
KINDS = ("fits", "html", "truncated", "size-mismatch", "corrupt", "checksum", "other")
READ_DATA_BELOW = 32 << 20  # decode HDU data (and decompress tiles) only for files this small
MAP_ABOVE = 32 << 20  # the fast check reads smaller files whole and memory-maps bigger ones

_SNIFF = 2048
_FITS_MAGIC = b"SIMPLE  ="
_COMPRESSED = (b"\x1f\x8b", b"BZh")  # gzip, bzip2: astropy opens both transparently
_HTML_STARTS = ("<!doctype html", "<html", "<head", "<body", "<title")
_NOT_WHOLE = ("Error validating header for HDU", "Unexpected extra padding")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: `kind` is what the file is (ok) or what is wrong with it."""

    ok: bool
    kind: str  # one of KINDS
    reason: str
    size: int
    sha256: str


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so any size fits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path | str, *, expected_size: int | None = None,
                content_type: str | None = None, access_format: str | None = None,
                sha256: str | None = None, size: int | None = None,
                head: bytes | None = None) -> Verdict:
    """Check a downloaded file against what was promised; pass `sha256`, and `size` with
    `head` (its first bytes), if already known: the file is then opened only where those do
    not settle the question (FITS, or first bytes that might begin a page).

    `expected_size` is an exact byte count (Content-Length, DataLink content_length), never
    ObsCore's access_estsize, which is an estimate in KiB.
    """
    try:
        if size is None or head is None or not _settles(head, size):
            size, head = _size_and_head(path)
        digest = sha256 or sha256_file(path)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}", path=str(path),
                         hint="check that the file exists and is readable") from exc

    def verdict(ok: bool, kind: str, reason: str) -> Verdict:
        return Verdict(ok, kind, reason, size, digest)

    promised = (access_format or content_type or "").lower()
    html_expected, fits_expected = "html" in promised, "fits" in promised
    page = _page_instead_of_data(head, content_type, html_expected, fits_expected)
    if page:
        return verdict(False, "html", page)
    if expected_size is not None and size != expected_size:
        return verdict(False, "size-mismatch",
                       f"got {size} bytes but the server announced {expected_size}")
    if size == 0:
        return verdict(False, "truncated", "the file is empty")
    if html_expected:
        return verdict(True, "html", f"an HTML page of {size} bytes, as announced")
    if fits_expected or head.startswith(_FITS_MAGIC):
        ok, kind, reason = _check_fits(Path(path), size, head)
        return verdict(ok, kind, reason)
    return verdict(True, "other", f"{size} bytes of {promised or 'unannounced format'}")


def _size_and_head(path: Path | str) -> tuple[int, bytes]:
    """Size and first bytes from one open file (no buffered file object: this runs per
    product, thousands of times a second)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.fstat(fd).st_size, os.read(fd, _SNIFF)
    finally:
        os.close(fd)


def _text(head: bytes) -> str:
    """The first bytes as text, byte-order marks and leading blanks dropped."""
    return head.decode("latin-1").lstrip("\ufeff\xef\xbb\xbf \t\r\n")


def _settles(head: bytes, size: int) -> bool:
    """Whether `head` tells a page from data as well as the first `_SNIFF` bytes would: it
    is all of them, or neither begins with markup nor is mostly blank (see below)."""
    if len(head) >= min(size, _SNIFF):
        return True
    text = _text(head)
    return len(text) >= 16 and not text.startswith("<")


def _page_instead_of_data(head: bytes, content_type: str | None, html_expected: bool,
                          fits_expected: bool) -> str | None:
    """Why `head` looks like an HTML/XML page where data was due, or None."""
    if html_expected:
        return None
    text = _text(head)
    start = text[:16].lower()  # all 2 KB lower-cased for every product cost more than the rest
    looks_html = start.startswith(_HTML_STARTS) or (start.startswith("<") and "<html" in
                                                     text.lower())
    if looks_html:
        return f"the server sent an HTML page (login or error page?) instead of data{_title(head)}"
    typed = (content_type or "").split(";")[0].strip().lower()
    if typed in ("text/html", "application/xhtml+xml") and not _is_fits_or_packed(head):
        return f"the server labelled its answer {typed} (login or error page?) instead of data"
    if fits_expected and start.startswith("<"):
        return ("the server sent an XML document (an error message?) where FITS was due"
                f"{_title(head)}")
    return None


def _title(head: bytes) -> str:
    """The page's title for a message; only looked for once a page is found (decoding and
    searching every product's first bytes cost more than the rest of the check)."""
    title = _TITLE.search(head.decode("utf-8", "replace"))
    return f" (its title: {' '.join(title.group(1).split())[:80]!r})" if title else ""


def _is_fits_or_packed(head: bytes) -> bool:
    return head.startswith(_FITS_MAGIC) or head.startswith(_COMPRESSED)


def _check_fits(path: Path, size: int, head: bytes) -> tuple[bool, str, str]:
    """Check the HDU structure and CHECKSUM/DATASUM: fast from the bytes, else with astropy.

    Structural faults (cut-off HDUs, bytes after the last one) are named by astropy, as they
    always were, so their kind does not change; should astropy pass such a file, the fast
    check's finding stands.
    """
    packed = head.startswith(_COMPRESSED)
    if not _is_fits_or_packed(head):
        return False, "corrupt", "not a FITS file: it does not start with 'SIMPLE  ='"
    if not packed and size % FITS_BLOCK:
        return False, "truncated", (f"{size} bytes is not a whole number of "
                                    f"{FITS_BLOCK}-byte FITS blocks")
    found = None if packed else _check_fits_fast(path, size)
    if found is not None and found.kind in ("fits", "checksum"):
        return found.ok, found.kind, found.reason
    ok, kind, reason = _check_fits_astropy(path, size, packed)
    if ok and found is not None:
        return False, found.kind, found.reason
    return ok, kind, reason


def _check_fits_fast(path: Path, size: int) -> fitscheck.FitsCheck | None:
    """The bytes-only check (see fitscheck); None where only astropy can judge the file."""
    try:
        with open(path, "rb") as f:
            if size <= MAP_ABOVE:
                return fitscheck.check_fits(f.read())
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return fitscheck.check_fits(mapped)
    except (OSError, ValueError, BufferError):  # unreadable or unmappable: astropy will say
        return None


def _check_fits_astropy(path: Path, size: int, packed: bool) -> tuple[bool, str, str]:
    """Open every HDU with astropy, verifying CHECKSUM/DATASUM where the file has them."""
    from astropy.io import fits  # import here: slow, and only FITS needs it

    failure: Exception | None = None
    hdus, summed = 0, False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # memmap keeps big files out of memory; checksums are still computed in full
            with fits.open(path, memmap=size > READ_DATA_BELOW and not packed,
                           checksum=True) as hdul:
                for hdu in hdul:
                    hdus += 1
                    summed = summed or "CHECKSUM" in hdu.header or "DATASUM" in hdu.header
                    if size <= READ_DATA_BELOW:
                        _ = hdu.data  # decodes tile-compressed images, catching bad tiles
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError, ...
            failure = exc
    notes = [" ".join(str(w.message).split()) for w in caught]
    cut = [n for n in notes if "truncated" in n.lower()]
    sums = [n for n in notes if "sum verification failed" in n.lower()]
    # astropy only warns where it stops at an HDU it cannot read (a cut-off or broken last
    # HDU) or skips zero blocks after the last one: neither is a whole product
    dropped = [n for n in notes if n.startswith(_NOT_WHOLE)]
    if cut:
        return False, "truncated", f"astropy: {cut[0]}"
    if failure is not None:
        return False, "corrupt", f"astropy cannot read it: {type(failure).__name__}: {failure}"
    if sums:
        return False, "checksum", f"astropy: {'; '.join(sums)}"
    if dropped:
        return False, "corrupt", f"astropy: {dropped[0]}"
    if hdus == 0:
        return False, "corrupt", "a FITS file without any HDU"
    proof = "CHECKSUM/DATASUM verified" if summed else "no CHECKSUM/DATASUM to verify"
    return True, "fits", f"FITS with {hdus} HDU{'s' if hdus > 1 else ''}, {proof}"
