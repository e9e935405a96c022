"""Ingest's CPU stage per core: images/s of decode + patchify at the tiny model's and Qwen's settings.

What a GPU ingest needs from its CPUs (issue #25 item 4: 2B ingest >= 100 images/s on one card):
each embedding actor is fed by the CPU stage's tasks (ingest/image_prep.py), one per spare CPU,
so the cores a card needs = target images/s / this script's images/s per core. In one run, per
source size: JPEG bytes (quality 90, as dermoscopy exports) decoded through the image gate
(`decode_image`: JPEGs are reduced by the decoder when larger than the pixel limit), then
`PatchRecipe.prepare`, against the same images through transformers' image processor (the
reference the recipe is bit-identical to). Settings: the tiny model (112 x 112 grid) and Qwen2-VL's
published ones (min 3,136 / max 12,845,056 pixels: a 1,024 px photo stays ~1,024 px, i.e. ~5,300
patches) and the same with max_pixels 448 x 448 (the resolution the paper's runs and our GPU
benchmarks use).

    .venv/bin/python benchmarks/prep.py [--images 40] [--sizes 133x133,600x450,1024x768,4000x3000]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from harness import machine_line, timed  # first: sets the offline environment
from PIL import Image


def jpeg(width: int, height: int, seed: int) -> bytes:
    """A lesion-like photo (smooth skin tone, a darker blob, sensor noise) as JPEG bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    cy, cx, r = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65), min(width, height) * 0.25
    blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))[..., None]
    skin, lesion = np.array([215, 170, 140], np.float32), np.array([95, 60, 40], np.float32)
    pixels = skin * (1 - blob) + lesion * blob + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="images per source size [40]")
    parser.add_argument("--sizes", default="133x133,600x450,1024x768,4000x3000", help="source sizes, WxH, comma-separated")
    args = parser.parse_args()

    from dermground.platform.images import DEFAULT_MAX_PIXELS, decode_image
    from dermground.platform.model.hub_layout import PREPROCESSOR_CONFIG
    from dermground.platform.model.patch_recipe import PatchRecipe
    from dermground.platform.model.processor import Qwen2VLImageProcessorPil
    from dermground.platform.model.image_inputs import prepare_pixels

    settings = {
        "tiny (112 x 112)": {**PREPROCESSOR_CONFIG, "min_pixels": 112 * 112, "max_pixels": 112 * 112},
        "Qwen2-VL published": PREPROCESSOR_CONFIG,
        "Qwen2-VL, max 448 x 448": {**PREPROCESSOR_CONFIG, "max_pixels": 448 * 448},
    }
    print(machine_line())
    print(f"{args.images} JPEGs per size; one process, one core; images/s (ms per image); "
          f"patches per image; recipe / processor = the processor's time over the recipe's")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            photos = [jpeg(width, height, seed) for seed in range(args.images)]
            decode_s, decoded = timed(lambda: [decode_image(p, max_pixels=DEFAULT_MAX_PIXELS) for p in photos])
            print(f"{width} x {height} ({len(photos[0]) // 1024} KB): decode {len(photos) / decode_s:.1f} images/s "
                  f"({1000 * decode_s / len(photos):.1f} ms; decoded at {decoded[0].width} x {decoded[0].height})")
            for name, config in settings.items():
                folder = Path(tmp) / name.split()[0]
                folder.mkdir(exist_ok=True)
                (folder / "preprocessor_config.json").write_text(json.dumps(config))
                recipe = PatchRecipe.from_model_dir(folder)
                processor = Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True)
                recipe_s, prepared = timed(lambda: [recipe.prepare(image) for image in decoded])
                processor_s, _ = timed(lambda: [prepare_pixels(processor, [image]) for image in decoded])
                total = decode_s + recipe_s
                print(f"  {name}: prepare {1000 * recipe_s / len(decoded):.1f} ms "
                      f"({prepared[0].pixel_values.shape[0]} patches, "
                      f"{prepared[0].pixel_values.nbytes / 2**20:.1f} MiB); decode + prepare "
                      f"{len(decoded) / total:.1f} images/s per core; recipe / processor x{processor_s / recipe_s:.2f}")


if __name__ == "__main__":
    main()
