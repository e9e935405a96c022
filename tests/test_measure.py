"""Attribute measurement on shapes and colours with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dermground.platform.attribute_measure import lab_to_srgb, measure, srgb_to_lab
from dermground.platform.attributes import ATTRIBUTE_NAMES

SIZE = 160


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    return xx - SIZE / 2 + 0.3, yy - SIZE / 2 - 0.2  # off-centre: no lattice symmetry luck


def _disk(radius_px: float) -> np.ndarray:
    x, y = _grid()
    return x**2 + y**2 < radius_px**2


def _flat(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (SIZE, SIZE, 3)).copy()


@pytest.mark.parametrize("radius_px", [20.0, 35.0, 50.0])
def test_disk_geometry_within_two_percent(radius_px: float) -> None:
    pixel_mm = 0.1
    radius_mm = radius_px * pixel_mm
    a = measure(_flat((200, 160, 140)), _disk(radius_px), pixel_mm).attributes
    assert a["areaMM2"] == pytest.approx(math.pi * radius_mm**2, rel=0.02)
    assert a["perimeterMM"] == pytest.approx(2 * math.pi * radius_mm, rel=0.02)
    assert a["minorAxisMM"] == pytest.approx(2 * radius_mm, rel=0.02)
    assert a["clin_size_long_diam_mm"] == pytest.approx(2 * radius_mm, rel=0.02)
    assert a["area_perim_ratio"] == pytest.approx(4 * math.pi, rel=0.04)
    assert a["norm_border"] < 0.5


def test_ellipse_axes() -> None:
    x, y = _grid()
    mask = (x / 50) ** 2 + (y / 20) ** 2 < 1
    a = measure(_flat((200, 160, 140)), mask, 0.1).attributes
    assert a["clin_size_long_diam_mm"] == pytest.approx(10.0, rel=0.02)
    assert a["minorAxisMM"] == pytest.approx(4.0, rel=0.03)
    assert a["norm_border"] < 0.5  # elongation is not irregularity


def test_known_lab_values() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [128, 128, 128], [255, 0, 0]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(lab[2], [53.585, 0.0, 0.0], atol=2e-3)  # sRGB mid grey
    np.testing.assert_allclose(lab[3], [53.24, 80.09, 67.20], atol=0.02)  # sRGB red
    back = lab_to_srgb(lab) * 255
    np.testing.assert_allclose(back, [[255, 255, 255], [0, 0, 0], [128, 128, 128], [255, 0, 0]], atol=1e-6)


def test_uniform_colours_give_exact_means_and_zero_spread() -> None:
    mask = _disk(30)
    rgb = _flat((128, 128, 128))
    rgb[mask] = (255, 0, 0)
    m = measure(rgb, mask, 0.1)
    a = m.attributes
    assert set(a) == set(ATTRIBUTE_NAMES)
    assert a["A"] == pytest.approx(80.09, abs=0.02)
    assert a["B"] == pytest.approx(67.20, abs=0.02)
    assert a["Aext"] == pytest.approx(0.0, abs=1e-3)
    assert a["Bext"] == pytest.approx(0.0, abs=1e-3)
    assert a["deltaL"] == pytest.approx(53.585 - 53.24, abs=0.02)
    assert a["deltaB"] == pytest.approx(67.20, abs=0.02)
    assert a["deltaLB"] == pytest.approx(math.hypot(53.585 - 53.24, 67.20), abs=0.03)
    assert a["stdLExt"] == pytest.approx(0.0, abs=1e-9)
    assert a["norm_color"] == pytest.approx(0.0, abs=1e-9)
    assert a["radial_color_std_max"] == pytest.approx(0.0, abs=1e-9)
    assert m.extras["tbp_lv_L"] == pytest.approx(53.24, abs=0.02)


def test_irregular_star_has_higher_border_score_than_disk() -> None:
    x, y = _grid()
    theta, rho = np.arctan2(y, x), np.hypot(x, y)
    star = rho < 40 * (1 + 0.35 * np.cos(7 * theta))
    disk = _measure_shape(_disk(40))
    irregular = _measure_shape(star)
    assert irregular["norm_border"] > disk["norm_border"] + 3
    assert irregular["area_perim_ratio"] > disk["area_perim_ratio"] * 1.5
    assert 0 <= irregular["norm_border"] <= 10


def _measure_shape(mask: np.ndarray) -> dict[str, float]:
    return measure(_flat((200, 160, 140)), mask, 0.1).attributes


def test_colour_variation_and_asymmetry() -> None:
    mask = _disk(40)
    x, _ = _grid()
    halves = _flat((180, 140, 120))
    halves[mask & (x < 0)] = (60, 30, 20)
    halves[mask & (x >= 0)] = (150, 90, 70)
    rings = _flat((180, 140, 120))
    rings[mask] = (150, 90, 70)
    rings[_disk(20)] = (60, 30, 20)
    split = measure(halves, mask, 0.1).attributes
    concentric = measure(rings, mask, 0.1).attributes
    assert split["norm_color"] > 1 and concentric["norm_color"] > 1
    # Colour that changes around the centre is asymmetric; colour that changes with radius is not.
    assert split["radial_color_std_max"] > 3 * concentric["radial_color_std_max"]


def test_surround_contrast_uses_the_immediate_ring_only() -> None:
    mask = _disk(30)
    x, y = _grid()
    rgb = _flat((200, 200, 200))
    rgb[np.hypot(x, y) > 55] = (60, 60, 60)  # far skin much darker than the surround
    rgb[mask] = (120, 120, 120)
    a = measure(rgb, mask, 0.1).attributes
    lab = srgb_to_lab(np.array([[200, 200, 200], [120, 120, 120]], dtype=np.uint8))
    assert a["deltaLB"] == pytest.approx(lab[0, 0] - lab[1, 0], abs=0.05)
    assert a["stdLExt"] > 5  # the outside as a whole is not uniform


def test_bad_masks_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        measure(_flat((1, 2, 3)), np.zeros((SIZE, SIZE), bool), 0.1)
    with pytest.raises(ValueError, match="no skin"):
        measure(_flat((1, 2, 3)), np.ones((SIZE, SIZE), bool), 0.1)
    with pytest.raises(ValueError, match="do not match"):
        measure(_flat((1, 2, 3)), np.ones((10, 10), bool), 0.1)


_DIHEDRAL = (
    lambda a: a, np.fliplr, np.flipud, lambda a: np.rot90(a, 2), np.rot90, lambda a: np.rot90(a, 3),
    lambda a: np.swapaxes(a, 0, 1), lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
)


@pytest.mark.parametrize("seed", [1, 2])
def test_every_attribute_is_the_same_in_all_eight_turns_and_mirror_images(seed: int) -> None:
    """Why prediction may pool the answers of the eight dihedral views of a crop (platform/predict.py)."""
    from dermground.ingest.synth import render_lesion

    rgb, mask = render_lesion(np.random.default_rng(seed), (60.0, 10.0, 15.0), hair=1.0, size=128)
    pixel_mm = 15.0 / 128
    reference = measure(rgb, mask, pixel_mm).attributes
    views = [measure(np.ascontiguousarray(t(rgb)), np.ascontiguousarray(t(mask)), pixel_mm).attributes
             for t in _DIHEDRAL]
    assert len({t(rgb).tobytes() for t in _DIHEDRAL}) == 8  # the views really differ
    for name in ATTRIBUTE_NAMES:
        for view in views:
            assert view[name] == pytest.approx(reference[name], rel=1e-6, abs=1e-9), name


def test_feret_widths_of_a_lesion_of_a_few_pixels_are_those_of_its_pixel_squares():
    """A 5-pixel plus blurs to under 0.5 everywhere, so the contour had no point and the widths raised
    "zero-size array" (16% of `dermground synth --size 32` images)."""
    from dermground.platform.attribute_measure import feret_widths, measure

    mask = np.zeros((16, 16), dtype=bool)
    mask[7, 6:9] = mask[6:9, 7] = True
    widths = feret_widths(mask)  # one per degree
    assert widths[0] == pytest.approx(3.0) and widths[90] == pytest.approx(3.0)  # the arms, corner to corner
    assert widths[45] == pytest.approx(2 * math.sqrt(2)) == widths.min()  # across the cut corners
    assert widths.max() < 3 * math.sqrt(2)  # under the bounding square's diagonal
    rgb = np.full((16, 16, 3), 200, dtype=np.uint8)
    rgb[mask] = (90, 60, 50)
    assert measure(rgb, mask, 0.5).attributes["clin_size_long_diam_mm"] == pytest.approx(widths.max() * 0.5)
