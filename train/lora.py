"""LoRA on the vision encoder g and the decoder F together (paper §3.2), with peft.

Targets are regexes over module names: a plain name list ("proj", "fc1", ...) would also catch
the vision patch embedding (a Conv3d), see QWEN2VL_NOTES.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The linear layers of every vision block and of the vision->text merger.
VISION_TARGETS = r"visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))|merger\.mlp\.(0|2))"
# The attention and MLP projections of every decoder layer.
DECODER_TARGETS = r"language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
TARGET_MODULES = rf".*\.({VISION_TARGETS}|{DECODER_TARGETS})"
# Qwen2.5-VL's vision blocks have a gated MLP (gate/up/down_proj) where Qwen2-VL's have fc1/fc2.
VISION_TARGETS_QWEN2_5_VL = r"visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj))|merger\.mlp\.(0|2))"
TARGET_MODULES_BY_FAMILY = {
    "qwen2_vl": TARGET_MODULES,
    "qwen2_5_vl": rf".*\.({VISION_TARGETS_QWEN2_5_VL}|{DECODER_TARGETS})",
}


def target_modules(model_type: str = "qwen2_vl") -> str:
    """The LoRA target regex of a model family (a ValueError names the supported ones)."""
    try:
        return TARGET_MODULES_BY_FAMILY[model_type]
    except KeyError:
        raise ValueError(f"no LoRA targets for model_type {model_type!r}; "
                         f"supported: {', '.join(TARGET_MODULES_BY_FAMILY)}") from None


def lora_config(rank: int = 8, alpha: int = 16, dropout: float = 0.05,
                modules_to_save: Sequence[str] | None = None,
                model_type: str = "qwen2_vl"):  # noqa: ANN201 - peft.LoraConfig
    """A peft LoraConfig over the vision blocks and decoder layers of a model family."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(model_type),
                      modules_to_save=list(modules_to_save) if modules_to_save else None, bias="none")


def apply_lora(model: torch.nn.Module, rank: int = 8, alpha: int = 16, dropout: float = 0.05,
               modules_to_save: Sequence[str] | None = None) -> torch.nn.Module:
    """Wrap a Qwen2-VL / Qwen2.5-VL model with fresh LoRA layers; only they (and modules_to_save) are trainable."""
    from peft import get_peft_model

    model_type = getattr(model.config, "model_type", "qwen2_vl")
    return get_peft_model(model, lora_config(rank, alpha, dropout, modules_to_save, model_type))


def float32_trainable(model: torch.nn.Module) -> torch.nn.Module:
    """Cast every trainable weight to float32, in place; returns the model.

    peft upcasts LoRA weights of a bfloat16 base itself but copies modules_to_save (lm_head) in the
    base's dtype, and AdamW on bfloat16 weights loses updates smaller than their last bit.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def trainable_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that receive gradients."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
