"""Where a training step's time goes, in a bare loop without Ray, and what the loop's two savings buy.

Runs the same steps (same batches, same weights at the start) three ways in one process:
  baseline     the processor on every batch (decoded images kept), logits over the whole sequence
  cached       encoded examples cached across steps (train.loop.ExampleCache)
  cached+window  also logits only for the answer window (train.collator.answer_window)
and prints the cost of filling the cache, the time per part (images+processor, forward, backward, optimiser) and steps/s of
each, the speed-up over the baseline, and the largest loss difference (must be ~0: the savings
change the cost, not the maths). Compare its steps/s with the `train` command's progress bar to
see Ray Train's overhead.

Run: .venv/bin/python benchmarks/train_step.py --data H/demo/data --base H/models/base
     [--steps 50] [--threads 2] [--rank 32] [--dropout 0.05]
"""

from __future__ import annotations

import argparse
import time

from harness import machine_line  # first: the offline environment


def main() -> None:
    import torch

    from dermground.platform.model.loading import load_backbone
    from dermground.train.collator import AnswerOnlyCollator, answer_window
    from dermground.train.dataset import build_training_set
    from dermground.train.lora import apply_lora
    from dermground.train.loop import ExampleCache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.05)
    args = parser.parse_args()
    print(machine_line())

    torch.set_num_threads(args.threads)
    tuples = list(build_training_set(args.data, 5, 7, max_images=400).tuples)
    backbone = load_backbone(args.base, device="cpu", dtype="float32", for_training=True)
    model = apply_lora(backbone.core, args.rank, 2 * args.rank, args.dropout, ["lm_head"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    start_state = {id(p): p.detach().clone() for p in params}
    collate = AnswerOnlyCollator(backbone.processor)
    cache = ExampleCache(collate, 2**31)
    from dermground.platform.image_sources import load_image_bytes
    from dermground.platform.images import decode_image

    warmup = 10
    offsets = [s * args.batch_size % (len(tuples) - args.batch_size) for s in range(warmup + args.steps)]
    batches = [list(range(offset, offset + args.batch_size)) for offset in offsets]

    # Both sides start warm: the old loop kept decoded images, the new one keeps encoded examples.
    used = sorted({i for indices in batches for i in indices})
    # The first epoch fills the cache: the processor for an image's first question, tokenising
    # only for the others (its patches are reused). Timed against the processor for every example.
    started = time.perf_counter()
    for i in used:
        collate.encode(decode_image(load_image_bytes(tuples[i].image_ref)), tuples[i].question, tuples[i].answer)
    every = time.perf_counter() - started
    started = time.perf_counter()
    for i in used:
        cache.get(i, tuples[i])
    reused = time.perf_counter() - started
    print(f"cache fill of {len(used)} examples: processor every example {every * 1000 / len(used):.2f} ms each, "
          f"patches reused {reused * 1000 / len(used):.2f} ms each ({every / reused:.2f}x)")
    images = {tuples[i].image_ref: decode_image(load_image_bytes(tuples[i].image_ref)) for i in used}

    def build(variant: str, indices: list[int]) -> dict:
        if variant == "baseline":
            return collate([(images[tuples[i].image_ref], tuples[i].question, tuples[i].answer) for i in indices])
        batch = collate.pad([cache.get(i, tuples[i]) for i in indices])
        return answer_window(batch) if variant == "cached+window" else batch

    results = {}
    for variant in ("baseline", "cached", "cached+window"):
        with torch.no_grad():
            for p in params:
                p.copy_(start_state[id(p)])
        torch.manual_seed(0)  # the same dropout masks in every variant
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        parts = dict.fromkeys(("batch", "forward", "backward", "optimiser"), 0.0)
        losses = []
        started = 0.0
        for step, indices in enumerate(batches):
            if step == warmup:
                parts, started = dict.fromkeys(parts, 0.0), time.perf_counter()
            t = time.perf_counter()
            batch = build(variant, indices)
            parts["batch"] += time.perf_counter() - t
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
            losses.append(float(loss.detach()))
        total = time.perf_counter() - started
        results[variant] = (args.steps / total, losses)
        print(f"{variant:14s} " + " ".join(f"{k}={v / args.steps * 1000:.1f}ms" for k, v in parts.items())
              + f"  {args.steps / total:.2f} steps/s")
    base_rate, base_losses = results["baseline"]
    for variant in ("cached", "cached+window"):
        rate, losses = results[variant]
        diff = max(abs(a - b) for a, b in zip(base_losses, losses))
        print(f"{variant} speedup={rate / base_rate:.2f}x max_loss_diff={diff:.2e}")
    print(f"batch {args.batch_size}, rank {args.rank}, dropout {args.dropout}, {args.threads} threads, "
          f"{args.steps} timed steps after {warmup} warm-up")


if __name__ == "__main__":
    main()
