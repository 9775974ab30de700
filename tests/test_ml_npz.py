"""The in-place .npz: valid zip (CRCs checked by zipfile), what numpy reads back, holes left
by rows that never came, and the CRC combination it rests on."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from mirror.ml.npz import NPY_HEADER, InPlaceNpz, crc32_combine, npy_header


@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 0), (17, 4096), (70_000, 3), (5, 1 << 20)])
def test_crc32_combine_equals_the_crc_of_the_concatenation(a: int, b: int) -> None:
    left, right = os.urandom(a), os.urandom(b)
    assert crc32_combine(zlib.crc32(left), zlib.crc32(right), b) == zlib.crc32(left + right)


def test_rows_written_in_blocks_read_back_with_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    flux = rng.normal(size=(23, 40)).astype("<f4")
    mask = rng.random((23, 40)) > 0.7
    path = tmp_path / "x.npz"
    npz = InPlaceNpz(path, {"flux": np.dtype("<f4"), "mask": np.dtype("bool")}, 40, 100)
    for start in range(0, 23, 6):
        npz.append({"flux": flux[start:start + 6], "mask": mask[start:start + 6]})
    npz.close({"wavelength": np.linspace(1, 2, 40)})
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every entry's CRC-32 checks
        assert zf.namelist() == ["flux.npy", "mask.npy", "wavelength.npy"]
    loaded = np.load(path)
    np.testing.assert_array_equal(loaded["flux"], flux)
    np.testing.assert_array_equal(loaded["mask"], mask)
    np.testing.assert_array_equal(loaded["wavelength"], np.linspace(1, 2, 40))
    # room for 77 rows that never came is a hole, not bytes on disk
    assert os.stat(path).st_blocks * 512 < os.stat(path).st_size


def test_npy_headers_have_a_fixed_length_and_refuse_what_does_not_fit() -> None:
    header = npy_header(np.dtype("<f4"), (123_456_789, 62_001))
    assert len(header) == NPY_HEADER and header.endswith(b"\n")
    with pytest.raises(ValueError, match="does not fit"):
        npy_header(np.dtype("<f4"), tuple(range(1000, 1040)))


def test_an_output_folder_is_reused_only_when_it_holds_an_export(tmp_path: Path) -> None:
    from mirror.ml import ExportError
    from mirror.ml.manifest import prepare_folder, write_json

    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / ".spectra.npz.partial").write_bytes(b"half")
    assert prepare_folder(tmp_path / "killed")  # a first export killed midway: go on
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ExportError, match="not empty"):
        prepare_folder(tmp_path / "mine")
    write_json(tmp_path / "mine", {"kind": "spectra"})
    assert prepare_folder(tmp_path / "mine")


def test_arrow_columns_types_like_pyarrow_without_loading_pandas() -> None:
    """The manifest's computed columns keep the types pyarrow would infer; no pandas import."""
    import subprocess
    import sys

    code = (
        "import sys, datetime, numpy as np\n"
        "from mirror.ml.manifest import arrow_columns\n"
        "t = arrow_columns({'s': ['a', None], 'i': [1, np.int64(2)], 'f': [1, 2.5],\n"
        "                   't': [datetime.datetime(2020, 1, 2), None], 'b': [True, False],\n"
        "                   'n': [None, None]})\n"
        "print([str(f.type) for f in t.schema], t.column('f').to_pylist(),\n"
        "      'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == (
        "['string', 'int64', 'double', 'timestamp[us]', 'bool', 'string'] [1.0, 2.5] False")
