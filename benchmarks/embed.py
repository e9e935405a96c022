"""Embedding throughput: naive (17 full passes per image) vs shared-prefix KV reuse, one run.

Builds the `small` preset (hidden 512, 4 layers, vision depth 4, 448 px) and the `tiny` preset in a
temporary folder, checks the two paths agree, and prints their time ratio. Last line:
`embed speedup=<x> min_cosine=<c> images_per_s=<n>` (small preset, shared-prefix path).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed.py [--images 4] [--image-size 448]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness import machine_line, timed  # first: the offline environment, before transformers loads

import numpy as np
import torch
from PIL import Image

from dermground.platform.embed import Embedder, EmbeddingBatch
from dermground.platform.model.loading import load_backbone
from dermground.platform.model.tiny import save_tiny_model


def synthetic_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Skin-toned noise with a dark blob: distinct content per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        pixels = np.array([215, 175, 145]) + rng.normal(0, 10, (size, size, 3))
        cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.1, 0.3)]
        inside = (yy - cy * size) ** 2 + (xx - cx * size) ** 2 < (r * size) ** 2
        pixels[inside] = rng.uniform(30, 120, 3) + rng.normal(0, 15, (int(inside.sum()), 3))
        out.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return out


def min_cosine(a: EmbeddingBatch, b: EmbeddingBatch) -> float:
    pairs = [(a.h_im, b.h_im)] + [(a.h_im_a[k], b.h_im_a[k]) for k in b.h_im_a]
    return float(min(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min() for x, y in pairs))


def measure(model_dir: Path, images: list[Image.Image], configs: list[tuple[int, int]], naive: bool,
            rounds: int) -> dict:
    """Pick the fastest (batch_size, suffix_batch), then time it (and the naive path) in alternating
    rounds; the minimum per path is reported, so load from other processes hits both alike."""
    backbone = load_backbone(model_dir)
    params = sum(p.numel() for p in backbone.core.parameters())
    Embedder(backbone).embed(images[:1])  # warm-up (allocator, first-call overheads)
    sweep = {}
    for batch_size, suffix_batch in configs:
        seconds, _ = timed(lambda: Embedder(backbone, batch_size, suffix_batch).embed(images))
        sweep[(batch_size, suffix_batch)] = seconds
        print(f"  shared-prefix batch_size={batch_size} suffix_batch={suffix_batch}: {seconds:.2f} s "
              f"({len(images) / seconds:.2f} images/s)")
    best = min(sweep, key=sweep.get)
    embedder = Embedder(backbone, *best)
    shared_times, naive_times = [], []
    for _ in range(rounds):
        seconds, batch = timed(lambda: embedder.embed(images))
        shared_times.append(seconds)
        if naive:
            seconds, reference = timed(lambda: embedder.embed_reference(images))
            naive_times.append(seconds)
    result = {"params": params, "best": best, "shared_s": min(shared_times), "batch": batch}
    print(f"  best {best}: shared-prefix rounds {', '.join(f'{t:.2f}' for t in shared_times)} s")
    if naive:
        print(f"  naive (17 full passes per image) rounds {', '.join(f'{t:.2f}' for t in naive_times)} s")
        result |= {"naive_s": min(naive_times), "min_cosine": min_cosine(batch, reference)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per measurement")
    parser.add_argument("--image-size", type=int, default=448, help="small preset image size (multiple of 28)")
    parser.add_argument("--tiny-images", type=int, default=32, help="images for the tiny preset throughput")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds per path")
    args = parser.parse_args()
    print(machine_line())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    configs = [(1, 16), (2, 32), (4, 64)]
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = save_tiny_model(Path(tmp) / "tiny", preset="tiny")
        print("tiny preset (hidden 128, 2 layers, vision depth 2, 224 px):")
        tiny = measure(tiny_dir, synthetic_images(args.tiny_images, 224, seed=1), configs, naive=False, rounds=args.rounds)
        tiny_rate = args.tiny_images / tiny["shared_s"]
        small_dir = save_tiny_model(Path(tmp) / "small", preset="small", image_size=args.image_size)
        print(f"small preset (hidden 512, 4 layers, vision depth 4, {args.image_size} px):")
        small = measure(small_dir, synthetic_images(args.images, args.image_size, seed=2), configs, naive=True, rounds=args.rounds)
    speedup = small["naive_s"] / small["shared_s"]
    rate = args.images / small["shared_s"]
    print(f"tiny: {tiny['params']:,} params, {tiny_rate:.1f} images/s (h_im + 16 h_im_a), best {tiny['best']}")
    print(f"small: {small['params']:,} params, best (batch_size, suffix_batch) {small['best']}")
    print(f"embed speedup={speedup:.2f} min_cosine={small['min_cosine']:.6f} images_per_s={rate:.3f}")


if __name__ == "__main__":
    main()
