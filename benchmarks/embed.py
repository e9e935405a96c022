"""Embedding throughput: naive (17 full passes per image) vs shared-prefix KV reuse, one run.

Builds the `small` preset (hidden 512, 4 layers, vision depth 4, 448 px) and the `tiny` preset in a
temporary folder, checks the two paths agree, and prints their time ratio. For each preset it also
times, round by round, the suffix rows sharing their image's prefix cache against the previous path
that copied it per row (`run_suffixes(copy_prefix=True)`: same vectors, bit for bit), in wall and
CPU seconds per image, and the peak memory one suffix pass of 8 images x 16 questions adds (in a
fresh process per path). Last line:
`embed speedup=<x> min_cosine=<c> images_per_s=<n>` (small preset, shared-prefix path).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed.py [--images 4] [--image-size 448]
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import load_line, machine_line, timed  # first: the offline environment, before transformers loads

import numpy as np
import torch
from PIL import Image

import dermground.platform.embed as embed_module
from dermground.platform.embed import Embedder, EmbeddingBatch, selected_attributes
from dermground.platform.model import shared_prefix
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


def embed_seconds(embedder: Embedder, images: list[Image.Image],
                  copy_prefix: bool) -> tuple[float, float, EmbeddingBatch]:
    """(wall s, CPU s, vectors) of `embedder.embed`, its suffix rows sharing or copying the prefix cache."""
    # The Embedder calls run_suffixes by this module-level name; the copying path is its reference mode.
    embed_module.run_suffixes = functools.partial(shared_prefix.run_suffixes, copy_prefix=copy_prefix)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        batch = embedder.embed(images)
        return time.perf_counter() - wall, time.process_time() - cpu, batch
    finally:
        embed_module.run_suffixes = shared_prefix.run_suffixes


def compare_prefix_sharing(model_dir: Path, images: list[Image.Image], config: tuple[int, int], rounds: int,
                           label: str) -> None:
    """Shared prefix cache against a copy per row, alternating rounds (the minimum per path), then the
    peak memory of one suffix pass per path, each in a fresh process."""
    embedder = Embedder(load_backbone(model_dir), *config)
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    vectors: dict[bool, EmbeddingBatch] = {}
    for round_index in range(rounds):
        for copy_prefix in ((True, False) if round_index % 2 == 0 else (False, True)):
            wall, cpu, vectors[copy_prefix] = embed_seconds(embedder, images, copy_prefix)
            times[copy_prefix].append((wall, cpu))
    diff = max(float(np.abs(vectors[True].h_im_a[k] - vectors[False].h_im_a[k]).max()) for k in vectors[True].h_im_a)
    per_image = {c: (min(w for w, _ in t) / len(images) * 1e3, min(p for _, p in t) / len(images) * 1e3)
                 for c, t in times.items()}
    print(f"  prefix cache (batch_size, suffix_batch) {config}, {rounds} rounds: copied per row "
          f"{per_image[True][0]:.2f} ms/image wall, {per_image[True][1]:.2f} CPU; "
          f"shared {per_image[False][0]:.2f} wall, "
          f"{per_image[False][1]:.2f} CPU; shared / copied x{per_image[False][0] / per_image[True][0]:.3f} wall, "
          f"x{per_image[False][1] / per_image[True][1]:.3f} CPU; max abs diff {diff:.1e}")
    grown = {c: _suffix_pass_peak_mib(model_dir, images, c) for c in (True, False)}
    print(f"  {label} suffix pass of {min(8, len(images))} images x 16 questions, peak memory added: copied per row "
          f"{grown[True]:.0f} MiB, shared {grown[False]:.0f} MiB (x{grown[False] / max(grown[True], 1e-9):.2f})")


def _suffix_pass_peak_mib(model_dir: Path, images: list[Image.Image], copy_prefix: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        for i, image in enumerate(images[:8]):
            image.save(Path(tmp) / f"{i}.png")
        out = subprocess.run([sys.executable, __file__, "--suffix-pass-child", str(model_dir), tmp,
                              "copy" if copy_prefix else "shared"], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def suffix_pass_child(model_dir: Path, image_dir: Path, copy_prefix: bool) -> None:
    """Prints how far one suffix pass (every question of every image) took this process's resident
    memory above what it held before the pass, MiB (Linux: the peak is reset through clear_refs)."""
    backbone = load_backbone(model_dir)
    images = [Image.open(p).convert("RGB") for p in sorted(image_dir.glob("*.png"))]
    attrs = selected_attributes(None)
    suffixes = Embedder(backbone)._suffixes(attrs)
    with torch.inference_mode():
        state = shared_prefix.encode_prefix(backbone, images)
        rows = [i for i in range(len(images)) for _ in attrs]
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
        shared_prefix.run_suffixes(backbone, state, rows, [suffixes[a.name] for _ in images for a in attrs],
                                   copy_prefix=copy_prefix)
        print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--suffix-pass-child":
        suffix_pass_child(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "copy")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per measurement")
    parser.add_argument("--image-size", type=int, default=448, help="small preset image size (multiple of 28)")
    parser.add_argument("--tiny-images", type=int, default=32, help="images for the tiny preset throughput")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds per path")
    parser.add_argument("--prefix-rounds", type=int, default=6,
                        help="alternating rounds of the shared against the per-row-copied prefix cache")
    args = parser.parse_args()
    print(machine_line())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    configs = [(1, 16), (2, 32), (4, 64)]
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = save_tiny_model(Path(tmp) / "tiny", preset="tiny")
        print("tiny preset (hidden 128, 2 layers, vision depth 2, 224 px):")
        tiny_images = synthetic_images(args.tiny_images, 224, seed=1)
        tiny = measure(tiny_dir, tiny_images, configs, naive=False, rounds=args.rounds)
        tiny_rate = args.tiny_images / tiny["shared_s"]
        compare_prefix_sharing(tiny_dir, tiny_images, tiny["best"], args.prefix_rounds, "tiny")
        small_dir = save_tiny_model(Path(tmp) / "small", preset="small", image_size=args.image_size)
        print(f"small preset (hidden 512, 4 layers, vision depth 4, {args.image_size} px):")
        small_images = synthetic_images(args.images, args.image_size, seed=2)
        small = measure(small_dir, small_images, configs, naive=True, rounds=args.rounds)
        compare_prefix_sharing(small_dir, small_images, small["best"], args.prefix_rounds, "small")
    speedup = small["naive_s"] / small["shared_s"]
    rate = args.images / small["shared_s"]
    print(f"tiny: {tiny['params']:,} params, {tiny_rate:.1f} images/s (h_im + 16 h_im_a), best {tiny['best']}")
    print(f"small: {small['params']:,} params, best (batch_size, suffix_batch) {small['best']}")
    print(f"# at the end: {load_line()}")
    print(f"embed speedup={speedup:.2f} min_cosine={small['min_cosine']:.6f} images_per_s={rate:.3f}")


if __name__ == "__main__":
    main()
