"""The vision tower with attention batched over images against transformers' loop over images.

Builds each family's vision tower at its published sizes (random weights; Qwen2-VL-2B/7B's tower:
1280 wide, 16 heads, MLP x4; Qwen2.5-VL-3B/7B's: 1280 wide, 16 heads, windows of 112 px with full
attention in every 8th block), feeds it --images images of --image-size px (448 px = 1,024
patches each) and times, round by round on the same weights, the stock attention modules and the
batched ones (platform/model/vision_attention.py: the class of each module is switched between
rounds, so nothing else differs):
  embed   eval forward without gradients (ingest, search)
  train   forward + backward in train mode (a LoRA step's vision half)
Prints p50 seconds of each, their ratio (stock / batched, > 1 = batched faster), the attention
calls and host reads (a GPU's waits) per forward and the largest difference between the two outputs.

On the CPU the default depth is cut to 4 blocks (a full tower takes minutes a pass on 2 cores);
on a GPU run it with --depth 32 --images 32 --dtype bfloat16.

Run: python benchmarks/vision_attention.py [--families qwen2_vl,qwen2_5_vl] [--images 4]
     [--image-size 448] [--depth 4] [--rounds 5] [--modes embed,train] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics

# Scripts beside this one (benchmarks/ is sys.path[0] when run as a script).
from harness import load_line, machine_line, timed  # first: the offline environment

from gpu_train_step import construct

PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


def vision_tower(family: str, depth: int, dtype, device):  # noqa: ANN001, ANN201
    """A random-weight vision tower of the family at its published sizes, `depth` blocks, SDPA attention."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25
    from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen2

    if family == "qwen2_vl":
        config = qwen2.Qwen2VLVisionConfig(depth=depth, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)
        tower_class = qwen2.Qwen2VisionTransformerPretrainedModel
    else:
        full = [i for i in range(depth) if i % 8 == 7] or [depth - 1]  # published: 7, 15, 23, 31
        config = qwen25.Qwen2_5_VLVisionConfig(depth=depth, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                               out_hidden_size=2048, window_size=112, fullatt_block_indexes=full)
        tower_class = qwen25.Qwen2_5_VisionTransformerPretrainedModel
    config._attn_implementation = "sdpa"
    return construct(config, dtype, device, tower_class)


def attention_calls(tower, pixels, grid) -> tuple[int, int]:  # noqa: ANN001
    """(SDPA calls, reads of a tensor's values back to the host) in one forward of the tower.

    A host read (`tolist`, `item`) waits, on a GPU, for every kernel queued before it."""
    import torch
    from torch.nn import functional

    calls = reads = 0
    original = functional.scaled_dot_product_attention
    methods = {name: getattr(torch.Tensor, name) for name in ("tolist", "item")}

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    def reading(method):  # noqa: ANN001, ANN202
        def read(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            nonlocal reads
            reads += 1
            return method(self, *args, **kwargs)
        return read

    functional.scaled_dot_product_attention = counting
    for name, method in methods.items():
        setattr(torch.Tensor, name, reading(method))
    try:
        with torch.no_grad():
            tower(pixels, grid_thw=grid)
    finally:
        functional.scaled_dot_product_attention = original
        for name, method in methods.items():
            setattr(torch.Tensor, name, method)
    return calls, reads


def main() -> None:
    import torch

    from dermground.platform.model.vision_attention import batch_vision_attention, unbatch_vision_attention

    # the class of each attention module is switched, not the tower rebuilt: same weights, other forward
    switch = {"stock": unbatch_vision_attention, "batched": batch_vision_attention}

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="qwen2_vl,qwen2_5_vl")
    parser.add_argument("--images", type=int, default=4, help="images per forward")
    parser.add_argument("--image-size", type=int, default=448, help="square images, a multiple of 28 px")
    parser.add_argument("--depth", type=int, default=None, help="vision blocks (published: 32; default 4 on CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each (after one warm-up)")
    parser.add_argument("--modes", default="embed,train")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    depth = args.depth or (32 if cuda else 4)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None
    side = args.image_size // 14
    grid = torch.tensor([[1, side, side]] * args.images, device=device)
    print(machine_line())
    print(f"# device {torch.cuda.get_device_name(device) if cuda else 'CPU'}, torch {torch.__version__}, {dtype}; "
          f"{args.images} images of {args.image_size} px ({side * side} patches each), {depth} vision blocks, "
          f"{args.rounds} rounds, stock and batched alternating", flush=True)
    print("| family | mode | stock p50 s | batched p50 s | stock / batched | SDPA calls per forward "
          "| host reads per forward | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for family in args.families.split(","):
        tower = vision_tower(family, depth, dtype, device)
        pixels = torch.randn(int(grid.prod(-1).sum()), PATCH_DIM, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        calls = {}
        outputs = {}
        for label, use in switch.items():
            use(tower)
            calls[label] = attention_calls(tower, pixels, grid)
            with torch.no_grad():
                out = tower(pixels, grid_thw=grid)
            outputs[label] = getattr(out, "pooler_output", out).float()
        diff = (outputs["stock"] - outputs["batched"]).abs().max().item()
        for mode in args.modes.split(","):
            tower.train(mode == "train")

            def step() -> None:
                if mode == "train":
                    tower.zero_grad(set_to_none=True)
                    out = tower(pixels, grid_thw=grid)
                    getattr(out, "pooler_output", out).float().square().mean().backward()
                else:
                    with torch.no_grad():
                        tower(pixels, grid_thw=grid)

            seconds: dict[str, list[float]] = {"stock": [], "batched": []}
            for round_index in range(args.rounds + 1):  # round 0 warms both up
                for label, use in switch.items():
                    use(tower)
                    elapsed, _ = timed(step, sync)
                    if round_index:
                        seconds[label].append(elapsed)
            p50 = {label: statistics.median(values) for label, values in seconds.items()}
            print(f"| {family} | {mode} | {p50['stock']:.3f} | {p50['batched']:.3f} | "
                  f"x{p50['stock'] / p50['batched']:.2f} | {calls['stock'][0]} -> {calls['batched'][0]} | "
                  f"{calls['stock'][1]} -> {calls['batched'][1]} | {diff:.2e} |",
                  flush=True)
        del tower
        if cuda:
            torch.cuda.empty_cache()
    print(f"# at the end: {load_line()}")


if __name__ == "__main__":
    main()
