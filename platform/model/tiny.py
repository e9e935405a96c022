"""A small random-weight Qwen2-VL (or Qwen2.5-VL) built offline (tokenizer, image processor, config, weights).

Saved with `save_pretrained`, it loads through the same path as a real checkpoint. Tests and the
demo use it; nothing downloads anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.model.families import DEFAULT_FAMILY, FAMILIES
from dermground.platform.model.processor import ImageOnlyQwen2VLProcessor, fixed_size_image_processor
from dermground.platform.model.prompts import CHAT_TEMPLATE, SYSTEM_PROMPT

# Qwen2's pre-tokenizer split: digits are single tokens, so "12.34" -> 1 2 . 3 4.
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Trainer order = id order: <|endoftext|> gets id 0, like Qwen2's first special token.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
_EXTRA_SPECIAL = [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]


@dataclass(frozen=True)
class TinyPreset:
    """Sizes of a locally built model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vision_depth: int
    vision_embed_dim: int
    vision_heads: int
    image_size: int  # every image is resized to image_size x image_size (a fixed grid)
    mrope_section: tuple[int, int, int]  # must sum to head_dim / 2


PRESETS: dict[str, TinyPreset] = {
    # Fast, for tests: 0.7 M parameters, 224 px -> 64 image tokens.
    "tiny": TinyPreset(128, 2, 4, 2, 256, 2, 64, 4, 224, (4, 6, 6)),
    # For benchmarks and a more convincing demo: ~16 M parameters, 448 px -> 256 image tokens.
    "small": TinyPreset(512, 4, 8, 2, 1376, 4, 256, 4, 448, (8, 12, 12)),
}


def _corpus(seed: int) -> list[str]:
    """Local sentences for the BPE trainer: the questions, the prompt words and many numbers."""
    rng = random.Random(seed)
    lines = [a.question for a in ATTRIBUTES] + [a.label for a in ATTRIBUTES] + [a.definition for a in ATTRIBUTES]
    lines += [SYSTEM_PROMPT, "system", "user", "assistant", "image", "lesion", "skin", "mm", "mm²"]
    lines += [str(d) for d in range(10)]
    for _ in range(400):
        value = rng.uniform(-60, 400)
        lines.append(f"{value:.{rng.choice((1, 2))}f}")
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the Qwen2-VL special tokens and chat template, trained locally."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=_EXTRA_SPECIAL,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def vision_config_for(family: str, preset: TinyPreset) -> dict:
    """The vision tower's config of a family at the preset's sizes (the two families name widths differently)."""
    if family == "qwen2_5_vl":
        return {
            "depth": preset.vision_depth,
            "hidden_size": preset.vision_embed_dim,  # Qwen2.5-VL's hidden_size is the tower's own width
            "intermediate_size": 2 * preset.vision_embed_dim,
            "out_hidden_size": preset.hidden_size,  # the merger's output width = decoder width
            "num_heads": preset.vision_heads,
            # Windows of 2x2 merged patches with full attention only in the last block, so that even a
            # 112 px image (4x4 merged patches) runs windowed attention, as Qwen2.5-VL does at 448 px.
            "window_size": 56,
            "fullatt_block_indexes": [preset.vision_depth - 1],
            "initializer_range": 0.1,
        }
    return {
        "depth": preset.vision_depth,
        "embed_dim": preset.vision_embed_dim,
        "hidden_size": preset.hidden_size,  # the merger's output width = decoder width
        "num_heads": preset.vision_heads,
        "mlp_ratio": 2,
        "initializer_range": 0.1,
    }


def build_config(preset: TinyPreset, tokenizer: PreTrainedTokenizerFast, family: str = DEFAULT_FAMILY) -> PretrainedConfig:
    """A Qwen2-VL (or Qwen2.5-VL) config agreeing with the tokenizer's special-token ids."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // 64) * 64  # round up: embedding rows >= tokenizer size
    return FAMILIES[family].config_class(
        text_config={
            "vocab_size": vocab,
            "hidden_size": preset.hidden_size,
            "intermediate_size": preset.intermediate_size,
            "num_hidden_layers": preset.num_layers,
            "num_attention_heads": preset.num_heads,
            "num_key_value_heads": preset.num_kv_heads,
            "max_position_embeddings": 4096,
            # 0.1, not 0.02: with 0.02 different questions already give cosines of 0.99985 and a
            # 0.9999 equality test could not tell right from wrong (QWEN2VL_NOTES.md).
            "initializer_range": 0.1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": list(preset.mrope_section)},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config=vision_config_for(family, preset),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_model(
    seed: int = 0, preset: str = "tiny", image_size: int | None = None, family: str = DEFAULT_FAMILY
) -> tuple[PreTrainedModel, ImageOnlyQwen2VLProcessor]:
    """Build a random-weight Qwen2-VL (or Qwen2.5-VL) and its processor; identical for the same arguments."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    spec = PRESETS[preset]
    tokenizer = build_tokenizer(seed)
    config = build_config(spec, tokenizer, family)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = FAMILIES[family].model_class(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's RNG as it was
    model.generation_config.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.do_sample = False
    processor = FAMILIES[family].processor_class(
        image_processor=fixed_size_image_processor(spec.image_size if image_size is None else image_size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def save_tiny_model(out_dir: str | Path, seed: int = 0, preset: str = "tiny", image_size: int | None = None,
                    family: str = DEFAULT_FAMILY) -> Path:
    """Build the model and write it as a Hugging Face checkpoint directory; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_model(seed=seed, preset=preset, image_size=image_size, family=family)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
