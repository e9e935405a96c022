"""LoRA training steps per second at real Qwen2-VL shapes (2B, 7B) and at the local presets, on a GPU.

Nothing is downloaded: each model is built from a config with the published Qwen2-VL-2B / -7B sizes
(random weights: a step's cost does not depend on their values), wrapped with the product's LoRA
(train/lora.py: every vision block, the merger and every decoder layer) and fed batches from the
product's collator and fixed-size image processor, with logits kept for the answer window only,
as train/loop.py does. A step = pad the encoded examples, move them to the device, forward,
backward, clip, AdamW. The tokenizer is the locally built one (Qwen2's digit-per-token split, but a
1,024-token BPE), so prompts are a few tokens shorter than with Qwen's own; the embedding and
output layers have the real 151,936 / 152,064 rows.

Precisions (the two settings of `dermground train --precision`; the model is prepared by
train/loop.py's own `training_dtype` and `prepare_for_training`):
  fp32  float32 weights and arithmetic (the default)
  bf16  the frozen base in bfloat16, trained weights in float32, bfloat16 autocast
`--checkpointing` is `train --gradient-checkpointing`.

LoRA flags: the paper's (rank 8, alpha 16, dropout 0.05) for 2b/7b; the demo's (rank 32, alpha 64,
no dropout, lm_head trained) for the tiny and small presets.

`--vision-attention` picks the vision attention: batched over the images of a batch (the product's
default, platform/model/vision_attention.py), per_image (transformers' loop) or both (each run
twice, to compare on the same card).

Prints one line per run: seconds per step, samples/s, peak device memory, the first loss, the
hours one epoch of the paper's D_tr (1,412,820 tuples) would take at that rate on this one device,
and the arithmetic rate against the card's dense bf16 peak (`--peak-tflops`, known for H100/H200):
model FLOPs per step = 2 x (forward + input-gradient backward) x 2 x parameters x tokens, over the
vision tower (patches) and the decoder (padded sequence); recomputation (`--checkpointing`) and
attention scores are not counted, so the figure is a floor of what the card does (with
`--checkpointing` the line also gives the rate counting the recomputed forward, 1.5x).

Run: python benchmarks/gpu_train_step.py [--runs 2b:448:16:bf16,7b:448:4:bf16] [--steps 10]
     [--checkpointing] [--json results.json] [--max-layers N (a quick check of the code path on a CPU)]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from dataclasses import dataclass

from harness import machine_line, timed  # first: the offline environment

PAPER_TUPLES = 1_412_820  # the paper's D_tr: 282,564 training images x W=5

# Published Qwen2-VL sizes (config.json of Qwen2-VL-2B-Instruct and -7B-Instruct).
REAL_SHAPES = {
    "2b": {"text": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2},
           "vision_depth": 32, "tie_word_embeddings": True},
    "7b": {"text": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4},
           "vision_depth": 32, "tie_word_embeddings": False},
}
PRESET_SHAPES = ("tiny", "small")  # platform/model/tiny.py PRESETS
PAPER_LORA = {"rank": 8, "alpha": 16, "dropout": 0.05}
DEMO_LORA = {"rank": 32, "alpha": 64, "dropout": 0.0, "modules_to_save": ["lm_head"]}


@dataclass(frozen=True)
class Run:
    shape: str
    image_size: int
    batch: int
    precision: str

    @classmethod
    def parse(cls, text: str) -> Run:
        shape, size, batch, precision = text.split(":")
        from dermground.train.config import PRECISIONS

        if shape not in (*REAL_SHAPES, *PRESET_SHAPES) or precision not in PRECISIONS:
            raise SystemExit(f"bad run {text!r}: SHAPE:PX:BATCH:PRECISION with SHAPE in 2b, 7b, tiny, small "
                             "and PRECISION fp32 or bf16")
        return cls(shape, int(size), int(batch), precision)


def real_config(shape: str, tokenizer, max_layers: int | None):  # noqa: ANN001, ANN201
    """A Qwen2VLConfig with the published sizes and the local tokenizer's special-token ids."""
    from transformers import Qwen2VLConfig

    from dermground.platform.model.tiny import SPECIAL_TOKENS

    spec = REAL_SHAPES[shape]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(spec["text"])
    depth = spec["vision_depth"]
    if max_layers:
        text["num_hidden_layers"] = min(text["num_hidden_layers"], max_layers)
        depth = min(depth, max_layers)
    return Qwen2VLConfig(
        text_config={**text, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": depth, "embed_dim": 1280, "hidden_size": text["hidden_size"], "num_heads": 16,
                       "mlp_ratio": 4, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec["tie_word_embeddings"],
    )


def construct(config, dtype, device, model_class=None):  # noqa: ANN001, ANN201
    """A random-weight model (default Qwen2VLForConditionalGeneration) made directly in `dtype` on `device` (seed 0).

    Built in place: a 7B float32 copy on the host first would cost 33 GB and minutes.
    """
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            return (model_class or Qwen2VLForConditionalGeneration)(config)
    finally:
        torch.set_default_dtype(previous)


def build_model(shape: str, precision: str, device, max_layers: int | None,  # noqa: ANN001, ANN201
                checkpointing: bool = False):
    """The model on `device`, prepared as a training worker prepares it, and the tokenizer its batches use."""
    from dermground.platform.model.tiny import PRESETS, build_config, build_tokenizer
    from dermground.train.config import TrainConfig
    from dermground.train.loop import prepare_for_training, training_dtype

    tokenizer = build_tokenizer(0)
    config = real_config(shape, tokenizer, max_layers) if shape in REAL_SHAPES else build_config(PRESETS[shape], tokenizer)
    lora = PAPER_LORA if shape in REAL_SHAPES else DEMO_LORA
    run_config = TrainConfig(precision=precision, gradient_checkpointing=checkpointing, **lora)
    model = construct(config, training_dtype(run_config), device)
    total = sum(p.numel() for p in model.parameters())
    return prepare_for_training(model, run_config), tokenizer, total


def dense_parameters(model) -> tuple[int, int]:  # noqa: ANN001
    """(vision tower, decoder layers) parameters that multiply every patch / token (no embedding tables)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    vision = sum(p.numel() for p in core.model.visual.parameters())
    decoder = sum(p.numel() for p in core.model.language_model.layers.parameters())
    return vision, decoder


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of known cards (SXM parts; NVIDIA's data sheets), None otherwise."""
    for part, tflops in (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0)):
        if part in device_name:
            return tflops
    return None


def encoded_examples(tokenizer, image_size: int, count: int):  # noqa: ANN001, ANN201
    """`count` examples through the product's processor and collator: lesion-sized noise images, real questions."""
    import numpy as np
    from PIL import Image

    from dermground.platform.attributes import ATTRIBUTES
    from dermground.platform.model.processor import ImageOnlyQwen2VLProcessor, fixed_size_image_processor
    from dermground.platform.model.prompts import CHAT_TEMPLATE
    from dermground.train.collator import AnswerOnlyCollator

    processor = ImageOnlyQwen2VLProcessor(image_processor=fixed_size_image_processor(image_size), tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    collate = AnswerOnlyCollator(processor)
    rng = np.random.default_rng(0)
    draw = random.Random(0)
    rows = []
    for _ in range(count):
        image = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))  # SLICE-3D crops are ~130 px
        attribute = draw.choice(ATTRIBUTES)
        rows.append(collate.encode(image, attribute.question, attribute.format_value(draw.uniform(0, 40))))
    return collate, rows


def measure(model, collate, rows, run: Run, device, steps: int, warmup: int) -> dict:  # noqa: ANN001
    """Time `steps` optimiser steps after `warmup`; the batch is padded and moved every step, as in training."""
    import torch

    from dermground.train.collator import answer_window

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> torch.Tensor:
        batch = answer_window(collate.pad(rows))
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.detach()

    losses = [step() for _ in range(warmup)]
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None
    elapsed, timed_losses = timed(lambda: [step() for _ in range(steps)], sync)
    seconds = elapsed / steps
    first_loss = float((losses or timed_losses)[0])
    tokens = int(answer_window(collate.pad(rows))["attention_mask"].shape[1])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    del optimizer
    vision, decoder = dense_parameters(model)
    forward_flops = 2 * run.batch * (vision * (run.image_size // 14) ** 2 + decoder * tokens)
    return {"s_per_step": seconds, "samples_per_s": run.batch / seconds, "peak_gib": peak, "first_loss": first_loss,
            "sequence_tokens": tokens, "paper_epoch_hours": PAPER_TUPLES / (run.batch / seconds) / 3600,
            "model_tflops_per_s": 2 * forward_flops / seconds / 1e12}


def report(run: Run, mode: str, result: dict, card_peak: float | None, results: list[dict],
           checkpointing: bool) -> None:
    """One printed line (and one JSON row) per run and vision attention mode."""
    image_tokens = (run.image_size // 28) ** 2
    share = result["model_tflops_per_s"] / card_peak if card_peak else None
    # recomputation repeats the forward: the card does 3 passes' work where the model needs 2
    done = result["model_tflops_per_s"] * (1.5 if checkpointing else 1.0)
    results.append({**run.__dict__, "vision_attention": mode, "image_tokens": image_tokens, **result,
                     "share_of_dense_bf16_peak": share})
    print(f"{run.shape:5s} {run.image_size:3d}px ({image_tokens:3d} image tokens, {result['sequence_tokens']} per row) "
          f"batch {run.batch:2d} {run.precision} vision attention {mode}: {result['s_per_step']:.3f} s/step, "
          f"{result['samples_per_s']:.1f} samples/s, peak {result['peak_gib']:.1f} GiB, "
          f"loss {result['first_loss']:.2f}, paper epoch {result['paper_epoch_hours']:.1f} h, "
          f"{result['model_tflops_per_s']:.3g} model TFLOP/s"
          + (f" = {share:.1%} of the dense bf16 peak ({card_peak:.0f})" if share is not None else "")
          + (f", {done:.3g} TFLOP/s with recomputation" if checkpointing else ""), flush=True)


def main() -> None:
    import torch

    from dermground.platform.model.vision_attention import batch_vision_attention, unbatch_vision_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="tiny:112:16:fp32,tiny:112:16:bf16,small:448:16:fp32,small:448:16:bf16,"
                        "2b:224:16:fp32,2b:224:16:bf16,2b:448:16:fp32,2b:448:16:bf16,7b:448:4:bf16,7b:448:16:bf16",
                        help="comma-separated SHAPE:PX:BATCH:PRECISION")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-layers", type=int, default=None,
                        help="cap decoder layers and vision depth of 2b/7b (a CPU check of the code path; not their cost)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="gradient checkpointing in every vision block and decoder layer")
    parser.add_argument("--vision-attention", choices=("batched", "per_image", "both"), default="batched")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak (default: known for H100/H200/A100)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip the runs left once this much time has gone")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    runs = [Run.parse(text) for text in args.runs.split(",")]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    card_peak = args.peak_tflops or peak_tflops(name)
    modes = ("batched", "per_image") if args.vision_attention == "both" else (args.vision_attention,)
    print(machine_line())
    print(f"device {name}, torch {torch.__version__}, {args.steps} timed steps after {args.warmup} warm-up"
          + (", gradient checkpointing" if args.checkpointing else "")
          + (f", at most {args.max_layers} layers (code-path check, not real cost)" if args.max_layers else ""),
          flush=True)
    began = time.perf_counter()
    results = []
    model = built = None
    for run in sorted(runs, key=lambda r: (r.shape in REAL_SHAPES, r.shape, r.precision)):
        if time.perf_counter() - began > args.budget_s:
            print(f"{run}: skipped (budget of {args.budget_s:.0f} s spent)", flush=True)
            continue
        try:
            if built != (run.shape, run.precision):
                model = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                t = time.perf_counter()
                model, tokenizer, total = build_model(run.shape, run.precision, device, args.max_layers,
                                                      args.checkpointing)
                built = (run.shape, run.precision)
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                print(f"{run.shape} {run.precision}: {total / 1e9:.3f} B parameters, {trainable / 1e6:.2f} M trainable, "
                      f"built in {time.perf_counter() - t:.1f} s", flush=True)
            collate, rows = encoded_examples(tokenizer, run.image_size, run.batch)
            for mode in modes:
                (batch_vision_attention if mode == "batched" else unbatch_vision_attention)(model)
                result = measure(model, collate, rows, run, device, args.steps, args.warmup)
                report(run, mode, result, card_peak, results, args.checkpointing)
        except torch.OutOfMemoryError:
            model = built = None
            print(f"{run}: out of device memory", flush=True)
            results.append({**run.__dict__, "error": "out of memory"})
            continue
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "torch": torch.__version__, "steps": args.steps,
                       "checkpointing": args.checkpointing, "runs": results}, handle, indent=1)


if __name__ == "__main__":
    main()
