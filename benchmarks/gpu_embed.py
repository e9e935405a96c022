"""Ingest embedding and hierarchical re-embedding at real Qwen2-VL shapes (2B, 7B), on a GPU.

Builds each model from the published config (random weights, bfloat16, nothing downloaded; see
benchmarks/gpu_train_step.py), wraps it in the product's Backbone and runs the product's
`Embedder` on lesion-like 128 px images resized to --image-size:
  ingest        h_im + the 16 h_im_a per image, shared-prefix path, per (batch_size, suffix_batch)
  naive         17 full passes per image (`embed_reference`), on a few images: the speed-up and the
                smallest cosine between the two paths' vectors (bfloat16 arithmetic)
  hierarchical  one query of method (b): b candidates re-embedded with one question, no h_im
  ready tensors the best ingest configuration fed images already cut into patches, as ingest's CPU
                stage feeds its actors (platform/model/patch_recipe.py): the model's share alone
Prints images/s, seconds per hierarchical query and peak memory; DEPLOY.md's computed GPU-hours
table is the thing these replace.

Run: python benchmarks/gpu_embed.py [--shapes 2b,7b] [--images 64] [--b 200] [--json out.json]
     [--max-layers N (a quick check of the code path on a CPU)]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Scripts beside this one (benchmarks/ is sys.path[0] when run as a script).
from harness import machine_line, timed  # first: the offline environment

from embed import min_cosine, synthetic_images
from gpu_train_step import construct, real_config


def build_backbone(shape: str, image_size: int, device, max_layers: int | None):  # noqa: ANN001, ANN201
    """A bfloat16 eval-mode Backbone with the published sizes on `device`."""
    import torch

    from dermground.platform.model.loading import Backbone
    from dermground.platform.model.processor import ImageOnlyQwen2VLProcessor, fixed_size_image_processor
    from dermground.platform.model.prompts import CHAT_TEMPLATE
    from dermground.platform.model.tiny import build_tokenizer

    tokenizer = build_tokenizer(0)
    model = construct(real_config(shape, tokenizer, max_layers), torch.bfloat16, device)
    model.eval().requires_grad_(False)
    processor = ImageOnlyQwen2VLProcessor(image_processor=fixed_size_image_processor(image_size), tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    return Backbone(model=model, processor=processor, tokenizer=tokenizer, device=device, dtype=torch.bfloat16,
                    fingerprint=f"bench-{shape}", model_dir=Path("."))


def main() -> None:
    import torch

    from dermground.platform.embed import Embedder
    from dermground.platform.model.patch_recipe import PatchRecipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2b,7b")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--images", type=int, default=64, help="images per ingest timing")
    parser.add_argument("--naive-images", type=int, default=8)
    parser.add_argument("--b", type=int, default=200, help="candidates of one hierarchical query")
    parser.add_argument("--configs", default="8:128,16:256,32:512", help="BATCH_SIZE:SUFFIX_BATCH pairs to time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-layers", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None

    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(machine_line())
    print(f"device {name}, torch {torch.__version__}, {args.image_size} px, bfloat16"
          + (f", at most {args.max_layers} layers (code-path check, not real cost)" if args.max_layers else ""),
          flush=True)
    images = synthetic_images(max(args.images, args.b), 128)
    results = []
    for shape in args.shapes.split(","):
        backbone = build_backbone(shape, args.image_size, device, args.max_layers)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        Embedder(backbone, 4, 64).embed(images[:4])  # warm-up
        ingest = {}
        for pair in args.configs.split(","):
            batch_size, suffix_batch = (int(x) for x in pair.split(":"))
            seconds, _ = timed(lambda: Embedder(backbone, batch_size, suffix_batch).embed(images[:args.images]), sync)
            ingest[pair] = args.images / seconds
            print(f"{shape} ingest batch_size={batch_size} suffix_batch={suffix_batch}: {ingest[pair]:.1f} images/s",
                  flush=True)
        best = max(ingest, key=ingest.get)
        embedder = Embedder(backbone, *(int(x) for x in best.split(":")))
        few = images[:args.naive_images]
        shared_s, shared = timed(lambda: embedder.embed(few), sync)
        naive_s, naive = timed(lambda: embedder.embed_reference(few), sync)
        hier_s, _ = timed(lambda: embedder.embed(images[:args.b], attributes=["areaMM2"], include_image=False), sync)
        recipe = PatchRecipe.from_image_processor(backbone.processor.image_processor)
        prepared = [recipe.prepare(image) for image in images[:args.images]]
        ready_s, _ = timed(lambda: embedder.embed_prepared(prepared), sync)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
        row = {"shape": shape, "ingest_images_per_s": ingest, "best": best,
               "naive_s_per_image": naive_s / len(few), "shared_s_per_image": shared_s / len(few),
               "speedup": naive_s / shared_s, "min_cosine": min_cosine(shared, naive),
               "hierarchical_query_s": hier_s, "b": args.b, "peak_gib": peak,
               "ready_tensors_images_per_s": args.images / ready_s}
        results.append(row)
        print(f"{shape}: best {best} {ingest[best]:.1f} images/s (16 h_im_a + h_im each); naive 17 passes "
              f"{row['naive_s_per_image']:.3f} s/image vs shared {row['shared_s_per_image']:.3f} "
              f"({row['speedup']:.1f}x), min cosine {row['min_cosine']:.4f}; hierarchical query (b={args.b}, "
              f"1 question) {hier_s:.2f} s; peak {peak:.1f} GiB; fed ready tensors (the CPU stage's output) "
              f"{row['ready_tensors_images_per_s']:.1f} images/s, x{row['ready_tensors_images_per_s'] / ingest[best]:.2f} "
              "of images in", flush=True)
        del backbone, embedder
        if cuda:
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "torch": torch.__version__, "image_size": args.image_size, "runs": results},
                      handle, indent=1)


if __name__ == "__main__":
    main()
