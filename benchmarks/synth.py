"""Synthetic generator throughput: images per second at 128 px, 1 worker vs all cores.

Run: .venv/bin/python benchmarks/synth.py [--images 1000] [--size 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from harness import machine_line  # first: the offline environment

from dermground.ingest.synth import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print(machine_line())
    cores = os.cpu_count() or 1
    rates = {}
    for workers in sorted({1, cores}):
        with tempfile.TemporaryDirectory() as tmp:
            summary = generate_dataset(Path(tmp) / "data", patients=max(1, args.images // 10),
                                       images=args.images, seed=0, size=args.size,
                                       progress=False, workers=workers)
        rates[workers] = summary.images_per_second
        print(f"{args.images} images at {args.size} px, {workers} worker(s): "
              f"{summary.seconds:.2f} s, {summary.images_per_second:.0f} images/s")
    if len(rates) > 1:
        print(f"speed-up {cores} workers / 1 worker: {rates[cores] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
