"""Parameter counts, memory and embedding cost per Qwen VL family and size, computed, not measured.

Builds every published architecture on the meta device (no weights, no memory, no download) from
the sizes the hub configs publish, counts its parameters and its LoRA parameters under dermground's
target regexes, and derives: bf16 weight memory, the KV cache of one image prefix, LoRA-training
memory of the frozen bf16 base plus float32 trainables and AdamW state (activations excluded), and
the shared-prefix embedding FLOPs and seconds per image at 448 px under an assumed 40 % MFU.

    python benchmarks/checkpoint_sizing.py [--markdown]
"""

from __future__ import annotations

import argparse
import re

from harness import machine_line  # first: the offline environment

import torch

# Published sizes (config.json of each Qwen/...-Instruct checkpoint).
QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16}
QWEN2_5_VL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                     "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]}
CHECKPOINTS = {
    # name: (family, hidden, intermediate, layers, heads, kv_heads, tied embeddings)
    "Qwen2-VL-2B": ("qwen2_vl", 1536, 8960, 28, 12, 2, True),
    "Qwen2-VL-7B": ("qwen2_vl", 3584, 18944, 28, 28, 4, False),
    "Qwen2-VL-72B": ("qwen2_vl", 8192, 29568, 80, 64, 8, False),
    "Qwen2.5-VL-3B": ("qwen2_5_vl", 2048, 11008, 36, 16, 2, True),
    "Qwen2.5-VL-7B": ("qwen2_5_vl", 3584, 18944, 28, 28, 4, False),
    "Qwen2.5-VL-32B": ("qwen2_5_vl", 5120, 27648, 64, 40, 8, False),
    "Qwen2.5-VL-72B": ("qwen2_5_vl", 8192, 29568, 80, 64, 8, False),
}
VOCAB = 151936
IMAGE_PX = 448  # 32 x 32 patches of 14 px -> 1,024 vision tokens -> 256 image tokens after the 2x2 merge
PREFIX_TOKENS = 272  # chat header + <|vision_start|> + 256 + <|vision_end|> (docs/DEPLOY.md section 7)
SUFFIX_TOKENS = 20  # one question + generation prompt
QUESTIONS = 16
MFU = 0.40
PEAK_BF16 = {"A100": 312e12, "H100": 989e12}
LORA_RANK = 8


def build_on_meta(family: str, hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool):  # noqa: ANN201
    from dermground.platform.model.families import FAMILIES

    vision = dict(QWEN2_VL_VISION, hidden_size=hidden) if family == "qwen2_vl" else dict(
        QWEN2_5_VL_VISION, out_hidden_size=hidden)
    config = FAMILIES[family].config_class(
        text_config={"vocab_size": VOCAB, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                     "num_attention_heads": heads, "num_key_value_heads": kv,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24]}},
        vision_config=vision, tie_word_embeddings=tied)
    with torch.device("meta"):
        return FAMILIES[family].model_class(config)


def lora_parameters(model: torch.nn.Module, family: str, rank: int) -> int:
    from dermground.train.lora import target_modules

    pattern = re.compile(target_modules(family))
    return sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and pattern.fullmatch(name))


def row(name: str) -> dict[str, float]:
    family, hidden, inter, layers, heads, kv, tied = CHECKPOINTS[name]
    model = build_on_meta(family, hidden, inter, layers, heads, kv, tied)
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    vision = sum(p.numel() for p in model.model.visual.parameters())
    embedding = VOCAB * hidden * (1 if tied else 2)
    decoder_compute = total - vision - embedding  # the matmul weights a text token passes through, lm_head aside
    lora = lora_parameters(model, family, LORA_RANK)
    head_dim = hidden // heads
    kv_per_token = 2 * layers * kv * head_dim * 2  # K and V, bf16
    vision_tokens = (IMAGE_PX // 14) ** 2
    flops = 2 * vision * vision_tokens + 2 * decoder_compute * (PREFIX_TOKENS + QUESTIONS * SUFFIX_TOKENS)
    return {
        "total": total, "vision": vision, "decoder": total - vision, "lora": lora,
        "weights_gib": total * 2 / 2**30,
        "kv_prefix_mib": kv_per_token * PREFIX_TOKENS / 2**20,
        "train_gib": (total * 2 + lora * (4 + 4 + 8)) / 2**30,  # bf16 base + fp32 LoRA weights, grads, AdamW moments
        "tflop_per_image": flops / 1e12,
        **{f"{gpu}_s_per_image": flops / (peak * MFU) for gpu, peak in PEAK_BF16.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="Print a Markdown table.")
    args = parser.parse_args()
    print(machine_line())
    rows = {name: row(name) for name in CHECKPOINTS}
    if args.markdown:
        print("| checkpoint | parameters (vision) | LoRA r=8 | bf16 weights | KV of one image prefix | LoRA training, "
              "weights + optimiser | embed TFLOP / image | A100 s / image | H100 s / image |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, r in rows.items():
            print(f"| {name} | {r['total'] / 1e9:.2f} B ({r['vision'] / 1e6:.0f} M) | {r['lora'] / 1e6:.1f} M | "
                  f"{r['weights_gib']:.1f} GiB | {r['kv_prefix_mib']:.1f} MiB | {r['train_gib']:.1f} GiB | "
                  f"{r['tflop_per_image']:.1f} | {r['A100_s_per_image']:.3f} | {r['H100_s_per_image']:.3f} |")
        return
    for name, r in rows.items():
        print(name, {k: round(v, 4) for k, v in r.items()})


if __name__ == "__main__":
    main()
