"""What the dihedral views cost: turning patches for training, a training step, and /predict per image.

Prints, in one run:
  1. `turn_patches` per example;
  2. bare-loop training steps/s with and without `--augment-views 8` (same batches, alternating
     blocks of 30 steps so machine drift hits both sides), and the batch-building time;
  3. `predict_attributes` seconds per image for (samples, views) = (0, 1), (16, 1), (2, 8), (4, 8),
     the API `/predict` cost.

Run: .venv/bin/python benchmarks/views.py --data H/demo/data --base H/models/base --adapter H/models/adapter
"""

from __future__ import annotations

import argparse

from harness import machine_line  # first: the offline environment


def main() -> None:
    import time
    from pathlib import Path

    import torch

    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.model.views import turn_patches
    from dermground.platform.predict import predict_attributes
    from dermground.train.collator import AnswerOnlyCollator, answer_window
    from dermground.train.dataset import build_training_set
    from dermground.train.lora import apply_lora
    from dermground.train.loop import ExampleCache, epoch_views

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks of 30 steps per side")
    args = parser.parse_args()
    print(machine_line())
    torch.set_num_threads(2)

    # 1. one example's patches, turned
    pixels, grid = torch.randn(64, 1176), torch.tensor([1, 8, 8])
    turn_patches(pixels, grid, 5)
    started = time.perf_counter()
    for _ in range(500):
        turn_patches(pixels, grid, 5)
    print(f"turn_patches per example (112 px, a quarter turn): {(time.perf_counter() - started) / 500 * 1e3:.3f} ms")

    # 2. training steps with and without turned images
    tuples = list(build_training_set(args.data, 5, 7, max_images=200).tuples)
    backbone = load_backbone(args.base, device="cpu", dtype="float32", for_training=True)
    model = apply_lora(backbone.core, 32, 64, 0.0, ["lm_head"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    collate = AnswerOnlyCollator(backbone.processor)
    cache = ExampleCache(collate, 2**31)
    views = epoch_views(len(tuples), 7, 0, 8)
    batches = [list(range(s * 16 % (len(tuples) - 16), s * 16 % (len(tuples) - 16) + 16)) for s in range(30)]
    for batch in batches:
        for i in batch:
            cache.get(i, tuples[i])

    def shown(i: int, augment: bool):  # noqa: ANN202 - as train.loop shows a tuple
        return cache.get(i, tuples[i]).in_view(views[i] if augment else 0)

    def block(augment: bool) -> tuple[float, float]:
        building = 0.0
        started = time.perf_counter()
        for indices in batches:
            t = time.perf_counter()
            batch = answer_window(collate.pad([shown(i, augment) for i in indices]))
            building += time.perf_counter() - t
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return len(batches) / (time.perf_counter() - started), building / len(batches) * 1e3

    block(False)  # warm-up
    rates: dict[bool, list[float]] = {False: [], True: []}
    build_ms: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.blocks):
        for augment in (False, True):
            rate, ms = block(augment)
            rates[augment].append(rate)
            build_ms[augment].append(ms)
    plain, turned = (sum(rates[a]) / len(rates[a]) for a in (False, True))
    print(f"training step (bare loop, batch 16, rank 32, 2 threads, {args.blocks} x 30 steps per side): "
          f"plain {plain:.2f} steps/s (batch {sum(build_ms[False]) / args.blocks:.2f} ms), augment-views 8 "
          f"{turned:.2f} steps/s (batch {sum(build_ms[True]) / args.blocks:.2f} ms): {turned / plain:.3f}x")

    # 3. /predict per image
    del model, backbone
    records = [r for r in read_records(Path(args.data), split="test") if isinstance(r, LesionRecord)][:20]
    images = [r.load_image() for r in records]
    predictor = load_backbone(args.base, args.adapter, device="cpu")
    predict_attributes(predictor, images[:1], samples=4, views=8)
    seconds = {}
    for samples, n_views in ((0, 1), (16, 1), (2, 8), (4, 8)):
        started = time.perf_counter()
        for image in images:
            predict_attributes(predictor, [image], samples=samples, views=n_views)
        seconds[(samples, n_views)] = (time.perf_counter() - started) / len(images)
    greedy = seconds[(0, 1)]
    print("predict one image (16 questions): " + ", ".join(
        f"{s} samples x {v} views {t:.3f} s ({t / greedy:.1f}x greedy)" if s else f"greedy {t:.3f} s"
        for (s, v), t in seconds.items()))


if __name__ == "__main__":
    main()
