"""Cutting the VHS test image: centred cutouts whose own WCS puts the target at the centre,
the image's own pixels with --centre nearest, edges refused, arcsec sizes, target files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from mirror.ml import ExportError
from mirror.ml.cutouts import read_targets
from mirror.ml.images import NoCutout, cut, open_image

VHS = Path(__file__).parent / "data" / "vhs_image.fits"


def offset_pixels(wcs: WCS, x: float, y: float, ra: float, dec: float, scale: float) -> float:
    centre = SkyCoord(*wcs.pixel_to_world_values(x, y), unit="deg")
    return float(centre.separation(SkyCoord(ra, dec, unit="deg")).arcsec / scale)


@pytest.mark.parametrize("size", [28, 27, 10])
def test_exact_cutouts_put_the_target_at_their_centre(size: int) -> None:
    image = open_image(VHS)
    rng = np.random.default_rng(size)
    for x, y in rng.uniform(size / 2 + 1, 64 - size / 2 - 2, (20, 2)):
        ra, dec = (float(v) for v in image.wcs.pixel_to_world_values(x, y))
        c = cut(image, ra, dec, size, 1.0, exact=True)
        assert c.data.shape == (size, size) and np.isfinite(c.data).all()
        middle = (size - 1) / 2
        assert offset_pixels(c.wcs, middle, middle, ra, dec, image.scale_arcsec) < 1e-6
        assert (c.x, c.y) == pytest.approx((middle, middle), abs=1e-6)
        # the WCS stays the image's, shifted: every cutout pixel maps back to x0 + i
        back = image.wcs.world_to_pixel_values(*c.wcs.pixel_to_world_values(0, 0))
        np.testing.assert_allclose(back, (x - middle, y - middle), atol=1e-6)


def test_a_target_on_a_pixel_grid_point_gives_the_images_own_values() -> None:
    image = open_image(VHS)
    ra, dec = (float(v) for v in image.wcs.pixel_to_world_values(30.5, 33.5))
    c = cut(image, ra, dec, 28, 1.0, exact=True)  # samples fall on pixel centres 17..44
    np.testing.assert_allclose(c.data, image.data[20:48, 17:45], rtol=1e-5)


def test_nearest_cutouts_are_the_image_pixels_and_say_where_the_target_is() -> None:
    image = open_image(VHS)
    ra, dec = (float(v) for v in image.wcs.pixel_to_world_values(30.2, 31.7))
    c = cut(image, ra, dec, 28, 1.0, exact=False)
    x0, y0 = (round(float(v)) for v in image.wcs.world_to_pixel_values(
        *c.wcs.pixel_to_world_values(0, 0)))
    np.testing.assert_array_equal(c.data, image.data[y0:y0 + 28, x0:x0 + 28])
    assert (c.x, c.y) == pytest.approx((30.2 - x0, 31.7 - y0), abs=1e-6)
    assert abs(c.x - 13.5) <= 0.5 and abs(c.y - 13.5) <= 0.5


@pytest.mark.parametrize("exact", [True, False])
def test_too_near_an_edge_is_refused_with_the_distance(exact: bool) -> None:
    image = open_image(VHS)
    ra, dec = (float(v) for v in image.wcs.pixel_to_world_values(5.0, 40.0))
    with pytest.raises(NoCutout, match="too near the image's edge"):
        cut(image, ra, dec, 28, 1.0, exact=exact)


def test_a_cutout_in_arcsec_samples_the_sky_at_its_own_scale() -> None:
    image = open_image(VHS)
    ra, dec = (float(v) for v in image.wcs.pixel_to_world_values(31.0, 32.0))
    step = 2.5 / 7 / image.scale_arcsec  # 7 pixels over 2.5 arcsec
    c = cut(image, ra, dec, 7, step, exact=True)
    from astropy.wcs.utils import proj_plane_pixel_scales

    assert np.mean(proj_plane_pixel_scales(c.wcs)) * 3600 == pytest.approx(2.5 / 7, rel=1e-6)
    assert offset_pixels(c.wcs, 3, 3, ra, dec, 2.5 / 7) < 1e-6
    header = c.wcs.to_header(relax=True).tostring(sep="\n", endcard=False, padding=False)
    again = WCS(fits.Header.fromstring(header, sep="\n"))
    assert offset_pixels(again, 3, 3, ra, dec, 2.5 / 7) < 1e-6


def test_target_files_need_ra_and_dec(tmp_path: Path) -> None:
    good = tmp_path / "t.csv"
    good.write_text("ID,RA,Dec\nq1,10.5,-20\n,370,5\n")
    assert [(t.id, t.ra, t.dec) for t in read_targets(good)] == [("q1", 10.5, -20.0),
                                                                 ("1", 10.0, 5.0)]
    for text in ("ra,dec\n1,x\n", "id,ra\nq,1\n", "ra,dec\n1,95\n"):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ExportError, match="line 2"):
            read_targets(bad)
    with pytest.raises(ExportError, match="cannot read"):
        read_targets(tmp_path / "missing.csv")


def test_the_pick_rule_takes_the_deepest_image_the_cutout_fits_in(tmp_path: Path) -> None:
    from collections import OrderedDict

    from mirror.ml.cutouts import Target, _target
    from mirror.ml.select import Item

    with fits.open(VHS) as h:
        data, header = h[0].data, h[0].header
    wcs = WCS(header)
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(31.5, 31.5))
    edge_ra, edge_dec = (float(v) for v in wcs.pixel_to_world_values(6.0, 31.5))
    paths = {}
    for name, shift in [("deep", 0.0), ("shallow", 10.0)]:  # "shallow": 10 px further east
        moved = header.copy()
        moved["CRPIX1"] = header["CRPIX1"] + shift
        paths[name] = tmp_path / f"{name}.fits"
        fits.PrimaryHDU(data, moved).writeto(paths[name])

    class Finder:  # what the ADQL query answers: deepest first, as ORDER BY abmaglim DESC
        def candidates(self, target: Target) -> tuple[list[Item], list[dict]]:
            items = [Item(0, "ivo://x/deep", "x", paths["deep"], None),
                     Item(1, "ivo://x/shallow", "x", paths["shallow"], None),
                     Item(2, "ivo://x/embargoed", "x", None, None, "not stored")]
            return items, [{"abmaglim": 21.5}, {"abmaglim": 20.1}, {"abmaglim": 19.0}]

    def picked(target: Target, pick: str) -> tuple[list[str], str | None]:
        made, why = _target(Finder(), target, 28, None, pick, True,  # type: ignore[arg-type]
                            OrderedDict())
        return [info["obs_publisher_did"] for _, info in made], why

    assert picked(Target("a", ra, dec), "deepest") == (["ivo://x/deep"], None)
    assert picked(Target("a", ra, dec), "all") == (["ivo://x/deep", "ivo://x/shallow"], None)
    # 6 px from the deep image's edge, 16 px inside the shallow one: the shallow one it is
    assert picked(Target("e", edge_ra, edge_dec), "deepest") == (["ivo://x/shallow"], None)
    far_ra, far_dec = (float(v) for v in wcs.pixel_to_world_values(-30.0, 31.5))
    made, why = picked(Target("f", far_ra, far_dec), "deepest")
    assert made == [] and why and "3 images contain it, none gives the cutout" in why
    assert "not stored" in why and "too near the image's edge" in why
