"""Measure the 16 registry attributes from an RGB crop and a lesion mask.

Every value is a function of the pixels and the mask only, so a model can learn it from the
image. Colours are CIE LAB (sRGB, D65 white). Lengths use the pixel size in mm (15 mm field of
view / image width for SLICE-3D crops).

Regions (all derived from the mask, sizes in mm so results do not depend on resolution):
- *inside*: the mask.
- *guard band*: the first `GUARD_MM` around the mask; JPEG chroma subsampling and a soft lesion
  edge smear colour there, so it belongs to neither side.
- *surround ring*: the next `RING_MM` beyond the guard band (the "immediate surrounding skin").
- *outside*: everything beyond the guard band.

Definitions (registry name: definition):
- areaMM2: mask pixel count x pixel area.
- perimeterMM: Cauchy-Crofton estimate from boundary crossings along rows, columns and both
  diagonals (unbiased for all orientations; within 1 % on a digital disk of radius >= 20 px).
- clin_size_long_diam_mm / minorAxisMM: maximum / minimum Feret (caliper) diameter, from the
  projections of a smoothed sub-pixel contour on 180 directions (1 degree apart).
- A, B / Aext, Bext: mean a*, b* inside / outside.
- deltaL: Lext - L (positive when the lesion is darker than the skin).
- deltaB: B - Bext (positive when the lesion is more yellow/brown than the skin).
- deltaLB: sqrt(dL^2 + dB^2) of the lesion against the surround ring only.
- stdLExt: standard deviation of L* outside.
- norm_color: 0-10, 10 * (1 - exp(-s / 12)) with s the total LAB standard deviation inside
  (sqrt of the summed variances of L*, a*, b*).
- radial_color_std_max: the largest total LAB standard deviation within one of
  `RING_COUNT` concentric rings (equal pixel counts, elliptical radius from the centroid);
  colour that varies at a fixed distance from the centre = asymmetric colour.
- norm_border: 0-10, 10 * (1 - exp(-8 * (P / P_hull - 1))) with P_hull the convex hull's
  perimeter (Cauchy: pi x mean Feret width): 0 for convex shapes of any size or elongation.
- area_perim_ratio: perimeter^2 / area (4 pi for a disk; grows with jaggedness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GUARD_MM = 0.25
RING_MM = 1.0
RING_COUNT = 4
_ANGLES = np.deg2rad(np.arange(180.0))
_DIRECTIONS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)])  # (2, 180)

# sRGB (D65) -> XYZ, IEC 61966-2-1.
_RGB_TO_XYZ = np.array([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_EPSILON = 216.0 / 24389.0
_KAPPA = 24389.0 / 27.0


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# The 256 linearised values of an 8-bit channel: a lookup beats a power per pixel.
_LINEAR_LUT = _srgb_to_linear(np.arange(256) / 255.0)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE LAB (D65) of an sRGB image: uint8 (..., 3) or float in [0, 1] -> float64 (..., 3)."""
    rgb = np.asarray(rgb)
    linear = _LINEAR_LUT[rgb] if rgb.dtype == np.uint8 else _srgb_to_linear(rgb.astype(np.float64))
    xyz = linear @ (_RGB_TO_XYZ.T / _WHITE_D65)
    f = np.cbrt(xyz)
    low = xyz <= _EPSILON
    f[low] = (_KAPPA * xyz[low] + 16.0) / 116.0
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (clipped) of CIE LAB (D65) values (..., 3)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f**3 > _EPSILON, f**3, (116.0 * f - 16.0) / _KAPPA) * _WHITE_D65
    linear = np.clip(xyz @ np.linalg.inv(_RGB_TO_XYZ).T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


# Linear light quantised to 16 bits -> 8-bit sRGB: a lookup instead of a power per pixel.
_ENCODE_LUT = np.round(
    np.where((q := np.linspace(0.0, 1.0, 65536)) <= 0.0031308, 12.92 * q, 1.055 * q ** (1 / 2.4) - 0.055) * 255
).astype(np.uint8)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)


def lab_to_srgb8(lab: np.ndarray) -> np.ndarray:
    """8-bit sRGB of CIE LAB (D65) values (..., 3), fast (float32 and a lookup table)."""
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    cube = f * f * f
    low = cube <= _EPSILON
    cube[low] = (116.0 * f[low] - 16.0) / _KAPPA
    matrix = (_XYZ_TO_RGB * _WHITE_D65).T.astype(np.float32)
    linear = np.clip(cube @ matrix, 0.0, 1.0)
    return _ENCODE_LUT[(linear * 65535.0 + 0.5).astype(np.int32)]


@dataclass(frozen=True)
class Measurement:
    """The 16 attributes (registry names) and cheap extra ISIC columns (ISIC names)."""

    attributes: dict[str, float]
    extras: dict[str, float]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by `steps` pixels, alternating cross and square (an octagon ~ a disk)."""
    out = mask.copy()
    for step in range(steps):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        if step % 2:
            grown[1:, 1:] |= out[:-1, :-1]
            grown[:-1, :-1] |= out[1:, 1:]
            grown[1:, :-1] |= out[:-1, 1:]
            grown[:-1, 1:] |= out[1:, :-1]
        out = grown
    return out


def perimeter_pixels(mask: np.ndarray) -> float:
    """Cauchy-Crofton perimeter (in pixels) from crossings in 4 directions."""
    m = np.pad(mask, 1)
    rows = np.count_nonzero(m[:, 1:] != m[:, :-1])
    cols = np.count_nonzero(m[1:, :] != m[:-1, :])
    diag = np.count_nonzero(m[1:, 1:] != m[:-1, :-1])
    anti = np.count_nonzero(m[1:, :-1] != m[:-1, 1:])
    # Crofton: P = 1/2 * integral over directions of (crossings x line spacing);
    # 4 directions each weigh pi/4; diagonal lines are 1/sqrt(2) apart.
    return (math.pi / 8.0) * (rows + cols + (diag + anti) / math.sqrt(2.0))


def _box_blur(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    return sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def feret_widths(mask: np.ndarray) -> np.ndarray:
    """Caliper widths (pixels) on 180 directions of the mask's smoothed sub-pixel contour.

    The raw pixel staircase overstates widths near (not at) the axes by up to ~0.7 px; the 0.5
    level of the mask blurred twice by a 3x3 box, interpolated along rows and columns, brings
    the bias under ~0.15 px.
    """
    level = np.pad(mask, 3).astype(np.float64)
    level = _box_blur(_box_blur(level)) - 0.5
    i, j = np.nonzero(level[:, :-1] * level[:, 1:] < 0)
    x_cross = j + level[i, j] / (level[i, j] - level[i, j + 1])
    k, m = np.nonzero(level[:-1, :] * level[1:, :] < 0)
    y_cross = k + level[k, m] / (level[k, m] - level[k + 1, m])
    points = np.concatenate([np.stack([x_cross, i], axis=1), np.stack([m, y_cross], axis=1)])
    if not len(points):
        # A lesion of a few pixels (a small --size in synth) blurs to under 0.5 everywhere: no contour.
        # Its widths are then those of its pixel squares, measured at their corners.
        ys, xs = np.nonzero(mask)
        corners = [(dx, dy) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]
        points = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx, dy in corners])
    projections = points.astype(np.float64) @ _DIRECTIONS
    return projections.max(axis=0) - projections.min(axis=0)


def _lab_spread(lab: np.ndarray) -> float:
    """Total LAB standard deviation: sqrt of the summed channel variances."""
    return float(np.sqrt(lab.var(axis=0).sum())) if len(lab) > 1 else 0.0


def _ring_spread_max(lab_inside: np.ndarray, mask: np.ndarray) -> float:
    """Largest within-ring LAB spread over concentric, equally populated elliptical rings."""
    ys, xs = np.nonzero(mask)
    coords = np.stack([xs, ys], axis=1).astype(np.float64)
    centred = coords - coords.mean(axis=0)
    cov = np.cov(centred.T) + np.eye(2) * 1e-6
    radius = np.sqrt(np.einsum("ni,ij,nj->n", centred, np.linalg.inv(cov), centred))
    order = np.argsort(radius, kind="stable")
    rings = np.array_split(order, RING_COUNT)
    return max(_lab_spread(lab_inside[ring]) for ring in rings if len(ring))


def measure(rgb: np.ndarray, mask: np.ndarray, pixel_mm: float) -> Measurement:
    """All 16 attributes of one lesion; raises ValueError on an empty or full mask."""
    mask = np.asarray(mask, dtype=bool)
    if rgb.shape[:2] != mask.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image {rgb.shape} and mask {mask.shape} do not match (need HxWx3 and HxW)")
    area_px = int(np.count_nonzero(mask))
    if area_px < 3:
        raise ValueError("the lesion mask is empty (fewer than 3 pixels)")

    guard = _dilate(mask, max(1, round(GUARD_MM / pixel_mm)))
    ring_outer = _dilate(guard, max(1, round(RING_MM / pixel_mm)))
    outside = ~guard
    ring = ring_outer & outside
    if np.count_nonzero(outside) < 3 or np.count_nonzero(ring) < 3:
        raise ValueError("the lesion mask leaves no skin outside it")

    lab = srgb_to_lab(rgb)
    lab_in, lab_out, lab_ring = lab[mask], lab[outside], lab[ring]
    L, A, B = lab_in.mean(axis=0)
    Lext, Aext, Bext = lab_out.mean(axis=0)
    Lring, _, Bring = lab_ring.mean(axis=0)

    perimeter_px = perimeter_pixels(mask)
    widths = feret_widths(mask)
    hull_perimeter_px = math.pi * float(widths.mean())
    area_mm2 = area_px * pixel_mm**2
    perimeter_mm = perimeter_px * pixel_mm
    color_std = _lab_spread(lab_in)
    concavity = max(0.0, perimeter_px / hull_perimeter_px - 1.0)
    delta_lb = math.hypot(Lring - L, B - Bring)

    attributes = {
        "areaMM2": area_mm2,
        "minorAxisMM": float(widths.min()) * pixel_mm,
        "norm_color": 10.0 * (1.0 - math.exp(-color_std / 12.0)),
        "radial_color_std_max": _ring_spread_max(lab_in, mask),
        "deltaB": float(B - Bext),
        "deltaL": float(Lext - L),
        "deltaLB": delta_lb,
        "stdLExt": float(lab_out[:, 0].std()),
        "clin_size_long_diam_mm": float(widths.max()) * pixel_mm,
        "perimeterMM": perimeter_mm,
        "norm_border": 10.0 * (1.0 - math.exp(-8.0 * concavity)),
        "area_perim_ratio": perimeter_mm**2 / area_mm2,
        "A": float(A),
        "Aext": float(Aext),
        "B": float(B),
        "Bext": float(Bext),
    }
    extras = {
        "tbp_lv_L": float(L),
        "tbp_lv_Lext": float(Lext),
        "tbp_lv_C": math.hypot(A, B),
        "tbp_lv_Cext": math.hypot(Aext, Bext),
        "tbp_lv_H": math.degrees(math.atan2(B, A)),
        "tbp_lv_Hext": math.degrees(math.atan2(Bext, Aext)),
        "tbp_lv_deltaA": float(A - Aext),
        "tbp_lv_color_std_mean": color_std,
        "tbp_lv_stdL": float(lab_in[:, 0].std()),
        "tbp_lv_deltaLBnorm": delta_lb / max(1.0, float(lab_ring[:, 0].std()) + 1.0),
        "tbp_lv_eccentricity": _eccentricity(mask),
    }
    return Measurement(attributes=attributes, extras=extras)


def _eccentricity(mask: np.ndarray) -> float:
    """Eccentricity of the ellipse with the mask's second moments (0 = circle)."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) if len(xs) > 1 else np.eye(2)
    small, large = np.linalg.eigvalsh(cov)
    return float(math.sqrt(max(0.0, 1.0 - small / large))) if large > 0 else 0.0
