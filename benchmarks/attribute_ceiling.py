"""Is every attribute of the synthetic data visible in its pixels? Two ceilings, measured per attribute.

1. Digitisation: the same lesion (same generator draws) rendered at 128 px and at 512 px; the
   correlation of each shape attribute between the two says how much of it is the lesion's shape
   and how much the pixel grid (noise no model could predict).
2. Segmentation: each attribute re-measured from the decoded JPEG with a mask found by
   thresholding L* halfway between lesion and skin near the lesion (instead of the true mask); the
   correlation with the true value says how much a plain non-learned reading of the pixels gets.

Run: .venv/bin/python benchmarks/attribute_ceiling.py [--images 300] [--seed 7]
"""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
from PIL import Image

from harness import machine_line  # first: the offline environment


def main() -> None:
    from dermground.ingest import synth
    from dermground.platform.attribute_measure import feret_widths, measure, perimeter_pixels, srgb_to_lab
    from dermground.platform.attributes import ATTRIBUTES
    from dermground.platform.isic_format import FIELD_OF_VIEW_MM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print(machine_line())

    def shape(mask: np.ndarray, pixel_mm: float) -> dict[str, float]:
        perimeter, area = perimeter_pixels(mask) * pixel_mm, mask.sum() * pixel_mm**2
        concavity = max(0.0, perimeter_pixels(mask) / (math.pi * feret_widths(mask).mean()) - 1.0)
        return {"perimeterMM": perimeter, "areaMM2": area, "area_perim_ratio": perimeter**2 / area,
                "norm_border": 10.0 * (1.0 - math.exp(-8.0 * concavity))}

    grid: dict[str, list[tuple[float, float]]] = {}
    seg: dict[str, list[tuple[float, float]]] = {a.name: [] for a in ATTRIBUTES}
    for i in range(args.images):
        patient = synth.make_patient(args.seed, i % 50)
        masks = {}
        for size in (args.size, 4 * args.size):  # the shape is drawn before any size-dependent draw
            rgb, masks[size] = synth.render_lesion(np.random.default_rng([args.seed, 2, i]), patient.skin_lab,
                                                   0.0, size)
        low, high = shape(masks[args.size], FIELD_OF_VIEW_MM / args.size), shape(masks[4 * args.size],
                                                                                 FIELD_OF_VIEW_MM / (4 * args.size))
        for name in low:
            grid.setdefault(name, []).append((low[name], high[name]))

        rgb, mask = synth.render_lesion(np.random.default_rng([args.seed, 2, i]), patient.skin_lab, patient.hair,
                                        args.size)
        decoded = np.asarray(Image.open(io.BytesIO(synth.encode_jpeg(rgb))).convert("RGB"))
        light = srgb_to_lab(decoded)[..., 0]
        inside, outside = np.median(light[mask]), np.median(light[~mask])
        found = (light < (inside + outside) / 2) if inside < outside else (light > (inside + outside) / 2)
        # Look only near the lesion (its box + 6 px): hair strands elsewhere are not the question here.
        rows, cols = np.nonzero(mask)
        near = np.zeros_like(mask)
        near[max(0, rows.min() - 6):rows.max() + 7, max(0, cols.min() - 6):cols.max() + 7] = True
        found &= near
        try:
            truth = measure(decoded, mask, FIELD_OF_VIEW_MM / args.size).attributes
            seen = measure(decoded, found, FIELD_OF_VIEW_MM / args.size).attributes
        except ValueError:
            continue  # a lesion the threshold cannot find at all
        for name in seg:
            seg[name].append((truth[name], seen[name]))

    def corr(pairs: list[tuple[float, float]]) -> float:
        a = np.array(pairs)
        return float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])

    print(f"{args.images} lesions, seed {args.seed}, {args.size} px")
    print(f"{'attribute':24s} {'corr 128 vs 512 px':>19s} {'corr true vs threshold mask':>28s}")
    for a in ATTRIBUTES:
        digit = f"{corr(grid[a.name]):.3f}" if a.name in grid else "-"
        print(f"{a.name:24s} {digit:>19s} {corr(seg[a.name]):28.3f}")


if __name__ == "__main__":
    main()
