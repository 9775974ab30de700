"""The fast FITS check gives astropy's verdict: on clean, cut, padded and edited files alike."""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from mirror.store import fitscheck, verify
from mirror.store.verify import FITS_BLOCK, Verdict, verify_file

FITS = "application/fits"
DATA = Path(__file__).parent / "data"
REAL = {"harps_spectrum": DATA / "harps_spectrum.fits", "vhs_image": DATA / "vhs_image.fits"}
UPSTREAM = Path("/var/gavo/inputs/sdp/data")  # the DaCHS upstream's products, where it runs
# Left to astropy on purpose: ASCII tables, and binary tables without sums (astropy's reading
# of their column cards is then the only check they get)
UNMODELLED = {"ascii_table", "spectrum_nosum", "vla_nosum", "columns_nosum", "tiles_nosum"}


def encode(hdus: list[fits.hdu.base._BaseHDU], checksum: bool | str = True) -> bytes:
    out = io.BytesIO()
    fits.HDUList(hdus).writeto(out, checksum=checksum)
    return out.getvalue()


def products() -> dict[str, Callable[[], bytes]]:
    """Small FITS files of every shape the fetcher meets, written by astropy."""
    rng = np.random.default_rng(7)
    image = rng.random((50, 60)).astype("float32")
    made: dict[str, Callable[[], bytes]] = {}
    for dtype in ("uint8", ">i2", ">i4", ">i8", ">f4", ">f8", "uint16"):  # every BITPIX, BZERO
        pixels = (rng.random((37, 53)) * 200).astype(dtype)
        made[f"image_{dtype.strip('>')}"] = partial(encode, [fits.PrimaryHDU(pixels)])
    made["cube"] = lambda: encode([fits.PrimaryHDU(image.reshape(3, 20, 50))])
    made["empty"] = lambda: encode([fits.PrimaryHDU()])
    made["extensions"] = lambda: encode([fits.PrimaryHDU(image), fits.ImageHDU(image, name="SCI"),
                                         fits.ImageHDU(image.astype(">i2"), name="DQ")])
    made["extensions_datasum"] = lambda: encode(
        [fits.PrimaryHDU(image), fits.ImageHDU(image, name="SCI")], checksum="datasum")
    made["extensions_nosum"] = lambda: encode([fits.PrimaryHDU(image), fits.ImageHDU(image)],
                                              checksum=False)
    wave, flux = np.linspace(3800.0, 6900.0, 1550), rng.random(1550).astype("float32")

    def spectrum(checksum: bool = True) -> bytes:  # an ESO SDP spectrum: one row of arrays
        primary = fits.PrimaryHDU()
        for i in range(40):
            primary.header[f"HIERARCH ESO DRS CCD SIG{i}"] = i * 1.5
        columns = [fits.Column(name="WAVE", format="1550D", unit="angstrom", array=[wave]),
                   fits.Column(name="FLUX", format="1550E", array=[flux]),
                   fits.Column(name="ERR", format="1550E", array=[flux / 10])]
        table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
        return encode([primary, table], checksum)

    def vla(checksum: bool = True) -> bytes:  # variable-length arrays: PCOUNT > 0, a heap
        rows = [rng.random(k) for k in range(1, 40)]
        columns = [fits.Column(name="P", format="PJ()", array=[np.arange(len(r)) for r in rows]),
                   fits.Column(name="Q", format="QD()", array=rows)]
        return encode([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)], checksum)

    def columns(checksum: bool = True) -> bytes:
        table = fits.BinTableHDU.from_columns([
            fits.Column(name="s", format="10A", array=["a", "bb"]),
            fits.Column(name="l", format="L", array=[True, False]),
            fits.Column(name="x", format="11X", array=np.zeros((2, 11), bool)),
            fits.Column(name="j", format="J", array=[1, 2])])
        return encode([fits.PrimaryHDU(), table], checksum)

    def tiles(checksum: bool = True) -> bytes:  # a tile-compressed image (ZIMAGE)
        pixels = (image * 1000).astype("int16")
        return encode([fits.PrimaryHDU(), fits.CompImageHDU(pixels)], checksum)

    for name, build in (("spectrum", spectrum), ("vla", vla), ("columns", columns),
                        ("tiles", tiles)):
        made[name] = build
        made[f"{name}_nosum"] = partial(build, False)

    def long_header() -> bytes:  # headers of many blocks, long strings (CONTINUE cards)
        primary = fits.PrimaryHDU(image[:10, :10])
        for i in range(700):
            primary.header[f"HIERARCH ESO QC VAL{i}"] = i
        primary.header["LONGSTR"] = "x" * 200
        return encode([primary, fits.ImageHDU(image)])

    made["long_header"] = long_header
    made["ascii_table"] = lambda: encode([fits.PrimaryHDU(), fits.TableHDU.from_columns(
        [fits.Column(name="a", format="I5", array=[1, 2])])])
    for name, path in REAL.items():
        made[name] = path.read_bytes
    return made


PRODUCTS = products()


def variants(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The file, then versions damaged as downloads and archives damage them."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    with fits.open(io.BytesIO(data)) as hdul:
        spans = [(h._header_offset, h._data_offset, h._data_offset + h._data_size) for h in hdul]
    yield "clean", data
    for i, (head, start, end) in enumerate(spans):
        if end > start:
            at = int(rng.integers(start, end))
            yield f"data{i}_xff", flip(data, at, 0xFF)
            yield f"data{i}_x01", flip(data, at, 0x01)
            yield f"padding{i}", flip(data, end - 1, 0x20)
        for k in range(3):  # any printable byte anywhere in the header, padding included
            at = int(rng.integers(head, start))
            yield f"header{i}_{k}", data[:at] + bytes([int(rng.integers(0x20, 0x7F))]) + \
                data[at + 1:]
        yield f"header{i}_xff", flip(data, int(rng.integers(head, start)), 0xFF)
        for word, value in (("NAXIS2", "7"), ("NAXIS1", "3"), ("BITPIX", "16"),
                            ("PCOUNT", "99999"), ("EXTNAME", "'OTHER'"), ("TFORM1", "'2E'"),
                            ("DATASUM", "'12'"), ("DATASUM", "'x1'"),
                            ("CHECKSUM", "'AAAAAAAAAAAAAAAA'"), ("END", None)):
            edited = edit(data, head, start, word, value)
            if edited is not None:
                yield f"edit{i}_{word}={value}", edited
        if i:
            yield f"cut_before{i}", data[:head]
        yield f"cut_header{i}", data[:head + FITS_BLOCK] if start - head > FITS_BLOCK \
            else data[:start]
        if end - start > FITS_BLOCK:
            yield f"cut_data{i}", data[:start + FITS_BLOCK]
    yield "cut_mid_block", data[:-1000]
    last_header = data[spans[-1][0]:spans[-1][1]]
    for junk, tail in (("zeros", bytes(FITS_BLOCK)), ("blanks", b" " * FITS_BLOCK),
                       ("random", rng.integers(0, 256, FITS_BLOCK, np.uint8).tobytes()),
                       ("header", last_header if len(spans) > 1 else b"XTENSION".ljust(2880))):
        yield f"junk_{junk}", data + tail


def flip(data: bytes, at: int, bits: int) -> bytes:
    return data[:at] + bytes([data[at] ^ bits]) + data[at + 1:]


def edit(data: bytes, head: int, start: int, word: str, value: str | None) -> bytes | None:
    """A header card changed in place (CHECKSUM left as it was), or None if there is none."""
    for at in range(head, start, 80):
        if data[at:at + 8].rstrip() == word.encode():
            field = "" if value is None else value.ljust(20) if value[0] == "'" \
                else value.rjust(20)
            card = ("ENX" if value is None else f"{word:8}= {field} / edited").ljust(80)
            return data[:at] + card.encode() + data[at + 80:]
    return None


def astropy_verdict(path: Path) -> Verdict:
    """What verify_file says with astropy reading every file, as it did before the fast path."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verify, "_check_fits_fast", lambda path, size: None)
        return verify_file(path, access_format=FITS)


def assert_same_verdict(case: str, ours: Verdict, theirs: Verdict) -> None:
    if ours.ok or theirs.ok:
        assert (ours.ok, ours.reason) == (theirs.ok, theirs.reason), case
    elif ours.kind != theirs.kind:
        # the one accepted difference: bytes that fail their sums and also break astropy's
        # decoding (tiles, heap, columns) are 'checksum' to us, 'corrupt' to astropy; both
        # are permanent failures, never retried
        assert (ours.kind, theirs.kind) == ("checksum", "corrupt"), (case, ours, theirs)
        assert theirs.reason.startswith("astropy cannot read it"), case


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_verdicts_match_astropy_on_clean_and_damaged_files(name: str, tmp_path: Path) -> None:
    settled = 0
    for case, data in variants(name, PRODUCTS[name]()):
        path = tmp_path / f"{case}.fits"
        path.write_bytes(data)
        fast = fitscheck.check_fits(data) if len(data) % FITS_BLOCK == 0 else None
        settled += fast is not None
        assert_same_verdict(f"{name}/{case}", verify_file(path, access_format=FITS),
                            astropy_verdict(path))
        if case == "clean":  # the fast path itself settles every file it models
            assert (fast is not None and fast.ok) is (name not in UNMODELLED), name
        if case.startswith("data") and name not in UNMODELLED and "nosum" not in name:
            assert fast is not None and fast.kind == "checksum", (name, case)
    assert settled > 0


def test_real_products_pass_the_fast_path_with_astropy_s_words(tmp_path: Path) -> None:
    paths = list(REAL.values())
    for folder in ("harps", "vhs"):  # a handful of the upstream's own, where it runs here
        paths += sorted((UPSTREAM / folder).glob("*.fits"))[:5] if UPSTREAM.is_dir() else []
    for path in paths:
        found = fitscheck.check_fits(path.read_bytes())
        assert found is not None and found.ok and found.summed, path
        assert verify_file(path, access_format=FITS) == astropy_verdict(path), path


def test_a_checksum_failure_names_the_hdu(tmp_path: Path) -> None:
    data = PRODUCTS["harps_spectrum"]()
    path = tmp_path / "bad.fits"
    path.write_bytes(flip(data, len(data) - FITS_BLOCK - 10, 0x01))
    v = verify_file(path, access_format=FITS)
    assert not v.ok and v.kind == "checksum"
    assert "Checksum verification failed for HDU 1 (SPECTRUM)" in v.reason
    assert "Datasum verification failed for HDU 1 (SPECTRUM)" in v.reason


def test_a_cut_off_last_hdu_is_caught_where_astropy_once_dropped_it(tmp_path: Path) -> None:
    data = PRODUCTS["spectrum"]()
    path = tmp_path / "cut.fits"
    path.write_bytes(data[:-FITS_BLOCK])  # cut at a block boundary inside the table's data
    assert fitscheck.check_fits(path.read_bytes()).kind == "truncated"  # type: ignore[union-attr]
    assert not verify_file(path, access_format=FITS).ok
    assert not astropy_verdict(path).ok  # astropy only warns: verify now reads the warning


def test_zero_blocks_after_the_last_hdu_are_not_a_product(tmp_path: Path) -> None:
    path = tmp_path / "padded.fits"
    path.write_bytes(PRODUCTS["image_f4"]() + bytes(2 * FITS_BLOCK))
    found = fitscheck.check_fits(path.read_bytes())
    assert found is not None and not found.ok and found.kind == "corrupt"
    assert found.reason == "5760 zero bytes after the last HDU (HDU 0) are not an HDU"
    v = verify_file(path, access_format=FITS)  # astropy names structural faults, as before
    assert not v.ok and v.kind == "corrupt" and "padding" in v.reason


def test_a_card_astropy_rewrites_does_not_fail_a_checksum_that_holds() -> None:
    """astropy re-serialises the header to check CHECKSUM, 'fixing' non-standard cards first
    (astropy#7043), so an intact file with, e.g., a lower-case exponent fails there; the
    convention sums the bytes as they are."""
    data = bytearray(PRODUCTS["image_f4"]())
    end = data.index(b"END" + b" " * 77)
    data[end:end + 160] = b"HIERARCH ESO DET CHIP PXSPACE = 2.000e-05 / Pixel-Pixel Spacing" \
        .ljust(80) + b"END".ljust(80)
    at = data.index(b"CHECKSUM= '") + 11
    data[at:at + 16] = b"0" * 16
    body = fitscheck.sum32(bytes(data), 0, FITS_BLOCK) + fitscheck.sum32(bytes(data), FITS_BLOCK)
    data[at:at + 16] = fitscheck.encode_checksum(~fitscheck._fold(body) & 0xFFFFFFFF)
    assert fitscheck.sum32(bytes(data)) == 0xFFFFFFFF  # intact, by the convention
    found = fitscheck.check_fits(bytes(data))
    assert found is not None and found.ok


@pytest.mark.parametrize("card", [
    b"GROUPS  =                    T",  # random groups
    b"CHECKSUM= 'AAAAAAAAAAAAAAAA'/no space before the slash",  # astropy rewrites the card
    b"naxis1  =                   53",  # astropy reads keywords in any case
    b"NAXIS1  =                   53",  # a repeated structural keyword
    b"BSCALE  = 'two'",
    b"END     = 'not quite the end'",
])
def test_cards_astropy_reads_its_own_way_are_left_to_it(card: bytes) -> None:
    data = bytearray(PRODUCTS["image_i2"]())
    end = data.index(b"END" + b" " * 77)
    data[end:end + 160] = card.ljust(80) + b"END".ljust(80)
    assert fitscheck.check_fits(bytes(data)) is None


def test_sums_and_encoding_match_astropy(monkeypatch: pytest.MonkeyPatch) -> None:
    hdu, rng = fits.PrimaryHDU(), np.random.default_rng(1)
    for value in [0, 1, 0xFFFFFFFF, 0x7F7F7F7F, *rng.integers(0, 2**32, 200).tolist()]:
        assert fitscheck.encode_checksum(value).decode() == hdu._char_encode(value)
    monkeypatch.setattr(fitscheck, "SUM_CHUNK", 4 * 7)  # many chunks, each folded exactly
    for size in (0, 4, 2880, 4 * 1001):
        data = rng.integers(0, 256, size, np.uint8).tobytes()
        assert fitscheck.sum32(data) == hdu._compute_checksum(np.frombuffer(data, np.uint8))
    assert fitscheck.check_fits(PRODUCTS["harps_spectrum"]()).ok  # type: ignore[union-attr]


def test_big_files_are_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "MAP_ABOVE", 0)
    path = tmp_path / "big.fits"
    path.write_bytes(PRODUCTS["extensions"]())
    assert verify_file(path, access_format=FITS).reason.endswith("CHECKSUM/DATASUM verified")
    path.write_bytes(flip(path.read_bytes(), 3 * FITS_BLOCK, 0x01))
    assert verify_file(path, access_format=FITS).kind == "checksum"
