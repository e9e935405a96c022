"""Image patches handed from ingest's CPU stage to a bfloat16 model: float32 against bfloat16 patches.

The CPU stage (ingest/image_prep.py) sends each batch's patches to the embedding actors through
Ray's object store; a bfloat16 model (a GPU's default) rounds them to bfloat16 as its first step.
Sending them already rounded (platform/model/patch_dtype.py) gives the model the same numbers in
half the bytes. In one run, per image size, alternating rounds (the minimum per path):
- the stage's extra work: rounding each image's float32 patches to bfloat16 bit patterns (numpy);
- the hand-over: the batch put into the object store by the driver, fetched by a Ray actor and
  turned into the model's bfloat16 tensor there (float32: `torch.from_numpy(...).to(bfloat16)`;
  bfloat16: a view of the bits), as the embedding actor does before its model call.
A GPU also copies half the bytes to the card (not measured here: no card).

    .venv/bin/python benchmarks/patch_dtype.py [--batch 16] [--rounds 7] [--sizes 140,448]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import load_line, machine_line  # first: sets the offline environment

PATCH_VALUES = 3 * 2 * 14 * 14  # Qwen2-VL: channels x temporal patch x patch x patch


def stage_batch(images: int, side: int, seed: int) -> np.ndarray:
    """A batch's float32 patches as the recipe makes them: normalised pixels, [images, patches, values]."""
    rng = np.random.default_rng(seed)
    patches = (side // 14) ** 2
    pixels = rng.integers(0, 256, (images, patches, PATCH_VALUES)).astype(np.float32) / 255.0
    return ((pixels - 0.48) / 0.27).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images per batch (a GPU actor's default: 16)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="140,448", help="image sides in pixels (140: a SLICE-3D crop's 100 patches)")
    args = parser.parse_args()

    import ray
    import torch

    from dermground.platform.model.patch_dtype import encode_patches
    from dermground.platform.ray_runtime import ensure_ray

    @ray.remote(num_cpus=1)
    class Consumer:
        """Stands for the embedding actor: the model's input tensor from a fetched batch."""

        def __init__(self) -> None:
            torch.set_num_threads(1)

        def take(self, batch: dict[str, np.ndarray]) -> int:
            pixels = batch["pixel_values"]
            tensor = torch.from_numpy(np.ascontiguousarray(pixels))
            tensor = tensor.view(torch.bfloat16) if pixels.dtype == np.uint16 else tensor.to(torch.bfloat16)
            return int(tensor.numel())

    print(machine_line())
    ensure_ray(num_cpus=2, object_store_mb=512, temp_dir=Path(tempfile.mkdtemp(prefix="rayp", dir="/tmp")), preload=(),
               ray_data=False)
    consumer = Consumer.remote()  # type: ignore[attr-defined]
    ray.get(consumer.take.remote({"pixel_values": np.zeros((1, 1), np.float32)}))  # started
    print(f"batches of {args.batch} images, {args.rounds} rounds, float32 and bfloat16 alternating; min per path")
    for side in (int(s) for s in args.sizes.split(",")):
        patches32 = stage_batch(args.batch, side, seed=side)
        times: dict[str, list[float]] = {"encode": [], "float32": [], "bfloat16": []}
        for round_index in range(args.rounds):
            started = time.perf_counter()
            patches16 = np.stack([encode_patches(image, "bfloat16") for image in patches32])  # per image, as the stage
            times["encode"].append(time.perf_counter() - started)
            for name in (("float32", "bfloat16") if round_index % 2 == 0 else ("bfloat16", "float32")):
                block = {"pixel_values": patches32 if name == "float32" else patches16}
                started = time.perf_counter()
                ray.get(consumer.take.remote(ray.put(block)))
                times[name].append(time.perf_counter() - started)
        best = {name: min(values) * 1e3 / args.batch for name, values in times.items()}
        mib = {name: arr.nbytes / 2**20 / args.batch for name, arr in (("float32", patches32), ("bfloat16", patches16))}
        print(f"{side} x {side} px ({(side // 14) ** 2} patches): {mib['float32']:.2f} -> {mib['bfloat16']:.2f} MiB "
              f"per image; hand-over float32 {best['float32']:.2f} ms/image, bfloat16 {best['bfloat16']:.2f} ms/image "
              f"(x{best['bfloat16'] / best['float32']:.2f}); rounding in the stage {best['encode']:.2f} ms/image; "
              f"saved per image {best['float32'] - best['bfloat16'] - best['encode']:+.2f} ms of CPU")
    print(f"# at the end: {load_line()}")
    ray.shutdown()


if __name__ == "__main__":
    main()
