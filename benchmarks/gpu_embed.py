"""Ingest embedding and hierarchical re-embedding at real Qwen2-VL shapes (2B, 7B), on a GPU.

Builds each model from the published config (random weights, bfloat16, nothing downloaded; see
benchmarks/gpu_train_step.py), wraps it in the product's Backbone and runs the product's
`Embedder` on lesion-like 128 px images resized to --image-size:
  ingest        h_im + the 16 h_im_a per image, shared-prefix path, per (batch_size, suffix_batch)
  naive         17 full passes per image (`embed_reference`), on a few images: the speed-up and the
                smallest cosine between the two paths' vectors (bfloat16 arithmetic)
  hierarchical  one query of method (b): b candidates re-embedded with one question, no h_im, from
                JPEG files on disk (--candidate-size): the product's path (platform/candidate_embedding.py:
                read and prepared in a thread pool, overlapped with the model, batches from
                platform/search_embedder.py, --search-batch auto = the memory probe) against the
                serial path search took before (read one by one, then `Embedder.embed`, 4 a pass),
                same run; the ratio, the chosen batch, the probe's time and the model alone on the
                candidates already prepared (the floor the overlap approaches)
  ready         the best ingest configuration fed images already cut into patches, as ingest's CPU
                stage feeds its actors (platform/model/patch_recipe.py): the model's share alone
Each part runs per --vision-attention mode (batched over a batch's images as the product loads the
model, transformers' per-image loop, or both on the same weights).
Prints images/s, seconds per hierarchical query and peak memory; DEPLOY.md's computed GPU-hours
table is the thing these replace. Imports only the model code (no Ray, no store).

Run: python benchmarks/gpu_embed.py [--shapes 2b,7b] [--parts ingest,naive,hierarchical,ready]
     [--images 64] [--b 200] [--search-batch auto] [--json out.json]
     [--max-layers N (a quick check of the code path on a CPU)]
     CPU smoke check: python benchmarks/gpu_embed.py --shapes tiny --parts hierarchical --image-size 112
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

# Scripts beside this one (benchmarks/ is sys.path[0] when run as a script).
from harness import machine_line, timed  # first: the offline environment

from embed import min_cosine, synthetic_images
from gpu_train_step import REAL_SHAPES, construct, real_config
from prep import jpeg

PARTS = ("ingest", "naive", "hierarchical", "ready")
QUESTION = "areaMM2"  # the one attribute of the hierarchical query


def build_backbone(shape: str, image_size: int, device, max_layers: int | None, dtype):  # noqa: ANN001, ANN201
    """An eval-mode Backbone with the published sizes (2b, 7b) or a preset's (tiny, small) on `device`."""
    from dermground.platform.model.loading import Backbone
    from dermground.platform.model.processor import ImageOnlyQwen2VLProcessor, fixed_size_image_processor
    from dermground.platform.model.prompts import CHAT_TEMPLATE
    from dermground.platform.model.tiny import PRESETS, build_config, build_tokenizer

    tokenizer = build_tokenizer(0)
    config = real_config(shape, tokenizer, max_layers) if shape in REAL_SHAPES else build_config(PRESETS[shape], tokenizer)
    model = construct(config, dtype, device)
    model.eval().requires_grad_(False)
    processor = ImageOnlyQwen2VLProcessor(image_processor=fixed_size_image_processor(image_size), tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    return Backbone(model=model, processor=processor, tokenizer=tokenizer, device=device, dtype=dtype,
                    fingerprint=f"bench-{shape}", model_dir=Path("."))


def write_candidates(folder: Path, b: int, size: str) -> list[dict[str, object]]:
    """b lesion-like JPEG files of WxH pixels and the payloads that point at them (as ingest stores them)."""
    width, height = (int(x) for x in size.split("x"))
    payloads = []
    for i in range(b):
        path = folder / f"ISIC_{i:07d}.jpg"
        path.write_bytes(jpeg(width, height, seed=i))
        payloads.append({"isic_id": path.stem, "image_ref": str(path)})
    return payloads


def hierarchical(backbone, payloads: list[dict[str, object]], search_batch: str, rounds: int, sync) -> dict:  # noqa: ANN001
    """One hierarchical query's re-embedding: the serial path before, the product's path now, the model alone."""
    import numpy as np
    import torch

    from dermground.platform.candidate_embedding import embed_candidates, image_preparer, read_point_image
    from dermground.platform.embed import Embedder
    from dermground.platform.embedder_provider import EmbedderProvider
    from dermground.platform.images import DEFAULT_MAX_PIXELS
    from dermground.platform.search_embedder import search_embedder

    cuda = backbone.device.type == "cuda"
    probe_s, chosen = timed(lambda: search_embedder(backbone, search_batch if search_batch == "auto" else int(search_batch)),
                            sync)
    before = Embedder(backbone)  # what search built before: 4 images a prefix pass, 64 suffix rows
    provider = EmbedderProvider.of(chosen)

    def serial():  # noqa: ANN202
        images = [read_point_image(p, DEFAULT_MAX_PIXELS) for p in payloads]
        return before.embed(images, [QUESTION], include_image=False).h_im_a[QUESTION]

    def overlapped():  # noqa: ANN202
        found = embed_candidates(provider, payloads, [QUESTION], max_pixels=DEFAULT_MAX_PIXELS)
        return np.stack([found.vectors[i][f"q_{QUESTION}"] for i in range(len(payloads))])

    prepare = image_preparer(backbone.processor.image_processor)
    read_s, prepared = timed(lambda: [prepare(read_point_image(p, DEFAULT_MAX_PIXELS)) for p in payloads])
    times: dict[str, list[float]] = {"serial": [], "overlapped": [], "model": []}
    peak = float("nan")
    for _ in range(rounds):  # alternating, the minimum per path: load from elsewhere hits both alike
        seconds, old = timed(serial, sync)
        times["serial"].append(seconds)
        if cuda:
            torch.cuda.reset_peak_memory_stats(backbone.device)
        seconds, new = timed(overlapped, sync)
        times["overlapped"].append(seconds)
        if cuda:
            peak = torch.cuda.max_memory_allocated(backbone.device) / 2**30
        seconds, _ = timed(lambda: chosen.embed_prepared(prepared, [QUESTION], include_image=False), sync)
        times["model"].append(seconds)
    cosine = float(((old * new).sum(1) / np.linalg.norm(old, axis=1) / np.linalg.norm(new, axis=1)).min())
    best = {name: min(values) for name, values in times.items()}
    return {"b": len(payloads), "batch_size": chosen.batch_size, "max_patches": chosen.max_patches,
            "suffix_batch": chosen.suffix_batch,
            "probe_s": probe_s, "serial_s": best["serial"], "overlapped_s": best["overlapped"],
            "model_alone_s": best["model"], "read_prepare_serial_s": read_s,
            "speedup": best["serial"] / best["overlapped"], "min_cosine": cosine, "peak_gib": peak, "rounds": times}


def main() -> None:
    import torch

    from dermground.platform.embed import Embedder
    from dermground.platform.model.patch_recipe import PatchRecipe
    from dermground.platform.model.vision_attention import batch_vision_attention, unbatch_vision_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2b,7b", help="2b, 7b (published sizes) or tiny, small (presets)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which measurements, of {', '.join(PARTS)}")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--images", type=int, default=64, help="images per ingest timing")
    parser.add_argument("--naive-images", type=int, default=8)
    parser.add_argument("--b", type=int, default=200, help="candidates of one hierarchical query")
    parser.add_argument("--candidate-size", default="600x450", help="WxH of the candidates' JPEG files")
    parser.add_argument("--search-batch", default="auto", help="search's images a pass: auto (measured) or N")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the hierarchical paths")
    parser.add_argument("--configs", default="8:128,16:256,32:512", help="BATCH_SIZE:SUFFIX_BATCH pairs to time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                        help="auto: bfloat16 on CUDA, float32 on a CPU (as the product loads)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice, all cores)")
    parser.add_argument("--vision-attention", choices=("batched", "per_image", "both"), default="batched",
                        help="the vision tower's attention: batched over a batch's images (the product's), "
                             "transformers' loop over images, or each in turn on the same weights")
    parser.add_argument("--max-layers", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    modes = ("batched", "per_image") if args.vision_attention == "both" else (args.vision_attention,)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        raise SystemExit(f"unknown parts {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (torch.bfloat16 if cuda else torch.float32)

    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None

    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(machine_line())
    print(f"device {name}, torch {torch.__version__}, {args.image_size} px, {str(dtype).removeprefix('torch.')}, "
          f"torch threads {torch.get_num_threads()}"
          + (f", at most {args.max_layers} layers (code-path check, not real cost)" if args.max_layers else ""),
          flush=True)
    images = synthetic_images(max(args.images, args.naive_images, 4), 128)
    folder = Path(tempfile.mkdtemp(prefix="gpu_embed_candidates_"))
    payloads = write_candidates(folder, args.b, args.candidate_size) if "hierarchical" in parts else []
    results = []
    for shape in args.shapes.split(","):
        backbone = build_backbone(shape, args.image_size, device, args.max_layers, dtype)
        for mode in modes:
            (batch_vision_attention if mode == "batched" else unbatch_vision_attention)(backbone.model)
            label = f"{shape} ({mode} vision attention)"
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            Embedder(backbone, 4, 64).embed(images[:4])  # warm-up
            row: dict = {"shape": shape, "vision_attention": mode}
            embedder = Embedder(backbone, 16, 256)
            if "ingest" in parts:
                ingest = {}
                for pair in args.configs.split(","):
                    batch_size, suffix_batch = (int(x) for x in pair.split(":"))
                    seconds, _ = timed(lambda: Embedder(backbone, batch_size, suffix_batch).embed(images[:args.images]),
                                       sync)
                    ingest[pair] = args.images / seconds
                    print(f"{label} ingest batch_size={batch_size} suffix_batch={suffix_batch}: "
                          f"{ingest[pair]:.1f} images/s", flush=True)
                best = max(ingest, key=ingest.get)
                embedder = Embedder(backbone, *(int(x) for x in best.split(":")))
                row |= {"ingest_images_per_s": ingest, "best": best}
                print(f"{label}: best {best} {ingest[best]:.1f} images/s (16 h_im_a + h_im each)", flush=True)
            if "naive" in parts:
                few = images[:args.naive_images]
                shared_s, shared = timed(lambda: embedder.embed(few), sync)
                naive_s, naive = timed(lambda: embedder.embed_reference(few), sync)
                row |= {"naive_s_per_image": naive_s / len(few), "shared_s_per_image": shared_s / len(few),
                        "speedup": naive_s / shared_s, "min_cosine": min_cosine(shared, naive)}
                print(f"{label}: naive 17 passes {row['naive_s_per_image']:.3f} s/image vs shared "
                      f"{row['shared_s_per_image']:.3f} ({row['speedup']:.1f}x), min cosine {row['min_cosine']:.4f}",
                      flush=True)
            if "ready" in parts:
                recipe = PatchRecipe.from_image_processor(backbone.processor.image_processor)
                prepared = [recipe.prepare(image) for image in images[:args.images]]
                plain_s, _ = timed(lambda: embedder.embed(images[:args.images]), sync)
                ready_s, _ = timed(lambda: embedder.embed_prepared(prepared), sync)
                row |= {"ready_tensors_images_per_s": args.images / ready_s, "images_in_images_per_s": args.images / plain_s}
                print(f"{label}: fed ready tensors (the CPU stage's output) {args.images / ready_s:.1f} images/s, "
                      f"x{plain_s / ready_s:.2f} of images in ({args.images / plain_s:.1f} images/s)", flush=True)
            if "hierarchical" in parts:
                hier = hierarchical(backbone, payloads, args.search_batch, args.rounds, sync)
                row["hierarchical"] = hier
                print(f"{label}: hierarchical query (b={hier['b']}, 1 question, {args.candidate_size} JPEG files): serial "
                      f"{hier['serial_s']:.2f} s (read one by one, 4 a pass) -> overlapped {hier['overlapped_s']:.2f} s "
                      f"(at most {hier['batch_size']} images and {hier['max_patches']} patches a pass, "
                      f"search_batch={args.search_batch}), x{hier['speedup']:.2f}; "
                      f"model alone on prepared candidates {hier['model_alone_s']:.2f} s; reading + preparing serially "
                      f"{hier['read_prepare_serial_s']:.2f} s; sizing {hier['probe_s']:.2f} s; min cosine "
                      f"{hier['min_cosine']:.5f}; peak {hier['peak_gib']:.1f} GiB", flush=True)
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
            results.append(row)
        del backbone, embedder
        if cuda:
            torch.cuda.empty_cache()
    shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "torch": torch.__version__, "image_size": args.image_size, "runs": results},
                      handle, indent=1)


if __name__ == "__main__":
    main()
