"""R² on train images, split into the (image, attribute) pairs D_tr asks and those it never asks.

With W attributes sampled per image, most of an image's 16 questions are never trained; comparing
the two halves tells memorisation of trained pairs (asked >> unasked) from plain underfitting
(asked ≈ unasked). The unasked half is what the test split measures.

Run: .venv/bin/python benchmarks/trained_pairs.py --data H/demo/data --base H/models/base
     --adapter H/models/adapter [--images 600] [--w 5] [--seed 7]   (W and seed as in training)
"""

from __future__ import annotations

import argparse

from harness import machine_line  # first: the offline environment


def main() -> None:
    from pathlib import Path

    import numpy as np

    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.attributes import ATTRIBUTE_NAMES
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.predict import predict_attributes
    from dermground.train.dataset import sample_attributes
    from dermground.eval.predictions import r2_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--w", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(machine_line())

    records = [r for r in read_records(Path(args.data), split="train") if isinstance(r, LesionRecord)][:args.images]
    backbone = load_backbone(args.base, args.adapter, device="cpu")
    predictions = []
    for start in range(0, len(records), 8):
        chunk = records[start:start + 8]
        predictions += predict_attributes(backbone, [r.load_image() for r in chunk], ATTRIBUTE_NAMES, batch_size=8)
    asked = {r.isic_id: set(sample_attributes(r.isic_id, args.w, args.seed)) for r in records}
    medians: dict[bool, list[float]] = {True: [], False: []}
    print(f"{'attribute':<24}{'asked n':>8}{'R2':>8}{'unasked n':>11}{'R2':>8}")
    for name in ATTRIBUTE_NAMES:
        cells = []
        for trained in (True, False):
            pairs = [(r.attributes[name], p[name].value) for r, p in zip(records, predictions)
                     if (name in asked[r.isic_id]) == trained and p[name].value is not None]
            r2 = r2_score([t for t, _ in pairs], [v for _, v in pairs])
            medians[trained].append(r2)
            cells.append(f"{len(pairs):>8}{r2:>8.3f}" if trained else f"{len(pairs):>11}{r2:>8.3f}")
        print(f"{name:<24}{cells[0]}{cells[1]}")
    print(f"median R2: asked {np.nanmedian(medians[True]):.3f}, unasked {np.nanmedian(medians[False]):.3f} "
          f"({len(records)} train images, W={args.w}, seed {args.seed})")


if __name__ == "__main__":
    main()
