"""Where a training step's time goes, in a bare loop without Ray: image cache, collate, forward, backward, optimiser.

Compare its steps/s with the `train` command's progress bar to see Ray Train's overhead.

Run: .venv/bin/python benchmarks/train_step.py --data H/demo/data --base H/models/base [--steps 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch

    from dermground.platform.model.loading import load_backbone
    from dermground.train.collator import AnswerOnlyCollator
    from dermground.train.dataset import build_training_set
    from dermground.train.lora import apply_lora
    from dermground.train.loop import _ImageCache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tuples = list(build_training_set(args.data, 5, 7, max_images=400).tuples)
    backbone = load_backbone(args.base, device="cpu", dtype="float32", for_training=True)
    model = apply_lora(backbone.core, args.rank, 2 * args.rank, 0.05, ["lm_head"])
    model.train()
    collate, cache = AnswerOnlyCollator(backbone.processor), _ImageCache()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    parts = dict.fromkeys(("images", "collate", "forward", "backward", "optimiser"), 0.0)
    warmup, started = 10, 0.0
    for step in range(warmup + args.steps):
        if step == warmup:
            parts, started = dict.fromkeys(parts, 0.0), time.perf_counter()
        offset = step * args.batch_size % max(1, len(tuples) - args.batch_size)
        chunk = tuples[offset:offset + args.batch_size]
        t = time.perf_counter()
        examples = [(cache.get(x.image_ref), x.question, x.answer) for x in chunk]
        parts["images"] += time.perf_counter() - t
        t = time.perf_counter()
        batch = collate(examples)
        parts["collate"] += time.perf_counter() - t
        t = time.perf_counter()
        loss = model(**batch).loss
        parts["forward"] += time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        parts["backward"] += time.perf_counter() - t
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        parts["optimiser"] += time.perf_counter() - t
    total = time.perf_counter() - started
    print(" ".join(f"{k}={v / args.steps * 1000:.1f}ms" for k, v in parts.items()))
    print(f"bare loop: {args.steps / total:.2f} steps/s ({total / args.steps * 1000:.1f} ms/step), "
          f"batch {args.batch_size}, rank {args.rank}, {args.threads} threads")


if __name__ == "__main__":
    main()
